"""Which judge each graph output gets, guessed from its shape, the op producing it and the model's metadata.

The guess is a default the user can override per output, so it favours rules that are rarely wrong and falls
back to `generic` (the cosine judge) whenever no rule fits; the reason is kept in TaskSpec.why for the manifest.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable
from dataclasses import dataclass

import onnx

from onnxdtype.verify.judges.base import TaskSpec
from onnxdtype.verify.judges.ctc import format_alike, width_twins
from onnxdtype.verify.judges.states import recurrent_pairs

PASS_THROUGH = {"Transpose", "Reshape", "Identity", "Squeeze", "Unsqueeze", "Flatten"}  # move values, change none
SCORE_OPS = {"Softmax", "LogSoftmax", "Sigmoid"}
LABEL_KEYS = ("names", "labels", "id2label", "classes")  # metadata of classifiers and YOLO models
POOLED_NAMES = re.compile(r"embed|pooler|sentence", re.IGNORECASE)
TOKEN_NAMES = re.compile(r"last_hidden_state|token_embeddings|^embeddings$", re.IGNORECASE)
MAP_NAMES = re.compile(r"prob|mask|seg|heatmap|score_?map", re.IGNORECASE)  # not any "map": feature maps


@dataclass
class Output:
    """What the rules see of one graph output."""
    name: str
    shape: tuple[int | None, ...] | None  # None: rank unknown; a dim is None unless static
    op: str  # the op producing it, looking through PASS_THROUGH ops; "" for a graph input or initializer
    characters: tuple[str, ...] | None  # metadata 'character', one per line (PP-OCR recognisers)
    labels: int | None  # entries in the first of LABEL_KEYS in metadata
    fed_back: str | None  # the input it feeds on the next step (states.recurrent_pairs)

    @property
    def alphabet(self) -> int | None:
        return None if self.characters is None else len(self.characters)

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)

    def dim(self, axis: int) -> int | None:
        return self.shape[axis] if self.shape else None

    def describe(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.shape) if self.shape is not None else "rank ?"
        return f"[{dims}] from {self.op or 'an input or constant'}"


def _dictionary_ctc(o: Output) -> dict:
    """PaddleOCR's recognisers: blank first, the dictionary, then (use_space_char) a space as the last class;
    characters that differ only in width (')' and '）') read alike (ctc.py says why)."""
    params = {"blank": 0, "space": o.alphabet + 1} if o.dim(2) == o.alphabet + 2 else {"blank": 0}
    classes = ["", *o.characters, *([" "] if "space" in params else [])]
    twins = width_twins(classes)
    twins.pop(0, None)  # the blank is no character
    space = params.get("space")
    if space in twins:  # the space class stands for its twins (the ideographic space): edge spaces are trimmed by it
        first = twins.pop(space)
        twins = {a: space if b == first else b for a, b in twins.items()} | {first: space}
    return params | ({"alike": format_alike(twins)} if twins else {})


# (task, when, params, why): the first rule whose `when` holds decides, its params a dict or made from the output;
# `why` is formatted with the output `o`, `space` and `alike` (what the ctc params say of a space class and of
# characters read alike).
RULES: list[tuple[str, Callable[[Output], bool], dict | Callable[[Output], dict], str]] = [
    ("state", lambda o: o.fed_back is not None,
     {}, "fed back as input {o.fed_back}: judged through the task outputs"),
    ("ctc", lambda o: o.rank == 3 and o.alphabet is not None and o.dim(2) in (o.alphabet + 1, o.alphabet + 2),
     _dictionary_ctc, "per-step scores over the {o.alphabet} characters in metadata 'character' plus blank"
     "{space}{alike}"),
    ("detect", lambda o: o.rank == 3 and o.labels is not None and o.dim(1) == 4 + o.labels,
     {"layout": "yolo"}, "a YOLOv8 head [b, 4+nc, N] for the {o.labels} classes named in metadata"),
    ("detect", lambda o: o.rank == 3 and o.labels is not None and o.dim(2) == 5 + o.labels,
     {"layout": "v5"}, "a YOLOv5 head [b, N, 5+nc] for the {o.labels} classes named in metadata"),
    ("detect", lambda o: o.rank == 3 and o.dim(1) == 84 and (o.dim(2) is None or o.dim(2) > 84),
     {"layout": "yolo"}, "a YOLOv8 head [b, 4+80, N] (COCO classes)"),
    ("detect", lambda o: o.rank == 3 and o.dim(2) == 85 and (o.dim(1) is None or o.dim(1) > 85),
     {"layout": "v5"}, "a YOLOv5 head [b, N, 5+80] (COCO classes)"),
    ("classify", lambda o: o.rank == 2 and o.op == "Sigmoid" and o.dim(1) == 1,
     {"threshold": 0.5}, "one probability per sample: a yes/no classifier"),
    ("classify", lambda o: o.rank == 2 and o.op in SCORE_OPS and o.dim(1) != 1,
     {}, "class scores"),
    ("classify", lambda o: o.rank == 2 and o.labels is not None and o.dim(1) == o.labels,
     {}, "one score per label named in metadata"),
    ("embed", lambda o: o.rank == 2 and (o.dim(1) or 0) >= 64 and bool(POOLED_NAMES.search(o.name)),
     {}, "named like a pooled embedding"),
    ("classify", lambda o: o.rank == 2 and o.dim(1) in (1000, 1001),
     {}, "1000 (or 1001) scores per sample: ImageNet class logits"),
    ("ctc", lambda o: o.rank == 3 and o.op in ("Softmax", "LogSoftmax") and (o.dim(2) or 0) >= 30,
     {}, "per-step probabilities over 30 or more classes: a CTC recogniser"),
    ("embed", lambda o: o.rank == 3 and bool(TOKEN_NAMES.search(o.name)),
     {"pool": "mean"}, "named like token embeddings: mean-pooled"),
    ("dense", lambda o: o.rank == 4 and (o.op == "Sigmoid" or bool(MAP_NAMES.search(o.name))),
     {}, "a probability map (Sigmoid, or named like one)"),
]


def guess_tasks(model: onnx.ModelProto) -> dict[str, TaskSpec]:
    """One TaskSpec per graph output, with the reason; never raises (an unreadable model gets `generic`)."""
    try:
        outputs = _outputs(model)
    except Exception as exc:  # a guess must never stop a build: odd models are judged by cosine
        return {o.name: TaskSpec("generic", {}, f"model not understood ({exc}): closeness to fp32")
                for o in model.graph.output}
    return {o.name: _guess(o) for o in outputs}


def _guess(output: Output) -> TaskSpec:
    try:
        for task, when, params, why in RULES:
            if when(output):
                chosen = params(output) if callable(params) else dict(params)
                space = " and a space (trimmed at line ends)" if "space" in chosen else ""
                twins = len(chosen.get("alike", "").split())
                alike = f"; {twins} full/half-width twins read as one character" if twins else ""
                return TaskSpec(task, chosen, f"{output.describe()}: {why.format(o=output, space=space, alike=alike)}")
    except Exception as exc:  # as above: a rule tripping on an odd output leaves it to the cosine judge
        return TaskSpec("generic", {}, f"{output.describe()}: no guess ({exc}): closeness to fp32")
    return TaskSpec("generic", {}, f"{output.describe()}: no task rule fits: closeness to fp32")


def _outputs(model: onnx.ModelProto) -> list[Output]:
    meta = {p.key: p.value for p in model.metadata_props}
    characters = tuple(meta["character"].splitlines()) if meta.get("character") else None  # as rapidocr reads it
    labels = next((n for n in (_count(meta[k]) for k in LABEL_KEYS if meta.get(k)) if n), None)
    fed_back = recurrent_pairs(model)
    producers = {name: node for node in model.graph.node for name in node.output}
    return [Output(o.name, shape, _producer(o.name, producers), characters, labels, fed_back.get(o.name))
            for o, shape in zip(model.graph.output, _shapes(model))]


def _shapes(model: onnx.ModelProto) -> list[tuple[int | None, ...] | None]:
    """Declared output shapes; outputs declaring none get onnx shape inference's, run on a copy."""
    outputs = list(model.graph.output)
    if not all(o.type.tensor_type.HasField("shape") for o in outputs):
        try:
            outputs = list(onnx.shape_inference.infer_shapes(model).graph.output)
        except Exception:  # too large to serialise, or inference refuses the graph: keep what is declared
            outputs = list(model.graph.output)
    return [tuple(d.dim_value if d.dim_value > 0 else None for d in o.type.tensor_type.shape.dim)
            if o.type.tensor_type.HasField("shape") else None for o in outputs]


def _producer(name: str, producers: dict[str, onnx.NodeProto]) -> str:
    seen = set()
    while name in producers and name not in seen:
        seen.add(name)
        node = producers[name]
        if node.op_type not in PASS_THROUGH or not node.input:
            return node.op_type
        name = node.input[0]
    return ""


def _count(text: str) -> int:
    """Entries in a label list kept as JSON, a Python literal (ultralytics' names dict) or one per line."""
    for parse in (json.loads, ast.literal_eval):
        try:
            value = parse(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
        if isinstance(value, (list, tuple, dict)):
            return len(value)
    lines = text.splitlines()
    return len(lines) if len(lines) > 1 else len(text.split(","))
