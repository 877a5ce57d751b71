"""Secondary Capture key images: the flagged region outlined, the verdict burned in.

For viewers that do not render SR. One image per flagged region, in its own series of the
original study. Their UIDs are derived from the verdict's fixed SR UIDs, so rebuilding (or
resending) gives the same objects and no schema column is needed.
"""

from __future__ import annotations

import logging
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

from scp import codes
from scp.settings import ReportSettings
from storage.db import Database
from storage.files import write_atomically

if TYPE_CHECKING:
    from scp.report import ReportFile
    from scp.report_input import RegionInput, ReportInput

log = logging.getLogger(__name__)

DEFAULT_RADIUS_PX = 12.0
OUTLINE = (255, 40, 40)
TEXT = (255, 255, 0)


def key_image_uids(sr_sop_uid: str, region_id: int) -> tuple[str, str]:
    """(series UID, SOP Instance UID) of a region's key image; fixed by the SR's UID."""
    series = codes.derived_uid(sr_sop_uid, "key image series")
    sop = codes.derived_uid(sr_sop_uid, "key image", str(region_id))
    return str(series), str(sop)


def _display(image: Dataset) -> np.ndarray:
    """The image as 8-bit grey, windowed as the modality suggests (else min-max)."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    pixels = image.pixel_array
    if pixels.ndim == 3 and int(image.get("SamplesPerPixel", 1)) == 1:
        pixels = pixels[0]  # first frame of a multi-frame image
    if int(image.get("SamplesPerPixel", 1)) == 3:
        grey = pixels.astype(np.float64).mean(axis=-1)
    else:
        grey = apply_modality_lut(pixels, image).astype(np.float64)
        if "WindowCenter" in image:
            grey = apply_voi_lut(grey, image).astype(np.float64)
    low, high = float(np.min(grey)), float(np.max(grey))
    scaled = (grey - low) / (high - low) if high > low else np.zeros_like(grey)
    if image.get("PhotometricInterpretation") == "MONOCHROME1":
        scaled = 1.0 - scaled
    return (scaled * 255).round().astype(np.uint8)


def render(image: Dataset, region: RegionInput, outcome: str) -> np.ndarray:
    """RGB pixels: the source image, the region outlined, the verdict written on top."""
    canvas = Image.fromarray(_display(image)).convert("RGB")
    draw = ImageDraw.Draw(canvas)
    r = region.radius_px or DEFAULT_RADIUS_PX
    width = max(1, round(min(canvas.size) / 256))
    draw.ellipse(
        (region.x - r, region.y - r, region.x + r, region.y + r), outline=OUTLINE, width=width
    )
    font = ImageFont.load_default(size=max(10, min(canvas.size) // 32))
    fused = f"  fused p={region.fused:.3g}" if region.fused is not None else ""
    state = "FLAGGED" if region.flagged else "checked"
    lines = [
        f"TamperScan: {outcome.upper()} - region {state}{fused}",
        "NOT FOR DIAGNOSTIC USE - unverified automated result",
    ]
    y = 2
    for line in lines:
        draw.text((3, y), line, fill=TEXT, font=font, stroke_width=1, stroke_fill=(0, 0, 0))
        y += font.size + 4 if hasattr(font, "size") else 14
    return np.asarray(canvas, dtype=np.uint8)


def build_key_image(
    data: ReportInput, region: RegionInput, settings: ReportSettings
) -> hd.sc.SCImage:
    image = data.images[region.sop_instance_uid]
    series_uid, sop_uid = key_image_uids(data.sr_sop_instance_uid, region.region_id)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=image,
        pixel_array=render(image, region, data.outcome),
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=series_uid,
        series_number=settings.series_number + 1,
        sop_instance_uid=sop_uid,
        instance_number=region.region_id,
        manufacturer="TamperScan project",
        patient_orientation=("L", "P"),
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    sc.BurnedInAnnotation = "YES"
    sc.Laterality = image.get("Laterality", "")  # type 2C in General Series: present, maybe empty
    sc.SeriesDescription = "TamperScan key images - NOT FOR DIAGNOSTIC USE"
    sc.ImageComments = (
        f"TamperScan {data.outcome}; region at column {region.x}, row {region.y} of "
        f"{region.sop_instance_uid}. NOT FOR DIAGNOSTIC USE."
    )
    return sc


def ensure_key_images(
    db: Database,
    data_dir: Path,
    verdict_id: int,
    settings: ReportSettings,
    data: ReportInput | None,
) -> list[ReportFile]:
    """Key image files of the verdict's flagged regions, built once and kept."""
    from scp.report import ReportFile
    from scp.report_input import load_input, report_path

    reports_root = data_dir / "reports"
    if data is None:
        data = load_input(
            db, data_dir / "instances", reports_root, verdict_id, settings.include_checked_regions
        )
    files: list[ReportFile] = []
    for region in data.regions:
        if not region.flagged:
            continue
        _, sop_uid = key_image_uids(data.sr_sop_instance_uid, region.region_id)
        path = report_path(reports_root, data.study_uid, sop_uid)
        if not path.exists():
            buffer = BytesIO()
            build_key_image(data, region, settings).save_as(buffer, enforce_file_format=True)
            write_atomically(path, buffer.getvalue())
            log.info("key image built", extra={"verdict_id": verdict_id, "sop": sop_uid})
        files.append(
            ReportFile(path, SecondaryCaptureImageStorage, sop_uid, ExplicitVRLittleEndian)
        )
    return files
