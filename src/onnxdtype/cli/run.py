"""The `run` and `bench` commands: run a model (or a folder of modules) at the dtypes asked for, and time variants.

Thin: parse arguments, call Config/Engine, print. `register(app)` adds them to the onnxdtype CLI.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer
from rich.table import Table

from onnxdtype.cli.output import console, err_console
from onnxdtype.dtype import DType, parse_dtype
from onnxdtype.errors import OnnxDtypeError
from onnxdtype.images import ImageSpec, image_size, read_image
from onnxdtype.runtime.config import Config
from onnxdtype.runtime.engine import Engine, InputSpec
from onnxdtype.runtime.settings import parse_dims

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
STRIDE = 32  # images fed to dynamic H/W are resized to a multiple of this: what strided vision nets accept


ModelArg = Annotated[Path, typer.Argument(help="A model file, or a folder of modules (onnxdtype, usls or transformers.js layout)")]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu, cuda[:N], tensorrt[:N], coreml, openvino[:CPU|GPU|NPU], directml[:N], rocm[:N], xnnpack, qnn")]
DimOpt = Annotated[Optional[list[str]], typer.Option("--dim", help="A dynamic dim: NAME=SIZE or INPUT:AXIS=SIZE (SIZE or MIN,OPT,MAX)")]
ThreadsOpt = Annotated[int, typer.Option("--threads", help="onnxruntime intra-op threads (0: its default)")]
StrictOpt = Annotated[bool, typer.Option("--strict/--no-strict", help="A device whose provider is missing: error, or CPU with a warning")]


def register(app: typer.Typer) -> None:
    """Add `run` and `bench` to the onnxdtype command."""
    app.command("run")(run)
    app.command("bench")(bench)


def run(
    model: ModelArg,
    dtype: Annotated[str, typer.Option("--dtype", "-d", help="dtype of every module")] = "fp32",
    module: Annotated[Optional[list[str]], typer.Option("--module", "-m", help="NAME=DTYPE for one module (repeatable)")] = None,
    device: DeviceOpt = "cpu",
    input: Annotated[Optional[list[str]], typer.Option("--input", "-i", help="FILE or INPUT=FILE: .npy, .npz (arrays by input name) or an image; unnamed files feed each module's first input, inputs not given are synthesized")] = None,
    dim: DimOpt = None,
    missing: Annotated[str, typer.Option(help="A missing variant: error, fallback (along SPEC's chain) or build (from the fp32 base)")] = "error",
    allow_failed: Annotated[bool, typer.Option("--allow-failed", help="Load variants the manifest marks failed")] = False,
    strict: StrictOpt = True,
    runs: Annotated[int, typer.Option(help="Timed runs (the median is shown)")] = 1,
    dry_runs: Annotated[int, typer.Option(help="Warm-up runs before timing")] = 1,
    threads: ThreadsOpt = 0,
) -> None:
    """Run every module at the dtypes asked for; print output names, shapes and timings (load, warm-up, run)."""
    with _user_errors():
        config = _config(model, dtype=dtype, device=device, dims=_dims(dim), missing=missing,
                         allow_failed=allow_failed, strict=strict, num_dry_run=dry_runs, intra_threads=threads)
        for spec in module or []:
            name, _, value = spec.partition("=")
            if not value:
                raise OnnxDtypeError(f"--module takes NAME=DTYPE, not {spec!r}")
            config = config.with_module_dtype(name.strip(), value.strip())
        unnamed, named = _input_files(input or [])
        summary = Table("module", "dtype", "file", "provider", "inputs", "load ms", "warm-up ms", "run ms")
        outputs = Table("module", "output", "shape", "dtype")
        for resolved in config.commit():
            engine = Engine(resolved)
            feeds, notes = _feeds(engine, unnamed, named)
            for _ in range(max(1, runs)):
                results = engine.run(feeds)
            t = engine.timings
            summary.add_row(resolved.name, str(resolved.dtype), resolved.file.name, _short(engine.providers[0]),
                            "\n".join(notes), f"{t.load * 1e3:.1f}", f"{t.warmup * 1e3:.1f}", f"{t.median * 1e3:.2f}")
            for name, value in results.items():
                outputs.add_row(resolved.name, name, "x".join(map(str, value.shape)), str(value.dtype))
        console.print(summary)
        console.print(outputs)


def bench(
    model: ModelArg,
    device: DeviceOpt = "cpu",
    dtype: Annotated[str, typer.Option("--dtype", "-d", help="Only these dtypes (comma list); default every one on disk")] = "all",
    runs: Annotated[int, typer.Option(help="Timed runs per variant, interleaved across variants")] = 20,
    dry_runs: Annotated[int, typer.Option(help="Warm-up runs per variant")] = 2,
    dim: DimOpt = None,
    threads: ThreadsOpt = 0,
    strict: StrictOpt = True,
) -> None:
    """Time every variant available here: median latency, speedup over fp32 measured in the same run, and size."""
    with _user_errors():
        config = _config(model, device=device, dims=_dims(dim), num_dry_run=dry_runs, intra_threads=threads,
                         strict=strict)
        wanted = None if dtype.strip().lower() == "all" else {parse_dtype(d) for d in dtype.split(",") if d.strip()}
        table = Table("module", "dtype", "file", "MB", "size vs fp32", "median ms", "speedup vs fp32", "provider")
        for name in config.modules:
            _bench_module(config, name, wanted, max(1, runs), table)
        console.print(table)


def _bench_module(config: Config, name: str, wanted: set[DType] | None, runs: int, table: Table) -> None:
    """Load each variant of one module, time them in interleaved rounds (drift hits all alike), add rows."""
    engines: dict[DType, Engine] = {}
    problems: dict[DType, str] = {}
    for dtype in config.available_dtypes(name):
        if wanted is not None and dtype not in wanted | {DType.FP32}:  # fp32 stays: the baseline
            continue
        try:
            engines[dtype] = Engine(config.with_module_dtype(name, dtype).resolve(name))
        except OnnxDtypeError as exc:
            problems[dtype] = str(exc)
    if engines:
        feeds = next(iter(engines.values())).warmup_feeds()
        for _ in range(runs):
            for engine in engines.values():
                engine.run(feeds)
    base = engines.get(DType.FP32)
    for dtype in sorted({*engines, *problems}, key=list(DType).index):
        if dtype in problems:
            table.add_row(name, str(dtype), "", "", "", "", "", f"not run here: {problems[dtype]}")
            continue
        engine = engines[dtype]
        median = engine.timings.median
        size = engine.module.bytes
        table.add_row(name, str(dtype), engine.module.file.name, f"{size / 1e6:.2f}",
                      f"{size / base.module.bytes:.2f}x" if base else "",
                      f"{median * 1e3:.2f}", f"{base.timings.median / median:.2f}x" if base else "",
                      _short(engine.providers[0]))


def _short(provider: str) -> str:
    return provider.removesuffix("ExecutionProvider")


def _config(model: Path, **settings) -> Config:
    if model.is_dir():
        return Config.from_dir(model, **settings)
    if model.is_file():
        return Config.from_file(model, **settings)
    raise OnnxDtypeError(f"{model}: no such file or folder")


def _dims(specs: list[str] | None) -> dict:
    """--dim NAME=SIZE | INPUT:AXIS=SIZE, SIZE being N or MIN,OPT,MAX."""
    dims: dict = {}
    for spec in specs or []:
        key, _, value = spec.partition("=")
        sizes = value.split(",")
        if not key or not all(s.strip().isdigit() for s in sizes) or len(sizes) not in (1, 3):
            raise OnnxDtypeError(f"--dim takes NAME=SIZE or INPUT:AXIS=SIZE (SIZE: N or MIN,OPT,MAX), not {spec!r}")
        input_name, _, axis = key.rpartition(":")
        parsed_key = (input_name, int(axis)) if input_name and axis.isdigit() else key
        numbers = [int(s) for s in sizes]
        dims[parsed_key] = numbers[0] if len(numbers) == 1 else tuple(numbers)
    return parse_dims("--dim", dims)


def _input_files(specs: list[str]) -> tuple[list[Path], dict[str, Path]]:
    unnamed: list[Path] = []
    named: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        target = Path(path if sep else name)
        if not target.is_file():
            raise OnnxDtypeError(f"--input {spec}: no such file {target}")
        if target.suffix.lower() not in (".npy", ".npz", *IMAGE_SUFFIXES):
            raise OnnxDtypeError(f"--input {spec}: use .npy, .npz or an image ({', '.join(IMAGE_SUFFIXES)})")
        if sep:
            named[name] = target
        else:
            unnamed.append(target)
    return unnamed, named


def _feeds(engine: Engine, unnamed: list[Path], named: dict[str, Path]) -> tuple[dict[str, np.ndarray], list[str]]:
    """The module's feeds: files given for its inputs, synthesized values (the warm-up ones) for the rest."""
    feeds = engine.warmup_feeds()
    given: dict[str, Path] = {engine.inputs[0].name: unnamed[0]} if unnamed else {}
    given.update({k: v for k, v in named.items() if k in feeds})
    for name, path in given.items():
        if path.suffix.lower() == ".npz":
            with np.load(path) as archive:
                feeds.update({key: archive[key] for key in archive.files if key in feeds})
        elif path.suffix.lower() == ".npy":
            feeds[name] = np.load(path)
        else:
            spec = next(s for s in engine.inputs if s.name == name)
            feeds[name] = image_array(path, spec, engine.module.settings.dims)
    notes = [f"{k} {'x'.join(map(str, np.shape(v)))}" + ("" if k in given else " (synthetic)") for k, v in feeds.items()]
    return feeds, notes


def image_array(path: Path, spec: InputSpec, dims: dict) -> np.ndarray:
    """An image as a 1-image batch for a 4-D input, NCHW or NHWC by where the 1 or 3 channels are, values in [0, 1].

    Fixed H/W are resized to; dynamic ones take the dims setting (opt), else the image's own size rounded to STRIDE.
    Model-specific normalization belongs to the caller: feed a .npy for exact preprocessing.
    """
    from onnxdtype.runtime.providers import dim_range

    if len(spec.shape) != 4 or not ({spec.shape[1], spec.shape[3]} & {1, 3}):
        raise OnnxDtypeError(f"input {spec.name} {spec.shape}: an image needs a 4-D input with 1 or 3 channels")
    channels_first = spec.shape[1] in (1, 3)
    channels, h_axis, w_axis = (spec.shape[1], 2, 3) if channels_first else (spec.shape[3], 1, 2)
    own_height, own_width = image_size(path)
    sizes = []
    for axis, own in ((h_axis, own_height), (w_axis, own_width)):
        dim = spec.shape[axis]
        if isinstance(dim, int) and dim > 0:
            sizes.append(dim)
            continue
        span = dim_range(dims, spec.name, axis, dim if isinstance(dim, str) else None)
        sizes.append(span[1] if span else max(STRIDE, round(own / STRIDE) * STRIDE))
    image = ImageSpec(size=(sizes[0], sizes[1]), channels="RGB" if channels == 3 else "L",
                      layout="NCHW" if channels_first else "NHWC")
    return read_image(path, image, np.float32)


@contextlib.contextmanager
def _user_errors() -> Iterator[None]:
    """User mistakes: one line on stderr, exit 2. Warnings (fallbacks, CPU instead of a missing provider): one line each."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        except OnnxDtypeError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        finally:
            for warning in caught:
                err_console.print(f"[yellow]warning:[/] {warning.message}", highlight=False, soft_wrap=True)
