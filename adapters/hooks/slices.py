"""Output-column slices: which rows of a fused projection (GPT-2's ``c_attn``, Phi-3's
``qkv_proj``) an adapter covers. Shared by every method hosted on a linear layer."""

from __future__ import annotations

import torch

__all__ = ["part_ranges", "check_slices", "slices_index"]


def part_ranges(part) -> tuple:
    """The ``(start, stop)`` ranges of one ``out_slices`` entry: a range, or a tuple of ranges."""
    return (part,) if isinstance(part[0], int) else part


def check_slices(out_slices, out_features: int):
    """``out_slices`` normalised to ints, or a ValueError: one entry per part, each a ``(start, stop)``
    column range or a tuple of ranges (a part spread over the output, e.g. one range per head),
    all parts of one size."""
    if not out_slices:
        return None
    try:
        parts = tuple(
            (int(part[0]), int(part[1])) if not isinstance(part[0], (tuple, list)) else tuple((int(s), int(e)) for s, e in part)
            for part in out_slices
        )
    except (TypeError, ValueError, IndexError):
        raise ValueError(f"out_slices {out_slices!r} must be (start, stop) column ranges or tuples of them.") from None
    ranges = [r for part in parts for r in part_ranges(part)]
    sizes = {sum(stop - start for start, stop in part_ranges(part)) for part in parts}
    rows = [row for start, stop in ranges for row in range(start, stop)]
    if (
        len(sizes) != 1 or any(stop <= start for start, stop in ranges)
        or any(not 0 <= s < e <= out_features for s, e in ranges) or len(set(rows)) != len(rows)
    ):
        raise ValueError(
            f"out_slices {list(out_slices)} must be non-overlapping, non-empty column ranges within 0..{out_features}, "
            f"parts of equal size."
        )
    return parts


def slices_index(out_slices) -> torch.Tensor | None:
    """The covered output rows, part after part (the order of ``B``'s rows), or None."""
    if not out_slices:
        return None
    return torch.cat([torch.arange(start, stop) for part in out_slices for start, stop in part_ranges(part)])
