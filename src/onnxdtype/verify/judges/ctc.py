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

Classes `alike` names read as one character: PaddleOCR's dictionary holds ASCII twice, as itself and in
full width (')' and '）', '2' and '２'), and guess.py pairs every character with its width twin (Unicode's <wide>
and <narrow> forms, after NFC) from metadata 'character'. The glyphs are the same; which of the two a recogniser
emits on Latin text is close to a coin toss. Measured: on the one stable held-out line every static 8-bit variant
of PP-OCRv4 rec misses, a photographed 'markers np.zeros like（coins)', a kernel-input variant with 7-bit weights
(BatchNorm folded before calibrating) differed in nothing but the last character, ')' against '）' (the variants
the search keeps misread it for real as well: 'marker8', dropped spaces). Such lines are counted alike and
reported apart (`width_form_lines`); `alike=""` compares the codes exactly.

Lines fp32 itself reads differently when its input is redrawn within its rounding (verify.rounding) or its
weights carry a quarter of an 8-bit step of noise (verify.weight_noise) are not judged; they are counted apart
(`unstable_in_fp32`). That photographed line is one: fp32 misreads it in 5 of 12 such weight draws.
"""

from __future__ import annotations

import unicodedata
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


def width_twins(characters: list[str]) -> dict[int, int]:
    """Class -> the first class reading as the same character up to width (`characters[i]` is class i)."""
    first: dict[str, int] = {}
    twins = {}
    for index, character in enumerate(characters):
        folded = "".join(_narrow(c) for c in unicodedata.normalize("NFC", character))
        if folded in first:
            twins[index] = first[folded]
        else:
            first[folded] = index
    return twins


def _narrow(character: str) -> str:
    """A full- or half-width form as its ordinary character ('）' -> ')', '\u3000' -> ' ')."""
    tag, _, code = unicodedata.decomposition(character).partition(" ")
    return chr(int(code, 16)) if tag in ("<wide>", "<narrow>") else character


def format_alike(twins: dict[int, int]) -> str:
    """The `alike` parameter: 'class=reads_as' pairs separated by spaces (a string survives CLI and manifest)."""
    return " ".join(f"{a}={b}" for a, b in sorted(twins.items()))


def _parse_alike(text: str) -> dict[int, int]:
    pairs = {}
    for item in text.split():
        a, eq, b = item.partition("=")
        require(eq == "=" and a.isdigit() and b.isdigit(), f"ctc: alike expects 'class=class' pairs, got {item!r}")
        pairs[int(a)] = int(b)
    return pairs


@register
class CtcJudge(TaskJudge):
    name = "ctc"
    unit = "lines"
    PARAMS: ClassVar[dict[str, tuple]] = {"blank": (int, 0), "layout": (("auto", "btc", "tbc"), "auto"),
                                          "margin": (float, UNDECIDED_MARGIN), "space": (int, None),
                                          "alike": (str, "")}

    def __init__(self, **params) -> None:
        super().__init__(**params)
        self.alike = _parse_alike(self.params["alike"])
        self.lines = 0
        self.same = 0
        self.chars = 0  # characters fp32 read
        self.edits = 0  # edits from fp32's reading to the variant's
        self.empty = 0  # lines fp32 reads as nothing: agreeing on them proves little
        self.undecided = 0  # lines read differently only where fp32's own top-2 are within the margin
        self.edge_spaces = 0  # lines read differently only in a space at either end
        self.width_forms = 0  # lines read differently only in characters' width forms (`alike`)

    def decisions(self, output: np.ndarray, ref: np.ndarray) -> list:
        """Each line's reading: its greedy decoding, width twins as one, without edge spaces."""
        blank, space = self.params["blank"] % output.shape[-1], self.params["space"]
        paths = self._folded(self._lines(output).argmax(2))
        return [tuple(trimmed(greedy_decode(path, blank), space)) for path in paths]

    def _folded(self, paths: np.ndarray) -> np.ndarray:
        """Argmax paths with every class in `alike` replaced by the class it reads as."""
        if not self.alike:
            return paths
        lookup = np.arange(max(int(paths.max(initial=0)) + 1, max(self.alike) + 1))
        lookup[list(self.alike)] = list(self.alike.values())
        return lookup[paths]

    def _add(self, ref: np.ndarray, got: np.ndarray, unstable: np.ndarray | None) -> None:
        require(ref.ndim == 3, f"ctc: expected per-step class scores [b, T, C] or [T, b, C], got shape {ref.shape}")
        ref, got = self._lines(ref), self._lines(got)
        blank = self.params["blank"] % ref.shape[2]  # -1: the last class is the blank
        space = self.params["space"]
        moved = np.zeros(len(ref), bool) if unstable is None else unstable
        raw_ref, raw_got = ref.argmax(2), got.argmax(2)
        for scores, r, g, r_raw, g_raw, fp32_unsure in zip(ref, self._folded(raw_ref), self._folded(raw_got),
                                                           raw_ref, raw_got, moved):
            read_ref, read_got = greedy_decode(r, blank), greedy_decode(g, blank)
            text_ref, text_got = trimmed(read_ref, space), trimmed(read_got, space)
            if fp32_unsure:
                self.unstable += 1
                self.unstable_differ += text_ref != text_got
                continue
            self.edge_spaces += read_ref != read_got and text_ref == text_got
            self.width_forms += read_ref == read_got and greedy_decode(r_raw, blank) != greedy_decode(g_raw, blank)
            steps = np.flatnonzero(r != g)
            coin_flips = text_ref != text_got and undecided(scores[steps], g_raw[steps], self.params["margin"]).all()
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
        width = f" ({self.width_forms} only in characters' full/half-width forms)" if self.width_forms else ""
        return f"{self.same}/{self.lines} lines decode identically{width}"

    def details(self) -> dict:
        chars = max(0.0, 1 - self.edits / self.chars) if self.chars else float(self.edits == 0)
        return {"char_agreement": chars, "chars": self.chars, "edits": self.edits, "empty_lines": self.empty,
                "undecided_lines": self.undecided, "edge_space_lines": self.edge_spaces,
                "width_form_lines": self.width_forms}
