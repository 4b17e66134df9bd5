"""The input Gram matrices X^T X of a model's MatMuls on the calibration data: what GPTQ rounding weighs errors by.

One run of an augmented copy of the model per sample (the MatMul inputs as extra outputs), each sample's rows folded
in at once, so memory holds one sample's activations and one K x K matrix per input (float32). The result goes to
an .npz file in the build's scratch folder, where the recipe's worker reads it (recipes take paths, not data).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from onnxdtype.calibration.ranges import exact_session, run_sample
from onnxdtype.model import constant_2d_matmuls, temp_dir_in


def matmul_inputs(model: onnx.ModelProto) -> list[str]:
    """The first inputs of the MatMuls a 4-bit recipe would quantize (constant 2-D weights), once each."""
    names = set(constant_2d_matmuls(model, []))
    return list(dict.fromkeys(n.input[0] for n in model.graph.node if n.name in names))


@dataclass
class Grams:
    """X^T X per tensor, how many rows each sums over, and how many samples."""
    matrices: dict[str, np.ndarray]
    rows: dict[str, int]
    samples: int


def input_grams(model: onnx.ModelProto, samples: Iterable[dict[str, np.ndarray]], tensors: list[str],
                scratch: Path) -> Grams:
    """X^T X of each tensor in `tensors` over every row of every sample (rows: all but the last axis), summed in
    float32: one K x K matrix per input is what this costs in memory (a 4096-wide input: 64 MiB)."""
    if not tensors:  # no MatMul in the main graph (a subgraph's inputs are not graph outputs to ask for)
        return Grams({}, {}, 0)
    augmented = onnx.ModelProto()
    augmented.CopyFrom(model)
    del augmented.graph.output[:]
    for name in tensors:
        augmented.graph.output.append(helper.make_empty_tensor_value_info(name))
    grams: dict[str, np.ndarray] = {}
    rows_seen = dict.fromkeys(tensors, 0)
    used = 0
    with temp_dir_in(scratch) as tmp:
        session = exact_session(augmented, tmp / "grams.onnx")
        for used, feed in enumerate(samples, start=1):
            for name, value in zip(tensors, run_sample(session, tensors, feed, used - 1)):
                rows = np.asarray(value, np.float32).reshape(-1, value.shape[-1])
                grams[name] = grams.get(name, 0) + rows.T @ rows
                rows_seen[name] += len(rows)
        del session
    return Grams(grams, {name: rows_seen[name] for name in grams}, used)


def write_grams(path: Path, grams: Grams) -> None:
    """Stored float32 by position (tensor names are not always valid archive member names)."""
    names = list(grams.matrices)
    np.savez(path, names=np.array(names, dtype=str), samples=np.array(grams.samples),
             rows=np.array([grams.rows[name] for name in names], np.int64),
             **{f"g{i}": grams.matrices[name].astype(np.float32) for i, name in enumerate(names)})


def read_grams(path: str | Path) -> Grams:
    with np.load(path) as stored:
        names = [str(name) for name in stored["names"]]
        return Grams({name: stored[f"g{i}"] for i, name in enumerate(names)},
                     dict(zip(names, (int(r) for r in stored["rows"]))), int(stored["samples"]))
