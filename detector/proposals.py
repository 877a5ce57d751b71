"""Where to look when nobody points: automatic region proposals on one slice.

A PACS forwards whole studies, so the service chooses the regions itself:

- ``proposal``: anatomy-aware candidates. CT: compact soft-tissue blobs of nodule size
  (3-32 mm, denser than -400 HU) inside the lungs, where injected nodules land. MR: compact
  bright blobs of mass size (5-40 mm) inside the breast. Removal leaves no blob, which is
  why the sliding window exists.
- ``window``: a coarse grid over the lungs (CT) or the body (MR), every ``stride_px``. Off when
  the stride is 0; the scoring pipeline turns it on where the device makes it affordable.

Each proposal carries a strength (for capping) and an approximate radius in pixels. All of
them are recorded with the verdict, so a study with no finding still shows what was checked.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from detector.interface import SliceImage


@dataclass(frozen=True)
class Proposal:
    x: int  # column
    y: int  # row
    radius_px: float
    source: str  # "proposal" or "window"
    strength: float  # higher first when a cap applies


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(mask)
    if count == 0:
        return mask
    sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, count + 1))
    return labels == (int(np.argmax(sizes)) + 1)


def _frozen(mask: np.ndarray) -> np.ndarray:
    mask.flags.writeable = False  # shared by every caller on this slice: never edited in place
    return mask


def body_mask(image: SliceImage) -> np.ndarray:
    """The patient (not air, not the table): the largest dense region, holes filled.

    Computed once per slice object and shared (read-only): every check needs it.
    """
    return image.derived("body_mask", lambda: _frozen(_body_mask(image)))


def _body_mask(image: SliceImage) -> np.ndarray:
    px = image.pixels
    if image.modality == "CT":
        dense = px > -500
    else:
        low, high = np.percentile(px, [1, 99])
        dense = px > low + 0.1 * (high - low)
    dense = ndimage.binary_opening(dense, iterations=2)
    return ndimage.binary_fill_holes(_largest_component(dense))


def lung_mask(image: SliceImage, body: np.ndarray | None = None) -> np.ndarray:
    """CT lungs: air inside the body (< -400 HU), with vessels and nodules filled in.

    With the slice's own body mask (``body`` None) it is computed once per slice object.
    """
    if body is None:
        return image.derived("lung_mask", lambda: _frozen(_lung_mask(image, body_mask(image))))
    return _lung_mask(image, body)


def _lung_mask(image: SliceImage, body: np.ndarray) -> np.ndarray:
    air = (image.pixels < -400) & body
    air = ndimage.binary_opening(air, iterations=2)
    labels, count = ndimage.label(air)
    if count == 0:
        return air
    sizes = ndimage.sum_labels(air, labels, index=np.arange(1, count + 1))
    keep = np.isin(labels, 1 + np.flatnonzero(sizes >= 0.01 * air.size))
    closed = ndimage.binary_closing(keep, iterations=6)
    return ndimage.binary_fill_holes(closed) & body


def _blobs(
    candidate: np.ndarray,
    region: np.ndarray,
    image: SliceImage,
    diameter_mm: tuple[float, float],
    contrast: np.ndarray,
) -> list[Proposal]:
    labels, count = ndimage.label(candidate & region)
    if count == 0:
        return []
    index = np.arange(1, count + 1)
    areas = ndimage.sum_labels(np.ones_like(labels), labels, index=index)
    spacing = float(np.sqrt(image.pixel_spacing_mm[0] * image.pixel_spacing_mm[1]))
    diameters = 2 * np.sqrt(areas / np.pi) * spacing
    centres = ndimage.center_of_mass(candidate, labels, index)
    objects = ndimage.find_objects(labels)
    means = ndimage.mean(contrast, labels, index)
    out = []
    for i, (area, diameter, centre, box) in enumerate(
        zip(areas, diameters, centres, objects, strict=True)
    ):
        if not diameter_mm[0] <= diameter <= diameter_mm[1] or box is None:
            continue
        box_area = (box[0].stop - box[0].start) * (box[1].stop - box[1].start)
        if area / box_area < 0.45:  # elongated: a vessel along the slice, not a nodule
            continue
        y, x = (int(round(c)) for c in centre)
        out.append(Proposal(x, y, float(diameter / 2 / spacing), "proposal", float(means[i])))
    return out


def blob_proposals(image: SliceImage) -> list[Proposal]:
    body = body_mask(image)
    if image.modality == "CT":
        lungs = lung_mask(image)
        solid = image.pixels > -400
        return _blobs(solid, lungs, image, (3.0, 32.0), image.pixels)
    inside = image.pixels[body]
    if inside.size == 0:
        return []
    threshold = np.percentile(inside, 97)
    smooth = ndimage.gaussian_filter(image.pixels, 1.0)
    return _blobs(smooth > threshold, body, image, (5.0, 40.0), smooth)


def window_proposals(image: SliceImage, stride_px: int) -> list[Proposal]:
    if stride_px <= 0:
        return []
    body = body_mask(image)
    region = lung_mask(image) if image.modality == "CT" else body
    rows, cols = region.shape
    out = []
    for y in range(stride_px // 2, rows, stride_px):
        for x in range(stride_px // 2, cols, stride_px):
            if region[y, x]:
                out.append(Proposal(x, y, stride_px / 2, "window", 0.0))
    return out


def propose(image: SliceImage, stride_px: int = 0, max_blobs: int = 8) -> list[Proposal]:
    """Blob candidates (strongest ``max_blobs``) plus the coarse window grid."""
    blobs = sorted(blob_proposals(image), key=lambda p: p.strength, reverse=True)[:max_blobs]
    return blobs + window_proposals(image, stride_px)
