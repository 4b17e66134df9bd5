"""Build one variant: recipe steps on the normalized model, verification and repair, the load check.

Runs inline or in a worker process (`python -m onnxdtype.build.worker`: one JSON task per line in, one JSON
result per line out). A recipe that raises fails only its own variant, with the error as its reason.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import onnx

from onnxdtype.build.search import search
from onnxdtype.build.task import VariantTask, VerifySpec
from onnxdtype.dtype import INFO, DType
from onnxdtype.io import first_line
from onnxdtype.model import iter_graphs, load_model, op_counts, remove_model, write_model
from onnxdtype.naming import variant_filename
from onnxdtype.normalize import keep_metadata
from onnxdtype.recipes import RECIPES, NotApplicable
from onnxdtype.results import Status, VariantResult
from onnxdtype.verify.evaluate import Criteria, EvalData, Reference
from onnxdtype.verify.evaluate import session as accuracy_session
from onnxdtype.verify.record import skipped, verify_variant
from onnxdtype.verify.repair import RepairPlan, repair
from onnxdtype.weights import load_all


def build_variant(task: VariantTask) -> VariantResult:
    """Run one dtype's recipe steps on the normalized model, prove it loads, verify it against fp32 and repair
    it when it misses its tolerance; the variant is written into `task.tmp`."""
    quiet_onnxruntime()
    steps = INFO[DType(task.dtype)].steps
    result = VariantResult(task.module, task.dtype, Status.OK, recipe=list(steps), normalized=task.normalized,
                           base_bytes=task.base_bytes)
    if task.specialized:
        result.params["specialize"] = task.specialized
    start = time.perf_counter()
    path = Path(task.tmp) / variant_filename(task.module, DType(task.dtype))
    try:
        source = load_model(task.norm_path, lazy=True)
        options = {step: RECIPES[step].Options(**task.options[step]) for step in steps}
        built = _searched(source, task, steps, options, result) if task.verify and task.search else None
        if built is not None:
            _write(source, built, path, task.single_file)
        else:  # no search, or nothing it could judge: the default placement, verified and repaired
            built = run_steps(source, steps, options, result)
            if built is None:
                return result
            _write(source, built, path, task.single_file)  # verified from its file: not written again for a session
            if task.verify is not None:
                built = _verify_and_repair(source, Path(task.norm_path), built, path, steps, options, task.verify,
                                           result, task.single_file)
        result.op_changes = op_changes(source, built)
    except Exception as exc:  # a quantizer bug must not take the other variants down
        result.fail(f"{type(exc).__name__}: {first_line(exc)}")
        remove_model(path)
        return result
    finally:
        result.seconds = round(time.perf_counter() - start, 3)
    problem = load_error(path)
    if problem:
        result.fail(f"onnxruntime cannot load it: {problem}")
        remove_model(path)
        return result
    result.file = str(path)
    return result


def _write(source: onnx.ModelProto, built: onnx.ModelProto, path: Path, single_file: bool) -> None:
    """The variant at `path` with the source's metadata (quantizers drop it), one file when its base was
    (`single_file`, below the protobuf limit); a repaired one replaces the first, whose .data file must not
    outlive it."""
    keep_metadata(source, built)
    remove_model(path)
    write_model(built, path, single_file)


def run_steps(source: onnx.ModelProto, steps: tuple[str, ...], options: dict, result: VariantResult | None = None
              ) -> onnx.ModelProto | None:
    """Apply the recipe steps in order; None (with the reason in `result`) when one does not apply."""
    model = source
    for step in steps:
        step_input = onnx.ModelProto()
        step_input.CopyFrom(model)  # onnxruntime's quantizers edit their input in place
        if not RECIPES[step].LAZY_WEIGHTS:
            load_all(step_input)
        outcome = RECIPES[step].build(step_input, options[step])
        reason = outcome.reason if isinstance(outcome, NotApplicable) else \
            (None if op_changes(model, outcome.model) else f"{step} changed no node")
        if reason:
            if result is not None:
                result.status, result.reason = Status.NOT_APPLICABLE, reason
            return None
        if result is not None:
            result.params[step] = outcome.params
            result.kept_in_float += [n for n in outcome.kept_in_float if n not in result.kept_in_float]
            result.notes += outcome.notes
        model = outcome.model
    return model


def kept_options(steps: tuple[str, ...], options: dict, in_float: list[str], ranked: list[str], precision: str
                 ) -> dict:
    """Options for a repair rebuild: `in_float` nodes stay fp32 in every step; `ranked` nodes go to `precision` in
    the quantize steps, or in the float step when it is the whole recipe (q4f16's error is its 4-bit part)."""
    targets = [s for s in steps if RECIPES[s].KIND == "quantize"] or list(steps)
    rebuilt = {}
    for step in steps:
        recipe, opts = RECIPES[step], options[step]
        opts = recipe.keep(opts, in_float, "fp32")
        if step in targets:
            opts = recipe.keep(opts, ranked, precision if precision in recipe.HIGHER_PRECISIONS else "fp32")
        rebuilt[step] = opts
    return rebuilt


def _judging(spec: VerifySpec, dtype: str) -> tuple[EvalData, Criteria]:
    eval_data = EvalData.load(Path(spec.eval_dir), spec.source, spec.synthesized)
    return eval_data, Criteria(spec.min_cosine[dtype], spec.atol, spec.metric, spec.agreement[dtype], spec.tasks,
                               spec.states, spec.rounding_draws, spec.weight_draws)


def _searched(source: onnx.ModelProto, task: VariantTask, steps: tuple[str, ...], options: dict,
              result: VariantResult) -> onnx.ModelProto | None:
    """The fastest placement that passes on real data (build.search), or its closest failing one with its repair
    (then `result` is failed); None when the search cannot judge: the default placement is built instead."""
    eval_data, criteria = _judging(task.verify, result.dtype)
    if not eval_data.feeds or eval_data.synthesized:
        return None
    source_path, scratch = Path(task.norm_path), Path(task.tmp) / f"{task.module}.{task.dtype}.search.onnx"

    def repair(built: onnx.ModelProto, trial_options: dict, trial: VariantResult, base: Reference
               ) -> onnx.ModelProto:
        _write(source, built, scratch, task.single_file)  # verification and repair read the variant from its file
        try:
            return _verify_and_repair(source, source_path, built, scratch, steps, trial_options, task.verify, trial,
                                      task.single_file, base)
        finally:
            remove_model(scratch)

    base = _reference(source, source_path, task.verify, eval_data, criteria)
    found = search(source, task.norm_path, steps, options, task.search, eval_data, criteria, base, result, run_steps,
                   repair if task.verify.repair else None, task.search_ranges, task.search_budget)
    return found[0] if found else None


_REFERENCES: dict[tuple, Reference] = {}  # this process's last one


def _reference(source: onnx.ModelProto, source_path: Path, spec: VerifySpec, eval_data: EvalData,
               criteria: Criteria) -> Reference:
    """fp32 on the module's evaluation data (its session released before a variant's is made), made once per
    worker process for every dtype it builds of the module: its runs and noise floor depend on the judges and the
    draws, not on a dtype's thresholds. Rebuilt per dtype, fp32's weight and input draws took 44 of the 111 s of a
    PP-OCRv4 rec build of fp16,q8,q4,q4f16,bnb4 (2 workers)."""
    stat = Path(source_path).stat()
    key = (str(source_path), stat.st_mtime_ns, stat.st_size, spec.eval_dir, spec.source, spec.synthesized,
           repr((criteria.tasks, criteria.states, criteria.rounding_draws, criteria.weight_draws)))
    if key not in _REFERENCES:
        _REFERENCES.clear()  # one module's at a time: it holds fp32's outputs on every sample
        _REFERENCES[key] = Reference(accuracy_session(source_path), eval_data, criteria, source)
    return _REFERENCES[key]


def _verify_and_repair(source: onnx.ModelProto, source_path: Path, built: onnx.ModelProto, path: Path,
                       steps: tuple[str, ...], options: dict, spec: VerifySpec, result: VariantResult,
                       single_file: bool, base: Reference | None = None) -> onnx.ModelProto:
    """Figures against fp32 (`base`: its outputs on the evaluation data, when the caller has them) for the variant
    `built`, written at `path`; on a miss, repair (unless disabled), the repaired variant replacing it there. A
    variant still missing is marked failed."""
    eval_data, criteria = _judging(spec, result.dtype)
    if not eval_data.feeds:
        result.verification = skipped(eval_data)
        return built
    base = base or _reference(source, source_path, spec, eval_data, criteria)
    verification, figures, failure = verify_variant(base, accuracy_session(path), eval_data, criteria)
    if failure and spec.repair:
        trial = VariantResult(result.module, result.dtype, Status.OK)

        def rebuild(in_float: list[str], ranked: list[str], precision: str) -> onnx.ModelProto | None:
            nonlocal trial  # the last trial is the one repair returns when it succeeds
            trial = VariantResult(result.module, result.dtype, Status.OK)
            return run_steps(source, steps, kept_options(steps, options, in_float, ranked, precision), trial)

        kinds = [RECIPES[s].KIND for s in steps]
        precisions = tuple(dict.fromkeys(p for s in steps if RECIPES[s].KIND == "quantize"
                                         for p in RECIPES[s].HIGHER_PRECISIONS)) or ("fp32",)
        plan = RepairPlan(rebuild, precisions, has_float_step="float" in kinds, float_only=set(kinds) == {"float"})
        outcome = repair(source, plan, eval_data, criteria, built, spec.budget, base)
        verification["before_repair"] = {**figures, "failure": failure}
        verification["repair"] = {"kept": outcome.kept, "kept_weight_fraction": round(outcome.kept_weight_fraction, 4),
                                  "attempts": outcome.attempts, "failure": outcome.reason}
        if outcome.model is not None:
            built, failure = outcome.model, None
            _write(source, built, path, single_file)
            verification.update(**outcome.figures, failure=None)
            result.params, result.kept_in_float = {**result.params, **trial.params}, trial.kept_in_float
            result.notes = trial.notes + [f"repaired: {len(outcome.kept)} nodes kept in higher precision "
                                          f"({outcome.kept_weight_fraction:.1%} of weights)"]
    result.verification = verification
    if failure:
        result.fail(f"verification: {failure}" + (
            f"; repair: {verification['repair']['failure']}" if "repair" in verification else ""))
    return built


def op_changes(before: onnx.ModelProto, after: onnx.ModelProto) -> dict[str, int]:
    """Op types whose count changed (new quantized ops positive, replaced float ops negative), plus fp16 weights."""
    a, b = op_counts(before), op_counts(after)
    changes = {op: b[op] - a[op] for op in sorted(set(a) | set(b)) if b[op] != a[op]}
    fp16 = _fp16_initializers(after) - _fp16_initializers(before)
    if fp16:
        changes["fp16 initializers"] = fp16
    return changes


def _fp16_initializers(model: onnx.ModelProto) -> int:
    return sum(t.data_type == onnx.TensorProto.FLOAT16 for g in iter_graphs(model.graph) for t in g.initializer)


def load_error(path: Path) -> str | None:
    """Why onnxruntime cannot load the file at its default graph optimizations (as users load it), or None:
    some fusions reject graphs that load unoptimized."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises several unrelated exception types on bad graphs
        return first_line(exc)
    return None


def quiet_onnxruntime() -> None:
    """onnxruntime floods stderr with warnings during quantization; the CLI's --verbose turns them back on."""
    if os.environ.get("ONNXDTYPE_VERBOSE"):
        return
    import logging

    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    logging.getLogger().setLevel(logging.ERROR)


def main() -> None:
    for line in sys.stdin:
        if line.strip():
            result = build_variant(VariantTask.from_json(line))
            sys.stdout.write(json.dumps(asdict(result)) + "\n")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
