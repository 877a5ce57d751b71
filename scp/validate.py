"""Checks a received dataset before it is stored, mapping each problem to its DICOM status.

Used by every way in (C-STORE and STOW-RS), so both refuse the same things for the same
reasons. Statuses follow PS3.4 Table B.2-1: 0xA900 the dataset does not match the SOP class
(a required UID is missing, or the class differs from the negotiated one), 0xC000 cannot
understand (a malformed value), 0xC210 the dataset could not be decoded at all.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.uid import UID

from storage.files import InvalidUID, check_uid
from storage.instances import InstanceMeta

DATASET_MISMATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
DECODE_FAILED = 0xC210
OUT_OF_RESOURCES = 0xA700


@dataclass
class RejectedInstance(Exception):
    """An instance we refuse, with the status to answer and a reason a person can act on."""

    status: int
    reason: str
    sop_instance_uid: str | None = None

    def __str__(self) -> str:
        return f"0x{self.status:04X} {self.reason}"


def _decode_everything(ds: Dataset) -> None:
    """pydicom parses lazily; touch every value so broken encodings fail here, not later."""
    for elem in ds:
        value = elem.value
        if elem.VR == "SQ":
            for item in value:
                _decode_everything(item)


def _text(ds: Dataset, keyword: str, limit: int) -> str | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    return str(value)[:limit]


def _int(ds: Dataset, keyword: str) -> int | None:
    value = ds.get(keyword)
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _uid(ds: Dataset, keyword: str, name: str) -> str:
    value = ds.get(keyword)
    if value in (None, ""):
        raise RejectedInstance(DATASET_MISMATCH, f"{name} ({keyword}) is missing")
    try:
        return check_uid(value, name)
    except InvalidUID as exc:
        raise RejectedInstance(CANNOT_UNDERSTAND, str(exc)) from exc


def _check_pixel_length(ds: Dataset, transfer_syntax: UID) -> None:
    if "PixelData" not in ds or transfer_syntax.is_compressed:
        return
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames") or 1)
        samples = int(ds.get("SamplesPerPixel") or 1)
        bits = int(ds.BitsAllocated)
    except (AttributeError, TypeError, ValueError) as exc:
        raise RejectedInstance(
            CANNOT_UNDERSTAND, f"pixel data without a usable image description: {exc}"
        ) from exc
    expected = rows * cols * frames * samples * bits // 8
    actual = len(ds.PixelData)
    if actual < expected:
        raise RejectedInstance(
            CANNOT_UNDERSTAND,
            f"pixel data holds {actual} bytes, the image description needs {expected}",
        )


SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"  # all Secondary Capture classes


def is_source_image(ds: Dataset, sop_class: str) -> bool:
    """Pixels from a scanner: what verdicts are about (not SR, not derived screenshots)."""
    return "PixelData" in ds and not sop_class.startswith(SECONDARY_CAPTURE_PREFIX)


def inspect_dataset(
    ds: Dataset,
    transfer_syntax: str,
    negotiated_sop_class: str | None = None,
    announced_sop_instance: str | None = None,
) -> InstanceMeta:
    """Return what the index needs, or raise RejectedInstance."""
    try:
        _decode_everything(ds)
    except Exception as exc:  # pydicom raises many types for broken encodings
        raise RejectedInstance(DECODE_FAILED, f"dataset could not be decoded: {exc}") from exc
    sop_uid = _uid(ds, "SOPInstanceUID", "SOP Instance UID")
    try:
        sop_class = _uid(ds, "SOPClassUID", "SOP Class UID")
        study_uid = _uid(ds, "StudyInstanceUID", "Study Instance UID")
        series_uid = _uid(ds, "SeriesInstanceUID", "Series Instance UID")
        if negotiated_sop_class and sop_class != negotiated_sop_class:
            raise RejectedInstance(
                DATASET_MISMATCH,
                f"SOP Class UID {sop_class} does not match the presentation context's "
                f"{negotiated_sop_class}",
            )
        if announced_sop_instance and announced_sop_instance != sop_uid:
            raise RejectedInstance(
                DATASET_MISMATCH,
                f"SOP Instance UID {sop_uid} differs from the request's {announced_sop_instance}",
            )
        _check_pixel_length(ds, UID(transfer_syntax))
    except RejectedInstance as exc:
        exc.sop_instance_uid = sop_uid
        raise
    return InstanceMeta(
        is_source_image=is_source_image(ds, sop_class),
        sop_instance_uid=sop_uid,
        sop_class_uid=sop_class,
        study_uid=study_uid,
        series_uid=series_uid,
        transfer_syntax_uid=str(transfer_syntax),
        modality=_text(ds, "Modality", 16),
        series_number=_int(ds, "SeriesNumber"),
        series_description=_text(ds, "SeriesDescription", 64),
        instance_number=_int(ds, "InstanceNumber"),
        patient_id=_text(ds, "PatientID", 64),
        patient_name=_text(ds, "PatientName", 324),
        study_date=_text(ds, "StudyDate", 8),
        accession_number=_text(ds, "AccessionNumber", 16),
        study_description=_text(ds, "StudyDescription", 64),
    )
