"""Zoomed crops around a region, rendered on the server, with the heatmap over them.

A finding card shows the region at a size a person can read (a few kilobytes, not a whole
slice): the slice cropped to a square around the region, enlarged, with the detector's heatmap
drawn through the colour map the page's scale shows (``HEAT_STOPS``). No database here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from admin.images import ImageError, png, slice_grey

# The colour scale, low to high evidence; the page draws the same stops as a CSS gradient.
HEAT_STOPS = ((0.0, (0, 0, 0)), (0.33, (230, 0, 0)), (0.66, (255, 220, 0)), (1.0, (255, 255, 255)))
HEAT_MIN_ALPHA = 0.15  # below this heat the map is fully transparent (the anatomy shows)


def heat_rgba(heat: np.ndarray) -> np.ndarray:
    """Heat in [0, 1] through ``HEAT_STOPS``, opacity rising with the heat."""
    h = np.clip(heat, 0.0, 1.0)
    xs = [s for s, _ in HEAT_STOPS]
    rgba = np.zeros((*h.shape, 4), dtype=np.uint8)
    for channel in range(3):
        rgba[..., channel] = np.interp(h, xs, [c[channel] for _, c in HEAT_STOPS])
    alpha = np.clip((h - HEAT_MIN_ALPHA) / (1 - HEAT_MIN_ALPHA), 0, 1) ** 0.7 * 210
    rgba[..., 3] = alpha.astype(np.uint8)
    return rgba


def crop_box(x: int, y: int, radius: float, heat_side: int, shape: tuple[int, int]) -> tuple:
    """A square around the region: the heatmap patch or four radii, whichever is larger."""
    side = int(max(48, heat_side, 4 * max(radius, 4.0)))
    half = side // 2
    rows, cols = shape
    left = min(max(0, x - half), max(0, cols - side))
    top = min(max(0, y - half), max(0, rows - side))
    return left, top, min(cols, left + side), min(rows, top + side)


def crop_png(
    path: Path,
    modality: str,
    x: int,
    y: int,
    radius: float,
    heatmap: Path | None,
    out_size: int = 192,
    with_heat: bool = True,
    window: tuple[float, float] | None = None,
) -> bytes:
    """The crop around (x, y), enlarged to ``out_size`` px, optionally with the heatmap."""
    grey = slice_grey(path, modality, window)
    heat = None
    if heatmap is not None and heatmap.is_file():
        try:
            heat = np.asarray(Image.open(heatmap).convert("L"), dtype=np.float32) / 255.0
        except OSError as exc:
            raise ImageError(f"cannot read heatmap {heatmap.name}: {exc}") from exc
    left, top, right, bottom = crop_box(
        x, y, radius, max(heat.shape) if heat is not None else 0, grey.shape
    )
    base = Image.fromarray(grey).convert("RGBA")
    if with_heat and heat is not None:
        layer = Image.fromarray(heat_rgba(heat), mode="RGBA")
        hx, hy = x - heat.shape[1] // 2, y - heat.shape[0] // 2
        canvas = Image.new("RGBA", base.size, (0, 0, 0, 0))
        canvas.paste(layer, (hx, hy))  # PIL clips what falls outside the slice
        base.alpha_composite(canvas)
    crop = base.crop((left, top, right, bottom))
    scale = out_size / max(1, max(crop.size))
    crop = crop.resize(
        (max(1, round(crop.width * scale)), max(1, round(crop.height * scale))),
        Image.Resampling.LANCZOS,
    )
    draw = ImageDraw.Draw(crop)
    cx, cy = (x - left + 0.5) * scale, (y - top + 0.5) * scale
    r = max(4.0, radius * 1.3 * scale)
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=(80, 200, 255, 255), width=2)
    return png(crop.convert("RGB"))
