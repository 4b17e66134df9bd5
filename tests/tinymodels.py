"""Tiny ONNX models built with onnx.helper, one per branch the recipes must handle. The only place tests build models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _weight(rng: np.random.Generator, *shape: int, scale: float = 0.1) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _model(nodes, inputs, outputs, initializers=(), opset: int = 17, metadata: dict | None = None) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "tiny", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="onnxdtype-tests")
    model.ir_version = 8
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    return model


def _io(name: str, *dims) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(dims))


def mlp(hidden: int = 64, opset: int = 17, metadata: dict | None = None) -> onnx.ModelProto:
    """x[N,64] -> MatMul -> Relu -> MatMul -> y[N,16]: the plain case every recipe applies to."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(_weight(rng, 64, hidden), "w1"), numpy_helper.from_array(_weight(rng, hidden), "b1"),
             numpy_helper.from_array(_weight(rng, hidden, 16), "w2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
             helper.make_node("Add", ["h", "b1"], ["hb"], name="add1"),
             helper.make_node("Relu", ["hb"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2")]
    return _model(nodes, [_io("x", "N", 64)], [_io("y", "N", 16)], inits, opset, metadata)


def gemm(trans_b: int = 1, alpha: float = 0.5, beta: float = 2.0, opset: int = 13) -> onnx.ModelProto:
    """Gemm with constant B (transB, alpha, beta): must become MatMul+Add for the 4-bit recipes."""
    rng = np.random.default_rng(0)
    w = _weight(rng, 32, 64) if trans_b else _weight(rng, 64, 32)
    nodes = [helper.make_node("Gemm", ["x", "w", "c"], ["y"], name="gemm", transB=trans_b, alpha=alpha, beta=beta)]
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(_weight(rng, 32), "c")]
    return _model(nodes, [_io("x", "N", 64)], [_io("y", "N", 32)], inits, opset)


def constant_weights(opset: int = 12) -> onnx.ModelProto:
    """Weights held in Constant nodes, as paddle2onnx exports them (PP-OCR)."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Constant", [], ["w"], name="const_w", value=numpy_helper.from_array(_weight(rng, 64, 32))),
             helper.make_node("Constant", [], ["s"], name="const_s", value_float=2.0),
             helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
             helper.make_node("Mul", ["h", "s"], ["y"], name="scale")]
    return _model(nodes, [_io("x", "N", 64)], [_io("y", "N", 32)], opset=opset)


def conv(opset: int = 13) -> onnx.ModelProto:
    """A Conv net: q8 must pick uint8 weights; no MatMul, so the 4-bit recipes do not apply."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(_weight(rng, 8, 3, 3, 3), "k"), numpy_helper.from_array(_weight(rng, 8), "kb")]
    nodes = [helper.make_node("Conv", ["x", "k", "kb"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["y"], name="relu")]
    return _model(nodes, [_io("x", 1, 3, 16, 16)], [_io("y", 1, 8, 16, 16)], inits, opset)


def no_weights() -> onnx.ModelProto:
    """Only elementwise ops, no weights at all: no quantizer has anything to do."""
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"), helper.make_node("Sigmoid", ["r"], ["y"], name="sig")]
    return _model(nodes, [_io("x", "N", 8)], [_io("y", "N", 8)])


def if_subgraph() -> onnx.ModelProto:
    """A MatMul inside an If branch, weights in the outer graph: recipes must see into subgraphs."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(_weight(rng, 64, 16), "w")
    then_graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["t"], name="then_mm")], "then", [],
                                   [_io("t", "N", 16)])
    else_graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["e0"], name="else_mm"),
                                    helper.make_node("Neg", ["e0"], ["e"], name="else_neg")], "else", [],
                                   [_io("e", "N", 16)])
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], name="sum", keepdims=0),
             helper.make_node("Greater", ["s", "zero"], ["cond"], name="gt"),
             helper.make_node("If", ["cond"], ["y"], name="branch", then_branch=then_graph, else_branch=else_graph)]
    inits = [w, numpy_helper.from_array(np.array(0.0, np.float32), "zero")]
    return _model(nodes, [_io("x", "N", 64)], [_io("y", "N", 16)], inits)


def cast_to_float() -> onnx.ModelProto:
    """A Cast(to=float) inside the region fp16 converts: the class onnxconverter-common gets wrong."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(_weight(rng, 64, 32), "w")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
             helper.make_node("Cast", ["h"], ["hc"], name="cast_f", to=TensorProto.FLOAT),
             helper.make_node("Relu", ["hc"], ["y"], name="relu")]
    return _model(nodes, [_io("x", "N", 64)], [_io("y", "N", 32)], inits)


def fp16_overflow() -> onnx.ModelProto:
    """BatchNormalization with variances ~1e7 (as in PP-OCRv4 det): fp16 clamps them unless the node stays fp32."""
    channels = 4
    inits = [numpy_helper.from_array(np.ones(channels, np.float32), "scale"),
             numpy_helper.from_array(np.zeros(channels, np.float32), "bias"),
             numpy_helper.from_array(np.full(channels, 1000.0, np.float32), "mean"),
             numpy_helper.from_array(np.full(channels, 4e7, np.float32), "var")]
    nodes = [helper.make_node("BatchNormalization", ["x", "scale", "bias", "mean", "var"], ["y"], name="bn")]
    return _model(nodes, [_io("x", 1, channels, 8, 8)], [_io("y", 1, channels, 8, 8)], inits)


def save(model: onnx.ModelProto, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def external(model: onnx.ModelProto, path: Path) -> onnx.ModelProto:
    """`model` saved with every initializer in external data, loaded back lazily (weights.py)."""
    from onnxdtype.model import load_model

    path.parent.mkdir(parents=True, exist_ok=True)
    copy = onnx.ModelProto()
    copy.CopyFrom(model)  # onnx.save moves the weights of what it saves out to the file
    onnx.save(copy, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location=path.name + ".data", size_threshold=0)
    return load_model(path, lazy=True)


def outlier_matmul() -> onnx.ModelProto:
    """mm1 -> relu -> mm2 -> relu -> mm3, where mm2's weight holds outliers (40.0) on rows whose inputs are
    always 0: harmless in fp32, but they set every per-channel and per-block scale, so 8-bit and 4-bit
    round mm2's real weights to ~0. mm2 holds 19% of the weights: repair may keep it."""
    rng = np.random.default_rng(0)
    w1 = _weight(rng, 64, 256, scale=0.2)
    w1[:, ::32] = 0.0  # these hidden units are always 0 after Relu
    w2 = _weight(rng, 256, 16, scale=0.1)
    w2[::32, :] = 40.0
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"),
             numpy_helper.from_array(_weight(rng, 16, 64, scale=0.3), "w3")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h1"], name="mm1"),
             helper.make_node("Relu", ["h1"], ["r1"], name="relu1"),
             helper.make_node("MatMul", ["r1", "w2"], ["h2"], name="mm2"),
             helper.make_node("Relu", ["h2"], ["r2"], name="relu2"),
             helper.make_node("MatMul", ["r2", "w3"], ["y"], name="mm3")]
    return _model(nodes, [_io("x", "N", 64)], [_io("y", "N", 64)], inits)


def fp16_precision_loss() -> onnx.ModelProto:
    """(x + 1000.0123) - 1000: stored in fp16 the offset becomes 1000.0 (spacing 0.5 there) and the small
    signal is lost. The fp16 failure a CPU shows: onnxruntime's CPU EP computes most fp16 ops in fp32, so
    what breaks is what is *stored* in fp16 — weights."""
    inits = [numpy_helper.from_array(np.full(8, 1000.0123, np.float32), "offset"),
             numpy_helper.from_array(np.array(1000.0, np.float32), "thousand")]
    nodes = [helper.make_node("Add", ["x", "offset"], ["shifted"], name="shift"),
             helper.make_node("Sub", ["shifted", "thousand"], ["y"], name="unshift")]
    return _model(nodes, [_io("x", "N", 8)], [_io("y", "N", 8)], inits)


def detector(classes: int = 3, activation: str = "relu") -> onnx.ModelProto:
    """A YOLO-like detector: conv backbone (Relu, or SiLU = x * Sigmoid(x) as YOLOv8's), one head conv, then decode
    and one output [1, 4+C, 64 anchors].

    The head's box channels are distances in pixels (0..~640) and its class channels logits (about +-5);
    boxes and sigmoid scores are concatenated into one output, the layout that loses the scores when one
    per-tensor scale covers both (SPEC.md's YOLO case).
    """
    rng = np.random.default_rng(0)
    channels = [3, 8, 16, 16]
    inits, nodes, x = [], [], "x"
    for i, (cin, cout) in enumerate(zip(channels, channels[1:])):
        inits += [numpy_helper.from_array(_weight(rng, cout, cin, 3, 3, scale=0.4), f"k{i}"),
                  numpy_helper.from_array(_weight(rng, cout, scale=0.1), f"kb{i}")]
        nodes += [helper.make_node("Conv", [x, f"k{i}", f"kb{i}"], [f"c{i}"], name=f"conv{i}", pads=[1, 1, 1, 1],
                                   strides=[2, 2]),
                  *([helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}")] if activation == "relu" else
                    [helper.make_node("Sigmoid", [f"c{i}"], [f"g{i}"], name=f"gate{i}"),
                     helper.make_node("Mul", [f"c{i}", f"g{i}"], [f"r{i}"], name=f"silu{i}")])]
        x = f"r{i}"
    head = _weight(rng, 4 + classes, 16, 1, 1, scale=0.3)
    head[:4] *= 150.0  # box distances in pixels
    inits += [numpy_helper.from_array(head, "head_w"),
              numpy_helper.from_array(np.array([300.0] * 4 + [0.0] * classes, np.float32), "head_b"),
              numpy_helper.from_array(np.array([4, classes], np.int64), "split"),
              numpy_helper.from_array(np.array([1, 4 + classes, -1], np.int64), "flat")]
    nodes += [helper.make_node("Conv", [x, "head_w", "head_b"], ["raw"], name="head"),
              helper.make_node("Split", ["raw", "split"], ["box_raw", "cls_raw"], name="split", axis=1),
              helper.make_node("Relu", ["box_raw"], ["boxes"], name="box_decode"),
              helper.make_node("Sigmoid", ["cls_raw"], ["scores"], name="score_decode"),
              helper.make_node("Concat", ["boxes", "scores"], ["joined"], name="concat", axis=1),
              helper.make_node("Reshape", ["joined", "flat"], ["y"], name="flatten")]
    return _model(nodes, [_io("x", 1, 3, 64, 64)], [_io("y", 1, 4 + classes, 64)], inits, opset=13)


def masked_encoder() -> onnx.ModelProto:
    """Two inputs with dynamic dims, x float [N, T, 16] and mask int64 [N, T]: masked x -> MatMul -> y [N, T, 8]."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(_weight(rng, 16, 8, scale=0.3), "w"),
             numpy_helper.from_array(np.array([2], np.int64), "last")]
    nodes = [helper.make_node("Cast", ["mask"], ["maskf"], name="cast", to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["maskf", "last"], ["mask3"], name="unsqueeze"),
             helper.make_node("Mul", ["x", "mask3"], ["masked"], name="apply_mask"),
             helper.make_node("MatMul", ["masked", "w"], ["h"], name="mm"),
             helper.make_node("Relu", ["h"], ["y"], name="relu")]
    inputs = [_io("x", "N", "T", 16), helper.make_tensor_value_info("mask", TensorProto.INT64, ["N", "T"])]
    return _model(nodes, inputs, [_io("y", "N", "T", 8)], inits, opset=13)


# ------------------------------------------------ weights in Constant nodes inside If branches (--fix-input)
_BRANCH_RNG = np.random.default_rng(0)


def _constant_node(name: str, array: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], name=f"const_{name}", value=numpy_helper.from_array(array))


def _branch_weight(*shape: int) -> np.ndarray:
    return (_BRANCH_RNG.standard_normal(shape) * 0.2).astype(np.float32)


def _typed_io(name: str, elem_type: int, dims: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, dims)


def streaming_model(mode: str = "bool", nested: bool = False) -> onnx.ModelProto:
    """x[1,3,8,8] and `mode` choosing an If: then = Conv+Relu+MatMul, else = another Conv, weights in Constant
    nodes inside the branches, both reading the outer Constant `scale`. `mode` is a bool scalar used as the
    condition, or an int64 [1] compared to 1. `nested`: the then-branch ends in an If on the same condition."""
    then_nodes = [_constant_node("wt", _branch_weight(8, 3, 3, 3)), _constant_node("bt", _branch_weight(8)), _constant_node("wm", _branch_weight(8, 8)),
                  helper.make_node("Conv", ["x", "wt", "bt"], ["ct"], name="conv_then", pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", ["ct"], ["rt"], name="relu_then"),
                  helper.make_node("MatMul", ["rt", "wm"], ["mt"], name="matmul_then"),
                  helper.make_node("Mul", ["mt", "scale"], ["yt"], name="scale_then")]
    then_out = "yt"
    if nested:
        inner_then = helper.make_graph([_constant_node("k1", _branch_weight(8, 8, 1, 1)),
                                        helper.make_node("Conv", ["yt", "k1"], ["n1"], name="conv_inner")],
                                       "inner_then", [], [_typed_io("n1", TensorProto.FLOAT, [1, 8, 8, 8])])
        inner_else = helper.make_graph([helper.make_node("Neg", ["yt"], ["n2"], name="neg_inner")],
                                       "inner_else", [], [_typed_io("n2", TensorProto.FLOAT, [1, 8, 8, 8])])
        then_nodes.append(helper.make_node("If", ["cond"], ["yn"], name="inner_if",
                                           then_branch=inner_then, else_branch=inner_else))
        then_out = "yn"
    then_graph = helper.make_graph(then_nodes, "then", [], [_typed_io(then_out, TensorProto.FLOAT, [1, 8, 8, 8])])
    else_graph = helper.make_graph(
        [_constant_node("we", _branch_weight(8, 3, 3, 3)),
         helper.make_node("Conv", ["x", "we"], ["ce"], name="conv_else", pads=[1, 1, 1, 1]),
         helper.make_node("Add", ["ce", "scale"], ["ye"], name="shift_else")],
        "else", [], [_typed_io("ye", TensorProto.FLOAT, [1, 8, 8, 8])])
    nodes = [_constant_node("scale", np.full((1, 8, 1, 1), 0.5, np.float32))]
    if mode == "bool":
        mode_input = _typed_io("mode", TensorProto.BOOL, [])
        nodes.append(helper.make_node("Identity", ["mode"], ["cond"], name="cond"))
    else:
        mode_input = _typed_io("mode", TensorProto.INT64, [1])
        nodes += [_constant_node("one", np.array([1], np.int64)),
                  helper.make_node("Equal", ["mode", "one"], ["cond"], name="is_one")]
    nodes += [helper.make_node("If", ["cond"], ["y"], name="branch", then_branch=then_graph, else_branch=else_graph),
              helper.make_node("Sigmoid", ["y"], ["out"], name="head")]
    graph = helper.make_graph(nodes, "streaming", [_typed_io("x", TensorProto.FLOAT, [1, 3, 8, 8]), mode_input],
                              [_typed_io("out", TensorProto.FLOAT, [1, 8, 8, 8])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="onnxdtype-tests")
    model.ir_version = 8
    model.metadata_props.add(key="labels", value="a,b")
    onnx.checker.check_model(model)
    return model


def stateful(recurrent_scale: float = 1.0) -> onnx.ModelProto:
    """One recurrent cell: hn = tanh(x Wx + h Wh), y = softmax(hn Wo) over 3 classes; hn feeds h on the next step.
    `recurrent_scale` multiplies Wh: a variant whose error sits only in the state path, invisible from a zero state."""
    rng = np.random.default_rng(3)
    recurrent = rng.standard_normal((8, 8)).astype(np.float32)
    recurrent *= 0.9 / np.abs(np.linalg.eigvals(recurrent)).max()  # the state persists over many steps
    inits = [numpy_helper.from_array(_weight(rng, 4, 8, scale=0.8), "wx"),
             numpy_helper.from_array((recurrent * recurrent_scale).astype(np.float32), "wh"),
             numpy_helper.from_array(_weight(rng, 8, 3, scale=1.0), "wo")]
    nodes = [helper.make_node("MatMul", ["x", "wx"], ["a"], name="input_proj"),
             helper.make_node("MatMul", ["h", "wh"], ["b"], name="state_proj"),
             helper.make_node("Add", ["a", "b"], ["s"], name="sum"),
             helper.make_node("Tanh", ["s"], ["hn"], name="cell"),
             helper.make_node("MatMul", ["hn", "wo"], ["logits"], name="head"),
             helper.make_node("Softmax", ["logits"], ["y"], name="scores", axis=-1)]
    return _model(nodes, [_io("x", 1, 4), _io("h", 1, 8)], [_io("y", 1, 3), _io("hn", 1, 8)], inits)


def conv_batchnorm() -> onnx.ModelProto:
    """Conv -> BatchNormalization -> Relu, and a second Conv whose output a BatchNormalization shares with the graph
    output (not foldable): static variants want the first folded."""
    rng = np.random.default_rng(4)
    inits = [numpy_helper.from_array(_weight(rng, 8, 3, 3, 3), "k1"),
             numpy_helper.from_array(_weight(rng, 8, 8, 1, 1), "k2"),
             numpy_helper.from_array(rng.uniform(0.5, 2, 8).astype(np.float32), "scale"),
             numpy_helper.from_array(_weight(rng, 8), "bias"),
             numpy_helper.from_array(_weight(rng, 8), "mean"),
             numpy_helper.from_array(rng.uniform(0.1, 4, 8).astype(np.float32), "var")]
    nodes = [helper.make_node("Conv", ["x", "k1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c1", "scale", "bias", "mean", "var"], ["b1"], name="bn1"),
             helper.make_node("Relu", ["b1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "k2"], ["c2"], name="conv2"),
             helper.make_node("BatchNormalization", ["c2", "scale", "bias", "mean", "var"], ["y"], name="bn2")]
    return _model(nodes, [_io("x", 1, 3, 8, 8)], [_io("y", 1, 8, 8, 8), _io("c2", 1, 8, 8, 8)], inits)


def hardswish_chain() -> onnx.ModelProto:
    """Conv -> HardSwish -> Div by 2 -> Conv -> HardSigmoid gate (Mul) -> Conv: ops with no integer kernel on
    onnxruntime's CPU EP between weighted ones (MobileNetV3 and PP-OCR spell HardSwish either way)."""
    rng = np.random.default_rng(5)
    inits = [numpy_helper.from_array(_weight(rng, 8, 3, 3, 3, scale=0.5), "k1"),
             numpy_helper.from_array(_weight(rng, 8, 8, 1, 1, scale=0.5), "k2"),
             numpy_helper.from_array(_weight(rng, 4, 8, 1, 1, scale=0.5), "k3"),
             numpy_helper.from_array(np.array(2.0, np.float32), "two")]
    nodes = [helper.make_node("Conv", ["x", "k1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("HardSwish", ["c1"], ["h1"], name="hswish"),
             helper.make_node("Div", ["h1", "two"], ["d1"], name="halve"),
             helper.make_node("Conv", ["d1", "k2"], ["c2"], name="conv2"),
             helper.make_node("HardSigmoid", ["c2"], ["g2"], name="hsigmoid", alpha=0.2, beta=0.5),
             helper.make_node("Mul", ["c2", "g2"], ["m2"], name="gate"),
             helper.make_node("Conv", ["m2", "k3"], ["y"], name="head")]
    return _model(nodes, [_io("x", 1, 3, 16, 16)], [_io("y", 1, 4, 16, 16)], inits, opset=14)


def tied_embedding(vocab: int = 50, hidden: int = 16) -> onnx.ModelProto:
    """ids[N,T] -> Gather(embedding) -> MatMul -> MatMul with the embedding transposed (tied weights) -> logits: one
    weight read by an op q8 quantizes (Gather) and by one it leaves float (Transpose)."""
    rng = np.random.default_rng(6)
    inits = [numpy_helper.from_array(_weight(rng, vocab, hidden, scale=0.5), "embed"),
             numpy_helper.from_array(_weight(rng, hidden, hidden, scale=0.3), "w")]
    nodes = [helper.make_node("Gather", ["embed", "ids"], ["h"], name="lookup"),
             helper.make_node("MatMul", ["h", "w"], ["hw"], name="mm"),
             helper.make_node("Transpose", ["embed"], ["embed_t"], name="tie", perm=[1, 0]),
             helper.make_node("MatMul", ["hw", "embed_t"], ["y"], name="head")]
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", "T"])
    return _model(nodes, [ids], [_io("y", "N", "T", vocab)], inits)


def batched_matmul() -> onnx.ModelProto:
    """x[2,N,16] @ w[2,16,8]: a rank-3 weight, one matrix per batch entry."""
    rng = np.random.default_rng(7)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="bmm")]
    return _model(nodes, [_io("x", 2, "N", 16)], [_io("y", 2, "N", 8)],
                  [numpy_helper.from_array(_weight(rng, 2, 16, 8), "w")])


def lstm(hidden: int = 4) -> onnx.ModelProto:
    """x[T,N,8] -> LSTM (W, R, B constant) -> Y_h[1,N,H] -> MatMul -> y[1,N,3]: onnxruntime's LSTM quantizer
    reshapes and transposes its weights."""
    rng = np.random.default_rng(8)
    inits = [numpy_helper.from_array(_weight(rng, 1, 4 * hidden, 8, scale=0.4), "W"),
             numpy_helper.from_array(_weight(rng, 1, 4 * hidden, hidden, scale=0.4), "R"),
             numpy_helper.from_array(_weight(rng, 1, 8 * hidden), "B"),
             numpy_helper.from_array(_weight(rng, hidden, 3, scale=0.5), "wo")]
    nodes = [helper.make_node("LSTM", ["x", "W", "R", "B"], ["", "h"], name="lstm", hidden_size=hidden),
             helper.make_node("MatMul", ["h", "wo"], ["y"], name="head")]
    return _model(nodes, [_io("x", "T", "N", 8)], [_io("y", 1, "N", 3)], inits)


def gemm_in_branch() -> onnx.ModelProto:
    """An If whose then-branch has Gemm(x, w, transB=1) with w in the outer graph (normalize rewrites a Gemm whose
    weight is in its own graph only), and w also read by an outer MatMul: quantize_dynamic turns that Gemm into
    MatMul over a transposed copy of w."""
    rng = np.random.default_rng(9)
    then_graph = helper.make_graph([helper.make_node("Gemm", ["x", "w"], ["t"], name="then_gemm", transB=1)], "then",
                                   [], [_io("t", "N", 16)])
    else_graph = helper.make_graph([helper.make_node("MatMul", ["x", "v"], ["e"], name="else_mm")], "else", [],
                                   [_io("e", "N", 16)])
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], name="sum", keepdims=0),
             helper.make_node("Greater", ["s", "zero"], ["cond"], name="gt"),
             helper.make_node("If", ["cond"], ["b"], name="branch", then_branch=then_graph, else_branch=else_graph),
             helper.make_node("MatMul", ["b", "w"], ["y"], name="back")]
    inits = [numpy_helper.from_array(_weight(rng, 16, 64), "w"), numpy_helper.from_array(_weight(rng, 64, 16), "v"),
             numpy_helper.from_array(np.array(0.0, np.float32), "zero")]
    return _model(nodes, [_io("x", "N", 64)], [_io("y", "N", 64)], inits)


def attention(hidden: int = 8, heads: int = 2) -> onnx.ModelProto:
    """x[N,S,8] -> onnxruntime's contrib Attention (fused QKV weight [8,24], bias) -> MatMul -> y[N,S,4]."""
    rng = np.random.default_rng(10)
    inits = [numpy_helper.from_array(_weight(rng, hidden, 3 * hidden, scale=0.4), "qkv"),
             numpy_helper.from_array(_weight(rng, 3 * hidden), "qkv_bias"),
             numpy_helper.from_array(_weight(rng, hidden, 4, scale=0.4), "wo")]
    nodes = [helper.make_node("Attention", ["x", "qkv", "qkv_bias"], ["a"], name="attn", domain="com.microsoft",
                              num_heads=heads),
             helper.make_node("MatMul", ["a", "wo"], ["y"], name="out")]
    graph = helper.make_graph(nodes, "tiny", [_io("x", "N", "S", hidden)], [_io("y", "N", "S", 4)], inits)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="onnxdtype-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def conv_stack() -> onnx.ModelProto:
    """x[1,8,16,16] -> Conv 3x3 without bias -> Relu -> depthwise Conv 3x3 with bias -> y: the two Conv forms bias
    correction writes a bias for (padded, so border positions see fewer inputs)."""
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(_weight(rng, 8, 8, 3, 3, scale=0.3), "k1"),
             numpy_helper.from_array(_weight(rng, 8, 1, 3, 3, scale=0.5), "k2"),
             numpy_helper.from_array(_weight(rng, 8), "b2")]
    nodes = [helper.make_node("Conv", ["x", "k1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "k2", "b2"], ["y"], name="depthwise", pads=[1, 1, 1, 1], group=8)]
    return _model(nodes, [_io("x", 1, 8, 16, 16)], [_io("y", 1, 8, 16, 16)], inits, opset=13)


def conv_transpose_stack() -> onnx.ModelProto:
    """x[1,4,8,8] -> Conv 3x3 -> Relu -> ConvTranspose 2x2 stride 2 -> Relu -> Conv 3x3 -> y[1,4,16,16]: an upsampling
    decoder's shape (PP-OCRv4 det's head upsamples with ConvTranspose)."""
    rng = np.random.default_rng(4)
    inits = [numpy_helper.from_array(_weight(rng, 8, 4, 3, 3, scale=0.3), "k1"),
             numpy_helper.from_array(_weight(rng, 8, 8, 2, 2, scale=0.3), "kt"),
             numpy_helper.from_array(_weight(rng, 4, 8, 3, 3, scale=0.3), "k2")]
    nodes = [helper.make_node("Conv", ["x", "k1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("ConvTranspose", ["r1", "kt"], ["t"], name="up", strides=[2, 2]),
             helper.make_node("Relu", ["t"], ["r2"], name="relu2"),
             helper.make_node("Conv", ["r2", "k2"], ["y"], name="conv2", pads=[1, 1, 1, 1])]
    return _model(nodes, [_io("x", 1, 4, 8, 8)], [_io("y", 1, 4, 16, 16)], inits, opset=13)


def depthwise_pool() -> onnx.ModelProto:
    """x[1,8,16,16] -> Conv 1x1 -> Relu -> depthwise Conv 3x3 -> Relu -> MaxPool 2x2 -> Conv 1x1 -> y[1,8,8,8]: the two
    kinds of ops static.float_kinds keeps float, between quantized Convs (a MobileNet block's shape)."""
    rng = np.random.default_rng(5)
    inits = [numpy_helper.from_array(_weight(rng, 16, 8, 1, 1, scale=0.3), "k1"),
             numpy_helper.from_array(_weight(rng, 16, 1, 3, 3, scale=0.5), "kd"),
             numpy_helper.from_array(_weight(rng, 8, 16, 1, 1, scale=0.3), "k2")]
    nodes = [helper.make_node("Conv", ["x", "k1"], ["c1"], name="expand"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "kd"], ["d"], name="depthwise", pads=[1, 1, 1, 1], group=16),
             helper.make_node("Relu", ["d"], ["r2"], name="relu2"),
             helper.make_node("MaxPool", ["r2"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["p", "k2"], ["y"], name="project")]
    return _model(nodes, [_io("x", 1, 8, 16, 16)], [_io("y", 1, 8, 8, 8)], inits, opset=13)
