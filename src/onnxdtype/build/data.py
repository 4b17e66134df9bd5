"""Each module's data: its calibration (one cached pass for every static dtype) and its evaluation data."""

from __future__ import annotations

from pathlib import Path

import onnx

from onnxdtype.build.plan import Calibration, Module, ModulePlan, needs_calibration, wants_grams
from onnxdtype.build.search import SEARCH_RANGES
from onnxdtype.build.task import VerifySpec
from onnxdtype.calibration.data import check_feed, load_samples, model_inputs, module_path
from onnxdtype.calibration.grams import input_grams, matmul_inputs, write_grams
from onnxdtype.calibration.run import calibrate_path
from onnxdtype.dtype import INFO, DType
from onnxdtype.errors import OnnxDtypeError
from onnxdtype.manifest import update_manifest
from onnxdtype.recipes import RECIPES, blockwise
from onnxdtype.verify.evaluate import (
    DEFAULT_ATOL,
    EvalData,
    agreement_for,
    floor_draws,
    min_cosine_for,
    read_eval_data,
    synthesize,
)
from onnxdtype.verify.judges import recurrent_pairs
from onnxdtype.verify.repair import RepairBudget


def calibrated_dtypes(wanted: list[DType]) -> list[DType]:
    return [d for d in wanted if INFO[d].needs_calibration]


def check_calibration_data(plan: ModulePlan, modules: int, calib: Calibration | None, wanted: list[DType],
                           overrides: dict) -> None:
    """Read every calibration sample once (each is checked as it is read) before anything is written."""
    using = [d for d in wanted if needs_calibration(d, overrides)]
    if calib is None or not using:
        return
    path = module_path(calib.data, plan.module.name, modules, "--calib")
    for _ in load_samples(path, plan.for_dtype(using[0]).model, calib.image_spec):
        pass


def calibrate_module(plan: ModulePlan, modules: int, calib: Calibration | None, wanted: list[DType], out: Path,
                     searched: bool = False) -> EvalData | None:
    """One calibration pass per module serves every static dtype and int8: records it in the manifest, sets the
    ranges file in `plan.calibrated`, and returns the held-out samples for verification. When the search will run
    on MinMax ranges (`searched`), a second pass gives it MSE-clipped ones to retry failing placements on
    (build.search, `plan.search_ranges`)."""
    static = calibrated_dtypes(wanted)
    if calib is None or not static:
        return None
    path = module_path(calib.data, plan.module.name, modules, "--calib")
    also = SEARCH_RANGES if searched and calib.method == "minmax" else ()
    done = calibrate_path(plan.for_dtype(static[0]).model, path, calib.image_spec, calib.method, out,
                          calib.eval_fraction, also)
    entry = {**done.samples.describe(), "method": done.result.method, "ranges_file": done.result.path.name,
             "samples_used": done.result.samples_used, "seconds": done.result.seconds, "cached": done.result.cached,
             "held_out_for_eval": len(done.held_out)}
    if done.others:
        entry["search_ranges"] = {method: {"ranges_file": r.path.name, "seconds": r.seconds, "cached": r.cached}
                                  for method, r in done.others.items()}
    plan.search_ranges = {method: str(r.path) for method, r in done.others.items()}
    update_manifest(out, lambda data: data["modules"][plan.module.name].__setitem__("calibration", entry))
    calibrated = {"ranges_file": str(done.result.path), "method": done.result.method}
    plan.calibrated = {step: calibrated for d in static for step in INFO[d].steps if RECIPES[step].NEEDS_CALIBRATION}
    return _held_out_data(plan, path, calib, done.held_out, done.samples.source)


def _held_out_data(plan: ModulePlan, path: Path, calib: Calibration, held_out, source: str) -> EvalData | None:
    """The calibration samples left out of calibrating, as the data that verifies unless other data was given."""
    if len(held_out) and plan.evaluation is None:
        plan.held_out_entry = evaluation_entry(path, calib.image_spec, calib.eval_fraction)
    return EvalData(list(held_out), f"held-out {len(held_out)} of the calibration samples ({source})",
                    False) if len(held_out) else None


def gram_module(plan: ModulePlan, modules: int, calib: Calibration | None, wanted: list[DType], overrides: dict,
                scratch: Path) -> EvalData | None:
    """The MatMul inputs' Gram matrices for GPTQ rounding, computed once per module on the calibration part of the
    data when a wanted dtype asks for it (`--set q4.rounding=gptq`); the file, in the build's scratch folder, goes
    into the 4-bit recipe's options. Returns the held-out samples, as calibrate_module does."""
    asking = [d for d in wanted if wants_grams(d, overrides)]
    if calib is None or not asking:
        return None
    model = plan.for_dtype(asking[0]).model
    path = module_path(calib.data, plan.module.name, modules, "--calib")
    samples = load_samples(path, model, calib.image_spec)
    part, held_out = samples.split(calib.eval_fraction)
    file = scratch / f"{plan.module.name}-grams.npz"
    write_grams(file, input_grams(model, part, matmul_inputs(model), scratch))
    plan.calibrated[blockwise.NAME] = {"grams_file": str(file)}
    return _held_out_data(plan, path, calib, held_out, samples.source)


def module_eval_data(plan: ModulePlan, modules: int, eval_data: EvalData | dict | str | Path | None,
                     calib: Calibration | None) -> EvalData | None:
    """The module's evaluation data: given as EvalData, or read from a path like calibration data."""
    if isinstance(eval_data, dict) and all(isinstance(v, EvalData) for v in eval_data.values()):
        return eval_data.get(plan.module.name)
    if eval_data is None or isinstance(eval_data, EvalData):
        return eval_data
    model = next(iter(plan.normalized.values())).model if plan.normalized else None
    path = module_path(eval_data, plan.module.name, modules, "--eval")
    plan.evaluation = evaluation_entry(path, calib.image_spec if calib else None, None)
    data = read_eval_data(path, model, calib.image_spec if calib else None)
    if data.sequences:
        check_sequences(data, plan.base, plan.module.name)
    return data


def evaluation_entry(path: Path, image_spec: object, held_out: float | None) -> dict:
    """Where a module's evaluation data comes from: a data path (and the held-out fraction when it is the part of
    the calibration data kept back), so `onnxdtype verify DIR` reads the same samples again."""
    spec = str(image_spec) if isinstance(image_spec, Path) else image_spec
    return {"data": str(Path(path).resolve()), "image_spec": spec if spec is None or isinstance(spec, (str, dict))
            else None, "held_out": held_out}


def record_evaluation(out: Path, module: str, entry: dict) -> None:
    """The data the module's variants are verified on, for `onnxdtype verify DIR` (data None: given in memory or
    synthesized, which verify cannot read again)."""
    update_manifest(out, lambda data: data["modules"][module].__setitem__("evaluation", entry))


def check_eval_data(modules: list[Module], bases: dict[str, onnx.ModelProto],
                    eval_data: EvalData | dict | str | Path | None) -> None:
    """EvalData given through the API meets the same checks as data read from files."""
    if isinstance(eval_data, dict) and all(isinstance(v, EvalData) for v in eval_data.values()):
        unknown = sorted(set(eval_data) - {m.name for m in modules})
        if unknown:
            raise OnnxDtypeError(f"eval_data names no module {', '.join(map(repr, unknown))} "
                                 f"(modules: {', '.join(m.name for m in modules)})")
    for m in modules:
        data = eval_data.get(m.name) if isinstance(eval_data, dict) else eval_data
        if not isinstance(data, EvalData):
            continue
        if not data.feeds:
            raise OnnxDtypeError(f"{m.name}: evaluation data {data.source!r} holds no samples")
        if data.sequences:
            check_sequences(data, bases[m.name], m.name)
            continue
        inputs = model_inputs(bases[m.name])
        for i, feed in enumerate(data.feeds):
            check_feed(feed, inputs, f"{m.name}: evaluation data {data.source!r} sample {i}")


def check_sequences(data: EvalData, model: onnx.ModelProto, module: str) -> None:
    """Each step gives every input but the recurrent state, which the steps carry over (the first may start it)."""
    inputs, states = model_inputs(model), set(recurrent_pairs(model).values())
    if not states:
        raise OnnxDtypeError(f"{module}: evaluation data {data.source!r} holds sequences, but no output of the model "
                             f"feeds an input back (no recurrent state)")
    for i, steps in enumerate(data.sequences or []):
        for j, step in enumerate(steps):
            present = [x for x in inputs if x.name not in states or x.name in step]
            check_feed(step, present, f"{module}: evaluation data {data.source!r} sequence {i} step {j}")


def verify_spec(plan: ModulePlan, data: EvalData | None, tmp: Path, wanted: list[DType], tolerances: dict | None,
                repair: bool, budget: RepairBudget | None, metric: str | None) -> VerifySpec:
    """What the workers need to verify a module's variants: evaluation data saved in `tmp`, tolerances, repair.
    Fixed inputs take their fixed values in every sample: the variant is only meant for those."""
    data = data or synthesize(plan.base, path=plan.module.path)
    if plan.fixed:
        data = data.with_inputs(plan.fixed)
    return VerifySpec(str(data.save(tmp / f"eval-{plan.module.name}")), data.source, data.synthesized,
                      {d.value: min_cosine_for(d, tolerances) for d in wanted},
                      {d.value: agreement_for(d, tolerances) for d in wanted}, plan.tasks, recurrent_pairs(plan.base),
                      (tolerances or {}).get("atol", DEFAULT_ATOL), metric, repair, budget or RepairBudget(),
                      **floor_draws(tolerances))


def latency_feed(data: EvalData | None, base: onnx.ModelProto, path: Path) -> dict | None:
    feeds = (data or synthesize(base, samples=1, path=path)).feeds
    return feeds[0] if feeds else None
