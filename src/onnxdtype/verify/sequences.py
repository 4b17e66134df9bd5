"""Stateful models judged over whole sequences: fp32 and the variant each carry their own state, step by step.

A recurrent output (`hn`, `present.*`) fed back as the next step's input is not a task output of its own (the
`state` judge never decides): a VAD's int8 state drifted to cosine 0.980 while 98.9 % of its speech decisions
agreed. What matters is whether the drift, accumulated through the state, changes what the task outputs say, so
sequences are run the way an application runs them and every step's task outputs are judged.

Evaluation data as sequences: a folder of folders, one per sequence, each holding one .npz feed per step (sorted
by name). The first step may carry the initial state; without it the state starts at zeros.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort

from onnxdtype.errors import OnnxDtypeError
from onnxdtype.ops import ORT_NUMPY_TYPES


def is_sequence_folder(path: Path) -> bool:
    """A folder whose subfolders (not named like modules' data: the caller decides that) hold .npz steps."""
    path = Path(path)
    subfolders = [p for p in path.iterdir() if p.is_dir()] if path.is_dir() else []
    return bool(subfolders) and all(any(p.glob("*.npz")) for p in subfolders) and not any(path.glob("*.npz"))


def read_sequences(path: Path) -> list[list[dict[str, np.ndarray]]]:
    """One list of step feeds per subfolder, subfolders and steps in name order."""
    sequences = []
    for folder in sorted(p for p in Path(path).iterdir() if p.is_dir()):
        steps = []
        for file in sorted(folder.glob("*.npz")):
            try:
                with np.load(file, allow_pickle=False) as data:
                    steps.append({k: data[k] for k in data.files})
            except (OSError, ValueError) as exc:
                raise OnnxDtypeError(f"{file}: not a readable .npz file ({exc})") from None
        sequences.append(steps)
    return sequences


def paired_runs(base: ort.InferenceSession, variant: ort.InferenceSession, names: list[str],
                feeds: Iterable[dict], sequences: list[list[dict]] | None, states: dict[str, str] | None,
                run) -> Iterator[tuple[list[np.ndarray], list[np.ndarray]]]:
    """fp32 and variant outputs per evaluated step: over `sequences` step by step when the model has recurrent
    `states` (output -> input), each side feeding back its own state; else over independent `feeds`."""
    if not (sequences and states):
        for feed in feeds:
            yield run(base, feed, names), run(variant, feed, names)
        return
    index = {name: i for i, name in enumerate(names)}
    for sequence in sequences:
        state_ref = state_got = _initial_state(base, sequence[0], states)
        for step in sequence:
            refs = run(base, {**step, **state_ref}, names)
            gots = run(variant, {**step, **state_got}, names)
            yield refs, gots
            state_ref = {inp: refs[index[out]] for out, inp in states.items() if out in index}
            state_got = {inp: gots[index[out]] for out, inp in states.items() if out in index}


def _initial_state(sess: ort.InferenceSession, first: dict, states: dict[str, str]) -> dict[str, np.ndarray]:
    """The state inputs the first step gives, else zeros of their declared shape (dynamic dims: 1)."""
    declared = {i.name: i for i in sess.get_inputs()}
    initial = {}
    for name in states.values():
        if name in first:
            initial[name] = first[name]
        elif name in declared:
            shape = [d if isinstance(d, int) and d > 0 else 1 for d in declared[name].shape]
            initial[name] = np.zeros(shape, ORT_NUMPY_TYPES.get(declared[name].type, np.float32))
    return initial
