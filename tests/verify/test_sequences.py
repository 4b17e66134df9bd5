"""Stateful models are judged over sequences, each side carrying its own state: a state that drifts without changing
decisions passes, one whose drift flips decisions fails — even when every single step from a zero state agrees."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tinymodels
from numerics import session

from onnxdtype.build import quantize
from onnxdtype.verify.evaluate import Criteria, EvalData, evaluate
from onnxdtype.verify.judges import guess_tasks, recurrent_pairs


def sequences(count: int = 6, steps: int = 24) -> list[list[dict[str, np.ndarray]]]:
    rng = np.random.default_rng(0)
    return [[{"x": rng.standard_normal((1, 4)).astype(np.float32)} for _ in range(steps)] for _ in range(count)]


def criteria(model) -> Criteria:
    tasks = {name: dataclasses.asdict(spec) for name, spec in guess_tasks(model).items()}
    return Criteria(0.99, agreement=0.97, tasks=tasks, states=recurrent_pairs(model))


def test_the_state_output_is_recognised_and_never_judged_on_its_own():
    model = tinymodels.stateful()
    assert recurrent_pairs(model) == {"hn": "h"}
    assert {name: spec.task for name, spec in guess_tasks(model).items()} == {"y": "classify", "hn": "state"}


@pytest.mark.parametrize("scale, passes", [(1.1, True), (1.3, False)])
def test_drift_through_the_state_is_judged_by_the_decisions_it_changes(scale, passes):
    base, variant = tinymodels.stateful(), tinymodels.stateful(recurrent_scale=scale)
    data = sequences()
    figures, failure = evaluate(session(base), session(variant), [], criteria(base), data)
    judged = figures["outputs"]["y"]["judge"]
    assert judged["units"] == 6 * 24  # every step of every sequence is a decision
    assert figures["outputs"]["hn"]["cosine"] < 0.9999  # the state did drift
    assert (failure is None) == passes, failure
    assert figures["outputs"]["y"]["cosine"] > 0.99  # the cosine rule would have called both ok
    # step by step from a zero state (what independent samples give) the state error never shows
    zero_state = [{**steps[0], "h": np.zeros((1, 8), np.float32)} for steps in data]
    _, alone = evaluate(session(base), session(variant), zero_state, criteria(base))
    assert alone is None


def test_sequence_folders_verify_a_build(tmp_path):
    """--eval DATA with one folder per sequence: the build runs them step by step (the state starts at zeros)."""
    model = tinymodels.save(tinymodels.stateful(), tmp_path / "cell.onnx")
    data = tmp_path / "eval"
    for i, steps in enumerate(sequences(count=3, steps=8)):
        (data / f"seq{i}").mkdir(parents=True)
        for j, step in enumerate(steps):
            np.savez(data / f"seq{i}" / f"{j:03d}.npz", **step)
    result = quantize(model, "fp16", tmp_path / "out", eval_data=data, latency_runs=0, workers=1).by("cell", "fp16")
    assert result.status == "ok", result.reason
    assert result.verification["outputs"]["y"]["judge"]["units"] == 3 * 8
    assert result.verification["states"] == {"hn": "h"} and "sequences" in result.verification["data"]
    loaded = EvalData.load(data, "", False)
    fixed = loaded.with_inputs({"x": np.zeros((1, 4))})  # fixed inputs reach every step, in the feeds' dtype
    assert all(step["x"].dtype == np.float32 and not step["x"].any() for steps in fixed.sequences for step in steps)
