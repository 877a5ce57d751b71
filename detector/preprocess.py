"""From modality units to the [0, 1] patches the networks were trained on.

The reading itself (DICOM -> modality LUT -> HU, compressed transfer syntaxes through pydicom's
pixel-data plugins) lives in :mod:`detector.slices`; this module owns what happens after:

- CT: Hounsfield units clipped to the BTD authors' window [-700, 2000] and scaled by
  ``(hu + 700) / 2700`` — the published weights expect exactly this.
- MR: scanner units have no absolute meaning, so intensities are scaled by a robust per-volume
  range (0.5 / 99.5 percentiles, :func:`detector.slices.volume_intensity_range`) and clipped to
  [0, 1]. When a slice arrives without a volume range, the slice's own percentiles are used.
- Patches are square, centred on (x = column, y = row): rows ``y - size//2 ... y - size//2 +
  size - 1``. Outside the image they are zero padded *around* the point, so the point stays at
  the centre even at the border (the BTD demo shifted border patches instead, moving the point).

The :class:`Preprocessing` record travels inside every checkpoint so scoring repeats training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from detector.interface import Location, SliceImage

CT_WINDOW_HU: tuple[float, float] = (-700.0, 2000.0)
MR_PERCENTILES: tuple[float, float] = (0.5, 99.5)
MODALITIES = ("CT", "MR")


def normalise_modality(modality: str) -> str:
    """Accept the spellings users type (``MRI``, ``mr``, ``ct``) and return ``CT`` or ``MR``."""
    m = modality.strip().upper()
    if m == "MRI":
        m = "MR"
    if m not in MODALITIES:
        raise ValueError(f"modality must be CT or MR (MRI), got {modality!r}")
    return m


@dataclass(frozen=True)
class Preprocessing:
    """Everything needed to turn modality units into network input; stored in checkpoints."""

    modality: str
    patch_size: int
    ct_window: tuple[float, float] = CT_WINDOW_HU
    mr_percentiles: tuple[float, float] = MR_PERCENTILES

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> Preprocessing:
        return cls(
            modality=normalise_modality(str(data["modality"])),
            patch_size=int(data["patch_size"]),
            ct_window=tuple(float(v) for v in data.get("ct_window", CT_WINDOW_HU)),  # type: ignore[arg-type]
            mr_percentiles=tuple(  # type: ignore[arg-type]
                float(v) for v in data.get("mr_percentiles", MR_PERCENTILES)
            ),
        )


def ct_to_unit(hu: np.ndarray, window: tuple[float, float] = CT_WINDOW_HU) -> np.ndarray:
    """Clip HU to ``window`` and scale to [0, 1] (float32)."""
    low, high = window
    out = (np.clip(np.asarray(hu, dtype=np.float32), low, high) - low) / (high - low)
    return out.astype(np.float32, copy=False)


def robust_range(
    pixels: np.ndarray, percentiles: tuple[float, float] = MR_PERCENTILES
) -> tuple[float, float]:
    """Percentile range of one slice (fallback when no per-volume range is known)."""
    low, high = np.percentile(np.asarray(pixels, dtype=np.float32), percentiles)
    if not high > low:
        high = low + 1.0
    return float(low), float(high)


def mr_to_unit(pixels: np.ndarray, intensity_range: tuple[float, float]) -> np.ndarray:
    """Scale MR intensities by ``(low, high)`` to [0, 1], clipping the tails."""
    low, high = intensity_range
    if not high > low:
        raise ValueError(f"MR intensity range must have high > low, got {intensity_range}")
    out = (np.asarray(pixels, dtype=np.float32) - low) / (high - low)
    return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)


def to_unit(image: SliceImage, prep: Preprocessing) -> np.ndarray:
    """A whole slice in [0, 1] as the network expects, checking the modality matches."""
    modality = normalise_modality(image.modality)
    if modality != prep.modality:
        raise ValueError(
            f"{image.source or 'slice'}: this detector was trained on {prep.modality}, "
            f"but the slice is {modality}"
        )
    if image.pixels.ndim != 2:
        raise ValueError(
            f"{image.source or 'slice'}: expected 2-D pixels, got shape {image.pixels.shape}"
        )
    if modality == "CT":
        return ct_to_unit(image.pixels, prep.ct_window)
    rng = image.intensity_range or robust_range(image.pixels, prep.mr_percentiles)
    return mr_to_unit(image.pixels, rng)


def extract_patch(unit: np.ndarray, x: int, y: int, size: int) -> np.ndarray:
    """A ``size`` x ``size`` patch centred on column ``x``, row ``y``; zeros outside the image."""
    rows, cols = unit.shape
    top, left = int(y) - size // 2, int(x) - size // 2
    out = np.zeros((size, size), dtype=np.float32)
    r0, r1 = max(top, 0), min(top + size, rows)
    c0, c1 = max(left, 0), min(left + size, cols)
    if r0 < r1 and c0 < c1:
        out[r0 - top : r1 - top, c0 - left : c1 - left] = unit[r0:r1, c0:c1]
    return out


def patches_for(locations: Sequence[Location], prep: Preprocessing) -> np.ndarray:
    """Patches (N, size, size) for many locations; each slice is normalised once."""
    cache: dict[int, np.ndarray] = {}
    out = np.empty((len(locations), prep.patch_size, prep.patch_size), dtype=np.float32)
    for i, loc in enumerate(locations):
        key = id(loc.image)
        if key not in cache:
            cache[key] = to_unit(loc.image, prep)
        out[i] = extract_patch(cache[key], loc.x, loc.y, prep.patch_size)
    return out


def body_mask(unit: np.ndarray, modality: str) -> np.ndarray:
    """Pixels inside the patient, for training patches "inside the body".

    CT: soft tissue and bone (> -500 HU) of the largest connected component, holes filled so
    the lungs count as inside. MR: pixels above 10 % of the robust range, holes filled.
    """
    from scipy import ndimage

    modality = normalise_modality(modality)
    if modality == "CT":
        threshold = (-500.0 - CT_WINDOW_HU[0]) / (CT_WINDOW_HU[1] - CT_WINDOW_HU[0])
    else:
        threshold = 0.1
    mask = unit > threshold
    labels, count = ndimage.label(mask)
    if count > 1:
        sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, count + 1))
        mask = labels == (int(np.argmax(sizes)) + 1)
    return ndimage.binary_fill_holes(mask)
