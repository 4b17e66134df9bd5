"""fp32's own noise floor: the task units whose fp32 reading changes when the input moves within its own rounding.

An image reaches a model as 8-bit pixels scaled and shifted, so every float input value sits on a grid of 256 levels
and stands for any value within half a level of it. A reading that changes when the input is drawn again within that
half level is not one the image decides, and a variant's different reading there says nothing about the variant.
Measured on PP-OCRv4 rec (held-out lines): two lines of scikit-image's photographed page read differently under 3
and 5 of 8 such draws (fp32's top-2 at 0.50/0.50 between blank and space at several steps), and every 8-bit variant
read them differently too, while no rendered line moved in 16 draws, nor under Gaussian noise of two gray levels.
Judges with per-unit decisions (lines, labels) leave such units out of their verdict and count them apart.

Only inputs whose values over the evaluation data sit on one evenly spaced grid of 32 to 256 levels (per channel of
a 4-D input, for per-channel normalization) are redrawn; token ids, masks and continuous-valued inputs are not,
and a model without such an input gets no floor (nothing is left out).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

ROUNDING_DRAWS = 8  # redraws per sample: the page lines above moved in 3 and 5 of 8
GRID_LEVELS = 256  # an 8-bit source
MIN_LEVELS = 32  # fewer distinct values (a 0/1 mask stored as float) is not an image, and would get a huge step
ROUNDING_SEED = 0  # fixed: the same data gives the same floor in every build


def rounding_steps(feeds: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per float input on an 8-bit grid, its step (a scalar, or one per channel of axis 1 broadcastable to it).

    One pass, one sample at a time (evaluation samples are read from disk when used), keeping at most GRID_LEVELS
    distinct values per input and channel: more, and it is not a grid."""
    whole: dict[str, np.ndarray | None] = {}
    channels: dict[str, list[np.ndarray | None] | None] = {}
    for feed in feeds:
        for name, value in feed.items():
            value = np.asarray(value)
            if not np.issubdtype(value.dtype, np.floating):
                continue
            whole[name] = _levels(whole.get(name, _EMPTY), value)
            if value.ndim != 4 or channels.get(name, []) is None:
                channels[name] = None
                continue
            known = channels.get(name) or [_EMPTY] * value.shape[1]
            channels[name] = [_levels(k, value[:, c]) for c, k in enumerate(known)] \
                if len(known) == value.shape[1] else None
    steps: dict[str, np.ndarray] = {}
    for name, levels in whole.items():
        step = _grid_step(levels)
        per_channel = [_grid_step(c) for c in channels.get(name) or []]
        if step is not None:
            steps[name] = np.float32(step)
        elif per_channel and all(s is not None for s in per_channel):
            steps[name] = np.asarray(per_channel, np.float32).reshape(1, -1, 1, 1)
    return steps


def redrawn(feed: dict[str, np.ndarray], steps: dict[str, np.ndarray], rng: np.random.Generator
            ) -> dict[str, np.ndarray]:
    """`feed` with each gridded input moved by uniform noise within half its step."""
    return {name: (value + (rng.uniform(-0.5, 0.5, value.shape) * steps[name])).astype(value.dtype)
            if name in steps else value for name, value in feed.items()}


_EMPTY = np.empty(0)


def _levels(known: np.ndarray | None, values: np.ndarray) -> np.ndarray | None:
    """The distinct values seen so far with `values` added; None once there are more than an 8-bit grid holds."""
    if known is None:
        return None
    levels = np.union1d(known, np.unique(values))
    return levels if levels.size <= GRID_LEVELS else None


def _grid_step(levels: np.ndarray | None) -> float | None:
    if levels is None or levels.size < MIN_LEVELS:
        return None
    gaps = np.diff(levels.astype(np.float64))
    step = float(gaps.min())
    multiples = gaps / step
    return step if np.allclose(multiples, np.round(multiples), atol=1e-3) else None
