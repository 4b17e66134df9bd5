"""`quantize`, `verify` and `calibrate`: parse the arguments, call the build API, print the results."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from onnxdtype.cli.options import recipe_settings, tasks, tolerances
from onnxdtype.cli.output import console, err_console, fail
from onnxdtype.errors import OnnxDtypeError


def register(app: typer.Typer) -> None:
    app.command()(quantize)
    app.command()(verify)
    app.command()(calibrate)


def quantize(
    model: Annotated[Path, typer.Argument(help="An fp32 .onnx file, or a folder of module models")],
    dtype: Annotated[str, typer.Option("--dtype", "-d", help="'all' or a comma list: fp16,q8,q4,q4f16,bnb4")] = "all",
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output folder (default: beside the model)")] = None,
    force: Annotated[bool, typer.Option(help="Overwrite existing outputs")] = False,
    fp16_io: Annotated[bool, typer.Option("--fp16-io", help="fp16 graph inputs/outputs (default: they stay fp32)")] = False,
    q8_weight_type: Annotated[str, typer.Option(help="q8 weights: auto (uint8 with Conv/attention ops, else int8), int8, uint8")] = "auto",
    q8_per_channel: Annotated[bool, typer.Option(help="q8 per-channel weight scales")] = True,
    q8_reduce_range: Annotated[bool, typer.Option(help="q8 7-bit weights (avoids int overflow on older x86)")] = False,
    q8_conv: Annotated[bool, typer.Option("--q8-conv/--no-q8-conv", help="q8 quantizes Conv too (ConvInteger, per-channel weights); --no-q8-conv leaves Conv float")] = True,
    q4_block_size: Annotated[int, typer.Option(help="q4 block size (16, 32, 64, 128...)")] = 32,
    q4_asymmetric: Annotated[bool, typer.Option(help="q4 with zero points")] = False,
    q4_accuracy_level: Annotated[Optional[int], typer.Option(help="MatMulNBits accuracy_level (0-4)")] = None,
    bnb4_type: Annotated[str, typer.Option(help="bnb4 codebook: nf4 or fp4")] = "nf4",
    bnb4_block_size: Annotated[int, typer.Option(help="bnb4 block size")] = 64,
    workers: Annotated[Optional[int], typer.Option(help="Parallel worker processes (default: by cores and memory)")] = None,
    int8_float: Annotated[str, typer.Option(help="int8 (TensorRT): precision of the non-quantized rest, fp32 or fp16")] = "fp32",
    int8_backend: Annotated[str, typer.Option(help="int8 (TensorRT): onnxruntime, or modelopt (NVIDIA Model-Optimizer, if installed)")] = "onnxruntime",
    calib: Annotated[Optional[Path], typer.Option(help="Calibration data: folder of .npz/.npy/images or one .npz (DATA/<module>/ per module)")] = None,
    calib_spec: Annotated[Optional[str], typer.Option(help="Image preprocessing: imagenet, unit, or a .json/.toml spec")] = None,
    calib_method: Annotated[str, typer.Option(help="minmax, entropy, percentile or mse")] = "minmax",
    task: Annotated[Optional[list[str]], typer.Option("--task", help="The judge of a module's outputs: MODULE=TASK[:k=v,...], MODULE/OUTPUT=TASK or TASK for all (classify, detect, ctc, embed, dense, generic) (repeatable)")] = None,
    fix_input: Annotated[Optional[list[str]], typer.Option("--fix-input", help="NAME=VALUE: build for this input value only (Ifs it chooses are inlined, so static calibration reaches their weights; the variant refuses other values) (repeatable)")] = None,
    eval_data: Annotated[Optional[Path], typer.Option("--eval", help="Evaluation data, same formats as --calib (default: held-out calibration data)")] = None,
    metric: Annotated[Optional[str], typer.Option(help="Task metric module:function or file.py:function")] = None,
    tolerance: Annotated[Optional[list[str]], typer.Option(help="Minimum cosine (q8=0.98, default=0.99, atol=1e-4), task agreement (task=0.95, task.q4=0.9) or fp32 noise-floor draws (rounding_draws=0, weight_draws=0: off) (repeatable)")] = None,
    verify: Annotated[bool, typer.Option(help="Verify each variant against fp32 (--no-verify: only build and load-check)")] = True,
    repair: Annotated[bool, typer.Option(help="Repair variants that miss their tolerance")] = True,
    search: Annotated[bool, typer.Option(help="Static dtypes: try Q/DQ placements on the evaluation data and keep the fastest that passes")] = True,
    search_seconds: Annotated[float, typer.Option(help="Static dtypes: the search's budget per variant in seconds; later candidates are recorded as skipped")] = 900.0,
    min_speedup: Annotated[float, typer.Option(help="Static dtypes: a searched variant slower than this times fp32 at 1 thread fails (0: any speed)")] = 0.0,
    repair_max_weights: Annotated[float, typer.Option(help="Repair may keep at most this share of weights in fp32")] = 0.25,
    keep_failed: Annotated[bool, typer.Option("--keep-failed", help="Keep the files of failed variants")] = False,
    latency_runs: Annotated[int, typer.Option(help="Timed runs per variant (0: no timing)")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON")] = False,
    set_option: Annotated[Optional[list[str]], typer.Option("--set", help="Any recipe option, by dtype or recipe: q4.block_size=64, static.float_tail=false, q8.nodes_to_exclude=a,b (repeatable)")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show onnxruntime's own logging")] = False,
) -> None:
    """Build every requested dtype variant, verify and repair it, and write onnxdtype.json and report.html."""
    if verbose:
        os.environ["ONNXDTYPE_VERBOSE"] = "1"
    from onnxdtype.build import Calibration
    from onnxdtype.build import quantize as build_quantize
    from onnxdtype.build.search import SearchBudget
    from onnxdtype.verify.repair import RepairBudget

    if workers is not None and workers < 1:
        fail(f"--workers must be >= 1, not {workers}")
    if latency_runs < 0:
        fail(f"--latency-runs must be >= 0, not {latency_runs}")
    if not 0.0 <= repair_max_weights <= 1.0:
        fail(f"--repair-max-weights must be in [0, 1], not {repair_max_weights}")
    options = {  # the curated flags, by recipe; --set reaches every option, by dtype or recipe
        "float16": {"keep_io_types": not fp16_io},
        "dynamic": {"weight_type": q8_weight_type, "per_channel": q8_per_channel, "reduce_range": q8_reduce_range,
                    "quantize_conv": q8_conv},
        "blockwise4": {"block_size": q4_block_size, "symmetric": not q4_asymmetric, "accuracy_level": q4_accuracy_level},
        "bnb4": {"quant_type": bnb4_type, "block_size": bnb4_block_size},
        "tensorrt": {"float_type": int8_float, "backend": int8_backend},
    }
    try:
        for key, fields in recipe_settings(set_option).items():
            options[key] = {**options.get(key, {}), **fields}
        tolerance_values = tolerances(tolerance)
        task_settings = tasks(task)
    except OnnxDtypeError as exc:
        fail(str(exc))
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=err_console, transient=True, disable=not err_console.is_terminal)
    with progress:
        task = progress.add_task("building variants", total=None)

        def on_result(result) -> None:
            progress.update(task, advance=1, description=f"built {result.module} {result.dtype}")

        try:
            result = build_quantize(
                model, dtype, out, force=force, options=options, workers=workers, progress=on_result, metric=metric,
                tolerances=tolerance_values, repair=repair, keep_failed=keep_failed, latency_runs=latency_runs,
                repair_budget=RepairBudget(max_weight_fraction=repair_max_weights), eval_data=eval_data,
                calib=Calibration(calib, calib_spec, calib_method) if calib else None, fixed_inputs=fix_input,
                tasks=task_settings, search=search,
                search_budget=SearchBudget(search_seconds, min_speedup), verify=verify)
        except OnnxDtypeError as exc:
            progress.stop()
            hint = " (--dtype all skips what does not apply)" if "is not applicable" in str(exc) else ""
            fail(str(exc) + hint)
    _finish(result, as_json)


def _finish(result, as_json: bool) -> None:
    """Print the table (or JSON), write report.html, and exit 1 when any variant failed."""
    import json
    from dataclasses import asdict

    from onnxdtype.html_report import write_report
    from onnxdtype.report import build_table

    try:
        report = write_report(result)
    except OSError as exc:
        fail(f"{result.out_dir}: cannot write report.html ({exc.strerror or exc})")
    if as_json:
        print(json.dumps({"out_dir": str(result.out_dir), "report": str(report),
                          "results": [asdict(r) for r in result.results]}, indent=1, default=str))
    else:
        console.print(build_table(result))
        console.print(f"manifest: {result.out_dir / 'onnxdtype.json'}\nreport:   {report}", highlight=False)
    if result.problems:
        for r in result.problems:
            err_console.print(f"[bold red]error:[/] {r.module} {r.dtype}: {r.status}: {r.reason}", highlight=False,
                              soft_wrap=True)
        raise typer.Exit(1)


def verify(
    folder: Annotated[Path, typer.Argument(help="A variants folder with onnxdtype.json")],
    eval_data: Annotated[Optional[Path], typer.Option("--eval", help="Evaluation data (default: what the build recorded: its --eval data or the held-out calibration samples)")] = None,
    metric: Annotated[Optional[str], typer.Option(help="Task metric module:function or file.py:function")] = None,
    tolerance: Annotated[Optional[list[str]], typer.Option(help="Minimum cosine (q8=0.98), task agreement (task.q8=0.95) or fp32 noise-floor draws (rounding_draws=0, weight_draws=0: off) (repeatable)")] = None,
    latency_runs: Annotated[int, typer.Option(help="Timed runs per variant (0: no timing)")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON")] = False,
) -> None:
    """Re-verify a variants folder: sha256 against the manifest first (a mismatch is never loaded), then the figures."""
    from onnxdtype.verify.recheck import verify_folder

    try:
        result = verify_folder(folder, eval_data, tolerances=tolerances(tolerance), metric=metric,
                               latency_runs=latency_runs)
    except OnnxDtypeError as exc:
        fail(str(exc))
    _finish(result, as_json)


def calibrate(
    model: Annotated[Path, typer.Argument(help="An fp32 .onnx file (the one TensorRT will be given)")],
    calib: Annotated[Path, typer.Option(help="Calibration data: folder of .npz/.npy/images or one .npz")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the table files and the cached calibration")],
    calib_spec: Annotated[Optional[str], typer.Option(help="Image preprocessing: imagenet, unit, or a .json/.toml spec")] = None,
    calib_method: Annotated[str, typer.Option(help="minmax, entropy, percentile or mse")] = "minmax",
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON")] = False,
) -> None:
    """Write the TensorRT EP's own int8 calibration table (calibration.flatbuffers, .cache, .json) for an fp32 model."""
    import json

    from onnxdtype.build.worker import quiet_onnxruntime
    from onnxdtype.calibration.tensorrt_table import calibrate_for_tensorrt

    quiet_onnxruntime()
    try:
        result = calibrate_for_tensorrt(model, calib, out, spec=calib_spec, method=calib_method)
    except OnnxDtypeError as exc:
        fail(str(exc))
    if as_json:
        print(json.dumps(result, indent=1, default=str))
        return
    console.print(f"{result['tensors']} tensors, {result['method']} over {result['samples']} samples"
                  f"{' (cached calibration)' if result['cached'] else ''}", highlight=False)
    for file in result["files"]:
        console.print(f"  {file}", highlight=False)
    if result["without_range"]:
        console.print(f"no finite range (TensorRT keeps them out of int8): {', '.join(result['without_range'])}",
                      highlight=False)
    console.print("Config: .with_tensorrt_int8_all(True).with_tensorrt_int8_calibration_table_name_all("
                  f"\"calibration.flatbuffers\").with_tensorrt_engine_cache_path_all("
                  f"\"{result['config']['tensorrt_engine_cache_path']}\")", highlight=False, soft_wrap=True)
