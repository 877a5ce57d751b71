"""Malformed DICOM files, built byte by byte, each one certain to break a rule of PS3.5.

A case is a small CT slice encoded element by element (so single elements can be swapped,
cut, re-labelled or given a false length) behind a valid file meta, plus the statuses a
correct receiver may answer. Every family is malformed by construction, never by chance, so
"the receiver refused it" is a claim a test can check. The families themselves are in
``tests.malformed_families``.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import correct_ambiguous_vr, write_data_element, write_file_meta_info
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
)

from tests.dicom_helpers import ct_dataset

DATASET_MISMATCH, CANNOT_UNDERSTAND, DECODE_FAILED = 0xA900, 0xC000, 0xC210
ANY_FAILURE = frozenset({DATASET_MISMATCH, CANNOT_UNDERSTAND, DECODE_FAILED})
SYNTAXES = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEG2000Lossless,
    RLELossless,
)
PIXEL_DATA = 0x7FE00010
ITEM, ITEM_END, SEQUENCE_END = (0xFFFE, 0xE000), (0xFFFE, 0xE00D), (0xFFFE, 0xE0DD)
SIZE = 16  # 16x16 16-bit pixels: 512 bytes


@dataclass(frozen=True)
class Case:
    family: str
    data: bytes  # a complete PS3.10 file
    transfer_syntax: str  # in its file meta: the presentation context it is sent on
    sop_instance_uid: str  # in its file meta (valid): what the C-STORE request announces
    expected: frozenset[int]  # statuses a correct receiver may answer


def encode(elem: DataElement, implicit: bool = False, little: bool = True) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = little, implicit
    write_data_element(fp, elem)
    return bytes(fp.getvalue())


def elements(ds: Dataset, implicit: bool = False, little: bool = True) -> list[bytes]:
    """The dataset's top-level elements, each encoded on its own, in tag order."""
    correct_ambiguous_vr(ds, is_little_endian=little)
    return [encode(ds[tag], implicit, little) for tag in sorted(ds.keys())]


def raw(tag: int, vr: bytes, value: bytes, length: int | None = None) -> bytes:
    """One explicit-VR little-endian element with any value and any declared length."""
    group, element = tag >> 16, tag & 0xFFFF
    n = len(value) if length is None else length
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT", b"UC", b"UR", b"OD", b"OF", b"OL"):
        return struct.pack("<HH2sHI", group, element, vr, 0, n) + value
    return struct.pack("<HH2sH", group, element, vr, n) + value


def item(payload: bytes, tag: tuple[int, int] = ITEM, length: int | None = None) -> bytes:
    n = len(payload) if length is None else length
    return struct.pack("<HHI", *tag, n) + payload


def file_of(body: bytes, syntax: str, sop_uid: str, sop_class: str = CTImageStorage) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = syntax
    meta.ImplementationClassUID = "1.2.826.0.1.3680043.8.498.1"
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_file_meta_info(fp, meta, enforce_standard=True)
    return b"\x00" * 128 + b"DICM" + bytes(fp.getvalue()) + body


def base_dataset(rng: random.Random) -> Dataset:
    """A valid small CT slice with one sequence (so sequence rules have something to break)."""
    study, series, sop = (f"1.2.826.0.1.3680043.8.498.{rng.getrandbits(60)}" for _ in range(3))
    ds = ct_dataset(study, series, index=rng.randint(1, 999), size=SIZE, sop_uid=sop)
    del ds.file_meta
    ref = Dataset()
    ref.ReferencedSOPClassUID = CTImageStorage
    ref.ReferencedSOPInstanceUID = f"1.2.826.0.1.3680043.8.498.{rng.getrandbits(60)}"
    ds.ReferencedImageSequence = [ref]
    ds.TextValue = "x" * rng.randint(0, 8) * 2  # a UT element (4-byte length) before pixels
    return ds


def valid_case(rng: random.Random) -> Case:
    ds = base_dataset(rng)
    body = b"".join(elements(ds))
    return Case(
        "valid",
        file_of(body, ExplicitVRLittleEndian, ds.SOPInstanceUID),
        ExplicitVRLittleEndian,
        ds.SOPInstanceUID,
        frozenset({0x0000}),
    )


def parts_of(ds: Dataset) -> tuple[list[bytes], list[int]]:
    correct_ambiguous_vr(ds, is_little_endian=True)
    tags = sorted(ds.keys())
    return [encode(ds[t]) for t in tags], [int(t) for t in tags]


def case_of(
    family: str,
    ds: Dataset,
    body: bytes,
    expected: frozenset[int],
    syntax: str = ExplicitVRLittleEndian,
) -> Case:
    return Case(
        family, file_of(body, syntax, ds.SOPInstanceUID), syntax, ds.SOPInstanceUID, expected
    )


def replace_element(ds: Dataset, tag: int, new: bytes) -> bytes:
    parts, tags = parts_of(ds)
    parts[tags.index(tag)] = new
    return b"".join(parts)


def encapsulated(fragments: list[bytes], offsets: bytes = b"", delimiter: bool = True) -> bytes:
    body = item(offsets) + b"".join(item(f) for f in fragments)
    if delimiter:
        body += item(b"", SEQUENCE_END)
    return raw(PIXEL_DATA, b"OB", body, length=0xFFFFFFFF)
