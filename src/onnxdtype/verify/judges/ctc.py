"""CTC text recognition: does the variant read each line exactly as fp32 does?

Per-step class scores [b, T, C] (or [T, b, C]) are greedy-decoded: argmax per step, repeats collapsed, blanks
dropped. A line agrees only when the decoded sequences are identical, since one wrong character is a wrong
reading — unless every step where the variant's path leaves fp32's is one fp32 itself has not decided (its top-2
within `margin`, base.undecided): those lines are counted as agreeing and reported apart. Character agreement
(1 - edit distance / length) is shown to tell one slip from garbage.

A space at either end of a line is the crop's margin, not text: when `space` names the space's class (PaddleOCR
recognisers append one to their dictionary), it is trimmed from both readings before they are compared. Measured:
PP-OCRv4 rec reads 5 of its 11 held-out lines with a leading or trailing space; its 8-bit variants drop or add
one on up to 3 of them, whose text is otherwise identical.

Lines fp32 itself reads differently when its input is redrawn within its rounding (verify.rounding) are not
judged; they are counted apart (`unstable_in_fp32`).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from onnxdtype.verify.judges.base import UNDECIDED_MARGIN, TaskJudge, register, require, undecided


def greedy_decode(path: np.ndarray, blank: int) -> list[int]:
    """Best-path CTC decoding of one line's per-step argmax: collapse repeats, then drop blanks."""
    labels = path.tolist()
    return [c for i, c in enumerate(labels) if c != blank and (i == 0 or c != labels[i - 1])]


def trimmed(labels: list[int], space: int | None) -> list[int]:
    """A decoded line without `space` labels at either end."""
    start, end = 0, len(labels)
    while space is not None and start < end and labels[start] == space:
        start += 1
    while space is not None and end > start and labels[end - 1] == space:
        end -= 1
    return labels[start:end]


def edit_distance(a: list[int], b: list[int]) -> int:
    """Levenshtein distance (insertions, deletions, substitutions)."""
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


@register
class CtcJudge(TaskJudge):
    name = "ctc"
    unit = "lines"
    PARAMS: ClassVar[dict[str, tuple]] = {"blank": (int, 0), "layout": (("auto", "btc", "tbc"), "auto"),
                                          "margin": (float, UNDECIDED_MARGIN), "space": (int, None)}

    def __init__(self, **params) -> None:
        super().__init__(**params)
        self.lines = 0
        self.same = 0
        self.chars = 0  # characters fp32 read
        self.edits = 0  # edits from fp32's reading to the variant's
        self.empty = 0  # lines fp32 reads as nothing: agreeing on them proves little
        self.undecided = 0  # lines read differently only where fp32's own top-2 are within the margin
        self.edge_spaces = 0  # lines read differently only in a space at either end

    def decisions(self, output: np.ndarray, ref: np.ndarray) -> list:
        """Each line's reading: its greedy decoding without edge spaces."""
        blank, space = self.params["blank"] % output.shape[-1], self.params["space"]
        return [tuple(trimmed(greedy_decode(path, blank), space)) for path in self._lines(output).argmax(2)]

    def _add(self, ref: np.ndarray, got: np.ndarray, unstable: np.ndarray | None) -> None:
        require(ref.ndim == 3, f"ctc: expected per-step class scores [b, T, C] or [T, b, C], got shape {ref.shape}")
        ref, got = self._lines(ref), self._lines(got)
        blank = self.params["blank"] % ref.shape[2]  # -1: the last class is the blank
        space = self.params["space"]
        moved = np.zeros(len(ref), bool) if unstable is None else unstable
        for scores, r, g, fp32_unsure in zip(ref, ref.argmax(2), got.argmax(2), moved):
            read_ref, read_got = greedy_decode(r, blank), greedy_decode(g, blank)
            text_ref, text_got = trimmed(read_ref, space), trimmed(read_got, space)
            if fp32_unsure:
                self.unstable += 1
                self.unstable_differ += text_ref != text_got
                continue
            self.edge_spaces += read_ref != read_got and text_ref == text_got
            steps = np.flatnonzero(r != g)
            coin_flips = text_ref != text_got and undecided(scores[steps], g[steps], self.params["margin"]).all()
            self.lines += 1
            self.same += text_ref == text_got or bool(coin_flips)
            self.undecided += bool(coin_flips)
            self.chars += len(text_ref)
            self.empty += not text_ref
            self.edits += edit_distance(text_ref, text_got)

    def _lines(self, scores: np.ndarray) -> np.ndarray:
        """Scores as [b, T, C]."""
        return scores.swapaxes(0, 1) if self._time_first(scores.shape) else scores

    def _time_first(self, shape: tuple[int, ...]) -> bool:
        """[T, 1, C] is read time-first when layout is auto: a batch of one line is the common export."""
        layout = self.params["layout"]
        return layout == "tbc" or (layout == "auto" and shape[1] == 1 and shape[0] > 1)

    def agreement(self) -> float:
        return self.same / self.lines if self.lines else 1.0

    def compared(self) -> int:
        return self.lines

    def summary(self) -> str:
        return f"{self.same}/{self.lines} lines decode identically"

    def details(self) -> dict:
        chars = max(0.0, 1 - self.edits / self.chars) if self.chars else float(self.edits == 0)
        return {"char_agreement": chars, "chars": self.chars, "edits": self.edits, "empty_lines": self.empty,
                "undecided_lines": self.undecided, "edge_space_lines": self.edge_spaces}
