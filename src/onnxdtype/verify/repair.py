"""Repair a variant that misses its tolerance by keeping the guilty nodes in higher precision.

fp16 steps first keep every node whose fp32 activations leave the fp16 range on the data. Then, for any
recipe, nodes are ranked by the error they add (output error minus input error, fp32 vs variant
intermediates on the data) and the worst are kept in fp32 — 1, 2, 4, 8... — rebuilding and re-verifying
until the variant passes or a budget (share of weights kept, seconds) runs out.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace

import numpy as np
import onnx

from onnxdtype.model import iter_scoped_nodes
from onnxdtype.verify.accuracy import Criteria, EvalData, activation_max, error_increase, evaluate, session

FP16_MAX = 65504.0
WEIGHTED_OPS = frozenset({"MatMul", "Gemm", "Conv", "ConvTranspose", "Gather", "Attention", "LSTM", "GRU"})
RANKING_SAMPLES = 8


@dataclass
class RepairBudget:
    max_weight_fraction: float = 0.25  # share of the weights that may stay in higher precision (8-bit or fp32)
    seconds: float = 300.0


@dataclass
class RepairOutcome:
    model: onnx.ModelProto | None
    figures: dict | None
    reason: str | None  # None: the repaired variant passes
    kept: list[str] = field(default_factory=list)
    kept_weight_fraction: float = 0.0
    attempts: list[dict] = field(default_factory=list)


def with_kept(options: dict[str, object], in_float: list[str], ranked: list[str], use_8bit: bool = True
              ) -> dict[str, object]:
    """Options for a rebuild. `in_float` (fp16 range) nodes stay fp32 in every step. `ranked` nodes go to the
    weight quantizer's higher precision — 8-bit for q4's MatMulNBits (`nodes_in_8bit`), fp32 for the others —
    and stay fp32 in the fp16 step only when fp16 is the whole recipe (q4f16's error is the 4-bit part)."""
    only_fp16 = all(not _has(opts, "nodes_to_exclude") for opts in options.values())
    rebuilt = {}
    for step, opts in options.items():
        if _has(opts, "nodes_in_8bit") and use_8bit:
            opts = _extend(_extend(opts, "nodes_to_exclude", in_float), "nodes_in_8bit", ranked)
        elif _has(opts, "nodes_to_exclude"):
            opts = _extend(opts, "nodes_to_exclude", in_float + ranked)
        elif _has(opts, "block_nodes"):
            opts = _extend(opts, "block_nodes", in_float + (ranked if only_fp16 else []))
        rebuilt[step] = opts
    return rebuilt


def _precisions(options: dict[str, object]) -> tuple[bool, ...]:
    """Try 8 bits before fp32 where the recipe has an 8-bit form (q4's MatMulNBits), else fp32 only."""
    return (True, False) if any(_has(o, "nodes_in_8bit") for o in options.values()) else (False,)


def _has(options: object, name: str) -> bool:
    return any(f.name == name for f in fields(options))  # type: ignore[arg-type]


def _extend(options: object, name: str, names: list[str]) -> object:
    current = list(getattr(options, name))
    return replace(options, **{name: current + [n for n in names if n not in current]})  # type: ignore[type-var]


def weight_shares(model: onnx.ModelProto) -> dict[str, float]:
    """Each node's share of the model's float weights (constant float inputs it consumes)."""
    sizes: dict[str, int] = {}
    for node, inits in iter_scoped_nodes(model.graph):
        sizes[node.name] = sum(int(np.prod(inits[i].dims)) for i in node.input
                               if i in inits and inits[i].data_type == onnx.TensorProto.FLOAT)
    total = sum(sizes.values()) or 1
    return {name: size / total for name, size in sizes.items()}


def repair(source: onnx.ModelProto, steps: list[str], options: dict[str, object], eval_data: EvalData,
           criteria: Criteria, rebuild: Callable[[dict[str, object]], onnx.ModelProto | None],
           first_model: onnx.ModelProto, budget: RepairBudget | None = None) -> RepairOutcome:
    """Keep the worst nodes of `source` in fp32 until the rebuilt variant meets `criteria` on `eval_data`.

    `rebuild(options)` runs the dtype's recipe steps with the given options (build.py owns the recipes).
    """
    budget = budget or RepairBudget()
    start = time.perf_counter()
    base = session(source)
    shares = weight_shares(source)
    kept: list[str] = []
    attempts: list[dict] = []
    if "float16" in steps:
        peaks = activation_max(source, eval_data.feeds)
        # producers and consumers of out-of-range tensors: a consumer in fp16 would cast the value to inf
        kept = [n.name for n in source.graph.node
                if any(peaks.get(t, 0.0) > FP16_MAX for t in [*n.output, *n.input])]
    if steps == ["float16"]:  # fp16 changes every node
        candidates = [n.name for n in source.graph.node if n.name not in kept]
    else:  # quantizers: the nodes they replaced (q8, q4, bnb4), else the weighted ops (QDQ keeps node names)
        variant_nodes = {(n.name, n.op_type) for n in first_model.graph.node}
        replaced = [n.name for n in source.graph.node if (n.name, n.op_type) not in variant_nodes]
        candidates = replaced or [n.name for n in source.graph.node if n.op_type in WEIGHTED_OPS]
        candidates = [n for n in candidates if n and n not in kept]
    ranking_feeds = eval_data.feeds[:RANKING_SAMPLES]
    added = error_increase(source, first_model, ranking_feeds, candidates)
    ranked = sorted(added, key=added.get, reverse=True)
    def share(names: list[str]) -> float:
        return sum(shares.get(n, 0.0) for n in names)

    # the longest prefix of the ranking that fits the weight budget: the last count worth trying
    fits = max((k for k in range(len(ranked) + 1) if share(kept + ranked[:k]) <= budget.max_weight_fraction),
               default=0)
    count = 0
    while True:
        trial = kept + ranked[:count]
        fraction = share(trial)
        if fraction > budget.max_weight_fraction and trial:
            return RepairOutcome(None, None, f"repair budget: keeping {len(trial)} nodes would keep "
                                 f"{fraction:.0%} of the weights in higher precision (limit {budget.max_weight_fraction:.0%})",
                                 trial, fraction, attempts)
        for use_8bit in _precisions(options) if trial else ():
            model = rebuild(with_kept(options, kept, ranked[:count], use_8bit))
            if model is None:
                return RepairOutcome(None, None, "nothing left to quantize after keeping the guilty nodes",
                                     trial, fraction, attempts)
            figures, reason = evaluate(base, session(model), eval_data.feeds, criteria)
            attempts.append({"kept_nodes": len(trial), "kept_weight_fraction": round(fraction, 4),
                             "precision": "8-bit" if use_8bit else "fp32",
                             "failure": reason})
            if reason is None:
                return RepairOutcome(model, figures, None, trial, fraction, attempts)
        if count >= len(ranked) or time.perf_counter() - start > budget.seconds:
            why = "no node left to keep" if count >= len(ranked) else f"repair time budget {budget.seconds:.0f} s"
            return RepairOutcome(None, None, why, trial, fraction, attempts)
        doubled = max(1, count * 2)
        count = fits if count < fits < doubled else doubled  # before giving up on the budget, try its edge
