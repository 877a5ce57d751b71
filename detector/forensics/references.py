"""Reference locations: where a forensic check learns what "genuine" looks like in this series.

The null of a forensic check is the distribution of its score at random locations of the same
series, drawn from the same tissue the region proposals come from (lungs for CT, the body for
MR). A tampered region is a small part of a series, so the reference set is nearly all genuine;
the check's calibration is fitted once per series from it. No database or file access here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from detector.interface import Location, SliceImage
from detector.proposals import body_mask, lung_mask

REFERENCES_PER_SERIES = 600  # enough for a Pareto tail (60 exceedances) at little cost


def tissue_mask(image: SliceImage) -> np.ndarray:
    """Where proposals are looked for: CT lungs (the body when no lung shows), the MR body.

    Shared and read-only, like the masks it is made of.
    """
    if image.modality == "CT":
        lungs = lung_mask(image)
        if lungs.sum() >= 200:
            return lungs
    return body_mask(image)


def tissue_core(image: SliceImage, iterations: int = 2) -> np.ndarray:
    """The tissue mask eroded by ``iterations`` pixels, once per slice (the map checks' mask)."""
    return image.derived(
        f"tissue_core:{iterations}",
        lambda: _frozen(ndimage.binary_erosion(tissue_mask(image), iterations=iterations)),
    )


def tissue_reach(image: SliceImage, iterations: int) -> np.ndarray:
    """The tissue mask dilated by ``iterations`` pixels, once per slice (block searches)."""
    return image.derived(
        f"tissue_reach:{iterations}",
        lambda: _frozen(ndimage.binary_dilation(tissue_mask(image), iterations=iterations)),
    )


def _frozen(mask: np.ndarray) -> np.ndarray:
    mask.flags.writeable = False
    return mask


def neighbours_of(
    series: Sequence[SliceImage], k: int
) -> tuple[SliceImage | None, SliceImage | None]:
    """The slices before and after ``k`` in series order (None at the ends)."""
    prev = series[k - 1] if k > 0 else None
    nxt = series[k + 1] if k + 1 < len(series) else None
    return prev, nxt


def points_in(mask: np.ndarray, count: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """``count`` random (x, y) inside ``mask`` (fewer when the mask is empty)."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0 or count <= 0:
        return []
    pick = rng.integers(0, ys.size, count)
    return [(int(xs[i]), int(ys[i])) for i in pick]


def reference_locations(
    series: Sequence[SliceImage],
    count: int = REFERENCES_PER_SERIES,
    seed: int = 0,
    with_context: bool = False,
) -> list[Location]:
    """``count`` random tissue locations spread evenly over the slices of ``series``."""
    if not series:
        return []
    rng = np.random.default_rng(seed)
    n = len(series)
    per = np.bincount(np.arange(count) % n, minlength=n)  # as even as count allows
    out: list[Location] = []
    for k in np.flatnonzero(per):
        image = series[int(k)]
        context = tuple(series) if with_context else ()
        for x, y in points_in(tissue_mask(image), int(per[k]), rng):
            out.append(Location(image, x, y, context, neighbours_of(series, int(k))))
    return out
