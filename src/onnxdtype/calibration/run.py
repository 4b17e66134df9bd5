"""One module's calibration from a data path: read and check the samples, hold some out, run the cached pass.

The build (`quantize --calib`) and `onnxdtype calibrate` both go through here, so they split the samples the
same way and share one cached ranges file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import onnx

from onnxdtype.calibration.data import HELD_OUT_FRACTION, ImageSpec, SampleSet, load_samples
from onnxdtype.calibration.ranges import CalibrationResult, calibrate


@dataclass
class Calibrated:
    result: CalibrationResult
    samples: SampleSet  # everything read (describe() says what)
    held_out: SampleSet  # the part kept for verification
    others: dict[str, CalibrationResult] = field(default_factory=dict)  # by method: the same part, other methods


def calibrate_path(model: onnx.ModelProto, data: str | Path, spec: str | Path | dict | ImageSpec | None,
                   method: str, out: Path, held_out: float = HELD_OUT_FRACTION, also: tuple[str, ...] = ()
                   ) -> Calibrated:
    """Calibrate `model` (normalized with CALIBRATION_PASSES) on the samples at `data`, caching in `out`; `also`
    names other methods to run on the same samples (each its own pass and cached file)."""
    samples = load_samples(data, model, spec)
    part, left_out = samples.split(held_out)
    others = {other: calibrate(model, part, other, out) for other in also if other != method}
    return Calibrated(calibrate(model, part, method, out), samples, left_out, others)
