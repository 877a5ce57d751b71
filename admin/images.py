"""Slice PNGs for the report, rendered on the server from the stored DICOM files.

Files are found through the index (``storage.admin_images``), never from a UID in a URL.
CT is shown through the dataset's own window when it has one, else a window wide enough for
lungs and soft tissue; MR through its 0.5-99.5 percentile range. A region overlay draws the
detector's heatmap (its patch is centred on the region, in slice pixels) as a transparent
colour map and the region as a circle.

The receiver accepts every instance that is well formed, not only ones these renderers know:
whatever cannot be shown (an unusable Modality LUT, a colour or odd-shaped image, a
compressed file without a decoder) raises ``ImageError``, which the routes answer with 422;
nothing here may fail with another exception.
"""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image, ImageDraw
from pydicom.pixels import apply_modality_lut

DEFAULT_CT_WINDOW = (-400.0, 1600.0)  # centre, width (HU)
FLAGGED_COLOUR = (255, 64, 64)
CHECKED_COLOUR = (80, 200, 255)
ADMIN_COLOUR = (255, 200, 0)


class ImageError(ValueError):
    """The stored file cannot be shown as an image (the message says why)."""


def _window(ds: pydicom.Dataset, modality: str) -> tuple[float, float] | None:
    if modality != "CT":
        return None
    centre, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if centre is not None and width is not None:
        centre = centre[0] if isinstance(centre, pydicom.multival.MultiValue) else centre
        width = width[0] if isinstance(width, pydicom.multival.MultiValue) else width
        try:
            low, span = float(centre), float(width)
        except (TypeError, ValueError):  # an empty or non-numeric window: use ours
            return DEFAULT_CT_WINDOW
        if span > 1 and np.isfinite(low) and np.isfinite(span):
            return low, span
    return DEFAULT_CT_WINDOW


def _modality_values(stored: np.ndarray, ds: pydicom.Dataset, name: str) -> np.ndarray:
    """Stored values through the Modality LUT or rescale, as float32."""
    try:
        values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float32)
    except Exception as exc:  # a one-entry or malformed LUT, a non-numeric rescale
        raise ImageError(f"{name}: its Modality LUT or rescale cannot be applied: {exc}") from exc
    if values.shape != stored.shape or not np.isfinite(values).any():
        raise ImageError(f"{name}: the Modality LUT gives no usable values")
    return values


def slice_grey(path: Path, modality: str, window: tuple[float, float] | None = None) -> np.ndarray:
    """The slice as 8-bit grey, through ``window`` (centre, width) or its own window."""
    try:
        ds = pydicom.dcmread(path)
        stored = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for undecodable files
        raise ImageError(f"cannot decode {path.name}: {exc}") from exc
    if stored.ndim == 3 and stored.shape[-1] not in (3, 4):
        stored = stored[stored.shape[0] // 2]  # multi-frame: the middle frame
    if stored.ndim != 2:
        raise ImageError(f"{path.name}: not a greyscale slice (shape {stored.shape})")
    if stored.size == 0:
        raise ImageError(f"{path.name}: the image is empty")
    values = _modality_values(stored, ds, path.name)
    window = window or _window(ds, modality)
    if window is not None:
        low, high = window[0] - window[1] / 2, window[0] + window[1] / 2
    else:
        finite = values[np.isfinite(values)]
        low, high = (float(v) for v in np.percentile(finite, (0.5, 99.5)))
    scaled = (values - low) / max(high - low, 1e-6)
    grey = np.clip(scaled * 255, 0, 255).astype(np.uint8)
    if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
        grey = 255 - grey
    return grey


def png(image: Image.Image) -> bytes:
    out = BytesIO()
    image.save(out, format="PNG", optimize=False)
    return out.getvalue()


def slice_png(
    path: Path,
    modality: str,
    max_size: int | None = None,
    window: tuple[float, float] | None = None,
) -> bytes:
    image = Image.fromarray(slice_grey(path, modality, window))
    if max_size and max(image.size) > max_size:
        image.thumbnail((max_size, max_size))
    return png(image)


def _heat_colours(heat: np.ndarray) -> np.ndarray:
    """A 'hot' colour map (black-red-yellow-white) with opacity rising with the evidence."""
    h = np.clip(heat, 0.0, 1.0)
    rgba = np.zeros((*h.shape, 4), dtype=np.uint8)
    rgba[..., 0] = np.clip(h * 3, 0, 1) * 255
    rgba[..., 1] = np.clip(h * 3 - 1, 0, 1) * 255
    rgba[..., 2] = np.clip(h * 3 - 2, 0, 1) * 255
    rgba[..., 3] = (np.clip(h, 0, 1) ** 0.7 * 190).astype(np.uint8)
    return rgba


def overlay_png(
    path: Path,
    modality: str,
    circles: list[tuple[int, int, float, tuple[int, int, int]]],
    heatmap: Path | None = None,
    heat_centre: tuple[int, int] | None = None,
    scale: int = 1,
) -> bytes:
    """The slice with a heatmap centred on ``heat_centre`` and circles (x, y, radius, colour)."""
    base = Image.fromarray(slice_grey(path, modality)).convert("RGBA")
    if heatmap is not None and heat_centre is not None and heatmap.is_file():
        heat = np.asarray(Image.open(heatmap).convert("L"), dtype=np.float32) / 255.0
        layer = Image.fromarray(_heat_colours(heat), mode="RGBA")
        x, y = heat_centre
        base.alpha_composite(
            layer,
            dest=(max(0, x - heat.shape[1] // 2), max(0, y - heat.shape[0] // 2)),
            source=(
                max(0, heat.shape[1] // 2 - x),
                max(0, heat.shape[0] // 2 - y),
            ),
        )
    if scale > 1:
        base = base.resize((base.width * scale, base.height * scale), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(base)
    for x, y, radius, colour in circles:
        r = max(3.0, radius * 1.3) * scale
        cx, cy = (x + 0.5) * scale, (y + 0.5) * scale
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=colour, width=max(2, scale))
    return png(base.convert("RGB"))
