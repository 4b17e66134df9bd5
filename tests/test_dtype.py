import pytest

from onnxdtype.dtype import INFO, DType, parse_dtype, parse_dtype_list
from onnxdtype.errors import OnnxDtypeError
from onnxdtype.naming import variant_filename


@pytest.mark.parametrize("text, expected", [
    ("fp16", DType.FP16), ("F16", DType.FP16), ("float16", DType.FP16), ("HALF", DType.FP16),
    ("f32", DType.FP32), ("float", DType.FP32), ("float32", DType.FP32),
    ("quantized", DType.Q8), ("q8", DType.Q8), ("i8", DType.INT8), ("INT8", DType.INT8),
    ("u8u8", DType.U8U8), ("s8u8", DType.S8U8), ("s8s8", DType.S8S8), ("q4", DType.Q4), ("Q4F16", DType.Q4F16),
    ("bnb4", DType.BNB4), (" q4 ", DType.Q4),
])
def test_parse_accepts_names_and_aliases(text, expected):
    assert parse_dtype(text) is expected


def test_unknown_name_lists_valid_ones():
    with pytest.raises(OnnxDtypeError, match=r"unknown dtype 'fp12'.*fp16.*q4f16"):
        parse_dtype("fp12")


@pytest.mark.parametrize("name", ["bf16", "fp8", "int4", "uint4", "e4m3"])
def test_known_types_without_recipe_say_so(name):
    with pytest.raises(OnnxDtypeError, match=f"no recipe builds {name}"):
        parse_dtype(name)


def test_table_covers_the_ten_seed_dtypes_with_unique_suffixes():
    assert [d.value for d in DType] == ["fp32", "fp16", "q8", "int8", "s8s8", "s8u8", "u8u8", "q4", "q4f16", "bnb4"]
    suffixes = [INFO[d].suffix for d in DType]
    assert len(set(suffixes)) == len(suffixes)
    assert {d for d in DType if INFO[d].needs_calibration} == {DType.INT8, DType.S8S8, DType.S8U8, DType.U8U8}


def test_fallback_chains_follow_spec_and_end_at_fp32():
    assert INFO[DType.Q4F16].fallback == ("q4", "fp16", "fp32")
    assert INFO[DType.BNB4].fallback == ("q4", "fp32")
    assert INFO[DType.S8U8].fallback == INFO[DType.INT8].fallback == ("q8", "fp32")
    assert INFO[DType.Q8].fallback == ("fp32",)
    assert all(INFO[d].fallback[-1] == "fp32" for d in DType if d is not DType.FP32)


def test_dtype_lists():
    assert parse_dtype_list("all") == [d for d in DType if d is not DType.FP32]
    assert parse_dtype_list("q8, fp16,q8") == [DType.FP16, DType.Q8]
    with pytest.raises(OnnxDtypeError, match="no dtype given"):
        parse_dtype_list(" , ")
    with pytest.raises(OnnxDtypeError, match="fp32 is the base model itself"):
        parse_dtype_list("fp32")
    assert parse_dtype_list("fp32,q8") == [DType.Q8]


def test_file_names():
    assert variant_filename("det", DType.FP32) == "det.onnx"
    assert variant_filename("det", DType.Q4F16) == "det_q4f16.onnx"
