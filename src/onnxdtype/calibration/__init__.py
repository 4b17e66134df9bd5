"""Calibration data and the one calibration pass the static dtypes share.

`load_samples` reads what the user gives (.npz / .npy / images + preprocessing spec) and checks it
against the model's inputs; `calibrate` runs the fp32 model over it once and caches the ranges.
"""

from onnxdtype.calibration.data import ImageSpec, SampleSet, load_image_spec, load_samples, model_inputs
from onnxdtype.calibration.ranges import METHODS, CalibrationResult, calibrate, read_ranges

__all__ = ["METHODS", "CalibrationResult", "ImageSpec", "SampleSet", "calibrate", "load_image_spec", "load_samples",
           "model_inputs", "read_ranges"]
