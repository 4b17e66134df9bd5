"""Op sets and numeric facts the recipes, calibration and verification share: one table, read everywhere.

Each set says what it is for; two sets with different members mean two different questions (which ops have an
integer kernel for a constant weight; which ops a weight quantizer can replace; which ops only move data).
"""

from __future__ import annotations

import numpy as np

FP16_MAX = 65504.0  # largest finite float16

# Ops with an integer kernel in onnxruntime when their weight (this input index) is a constant float tensor:
# what static calibration measures and static/TensorRT Q/DQ quantizes.
KERNEL_WEIGHT_INPUT: dict[str, int] = {"Conv": 1, "ConvTranspose": 1, "MatMul": 1, "Gemm": 1}

# The weight axis holding each convolution's output channels (ConvTranspose's weight is [in, out/group, k...]):
# per-channel weight quantization, folds into a convolution's weights, weight noise per channel.
CONV_OUTPUT_AXIS: dict[str, int] = {"Conv": 0, "ConvTranspose": 1}

# What onnxruntime's quantize_dynamic replaces, by the index of the input that must be constant (q8).
DYNAMIC_WEIGHT_INPUT: dict[str, int] = {"MatMul": 1, "Gather": 0, "Attention": 1, "LSTM": 1, "Conv": 1}

# Ops whose float inputs recipes treat as weights (scaled, converted, quantized): ±Inf there is never meant,
# and these are the nodes repair may keep in higher precision when a recipe does not name what it replaced.
WEIGHT_OPS = frozenset({"MatMul", "Gemm", "Conv", "ConvTranspose", "Gather", "Attention", "LSTM", "GRU", "RNN"})

# Ops whose presence makes q8 choose uint8 weights (the seed's rule): int8-weight ConvInteger runs 4-12x slower.
UINT8_WEIGHT_TRIGGERS = frozenset({"Conv", "GroupQueryAttention", "MultiHeadAttention"})

# Ops that only move or reshape data: TensorRT moves Q/DQ across them itself.
DATA_MOVEMENT_OPS = ("Reshape", "Transpose", "Concat", "Gather", "GatherElements", "GatherND", "Slice", "Pad",
                     "Resize", "Upsample", "Flatten", "Squeeze", "Unsqueeze", "Split", "Expand", "Tile",
                     "Identity", "DepthToSpace", "SpaceToDepth", "Shape", "Size", "Cast")

# Ops that hold no float weights of their own: seeing them in a model means it is already quantized.
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})

# onnxruntime's type strings -> numpy, for feeding sessions.
ORT_NUMPY_TYPES: dict[str, type] = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int16)": np.int16, "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8, "tensor(uint16)": np.uint16, "tensor(uint32)": np.uint32, "tensor(uint64)": np.uint64,
    "tensor(bool)": np.bool_,
}
ORT_FLOAT_TYPES = ("tensor(float)", "tensor(double)")
