"""Task judges: each model output is judged on what it is for (top-1 class, boxes, text read, neighbours,
foreground), not on raw closeness to fp32 (SPEC.md, "Verification defaults").

Importing the package registers every judge in JUDGES.
"""

from onnxdtype.verify.judges import classify, ctc, dense, detect, embed, generic, states  # noqa: F401  (register)
from onnxdtype.verify.judges.base import JUDGES, Judge, TaskSpec, make_judge, parse_task, required_agreement
from onnxdtype.verify.judges.guess import guess_tasks
from onnxdtype.verify.judges.states import recurrent_pairs

__all__ = ["JUDGES", "Judge", "TaskSpec", "guess_tasks", "make_judge", "parse_task", "recurrent_pairs",
           "required_agreement"]
