"""The `onnxdtype` command: parses arguments, calls the API, prints. No logic of its own."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from onnxdtype.errors import OnnxDtypeError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Build, prove and run the precision variants of ONNX models.")
console = Console(width=None if sys.stdout.isatty() else 200)  # piped output: no truncated file names
err_console = Console(stderr=True)


def _fail(message: str, code: int = 2) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@app.command()
def quantize(
    model: Annotated[Path, typer.Argument(help="An fp32 .onnx file, or a folder of module models")],
    dtype: Annotated[str, typer.Option("--dtype", "-d", help="'all' or a comma list: fp16,q8,q4,q4f16,bnb4")] = "all",
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output folder (default: beside the model)")] = None,
    force: Annotated[bool, typer.Option(help="Overwrite existing outputs")] = False,
    fp16_io: Annotated[bool, typer.Option("--fp16-io", help="fp16 graph inputs/outputs (default: they stay fp32)")] = False,
    q8_weight_type: Annotated[str, typer.Option(help="q8 weights: auto (uint8 with Conv/attention ops, else int8), int8, uint8")] = "auto",
    q8_per_channel: Annotated[bool, typer.Option(help="q8 per-channel weight scales")] = True,
    q8_reduce_range: Annotated[bool, typer.Option(help="q8 7-bit weights (avoids int overflow on older x86)")] = False,
    q8_conv: Annotated[bool, typer.Option("--q8-conv", help="q8 also quantizes Conv (ConvInteger; often loses accuracy)")] = False,
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
    calib_method: Annotated[str, typer.Option(help="minmax, entropy or percentile")] = "minmax",
    eval_data: Annotated[Optional[Path], typer.Option("--eval", help="Evaluation data, same formats as --calib (default: held-out calibration data)")] = None,
    metric: Annotated[Optional[str], typer.Option(help="Task metric module:function or file.py:function")] = None,
    tolerance: Annotated[Optional[list[str]], typer.Option(help="Minimum cosine, e.g. q8=0.98, default=0.99, atol=1e-4 (repeatable)")] = None,
    repair: Annotated[bool, typer.Option(help="Repair variants that miss their tolerance")] = True,
    repair_max_weights: Annotated[float, typer.Option(help="Repair may keep at most this share of weights in fp32")] = 0.25,
    keep_failed: Annotated[bool, typer.Option("--keep-failed", help="Keep the files of failed variants")] = False,
    latency_runs: Annotated[int, typer.Option(help="Timed runs per variant (0: no timing)")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show onnxruntime's own logging")] = False,
) -> None:
    """Build every requested dtype variant, verify and repair it, and write onnxdtype.json and report.html."""
    if verbose:
        os.environ["ONNXDTYPE_VERBOSE"] = "1"
    from onnxdtype.build import Calibration
    from onnxdtype.build import quantize as build_quantize
    from onnxdtype.recipes import blockwise, bnb4, dynamic, float16, tensorrt
    from onnxdtype.verify.repair import RepairBudget

    if q8_weight_type not in ("auto", "int8", "uint8"):
        _fail(f"--q8-weight-type must be auto, int8 or uint8, not {q8_weight_type!r}")
    if int8_float not in tensorrt.FLOAT_TYPES:
        _fail(f"--int8-float must be fp32 or fp16, not {int8_float!r}")
    if int8_backend not in tensorrt.BACKENDS:
        _fail(f"--int8-backend must be onnxruntime or modelopt, not {int8_backend!r}")
    if bnb4_type not in bnb4.CODEBOOKS:
        _fail(f"--bnb4-type must be nf4 or fp4, not {bnb4_type!r}")
    if workers is not None and workers < 1:
        _fail(f"--workers must be >= 1, not {workers}")
    if latency_runs < 0:
        _fail(f"--latency-runs must be >= 0, not {latency_runs}")
    if not 0.0 <= repair_max_weights <= 1.0:
        _fail(f"--repair-max-weights must be in [0, 1], not {repair_max_weights}")
    for name, size in (("--q4-block-size", q4_block_size), ("--bnb4-block-size", bnb4_block_size)):
        if size < 16 or size & (size - 1):
            _fail(f"{name} must be a power of two >= 16, not {size}")
    options = {
        float16.NAME: float16.Options(keep_io_types=not fp16_io),
        dynamic.NAME: dynamic.Options(weight_type=q8_weight_type, per_channel=q8_per_channel, reduce_range=q8_reduce_range,
                                      quantize_conv=q8_conv),
        blockwise.NAME: blockwise.Options(block_size=q4_block_size, symmetric=not q4_asymmetric,
                                          accuracy_level=q4_accuracy_level),
        bnb4.NAME: bnb4.Options(quant_type=bnb4_type, block_size=bnb4_block_size),
        tensorrt.NAME: tensorrt.Options(float_type=int8_float, backend=int8_backend),
    }
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=err_console, transient=True, disable=not err_console.is_terminal)
    with progress:
        task = progress.add_task("building variants", total=None)

        def on_result(result) -> None:
            progress.update(task, advance=1, description=f"built {result.module} {result.dtype}")

        try:
            result = build_quantize(
                model, dtype, out, force=force, options=options, workers=workers, progress=on_result, metric=metric,
                tolerances=_tolerances(tolerance), repair=repair, keep_failed=keep_failed, latency_runs=latency_runs,
                repair_budget=RepairBudget(max_weight_fraction=repair_max_weights), eval_data=eval_data,
                calib=Calibration(calib, calib_spec, calib_method) if calib else None)
        except OnnxDtypeError as exc:
            progress.stop()
            hint = " (--dtype all skips what does not apply)" if "is not applicable" in str(exc) else ""
            _fail(str(exc) + hint)
    _finish(result, as_json)


def _tolerances(items: list[str] | None) -> dict[str, float]:
    """'q8=0.98' items -> {'q8': 0.98}; keys are dtype names, 'default' or 'atol'."""
    from onnxdtype.dtype import parse_dtype

    parsed: dict[str, float] = {}
    for item in items or []:
        key, _, value = item.partition("=")
        try:
            number = float(value)
        except ValueError:
            _fail(f"--tolerance {item!r}: expected NAME=NUMBER, e.g. q8=0.98")
        name = key.strip().lower()
        if not math.isfinite(number) or number < 0 or (name != "atol" and number > 1):
            _fail(f"--tolerance {item!r}: a cosine is in [0, 1], atol >= 0")
        parsed[name if name in ("default", "atol") else parse_dtype(name).value] = number
    return parsed


def _finish(result, as_json: bool) -> None:
    """Print the table (or JSON), write report.html, and exit 1 when any variant failed."""
    import json
    from dataclasses import asdict

    from onnxdtype.html_report import write_report
    from onnxdtype.report import build_table

    try:
        report = write_report(result)
    except OSError as exc:
        _fail(f"{result.out_dir}: cannot write report.html ({exc.strerror or exc})")
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


@app.command()
def verify(
    folder: Annotated[Path, typer.Argument(help="A variants folder with onnxdtype.json")],
    metric: Annotated[Optional[str], typer.Option(help="Task metric module:function or file.py:function")] = None,
    tolerance: Annotated[Optional[list[str]], typer.Option(help="Minimum cosine, e.g. q8=0.98 (repeatable)")] = None,
    latency_runs: Annotated[int, typer.Option(help="Timed runs per variant (0: no timing)")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON")] = False,
) -> None:
    """Re-verify a variants folder: sha256 against the manifest first (a mismatch is never loaded), then the figures."""
    from onnxdtype.verify.recheck import verify_folder

    try:
        result = verify_folder(folder, tolerances=_tolerances(tolerance), metric=metric, latency_runs=latency_runs)
    except OnnxDtypeError as exc:
        _fail(str(exc))
    _finish(result, as_json)


@app.command()
def calibrate(
    model: Annotated[Path, typer.Argument(help="An fp32 .onnx file (the one TensorRT will be given)")],
    calib: Annotated[Path, typer.Option(help="Calibration data: folder of .npz/.npy/images or one .npz")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the table files and the cached calibration")],
    calib_spec: Annotated[Optional[str], typer.Option(help="Image preprocessing: imagenet, unit, or a .json/.toml spec")] = None,
    calib_method: Annotated[str, typer.Option(help="minmax, entropy or percentile")] = "minmax",
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
        _fail(str(exc))
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


@app.command()
def dtypes() -> None:
    """List the dtypes, their aliases, file suffixes and recipes."""
    from onnxdtype.report import dtypes_table

    console.print(dtypes_table())


@app.command()
def inspect(model: Annotated[Path, typer.Argument(help="An .onnx file")]) -> None:
    """Show a model's inputs/outputs, opset, op counts, parameters, and which dtypes apply and why not."""
    from onnxdtype.build import applicability
    from onnxdtype.model import load_model, model_facts
    from onnxdtype.report import inspect_tables, print_tables

    try:
        loaded = load_model(model)
    except OnnxDtypeError as exc:
        _fail(str(exc))
    print_tables(inspect_tables(model_facts(model, loaded), applicability(loaded)), console)


from onnxdtype.runtime.commands import register  # noqa: E402  (run and bench live beside the runtime)

register(app)


def main() -> None:
    try:
        app()
    except OnnxDtypeError as exc:  # errors raised outside a command body still get one line
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
