"""Before / after / difference pictures of one tampered region (docs/attacks/*.png).

Matplotlib only; nothing here reads or writes DICOM.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from detector.lab.edits import TamperRecord


def save_montage(
    before: np.ndarray,
    after: np.ndarray,
    record: TamperRecord,
    path: str | Path,
) -> None:
    """Before / after / difference around the tampered disc, region marked, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Circle, Rectangle

    region = record.regions[0]
    for r in record.regions:
        if r.radius_px > region.radius_px:
            region = r
    x, y, rad = region.x, region.y, region.radius_px
    half = int(max(40, rad * 3))
    r0, r1 = max(0, y - half), min(before.shape[0], y + half)
    c0, c1 = max(0, x - half), min(before.shape[1], x + half)
    if record.modality == "CT":
        vmin, vmax = -1200.0, 200.0
    else:
        vmin, vmax = (float(v) for v in np.percentile(before, (0.5, 99.7)))
    diff = after.astype(np.float64) - before.astype(np.float64)
    lim = max(float(np.abs(diff).max()), 1.0)
    fig, axs = plt.subplots(1, 4, figsize=(12, 3.4))
    axs[0].imshow(after, cmap="gray", vmin=vmin, vmax=vmax)
    axs[0].add_patch(Rectangle((c0, r0), c1 - c0, r1 - r0, fill=False, color="yellow", lw=1.2))
    axs[0].set_title(f"tampered slice ({record.modality})")
    unit = "HU" if record.modality == "CT" else "units"
    for ax, img, title in ((axs[1], before, "before"), (axs[2], after, "after")):
        ax.imshow(img[r0:r1, c0:c1], cmap="gray", vmin=vmin, vmax=vmax)
        ax.set_title(title)
    im = axs[3].imshow(diff[r0:r1, c0:c1], cmap="coolwarm", vmin=-lim, vmax=lim)
    axs[3].set_title(f"after - before ({unit})")
    fig.colorbar(im, ax=axs[3], fraction=0.046)
    for ax in axs[1:]:
        ax.add_patch(Circle((x - c0, y - r0), rad, fill=False, color="lime", lw=1.0, ls="--"))
    for ax in axs:
        ax.set_xticks([])
        ax.set_yticks([])
    extra = f", |delta| <= {record.epsilon:g} {unit}" if record.epsilon else ""
    shape = f", {record.detail['shape']}" if record.detail and "shape" in record.detail else ""
    fig.suptitle(
        f"{record.attack}, family {record.family} ({record.type}{extra}{shape}); "
        "dashed circle = recorded region"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)
