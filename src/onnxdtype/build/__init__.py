"""The build side: `quantize` builds, verifies, repairs and times every requested dtype variant.

pipeline.py is the pipe; plan.py decides what to do before anything is written; data.py gives each module its
calibration and evaluation data; pool.py and worker.py build variants in parallel processes; publish.py writes
into the output folder and the manifest.
"""

from onnxdtype.build.pipeline import quantize
from onnxdtype.build.plan import Calibration, Module, applicability, find_modules

__all__ = ["Calibration", "Module", "applicability", "find_modules", "quantize"]
