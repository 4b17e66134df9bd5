"""Engine: an onnxruntime session for one resolved module that takes host arrays as they come.

Switching a module from fp32 to an fp16-IO variant, or feeding int32 token ids to an int64 input, must not
change the caller's code: inputs are cast to what the graph declares and fp16 outputs come back as float32.
Each stage is timed (load, warm-up, every run), because a variant is only worth running if it is faster.
"""

from __future__ import annotations

import os
import statistics
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from onnxdtype.errors import OnnxDtypeError
from onnxdtype.io import first_line
from onnxdtype.ops import ORT_NUMPY_TYPES
from onnxdtype.runtime.providers import dim_range, session_tweaks, usable_providers
from onnxdtype.runtime.settings import ResolvedModule

DEFAULT_DIM = 64  # warm-up size of a dynamic non-batch axis nobody set: a multiple of 32 that vision nets accept
_GRAPH_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
                 "all": "ORT_ENABLE_ALL"}


@dataclass
class Timings:
    """Seconds spent loading the session, in warm-up runs (all of them), and in each real run."""
    load: float = 0.0
    warmup: float = 0.0
    runs: list[float] = field(default_factory=list)

    @property
    def median(self) -> float | None:
        return statistics.median(self.runs) if self.runs else None

    def __str__(self) -> str:
        text = f"load {self.load * 1e3:.1f} ms, warm-up {self.warmup * 1e3:.1f} ms"
        if self.runs:
            text += f", run {self.median * 1e3:.2f} ms" + (f" (median of {len(self.runs)})" if len(self.runs) > 1 else "")
        return text


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: np.dtype
    shape: list[int | str | None]  # as onnxruntime reports it: int, symbolic name, or None


class Engine:
    """Creates the session (providers checked against this onnxruntime), warms it up, runs numpy in, numpy out."""

    def __init__(self, module: ResolvedModule) -> None:
        self.module = module
        start = time.perf_counter()
        self.session = _create_session(module)
        self.timings = Timings(load=time.perf_counter() - start)
        self.inputs = [InputSpec(i.name, np.dtype(_numpy_type(i.type, module.name)), list(i.shape))
                       for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._warm_up(module.settings.num_dry_run)

    @property
    def providers(self) -> list[str]:
        """The providers the session really uses, most preferred first."""
        return self.session.get_providers()

    def run(self, feeds: Mapping[str, Any] | Any) -> dict[str, np.ndarray]:
        """Run once on host arrays (a dict by input name, or one array for a one-input model); outputs by name."""
        prepared = self.prepare(feeds)
        start = time.perf_counter()
        outputs = self._session_run(prepared, "run")
        self.timings.runs.append(time.perf_counter() - start)
        return {name: value.astype(np.float32) if value.dtype == np.float16 else value
                for name, value in zip(self.output_names, outputs)}

    def prepare(self, feeds: Mapping[str, Any] | Any) -> dict[str, np.ndarray]:
        """Check names and cast each array to its input's dtype (fp16 for fp16-IO variants, int64 ids...)."""
        names = [spec.name for spec in self.inputs]
        if not isinstance(feeds, Mapping):
            if len(names) != 1:
                raise OnnxDtypeError(f"{self.module.name}: takes {len(names)} inputs ({', '.join(names)}); pass a dict")
            feeds = {names[0]: feeds}
        unknown = [k for k in feeds if k not in names]
        missing = [n for n in names if n not in feeds]
        if unknown or missing:
            raise OnnxDtypeError(f"{self.module.name}: inputs are {', '.join(names)}"
                                 + (f"; unknown: {', '.join(unknown)}" if unknown else "")
                                 + (f"; missing: {', '.join(missing)}" if missing else ""))
        prepared = {}
        for spec in self.inputs:
            array = np.asarray(feeds[spec.name])
            if array.dtype.kind == "f" and spec.dtype.kind in "iub":
                raise OnnxDtypeError(f"{self.module.name}: input {spec.name} takes {spec.dtype}; got {array.dtype} "
                                     f"values, which a cast would truncate")
            prepared[spec.name] = np.ascontiguousarray(array, dtype=spec.dtype)
        if self.module.fixed_inputs:
            from onnxdtype.specialize import fixed_value_problem

            problem = fixed_value_problem(self.module.fixed_inputs, prepared)
            if problem:
                raise OnnxDtypeError(f"{self.module.name}: {problem}")
        return prepared

    def warmup_feeds(self) -> dict[str, np.ndarray]:
        """Ones in every input's shape: fixed dims as they are; dynamic ones from the dims settings (opt),
        else 1 for the batch axis and DEFAULT_DIM for the others, one value per symbolic name."""
        by_name: dict[str, int] = {}
        feeds = {}
        for spec in self.inputs:
            shape = []
            for axis, dim in enumerate(spec.shape):
                if isinstance(dim, int) and dim > 0:
                    shape.append(dim)
                    continue
                name = dim if isinstance(dim, str) else None
                span = dim_range(self.module.settings.dims, spec.name, axis, name)
                size = span[1] if span else by_name.get(name or "", 1 if axis == 0 else DEFAULT_DIM)
                if name:
                    by_name.setdefault(name, size)
                shape.append(size)
            feeds[spec.name] = np.ones(shape, dtype=spec.dtype)
        for name, value in (self.module.fixed_inputs or {}).items():  # the only value the variant was built for
            if name in feeds:
                feeds[name] = np.asarray(value, dtype=feeds[name].dtype)
        return feeds

    def _warm_up(self, count: int) -> None:
        if count <= 0:
            return
        feeds = self.warmup_feeds()
        start = time.perf_counter()
        for _ in range(count):
            self._session_run(feeds, "warm-up (num_dry_run=0 skips it; dims sets its shapes)")
        self.timings.warmup = time.perf_counter() - start

    def _session_run(self, feeds: dict[str, np.ndarray], stage: str) -> list[np.ndarray]:
        try:
            return self.session.run(None, feeds)
        except Exception as exc:  # onnxruntime raises several unrelated types; the user gets one line
            shapes = ", ".join(f"{k}={'x'.join(map(str, v.shape))}" for k, v in feeds.items())
            raise OnnxDtypeError(f"{self.module.name}: {stage} failed on {shapes}: {first_line(exc)}") from None

    def __repr__(self) -> str:
        m = self.module
        return f"Engine({m.name}, {m.dtype}, {m.file.name}, {self.providers[0]}, {self.timings})"


def _create_session(module: ResolvedModule):
    """The InferenceSession with the module's settings; refuses (strict) or warns when a provider is missing."""
    import onnxruntime as ort

    settings = module.settings
    options = ort.SessionOptions()
    options.log_severity_level = 2 if os.environ.get("ONNXDTYPE_VERBOSE") else 4  # errors reach the user as ours
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _GRAPH_LEVELS[settings.graph_optimization])
    if settings.intra_threads:
        options.intra_op_num_threads = settings.intra_threads
    if settings.inter_threads:
        options.inter_op_num_threads = settings.inter_threads
    for key, value in session_tweaks(module.device).items():
        if key == "execution_mode":
            options.execution_mode = getattr(ort.ExecutionMode, value)
        elif key.startswith("session."):
            options.add_session_config_entry(key, value)
        else:
            setattr(options, key, value)
    what = f"{module.name} on {module.device}"
    providers = usable_providers(module.providers, ort.get_available_providers(), settings.strict, what)
    try:
        session = ort.InferenceSession(str(module.file), sess_options=options,
                                       providers=[name for name, _ in providers],
                                       provider_options=[opts for _, opts in providers])
    except Exception as exc:  # onnxruntime raises several unrelated types on bad files and provider failures
        raise OnnxDtypeError(f"{module.name}: onnxruntime cannot load {module.file}: {first_line(exc)}") from None
    wanted, got = providers[0][0], session.get_providers()[0]
    if got != wanted:  # onnxruntime fell back on its own, e.g. CUDA libraries missing at run time
        message = f"{what}: onnxruntime could not start {wanted} and fell back to {got}"
        if settings.strict:
            raise OnnxDtypeError(message + "; pass strict=False to accept that")
        warnings.warn(message)
    return session


def _numpy_type(ort_type: str, module: str) -> type:
    if ort_type not in ORT_NUMPY_TYPES:
        raise OnnxDtypeError(f"{module}: input type {ort_type} is not supported by Engine")
    return ORT_NUMPY_TYPES[ort_type]

