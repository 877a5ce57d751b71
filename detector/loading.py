"""Load whichever detector a checkpoint holds, ready to score.

Sits above ``detector.checkpoint`` (the file format) and the two detector modules, which both
build on the format: the format never imports the models.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from detector.checkpoint import load_checkpoint


def load_detector(
    path: str | Path,
    modality: str | None = None,
    *,
    device: str = "auto",
    precision: str = "auto",
    batch_size: int | None = None,
) -> Any:
    """Load whichever detector a checkpoint holds (BTD or inpainting), ready to score."""
    ckpt = load_checkpoint(path, modality=modality)
    if ckpt.kind == "btd":
        from detector.btd import btd_from_checkpoint

        return btd_from_checkpoint(ckpt, device=device, precision=precision, batch_size=batch_size)
    from detector.inpainting import inpaint_from_checkpoint

    return inpaint_from_checkpoint(ckpt, device=device, precision=precision, batch_size=batch_size)
