"""Static 8-bit variants: try placements from the fastest onnxruntime can run to today's safe default, judge and time
each, retry a failing int8-weight placement with 7-bit weights, then failing ones on MSE-clipped ranges, repair one
that still fails (keeping its worst nodes in float), try the fastest passing one with kinds of ops (depthwise Convs,
MaxPool) and then its first layers in float, and keep the fastest that passes, within a SearchBudget (seconds, and
the speedup a kept variant must reach); the trail goes to the manifest.

Why: where activations get Q/DQ decides both what onnxruntime runs in integers and how much accuracy survives, and
neither is predictable from the graph alone. Measured on PP-OCR cls (this AVX2 CPU without VNNI): QLinearConv ran
slower than float Conv for its small depthwise layers, while equalization's per-channel restore Muls cost a fifth
of the variant's time; on det the same kernels ran faster than fp32 Convs. So the candidates are timed where the
build runs, and the variant says so (speed is the building machine's; other CPUs choose other kernels).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx

from onnxdtype.calibration.ranges import weighted_nodes
from onnxdtype.errors import OnnxDtypeError
from onnxdtype.ops import KERNEL_WEIGHT_INPUT
from onnxdtype.recipes.static import FLOAT_KINDS, kind_nodes
from onnxdtype.results import Status, VariantResult
from onnxdtype.verify.evaluate import Criteria, EvalData, Reference, session
from onnxdtype.verify.latency import MIN_SECONDS, speedups
from onnxdtype.verify.record import verify_variant

# Placements tried, fastest first: Q/DQ on every op onnxruntime has an integer kernel for (chains of QLinear ops)
# or only at weighted ops' inputs and Conv outputs; channel equalization off or on (its restore Muls cost time).
CANDIDATES: tuple[dict[str, Any], ...] = (
    {"kernel_ops_only": False, "equalize": False},
    {"kernel_ops_only": False, "equalize": True},
    {"kernel_ops_only": True, "equalize": False},
    {"kernel_ops_only": True, "equalize": True},
)
# A failing placement with int8 weights is tried again with 7-bit weights (static.py: onnxruntime's U8S8 kernels
# saturate on x86 without VNNI): same kernels and speed, and the fix where saturation was the cause.
SATURATION_RETRY = {"reduce_range": True}
# Passing candidates timed within RUNOFF_WITHIN of the fastest are timed again, interleaved with each other and fp32
# (RUNOFF_RUNS each): timed one after another they had drifted apart by more than they differ (PP-OCR cls s8u8:
# the chain with 7-bit weights chosen at 0.78-0.85x in one build, the equalized chain at 0.69x in another). A lone
# fastest one is timed again too, since its figure decides the slower-than-fp32 note and min_speedup (PP-OCR cls s8u8
# in one demo: 1.02x in the search's 10 runs, 0.93x in the build's latency after it).
# The runoff takes the RUNOFF_AT_LEAST fastest whatever their figures: one demo's kernel-input placement of det read
# 1.55x in its 10 runs, 1.02x in the runoff, which then held no other candidate (the chain: 1.38x).
RUNOFF_WITHIN, RUNOFF_RUNS, RUNOFF_AT_LEAST = 0.9, 20, 3
# Then each failing placement faster than every passing one is tried again on ranges of another method, computed on
# the same calibration samples (build.data). Measured on PP-OCRv4 rec s8u8, MinMax -> MSE-clipped (calibration
# .ranges): on the demo's split its chain with 7-bit weights went from failing to reading every judged line, on
# the split judging 4 photographed lines (examples/ocr_models.py --swap-page-lines) its equalized 7-bit chain from
# 66.7 % to 100 %; MSE is not the default, because before the chains it had bought no task (calibration.ranges).
SEARCH_RANGES = ("mse",)
# Then the runoff's winner is tried with each kind of static.FLOAT_KINDS in float (depthwise Convs, MaxPool), each
# kept when it runs faster than the fastest so far, timed beside it (RUNOFF_RUNS interleaved runs): PP-OCR cls's s8u8
# chain 0.87-0.89x fp32 -> 1.00-1.01x with both float, det's and rec's chains 9-10 % slower with their depthwise Convs
# float (static.py; AVX-512 VNNI).
# Last, the fastest so far is tried again with its first 1, 2, 4, 8 weighted ops and the nodes before
# them in float (static.Options.float_first), while those hold at most FLOAT_FIRST_WEIGHTS of the weights and each
# step runs at least FLOAT_FIRST_KEEPS_UP of the fastest so far, timed beside it (RUNOFF_RUNS interleaved runs:
# judged on the candidates' own 10-run timings, one demo stopped det at 1 float after the chain's timing had read
# 1.43x, 1.30x in the runoff): onnxruntime's CPU integer kernels lose on an image model's first layers (static.py).
# Measured on PP-OCRv4 det's s8u8 chain (interleaved, one thread, two runs, AVX2 without VNNI): 1.35x fp32 with none
# float, 1.34-1.36x with 1, 1.40x with 2, 1.29-1.30x with 4; cls 0.91-0.92x -> 0.97x with 4,
# 0.99-1.00x with 12 (1.5 % of its weights), never above fp32; rec 1.76x -> 1.79x with 1. A failing trial is passed
# over: cls (AVX-512 VNNI, its depthwise Convs and MaxPool float) lost a borderline label with 1 and kept it with 2
# and 4, 1.01-1.08x -> 1.15-1.17x.
FLOAT_FIRST = (1, 2, 4, 8)
FLOAT_FIRST_WEIGHTS, FLOAT_FIRST_KEEPS_UP = 0.05, 0.98
SEARCHED_FIELDS = frozenset([*(field for candidate in CANDIDATES for field in candidate), *SATURATION_RETRY,
                             "method", "ranges_file", "float_kinds", "float_first"])
TIMING_RUNS = 10


@dataclasses.dataclass(frozen=True)
class SearchBudget:
    """What the search may spend. `seconds` building, judging and timing candidates (the repair keeps its own
    budget): the first candidate is always tried, once the budget is spent the rest are recorded as skipped
    (PP-OCRv4 rec s8u8, the longest search measured here: 90 s to 3 min 29 s for the whole build). `min_speedup`,
    the latency it may lose: a variant slower than this times fp32 at one thread fails (0: any speed passes, a slower
    one says so in its notes), and a failing candidate already slower than it is not repaired (float only slows)."""
    seconds: float = 900.0
    min_speedup: float = 0.0

    def __post_init__(self) -> None:
        if not (isinstance(self.seconds, (int, float)) and math.isfinite(self.seconds) and self.seconds > 0):
            raise OnnxDtypeError(f"the search's seconds must be a number > 0, not {self.seconds!r}")
        if not (isinstance(self.min_speedup, (int, float)) and math.isfinite(self.min_speedup)
                and self.min_speedup >= 0):
            raise OnnxDtypeError(f"the search's min_speedup must be a number >= 0, not {self.min_speedup!r}")


def candidates_for(steps: tuple[str, ...], fixed_fields: set[str]) -> list[dict[str, dict]]:
    """The placements to try for a dtype built by `steps`: only static recipes, and none when the user fixed a
    searched option (their choice stands)."""
    if steps != ("static",) or fixed_fields & SEARCHED_FIELDS:
        return []
    return [{"static": dict(candidate)} for candidate in CANDIDATES]


@dataclasses.dataclass
class _Tried:
    entry: dict[str, Any]
    overrides: dict[str, dict]
    model: onnx.ModelProto
    options: dict
    trial: VariantResult

    @property
    def passed(self) -> bool:
        return self.trial.status == Status.OK and self.entry.get("failure") is None


def search(source: onnx.ModelProto, source_path: str, steps: tuple[str, ...], options: dict,
           candidates: list[dict[str, dict]], data: EvalData, criteria: Criteria, base: Reference,
           result: VariantResult,
           run_steps: Callable[..., onnx.ModelProto | None],
           repair: Callable[[onnx.ModelProto, dict, VariantResult, Reference], onnx.ModelProto] | None,
           ranges: dict[str, str] | None = None, budget: SearchBudget | None = None
           ) -> tuple[onnx.ModelProto, dict] | None:
    """The fastest candidate that passes `criteria` on `data` (its model and options), every candidate's figures in
    result.params["search"]; None when no candidate could be built, or none passed and repair is off. `base` is
    fp32 on `data` (its runs and noise floor), judged against by every candidate. Candidates after `budget`'s
    seconds are recorded as skipped, not built; a chosen one slower than its min_speedup fails.

    Every candidate is judged and timed; those failing and faster than every passing one are tried again with 7-bit
    weights (int8 weights only), then on each of `ranges` (method -> ranges file of the same calibration samples,
    build.data; recorded by file name), fastest first: a retry that passes rules out the slower ones. One failing
    candidate is then repaired (`repair` keeps its worst nodes in float, judged on the task against the fp32 outputs
    the search already holds): the fastest that ran faster than every passing one (keeping nodes in float only slows
    it), or, when none passed, the one closest to passing. The fastest passing ones are timed again together (the
    runoff), and its winner (unless repaired) tried with each of static.FLOAT_KINDS in float, then with its first
    FLOAT_FIRST weighted ops in float, more while each fails or keeps up with the fastest so far, each timed beside
    it. When nothing passes, the result is that repaired candidate, failed with its figures and repair trail."""
    base_timed = session(source_path, threads=1)
    trail: list[dict[str, Any]] = []
    tried: list[_Tried] = []

    budget = budget or SearchBudget()
    deadline = time.monotonic() + budget.seconds

    def attempt(overrides: dict[str, dict]) -> _Tried | None:
        shown = {step: {k: Path(v).name if k == "ranges_file" else v for k, v in o.items()}
                 for step, o in overrides.items()}
        entry: dict[str, Any] = {"options": shown}
        trail.append(entry)
        if trail[:-1] and time.monotonic() > deadline:
            entry["skipped"] = f"the search's budget of {budget.seconds:g} s was spent"
            return None
        trial_options = {step: dataclasses.replace(opts, **overrides.get(step, {})) for step, opts in options.items()}
        trial = VariantResult(result.module, result.dtype, Status.OK)
        model = run_steps(source, steps, trial_options, trial)
        if model is None:
            entry["failure"] = trial.reason
            return None
        trial.verification, _, failure = verify_variant(base, session(model), data, criteria)
        entry.update(failure=failure, task=_worst_task(trial.verification),
                     speedup_1thread=_speedup(base_timed, model, data))
        tried.append(_Tried(entry, overrides, model, trial_options, trial))
        return tried[-1]

    def retry(eligible: Callable[[_Tried], bool], changes: dict) -> None:
        """Each failing candidate `eligible` once more with `changes`, fastest first, while it still ran faster than
        every passing one (a retry that passes rules out the slower ones)."""
        for failed in sorted(filter(eligible, _faster_than_passing(tried)), key=lambda t: -t.entry["speedup_1thread"]):
            if failed.entry["speedup_1thread"] > _fastest_passing(tried):
                attempt({"static": {**failed.overrides["static"], **changes}})

    for overrides in candidates:
        attempt(overrides)
    retry(lambda t: t.options["static"].weight_type == "int8" and not t.options["static"].reduce_range,
          SATURATION_RETRY)
    for method, ranges_file in (ranges or {}).items():
        retry(lambda t, method=method: t.options["static"].method != method,
              {"method": method, "ranges_file": ranges_file})
    if not tried:
        return None
    fixed = _repaired(tried, repair, base, base_timed, data, result, budget.min_speedup) if repair else None
    if fixed is not None:
        trail.append(fixed.entry)
        tried.append(fixed)
    passing = [t for t in tried if t.passed]
    best = max(passing, key=lambda t: t.entry["speedup_1thread"], default=fixed)
    fastest = sorted(passing, key=lambda t: -t.entry["speedup_1thread"])
    contenders = [t for i, t in enumerate(fastest) if i < RUNOFF_AT_LEAST
                  or t.entry["speedup_1thread"] >= RUNOFF_WITHIN * best.entry["speedup_1thread"]]
    if contenders:
        timed = speedups(base_timed, [session(t.model, threads=1) for t in contenders], data.feeds[0], RUNOFF_RUNS)
        for contender, speedup in zip(contenders, timed):
            contender.entry["runoff_speedup_1thread"] = round(speedup, 3)
        best = max(contenders, key=lambda t: t.entry["runoff_speedup_1thread"])

    def paired(trial: _Tried) -> tuple[float, float]:
        """The fastest so far and `trial`, timed beside each other (recorded in the trial's entry)."""
        before, now = speedups(base_timed, [session(t.model, threads=1) for t in (best, trial)], data.feeds[0],
                               RUNOFF_RUNS)
        trial.entry["paired"] = {"fastest_before": round(before, 3), "this": round(now, 3)}
        return before, now

    if best is not None and best.passed and best is not fixed:  # a repaired one stays as its repair left it
        kinds: list[str] = []
        for kind in [k for k in FLOAT_KINDS if kind_nodes(source, [k])]:
            trial = attempt({"static": {**best.overrides["static"], "float_kinds": [*kinds, kind]}})
            if trial is None or not trial.passed:
                continue
            before, now = paired(trial)
            if now > before:
                best, kinds = trial, [*kinds, kind]
        for first in _float_first_counts(source):
            trial = attempt({"static": {**best.overrides["static"], "float_first": first}})
            if trial is None or not trial.passed:  # a borderline sample flips either way: the next may pass
                continue
            before, now = paired(trial)
            if now < FLOAT_FIRST_KEEPS_UP * before:
                break
            best = trial if now > before else best
    result.params["search"] = {"candidates": trail, "budget": dataclasses.asdict(budget),
                               "chosen": next((i for i, e in enumerate(trail) if best and e is best.entry), None),
                               "timed_on": f"this machine, 1 thread, medians of interleaved runs (at least "
                                           f"{TIMING_RUNS}, more until {MIN_SECONDS:g} s have passed); the "
                                           f"{RUNOFF_AT_LEAST} fastest passing candidates and any within "
                                           f"{1 - RUNOFF_WITHIN:.0%} of the fastest timed again together, at least "
                                           f"{RUNOFF_RUNS} runs (runoff_speedup_1thread); the runoff's winner with "
                                           "kinds of ops, then its first layers float, each beside the fastest "
                                           "before it, as many runs (paired)"}
    if best is None:
        return None
    result.params = {**result.params, **best.trial.params}  # the chosen candidate's recipe parameters, the trail kept
    result.kept_in_float, result.notes = best.trial.kept_in_float, best.trial.notes
    result.verification = best.trial.verification
    if not best.passed:
        result.fail(best.trial.reason or "no placement passes")
        return best.model, best.options
    speedup = (best.entry.get("paired") or {}).get("this") or best.entry.get("runoff_speedup_1thread",
                                                                             best.entry["speedup_1thread"])
    if speedup < budget.min_speedup:
        result.fail(f"no passing placement is {budget.min_speedup:g}x fp32 at 1 thread on this machine, the "
                    f"latency budget (best {speedup:.2f}x; --min-speedup)")
    elif speedup < 1.0:  # said, never hidden: the user asked for 8-bit to be faster
        result.notes.append(f"no passing placement is faster than fp32 on this machine (best {speedup:.2f}x at "
                            "1 thread): onnxruntime's integer kernels do not pay here (bench/static_speed.py "
                            "--profile shows where the time goes)")
    return best.model, best.options


def _float_first_counts(source: onnx.ModelProto) -> list[int]:
    """The FLOAT_FIRST counts whose weighted ops hold at most FLOAT_FIRST_WEIGHTS of `source`'s weights, fewer
    than all of them."""
    weights = {t.name: t for t in source.graph.initializer}
    sizes = [math.prod(weights[n.input[KERNEL_WEIGHT_INPUT[n.op_type]]].dims) for n in weighted_nodes(source)]
    return [first for first in FLOAT_FIRST
            if first < len(sizes) and sum(sizes[:first]) <= FLOAT_FIRST_WEIGHTS * sum(sizes)]


def _faster_than_passing(tried: list[_Tried]) -> list[_Tried]:
    """The failing candidates that ran faster than every passing one (all failing ones when none passed): the only
    ones worth another try, since keeping nodes in float only slows a candidate."""
    fastest = _fastest_passing(tried)
    return [t for t in tried if not t.passed and t.entry["speedup_1thread"] > fastest]


def _fastest_passing(tried: list[_Tried]) -> float:
    return max((t.entry["speedup_1thread"] for t in tried if t.passed), default=0.0)


def _repaired(tried: list[_Tried], repair: Callable, base: Reference, base_timed, data: EvalData,
              result: VariantResult, min_speedup: float) -> _Tried | None:
    """The repair of the one failing candidate worth it (see search), as a new trail entry; None when none is."""
    worth = [t for t in _faster_than_passing(tried) if t.entry["speedup_1thread"] >= min_speedup]
    if any(t.passed for t in tried):
        pick = max(worth, key=lambda t: t.entry["speedup_1thread"], default=None)
    else:
        pick = max(worth, key=lambda t: ((t.entry["task"] or {}).get("agreement", 0.0),
                                         t.entry["speedup_1thread"]), default=None)
    if pick is None:
        return None
    trial = VariantResult(result.module, result.dtype, Status.OK, params=dict(pick.trial.params),
                          kept_in_float=list(pick.trial.kept_in_float), notes=list(pick.trial.notes))
    model = repair(pick.model, pick.options, trial, base)
    repair_trail = trial.verification.get("repair") or {}
    entry: dict[str, Any] = {"options": pick.entry["options"], "repaired": {
        "kept": repair_trail.get("kept", []), "kept_weight_fraction": repair_trail.get("kept_weight_fraction"),
        "attempts": len(repair_trail.get("attempts", []))},
        "failure": trial.verification.get("failure") if trial.status == Status.OK else trial.reason,
        "task": _worst_task(trial.verification)}
    if trial.status == Status.OK:
        entry["speedup_1thread"] = _speedup(base_timed, model, data)
    return _Tried(entry, pick.overrides, model, pick.options, trial)


def _speedup(base_timed, model: onnx.ModelProto, data: EvalData) -> float:
    return round(speedups(base_timed, [session(model, threads=1)], data.feeds[0], TIMING_RUNS)[0], 3)


def _worst_task(record: dict) -> dict | None:
    judged = [f["judge"] for f in (record.get("outputs") or {}).values() if f.get("judge")]
    worst = min(judged, key=lambda j: j.get("agreement") if j.get("agreement") is not None else 1.0, default=None)
    return {"task": worst["task"], "agreement": worst["agreement"]} if worst else None

