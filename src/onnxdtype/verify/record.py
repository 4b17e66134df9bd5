"""The one place a verification record (the manifest's `verification`) is made, for builds and `onnxdtype verify`."""

from __future__ import annotations

from dataclasses import asdict

import onnxruntime as ort

from onnxdtype.results import Verification
from onnxdtype.verify.evaluate import SYNTHESIZED_NOTE, Criteria, EvalData, Reference, evaluate


def skipped(data: EvalData) -> Verification:
    """No input shape the fp32 model runs on could be made up: nothing was measured."""
    return {"data": data.source, "synthesized": True, "failure": None, "skipped": True}


def verify_variant(base: ort.InferenceSession | Reference, variant: ort.InferenceSession, data: EvalData,
                   criteria: Criteria) -> tuple[Verification, dict, str | None]:
    """Figures of the variant against fp32 on `data`: the record, the raw figures and the failure that counts.

    Synthesized inputs prove loading, not accuracy: their figures are recorded, never judged."""
    figures, failure = evaluate(base, variant, data.feeds, criteria, data.sequences)
    record: Verification = {"data": data.source, "synthesized": data.synthesized, **asdict(criteria), **figures,
                            "failure": failure}
    if data.synthesized:
        record.update(note=SYNTHESIZED_NOTE, failure=None, unjudged_failure=failure)
        failure = None
    return record, figures, failure
