"""Checks a received instance before it is stored, mapping each problem to its DICOM status.

Used by every way in (C-STORE and STOW-RS, through ``scp.ingest``), so both refuse the same
things for the same reasons. ``check_encoding`` walks the bytes (``scp.structure``);
``inspect_dataset`` checks the values: UIDs, the image description against the pixel data.
Statuses follow PS3.4 Table B.2-1: 0xA900 the dataset does not match the SOP class (a required
UID or the pixel data of an image is missing, or the class differs from the negotiated one),
0xC000 cannot understand (a malformed value, tags out of order, file meta in the dataset),
0xC210 the bytes cannot be decoded under the transfer syntax.

Every rule is enforced unless ``[validation] relax`` names it (only those in
``scp.checks.RELAXABLE`` may be named).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.uid import UID, UID_dictionary

from scp.checks import Check
from scp.structure import PixelLayout, StructureError, check_structure
from storage.files import InvalidUID, check_uid
from storage.instances import InstanceMeta

DATASET_MISMATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
DECODE_FAILED = 0xC210
OUT_OF_RESOURCES = 0xA700


STATUS_OF: dict[Check, int] = {
    Check.HEADER: DECODE_FAILED,
    Check.TRANSFER_SYNTAX: DECODE_FAILED,
    Check.ELEMENT_LENGTH: DECODE_FAILED,
    Check.VR: DECODE_FAILED,
    Check.ITEM_TAGS: DECODE_FAILED,
    Check.ENCAPSULATION: DECODE_FAILED,
    Check.TRAILING_BYTES: DECODE_FAILED,
    Check.TAG_ORDER: CANNOT_UNDERSTAND,
    Check.FILE_META_IN_DATASET: CANNOT_UNDERSTAND,
    Check.UID: CANNOT_UNDERSTAND,
    Check.DIMENSIONS: CANNOT_UNDERSTAND,
    Check.FRAMES: CANNOT_UNDERSTAND,
    Check.PIXEL_DATA_SHORT: CANNOT_UNDERSTAND,
    Check.PIXEL_DATA_EXCESS: CANNOT_UNDERSTAND,
    Check.PIXEL_DATA_MISSING: DATASET_MISMATCH,
}
VIDEO_SYNTAX_WORDS = ("MPEG", "HEVC", "H.264", "H.265")  # all frames in one stream
PIXEL_ALTERNATIVES = ("FloatPixelData", "DoubleFloatPixelData", "PixelDataProviderURL")


@dataclass
class RejectedInstance(Exception):
    """An instance we refuse, with the status to answer and a reason a person can act on."""

    status: int
    reason: str
    sop_instance_uid: str | None = None
    check: Check | None = None  # the rule it broke, when one of ``scp.checks`` did

    def __str__(self) -> str:
        return f"0x{self.status:04X} {self.reason}"


def _reject(check: Check, reason: str) -> RejectedInstance:
    return RejectedInstance(STATUS_OF[check], f"{check.value}: {reason}", check=check)


def check_encoding(data: bytes, transfer_syntax: str, relax: frozenset[Check]) -> PixelLayout:
    """Walk the file's bytes under ``transfer_syntax``; raise RejectedInstance if broken."""
    try:
        return check_structure(data, transfer_syntax, relax)
    except StructureError as exc:
        raise _reject(exc.check, str(exc)) from exc


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
        raise _reject(Check.UID, str(exc)) from exc


def is_image_class(sop_class: str) -> bool:
    """An image storage SOP class (by pydicom's UID dictionary): it must carry pixel data."""
    entry = UID_dictionary.get(sop_class)
    return entry is not None and "Image Storage" in entry[0]


def _positive(ds: Dataset, keyword: str, check: Check, default: int | None = None) -> int:
    value = ds.get(keyword)
    if value in (None, "") and default is not None:
        return default
    try:
        number = int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise _reject(check, f"{keyword} {value!r} is not a number") from None
    if number <= 0:
        raise _reject(check, f"{keyword} is {number}")
    return number


def _check_pixels(
    ds: Dataset, sop_class: str, syntax: UID, pixels: PixelLayout | None, relax: frozenset[Check]
) -> None:
    """An image has pixel data, and the pixel data is what its description says."""
    if "PixelData" not in ds:
        if is_image_class(sop_class) and not any(k in ds for k in PIXEL_ALTERNATIVES):
            raise _reject(Check.PIXEL_DATA_MISSING, f"an image ({sop_class}) without Pixel Data")
        return
    rows = _positive(ds, "Rows", Check.DIMENSIONS)
    cols = _positive(ds, "Columns", Check.DIMENSIONS)
    samples = _positive(ds, "SamplesPerPixel", Check.DIMENSIONS, default=1)
    bits = _positive(ds, "BitsAllocated", Check.DIMENSIONS)
    frames = _positive(ds, "NumberOfFrames", Check.FRAMES, default=1)
    if bits not in (1, 8, 16, 32, 64) or samples > 4:
        raise _reject(Check.DIMENSIONS, f"Bits Allocated {bits}, Samples per Pixel {samples}")
    if syntax.is_encapsulated:
        if pixels is not None:
            _check_fragments(ds, syntax, pixels, frames)
        return
    expected = math.ceil(rows * cols * frames * samples * bits / 8)
    data = ds.PixelData or b""  # pydicom gives None for an empty value
    if len(data) < expected:
        raise _reject(
            Check.PIXEL_DATA_SHORT,
            f"pixel data holds {len(data)} bytes, {rows}x{cols}x{frames} frames x{samples} "
            f"samples at {bits} bits need {expected}",
        )
    excess = bytes(data[expected + expected % 2 :])
    if excess.strip(b"\x00") and Check.PIXEL_DATA_EXCESS not in relax:
        raise _reject(
            Check.PIXEL_DATA_EXCESS,
            f"pixel data holds {len(data)} bytes, {expected} needed; the rest is not padding",
        )


def _check_fragments(ds: Dataset, syntax: UID, pixels: PixelLayout, frames: int) -> None:
    if pixels.fragments == 0:
        raise _reject(Check.FRAMES, "encapsulated pixel data without a fragment")
    if pixels.offset_table_entries and pixels.offset_table_entries != frames:
        raise _reject(
            Check.FRAMES,
            f"Basic Offset Table lists {pixels.offset_table_entries} frames, "
            f"Number of Frames is {frames}",
        )
    video = any(word in (syntax.name or "") for word in VIDEO_SYNTAX_WORDS)
    if not video and "ExtendedOffsetTable" not in ds and pixels.fragments < frames:
        raise _reject(Check.FRAMES, f"{pixels.fragments} pixel data fragments for {frames} frames")


SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"  # all Secondary Capture classes


def is_source_image(ds: Dataset, sop_class: str) -> bool:
    """Pixels from a scanner: what verdicts are about (not SR, not derived screenshots)."""
    return "PixelData" in ds and not sop_class.startswith(SECONDARY_CAPTURE_PREFIX)


def inspect_dataset(
    ds: Dataset,
    transfer_syntax: str,
    negotiated_sop_class: str | None = None,
    announced_sop_instance: str | None = None,
    pixels: PixelLayout | None = None,
    relax: frozenset[Check] = frozenset(),
) -> InstanceMeta:
    """Return what the index needs, or raise RejectedInstance.

    ``pixels`` is what ``check_encoding`` saw of the pixel data (fragment counts of
    encapsulated pixel data are checked only with it).
    """
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
        _check_pixels(ds, sop_class, UID(transfer_syntax), pixels, relax)
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
