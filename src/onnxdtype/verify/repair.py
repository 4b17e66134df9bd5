"""Repair a variant that misses its tolerance by keeping the guilty nodes in higher precision.

fp16 steps first keep every node whose fp32 activations leave the fp16 range on the data. Then, for any
recipe, nodes are ranked by the error they add (output error minus input error, fp32 vs variant
intermediates on the data) and the worst are kept in fp32 — 1, 2, 4, 8... — rebuilding and re-verifying
until the variant passes or a budget (share of weights kept, seconds) runs out.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import onnx

from onnxdtype.ops import FP16_MAX
from onnxdtype.verify.evaluate import Criteria, EvalData, Reference, evaluate, session
from onnxdtype.verify.ranking import activation_max, error_increase, weight_shares

RANKING_SAMPLES = 8


@dataclass
class RepairBudget:
    max_weight_fraction: float = 0.25  # share of the weights that may stay in higher precision (8-bit or fp32)
    seconds: float = 300.0


@dataclass
class RepairPlan:
    """What repair needs to know of the recipe chain; the build gives it, so repair never looks inside a recipe.

    `rebuild(in_float, ranked, precision)` runs the dtype's recipe steps keeping `in_float` nodes fp32 in every
    step and `ranked` nodes in `precision` (one of `precisions`, tried in that order) in the steps that cause
    the error; None when nothing is left to quantize."""
    rebuild: Callable[[list[str], list[str], str], onnx.ModelProto | None]
    precisions: tuple[str, ...] = ("fp32",)
    has_float_step: bool = False  # fp16 in the chain: nodes whose fp32 activations leave its range go first
    float_only: bool = False  # fp16 is the whole recipe: every node is a candidate


@dataclass
class RepairOutcome:
    model: onnx.ModelProto | None
    figures: dict | None
    reason: str | None  # None: the repaired variant passes
    kept: list[str] = field(default_factory=list)
    kept_weight_fraction: float = 0.0
    attempts: list[dict] = field(default_factory=list)


def repair(source: onnx.ModelProto, plan: RepairPlan, eval_data: EvalData, criteria: Criteria,
           first_model: onnx.ModelProto, budget: RepairBudget | None = None, reference: Reference | None = None
           ) -> RepairOutcome:
    """Keep the worst nodes of `source` in higher precision until the rebuilt variant meets `criteria` on
    `eval_data` (whose fp32 outputs `reference` holds when the caller has them)."""
    budget = budget or RepairBudget()
    start = time.perf_counter()
    base = reference or Reference(session(source), eval_data, criteria, source)
    shares = weight_shares(source)
    kept: list[str] = []
    attempts: list[dict] = []
    if plan.has_float_step:
        peaks = activation_max(source, eval_data.feeds)
        # producers and consumers of out-of-range tensors: a consumer in fp16 would cast the value to inf
        kept = [n.name for n in source.graph.node
                if any(peaks.get(t, 0.0) > FP16_MAX for t in [*n.output, *n.input])]
    if plan.float_only:  # fp16 changes every node
        candidates = [n.name for n in source.graph.node if n.name not in kept]
    else:
        candidates = [n for n in quantized_nodes(source, first_model) if n not in kept]
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
        for precision in plan.precisions if trial else ():
            model = plan.rebuild(kept, ranked[:count], precision)
            if model is None:
                return RepairOutcome(None, None, "nothing left to quantize after keeping the guilty nodes",
                                     trial, fraction, attempts)
            figures, reason = evaluate(base, session(model), eval_data.feeds, criteria, eval_data.sequences)
            attempts.append({"kept_nodes": len(trial), "kept_weight_fraction": round(fraction, 4),
                             "precision": precision,
                             "failure": reason})
            if reason is None:
                return RepairOutcome(model, figures, None, trial, fraction, attempts)
        if count >= len(ranked) or time.perf_counter() - start > budget.seconds:
            why = "no node left to keep" if count >= len(ranked) else f"repair time budget {budget.seconds:.0f} s"
            return RepairOutcome(None, None, why, trial, fraction, attempts)
        doubled = max(1, count * 2)
        count = fits if count < fits < doubled else doubled  # before giving up on the budget, try its edge


def quantized_nodes(source: onnx.ModelProto, variant: onnx.ModelProto) -> list[str]:
    """Names of `source` nodes a quantizer touched, the ones repair may keep in higher precision.

    Q/DQ placements (static, int8) keep node names: their candidates are the nodes that read a dequantized weight.
    Nodes a Q/DQ variant lost are not: a BatchNormalization folded into its Conv, a Relu onnxruntime's quantizer
    fused into the Q before it, a HardSwish spelled with Add/Mul/Clip; ranked first once, keeping them bought no
    accuracy (PP-OCRv4 rec's repair ranked only its six folded BatchNormalizations, never its Convs). Other
    quantizers (q8, q4, bnb4) replace the nodes they quantize: those are the candidates."""
    variant_nodes = {(n.name, n.op_type) for n in variant.graph.node}
    if any(n.op_type == "QuantizeLinear" for n in variant.graph.node):
        initializers = {t.name for t in variant.graph.initializer}
        dequantized = {n.output[0] for n in variant.graph.node
                       if n.op_type == "DequantizeLinear" and n.input[0] in initializers}
        in_place = {(n.name, n.op_type) for n in variant.graph.node if any(i in dequantized for i in n.input)}
        return [n.name for n in source.graph.node if n.name and (n.name, n.op_type) in in_place]
    return [n.name for n in source.graph.node if n.name and (n.name, n.op_type) not in variant_nodes]
