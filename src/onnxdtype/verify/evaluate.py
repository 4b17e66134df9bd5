"""Run fp32 and a variant side by side on evaluation data and compare their outputs.

Evaluation data is a list of feeds. Without user data, inputs are synthesized from the model's input
shapes and types: that proves the variant loads and runs, not that it is accurate, and the result says so.
"""

from __future__ import annotations

import importlib
import importlib.util
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from onnxdtype.calibration.data import load_samples
from onnxdtype.dtype import INFO, DType
from onnxdtype.errors import OnnxDtypeError
from onnxdtype.model import needs_external_data, write_model
from onnxdtype.ops import ORT_NUMPY_TYPES
from onnxdtype.verify.judges import Judge, TaskSpec, make_judge, required_agreement
from onnxdtype.verify.metrics import OutputStats, judge
from onnxdtype.verify.rounding import ROUNDING_DRAWS, ROUNDING_SEED, redrawn, rounding_steps
from onnxdtype.verify.sequences import is_sequence_folder, paired_runs, read_sequences
from onnxdtype.verify.weight_noise import WEIGHT_DRAWS, WEIGHT_NOISE_BITS, drawable, noisy_copies

DEFAULT_MIN_COSINE = {"16": 0.9999, "8": 0.99, "4": 0.98, "4+16": 0.98}  # by DTypeInfo.bits, SPEC.md
DEFAULT_ATOL = 1e-4  # an output whose largest error is below this passes whatever its cosine (near-zero maps)
SYNTHESIZED_NOTE = "inputs synthesized from shapes: this proves loading and running, not accuracy"


def min_cosine_for(dtype: DType, overrides: dict[str, float] | None = None) -> float:
    """The tolerance for a dtype: an override by dtype name, else by 'default', else SPEC.md's by bit width."""
    overrides = overrides or {}
    return overrides.get(dtype.value, overrides.get("default", DEFAULT_MIN_COSINE[INFO[dtype].bits]))


def agreement_for(dtype: DType, overrides: dict[str, float] | None = None) -> float:
    """The task agreement a dtype needs: an override 'task.<dtype>', else 'task', else SPEC.md's by bit width."""
    overrides = overrides or {}
    given = {key.removeprefix("task."): value for key, value in overrides.items() if key.startswith("task")}
    chosen = given.get(dtype.value, given.get("task"))
    return required_agreement(INFO[dtype].bits, None if chosen is None else {"default": chosen})


def floor_draws(overrides: dict[str, float] | None = None) -> dict[str, int]:
    """How many draws fp32's noise floor takes, by Criteria/VerifySpec field: input redraws (verify.rounding,
    override 'rounding_draws') and weight draws (verify.weight_noise, 'weight_draws'); 0 turns one off."""
    overrides = overrides or {}
    return {"rounding_draws": int(overrides.get("rounding_draws", ROUNDING_DRAWS)),
            "weight_draws": int(overrides.get("weight_draws", WEIGHT_DRAWS))}


@dataclass
class EvalData:
    """Evaluation samples: independent feeds, or `sequences` of step feeds for stateful models (verify.sequences);
    with sequences, `feeds` holds their first steps (for what runs one feed: ranking, latency)."""
    feeds: Sequence[dict[str, np.ndarray]]  # a list, or SavedFeeds read from disk one at a time
    source: str
    synthesized: bool
    sequences: list[list[dict[str, np.ndarray]]] | None = None

    @classmethod
    def of_sequences(cls, sequences: list[list[dict[str, np.ndarray]]], source: str) -> EvalData:
        return cls([steps[0] for steps in sequences if steps], source, False, sequences)

    def with_inputs(self, values: dict[str, np.ndarray]) -> EvalData:
        """The same samples (and sequence steps) with these inputs set, in each feed's own dtype: a variant built for
        fixed input values (--fix-input) is verified at those values."""
        def fixed(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            return {**feed, **{k: np.asarray(v).astype(feed[k].dtype) if k in feed else np.asarray(v)
                               for k, v in values.items()}}

        return EvalData([fixed(f) for f in self.feeds], self.source, self.synthesized,
                        [[fixed(step) for step in steps] for steps in self.sequences] if self.sequences else None)

    def save(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        if self.sequences:
            for i, steps in enumerate(self.sequences):
                EvalData(steps, self.source, self.synthesized).save(folder / f"sequence{i:05d}")
            return folder
        for i, feed in enumerate(self.feeds):
            np.savez(folder / f"{i:05d}.npz", **feed)
        return folder

    @classmethod
    def load(cls, folder: Path, source: str, synthesized: bool) -> EvalData:
        """What `save` wrote; samples are read when used, one at a time (sequences whole)."""
        if is_sequence_folder(folder):
            return cls.of_sequences(read_sequences(folder), source)
        return cls(SavedFeeds(sorted(folder.glob("*.npz"))), source, synthesized)


class SavedFeeds(Sequence):
    """Evaluation samples saved one .npz each, read when a run needs one: a worker holds one sample at a time, not
    all of them (256 one-MiB samples added 292 MiB to verification when loaded whole, bench/memory.py)."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return SavedFeeds(self.paths[index])
        with np.load(self.paths[index]) as data:
            return {k: data[k] for k in data.files}


def read_eval_data(path: Path, model: onnx.ModelProto, image_spec: object = None, held_out: float | None = None
                   ) -> EvalData:
    """Evaluation data from a path: a folder of sequences (stateful models), else samples read as calibration data
    is; with `held_out`, only the part of them a calibration of that fraction keeps back."""
    if is_sequence_folder(path):
        return EvalData.of_sequences(read_sequences(path), f"sequences from {path}")
    samples = load_samples(path, model, image_spec)
    if held_out:
        part = samples.split(held_out)[1]
        return EvalData(list(part), f"held-out {len(part)} of the calibration samples ({samples.source})", False)
    return EvalData(list(samples), f"{len(samples)} samples from {samples.source}", False)


def synthesize(model: onnx.ModelProto, samples: int = 4, seed: int = 0, path: Path | None = None) -> EvalData:
    """Inputs from the model's declared shapes that the fp32 model runs on: the batch axis is 1, other
    dynamic dims try 64, 32, 48, 16 in turn (detectors want multiples of 32, recognizers height 48).

    `path`: the model's own file, which the session is made from: serialized, a single-file model held whole was
    held twice more (a 0.25 GiB MLP's build peaked there, at 4.56x its size)."""
    sess = session(path or model, quiet=True)
    for size in (64, 32, 48, 16):
        data = _synthesize(model, samples, seed, size)
        try:
            run(sess, data.feeds[0])
            return data
        except Exception:  # the guess does not fit the model; try the next
            continue
    return EvalData([], "no synthesized input shape runs on the fp32 model; give evaluation data", True)


def _synthesize(model: onnx.ModelProto, samples: int, seed: int, size: int) -> EvalData:
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    feeds = []
    for _ in range(samples):
        feed = {}
        for vi in model.graph.input:
            if vi.name in inits:
                continue
            tt = vi.type.tensor_type
            shape = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (1 if i == 0 else size)
                     for i, d in enumerate(tt.shape.dim)]
            np_type = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
            if np.issubdtype(np_type, np.floating):
                feed[vi.name] = rng.standard_normal(shape).astype(np_type)
            elif np_type == np.bool_:
                feed[vi.name] = rng.random(shape) > 0.5
            else:
                binary = any(word in vi.name.lower() for word in ("mask", "type", "segment"))
                feed[vi.name] = rng.integers(0, 2 if binary else 100, shape).astype(np_type)
        feeds.append(feed)
    return EvalData(feeds, f"{samples} synthesized samples", True)


def session(model: str | Path | onnx.ModelProto, threads: int = 0, quiet: bool = False) -> ort.InferenceSession:
    """A CPU session of a file or an in-memory model; one over protobuf's 2 GiB goes through a temp file with
    external data, since it cannot be serialized in one piece."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 4 if quiet else 3  # 4: even errors stay quiet, for probing runs expected to fail
    if not isinstance(model, onnx.ModelProto):
        return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    if not needs_external_data(model):
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    with tempfile.TemporaryDirectory(prefix="onnxdtype-session-") as tmp:
        path = Path(tmp) / "model.onnx"
        write_model(model, path)
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@dataclass
class Port:
    """A session input or output as cast_feed and the sequence runner read it (name, type, shape)."""
    name: str
    type: str
    shape: list


class Reference:
    """The fp32 model's outputs on the evaluation data, computed once, so its session is released before the
    variant's is made: the two are never resident together (the fp32 session alone is about the model's size).
    `evaluate` and `repair` take it where they take the fp32 session; it replays the outputs in the order the runs
    ask for them.

    It also holds fp32's own noise floor: per sample and judged output, the units whose fp32 decision moves when the
    input is redrawn within its rounding (verify.rounding, `criteria.rounding_draws` redraws) or when its weights
    carry a quarter of an 8-bit step of noise (verify.weight_noise, `criteria.weight_draws` draws of `model`, the
    fp32 model `base` runs; none without it); 0 draws: none. `floor` says what was drawn and how many units moved."""

    def __init__(self, base: ort.InferenceSession, data: EvalData, criteria: Criteria,
                 model: str | Path | onnx.ModelProto | None = None) -> None:
        self.inputs = [Port(i.name, i.type, i.shape) for i in base.get_inputs()]
        self.outputs = [Port(o.name, o.type, o.shape) for o in base.get_outputs()]
        names = [o.name for o in self.outputs]

        def fp32_only(sess: ort.InferenceSession | None, feed: dict, wanted: list[str]) -> list:
            return run(sess, feed, wanted) if sess is not None else [None] * len(wanted)

        self.runs = [refs for refs, _ in paired_runs(base, None, names, data.feeds, data.sequences, criteria.states,
                                                     fp32_only)]
        self.unstable: list[dict[str, np.ndarray]] = []
        self.floor: dict[str, dict] = {}
        judges = {name: judge for name, judge in _judges(criteria, names).items() if judge.has_decisions()}
        if not judges or (data.sequences and criteria.states):  # a state fed back is not a sample to redraw alone
            return
        wanted = list(judges)
        refs = [[sample[names.index(name)] for name in wanted] for sample in self.runs]
        moved = [[np.zeros(len(judges[name].decisions(ref, ref)), bool) for name, ref in zip(wanted, sample)]
                 for sample in refs]

        def note(source: str, per_sample: Iterable[list[list[np.ndarray]]]) -> None:
            """OR into `moved` where fp32's decisions on other runs of each sample (a list of runs, each its
            `wanted` outputs) differ from its own; count the units this source moved first under `source`."""
            counts = self.floor[source]["moved"]
            for sample, masks, runs in zip(refs, moved, per_sample):
                for k, name in enumerate(wanted):
                    units = judges[name].unstable_units(sample[k], [r[k] for r in runs])
                    counts[name] = counts.get(name, 0) + int((units & ~masks[k]).sum())
                    masks[k] |= units

        steps = rounding_steps(data.feeds) if criteria.rounding_draws else {}
        if steps:
            self.floor["rounding"] = {"inputs": sorted(steps), "draws": criteria.rounding_draws, "moved": {}}
            rng = np.random.default_rng(ROUNDING_SEED)
            note("rounding", ([run(base, redrawn(feed, steps, rng), wanted) for _ in range(criteria.rounding_draws)]
                              for feed in data.feeds))
        drawn, why_not = drawable(model) if model is not None and criteria.weight_draws else (None, None)
        if why_not:
            self.floor["weight_noise"] = {"skipped": why_not}
        elif drawn is not None:
            self.floor["weight_noise"] = {"bits": WEIGHT_NOISE_BITS, "draws": criteria.weight_draws, "moved": {}}
            for copy in noisy_copies(drawn, criteria.weight_draws):
                noisy = session(copy)
                note("weight_noise", ([run(noisy, feed, wanted)] for feed in data.feeds))
                del noisy
        if self.floor:
            self.unstable = [dict(zip(wanted, masks)) for masks in moved]

    def replay(self) -> _Replay:
        return _Replay(self)


class _Replay:
    """A Reference as a session: the recorded outputs, one run after another."""

    def __init__(self, reference: Reference) -> None:
        self.reference, self.next_run = reference, iter(reference.runs)

    def get_inputs(self) -> list[Port]:
        return self.reference.inputs

    def get_outputs(self) -> list[Port]:
        return self.reference.outputs

    def run(self, names: list[str] | None, feed: dict) -> list[np.ndarray]:
        return next(self.next_run)


def cast_feed(sess: ort.InferenceSession, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Cast each array to the type the session declares (fp16-IO variants take fp16)."""
    types = {i.name: ORT_NUMPY_TYPES.get(i.type) for i in sess.get_inputs()}
    return {k: v.astype(types[k]) if types.get(k) is not None and v.dtype != types[k] else v
            for k, v in feed.items() if k in types}


def run(sess: ort.InferenceSession, feed: dict[str, np.ndarray], names: list[str] | None = None) -> list[np.ndarray]:
    return [np.asarray(o) for o in sess.run(names, cast_feed(sess, feed))]


@dataclass
class Criteria:
    """What a variant must meet: a minimum cosine per output (and per channel), an absolute floor, and
    optionally a user task metric `module:function` (a .py path or an importable module) that decides."""
    min_cosine: float
    atol: float = DEFAULT_ATOL
    metric: str | None = None
    agreement: float = 0.97  # the share of task units (lines, labels, detections...) that must agree with fp32
    tasks: dict[str, dict] | None = None  # output -> TaskSpec fields; absent outputs and "generic" use the cosines
    states: dict[str, str] | None = None  # recurrent output -> the input it feeds: sequences run step by step
    rounding_draws: int = ROUNDING_DRAWS  # redraws of each sample for fp32's own noise floor (verify.rounding)
    weight_draws: int = WEIGHT_DRAWS  # draws of fp32's weights for its noise floor (verify.weight_noise)


def load_metric(spec: str) -> Callable[[list[dict], list[dict]], dict]:
    """Import `module:function` or `path/to/file.py:function`; one-line errors for every way it can be wrong."""
    module_name, _, function = spec.rpartition(":")
    if not module_name or not function:
        raise OnnxDtypeError(f"--metric {spec!r}: expected module:function or file.py:function")
    try:
        if module_name.endswith(".py"):
            loader_spec = importlib.util.spec_from_file_location(Path(module_name).stem, module_name)
            if loader_spec is None or loader_spec.loader is None or not Path(module_name).exists():
                raise OnnxDtypeError(f"--metric {spec!r}: no such file {module_name}")
            module = importlib.util.module_from_spec(loader_spec)
            loader_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ImportError as exc:
        raise OnnxDtypeError(f"--metric {spec!r}: cannot import {module_name} ({exc})") from None
    fn = getattr(module, function, None)
    if not callable(fn):
        raise OnnxDtypeError(f"--metric {spec!r}: {module_name} has no function {function}")
    return fn


def evaluate(base: ort.InferenceSession | Reference, variant: ort.InferenceSession, feeds: Iterable[dict],
             criteria: Criteria, sequences: list[list[dict]] | None = None) -> tuple[dict, str | None]:
    """Figures of the variant against fp32 over all feeds (or every step of `sequences`, each side carrying its
    own recurrent state), and why it fails `criteria` (None: it passes).

    figures = {"outputs": {name: per-output figures}, "task": the user metric's figures or None}. A task
    metric that returns "ok" decides on its own: it knows the task better than any tensor figure.
    """
    if not isinstance(base, Reference):
        feeds = feeds if isinstance(feeds, Sequence) else list(feeds)  # read twice: fp32's runs, then the variant's
        base = Reference(base, EvalData(feeds, "", False, sequences), criteria)
    unstable = iter(base.unstable)
    replay = base.replay()
    names = [o.name for o in replay.get_outputs()]
    stats = {name: OutputStats(name) for name in names}
    judges = _judges(criteria, names)
    metric = load_metric(criteria.metric) if criteria.metric else None
    ref_all: list[dict] = []
    got_all: list[dict] = []
    for refs, gots in paired_runs(replay, variant, names, feeds, sequences, criteria.states, run):
        moved = next(unstable, {})
        for name, ref, got in zip(names, refs, gots):
            stats[name].add(ref.astype(np.float32), got.astype(np.float32))
            if name in moved:
                judges[name].add(ref, got, moved[name])
            elif name in judges:
                judges[name].add(ref, got)
        if metric:
            ref_all.append(dict(zip(names, refs)))
            got_all.append(dict(zip(names, gots)))
    outputs = {name: s.figures() for name, s in stats.items()}
    for name, task_judge in judges.items():  # the task's figures first; the cosines stay beside them as proxies
        outputs[name] = {"judge": {"task": task_judge.name, **task_judge.figures()}, **outputs[name]}
    task = {k: (v if isinstance(v, (bool, str)) else float(v)) for k, v in metric(ref_all, got_all).items()} \
        if metric else None
    if task is not None and "ok" in task:
        failure = None if task["ok"] else f"task metric {criteria.metric}: " + ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in task.items() if k != "ok")
    else:
        failures = (task_judge.failure(criteria.agreement) for task_judge in judges.values())
        failure = next((f"output {name}: {f}" for name, f in zip(judges, failures) if f), None) or \
            next(filter(None, (_generic_failure(name, figures, criteria) for name, figures in outputs.items()
                               if name not in judges)), None)
    return {"outputs": outputs, "task": task, **base.floor}, failure


def _judges(criteria: Criteria, names: list[str]) -> dict[str, Judge]:
    """A fresh task judge per output that has one (generic outputs are judged by the cosine rules)."""
    return {name: make_judge(TaskSpec(**spec)) for name, spec in (criteria.tasks or {}).items()
            if name in names and spec["task"] != "generic"}


def _generic_failure(name: str, figures: dict, criteria: Criteria) -> str | None:
    """The cosine rules for an output no task judge decides; `--task OUT=generic:min_cosine=..,atol=..` sets its own."""
    params = ((criteria.tasks or {}).get(name) or {}).get("params") or {}
    return judge({name: figures}, params.get("min_cosine", criteria.min_cosine), params.get("atol", criteria.atol))
