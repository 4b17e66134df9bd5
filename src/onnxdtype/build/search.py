"""Static 8-bit variants: try placements from the fastest onnxruntime can run to today's safe default, judge each on
the task, time the ones that pass, and keep the fastest that passes; the trail goes to the manifest.

Why: where activations get Q/DQ decides both what onnxruntime runs in integers and how much accuracy survives, and
neither is predictable from the graph alone. Measured on PP-OCR cls (this AVX2 CPU without VNNI): QLinearConv ran
slower than float Conv for its small depthwise layers, while equalization's per-channel restore Muls cost a fifth
of the variant's time; on det the same kernels ran faster than fp32 Convs. So the candidates are timed where the
build runs, and the variant says so (speed is the building machine's; other CPUs choose other kernels).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import onnx

from onnxdtype.results import Status, VariantResult
from onnxdtype.verify.evaluate import Criteria, EvalData, session
from onnxdtype.verify.latency import one_thread_speedup
from onnxdtype.verify.record import verify_variant

# Placements tried, fastest first: Q/DQ on every op onnxruntime has an integer kernel for (chains of QLinear ops)
# or only at weighted ops' inputs and Conv outputs; channel equalization off or on (its restore Muls cost time).
CANDIDATES: tuple[dict[str, Any], ...] = (
    {"kernel_ops_only": False, "equalize": False},
    {"kernel_ops_only": False, "equalize": True},
    {"kernel_ops_only": True, "equalize": False},
    {"kernel_ops_only": True, "equalize": True},
)
SEARCHED_FIELDS = frozenset(field for candidate in CANDIDATES for field in candidate)
TIMING_RUNS = 10


def candidates_for(steps: tuple[str, ...], fixed_fields: set[str]) -> list[dict[str, dict]]:
    """The placements to try for a dtype built by `steps`: only static recipes, and none when the user fixed a
    searched option (their choice stands)."""
    if steps != ("static",) or fixed_fields & SEARCHED_FIELDS:
        return []
    return [{"static": dict(candidate)} for candidate in CANDIDATES]


def search(source: onnx.ModelProto, source_path: str, steps: tuple[str, ...], options: dict,
           candidates: list[dict[str, dict]], data: EvalData, criteria: Criteria, result: VariantResult,
           run_steps: Callable[..., onnx.ModelProto | None]) -> tuple[onnx.ModelProto, dict] | None:
    """The fastest candidate that passes `criteria` on `data` (its model and options), with every candidate's figures
    in result.params["search"]; None when none passes (the caller repairs the default placement instead)."""
    base, base_timed = session(source_path), session(source_path, threads=1)
    trail, best = [], None
    for overrides in candidates:
        trial_options = {step: dataclasses.replace(opts, **overrides.get(step, {})) for step, opts in options.items()}
        trial = VariantResult(result.module, result.dtype, Status.OK)
        model = run_steps(source, steps, trial_options, trial)
        entry: dict[str, Any] = {"options": overrides}
        if model is None:
            trail.append({**entry, "failure": trial.reason})
            continue
        record, _, failure = verify_variant(base, session(model), data, criteria)
        entry.update(failure=failure, task=_worst_task(record))
        if failure is None:
            entry["speedup_1thread"] = round(one_thread_speedup(base_timed, session(model, threads=1),
                                                                data.feeds[0], TIMING_RUNS), 3)
            if best is None or entry["speedup_1thread"] > best[0]["speedup_1thread"]:
                best = (entry, model, trial_options, trial, record)
        trail.append(entry)
    result.params["search"] = {"candidates": trail, "chosen": trail.index(best[0]) if best else None,
                               "timed_on": "this machine, 1 thread, median of 10 interleaved runs"}
    if best is None:
        return None
    _, model, chosen_options, trial, record = best
    result.params = {**result.params, **trial.params}  # the chosen candidate's recipe parameters, the trail kept
    result.kept_in_float, result.notes, result.verification = trial.kept_in_float, trial.notes, record
    speedup = best[0]["speedup_1thread"]
    if speedup < 1.0:  # said, never hidden: the user asked for 8-bit to be faster
        result.notes.append(f"no passing placement is faster than fp32 on this machine (best {speedup:.2f}x at "
                            "1 thread): onnxruntime's integer kernels do not pay here (bench/static_speed.py "
                            "--profile shows where the time goes)")
    return model, chosen_options


def _worst_task(record: dict) -> dict | None:
    judged = [f["judge"] for f in (record.get("outputs") or {}).values() if f.get("judge")]
    worst = min(judged, key=lambda j: j.get("agreement") if j.get("agreement") is not None else 1.0, default=None)
    return {"task": worst["task"], "agreement": worst["agreement"]} if worst else None

