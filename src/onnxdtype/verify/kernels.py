"""What onnxruntime actually runs: the integer and low-bit kernels in its optimized graph of a variant.

A QDQ file says where integers may go; onnxruntime's graph optimizer decides what runs (it forms QLinearConv only
when a QuantizeLinear follows the Conv, and leaves Q/DQ pairs at every float boundary). A speed claim stands beside
these counts: integer kernels that ran, and the Q/DQ left converting between integer and float.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

import onnx
import onnxruntime as ort

# Kernels that compute on 8-bit (or lower) integers, by the name onnxruntime gives them in its optimized graph.
INTEGER_KERNELS = frozenset({
    "QLinearConv", "QLinearMatMul", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "ConvInteger", "MatMulInteger",
    "QGemm", "QLinearAdd", "QLinearMul", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearConcat", "QLinearAveragePool",
    "QLinearGlobalAveragePool", "QLinearSoftmax", "QLinearWhere", "QAttention", "DynamicQuantizeLSTM",
    "MatMulNBits", "MatMulBnb4", "QLinearConvTranspose", "QLinearReduceMean",
})
CONVERSIONS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})


def kernels(path: Path) -> dict | None:
    """{"integer": {op: count}, "conversions": {op: count}, "float_nodes": n} of the graph onnxruntime's CPU EP runs
    at its default optimizations; None for a model whose optimized graph cannot be written."""
    with tempfile.TemporaryDirectory(prefix="onnxdtype-optimized-") as tmp:
        options = ort.SessionOptions()
        options.log_severity_level = 4
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        # only the ops are read: the optimized weights go to a file of their own, unpacked (fp16 on a 0.75 GiB
        # model: 3.0x the model's size in memory while the optimized graph was serialized with them, 1.1x so)
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                         "optimized.onnx.data")
        options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        options.add_session_config_entry("session.disable_prepacking", "1")
        try:
            ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            optimized = onnx.load(options.optimized_model_filepath, load_external_data=False)
        except Exception:  # an optimized graph onnxruntime cannot write: no claim made
            return None
    counts = Counter(n.op_type for n in optimized.graph.node)
    integer = {op: n for op, n in sorted(counts.items()) if op in INTEGER_KERNELS}
    conversions = {op: n for op, n in sorted(counts.items()) if op in CONVERSIONS}
    return {"integer": integer, "conversions": conversions,
            "float_nodes": sum(counts.values()) - sum(integer.values()) - sum(conversions.values())}
