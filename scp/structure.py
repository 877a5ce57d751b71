"""Walks the bytes of a received DICOM file element by element under its transfer syntax.

pydicom reads leniently: it stops quietly at the end of the data, never checks tag order, and
accepts an element whose declared length runs past the end. A detector, the viewer and the
PACS read what we store, so before an instance is accepted its encoding is checked here
(PS3.5 chapter 7): every element header complete and its length inside its parent, explicit VRs
that are VRs, items and delimiters where PS3.5 7.5 puts them, tags ascending, no file meta
(group 0002) in the dataset, pixel data encapsulated exactly when the transfer syntax says so,
and nothing after the last element; and the UIDs that name the instance exactly as sent
(before pydicom strips whitespace off them). The walk only reads; the other values are
checked by ``scp.validate``. No database, no pydicom Dataset here.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Collection
from dataclasses import dataclass, field

from pydicom.datadict import dictionary_VR
from pydicom.uid import UID

from scp.checks import Check
from storage.files import InvalidUID, check_uid

MAX_INFLATED_BYTES = 2 * 1024**3  # a deflated dataset larger than this is refused, not inflated
UNDEFINED = 0xFFFFFFFF
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
PIXEL_DATA = 0x7FE00010
# The UIDs that name the instance, its folders and its index rows. pydicom strips every kind
# of whitespace off a UI value, so they are checked here, as the bytes that arrived.
KEY_UIDS = {
    0x00080016: "SOP Class UID",
    0x00080018: "SOP Instance UID",
    0x0020000D: "Study Instance UID",
    0x0020000E: "Series Instance UID",
}
LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN"})
LONG_VRS |= {b"UR", b"UT", b"UV"}
SHORT_VRS = frozenset(
    {b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT"}
    | {b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"}
)


class StructureError(ValueError):
    """The bytes break one rule; ``check`` says which, the message where and how."""

    def __init__(self, check: Check, message: str) -> None:
        super().__init__(message)
        self.check = check


@dataclass
class PixelLayout:
    """What the walk saw of the top-level Pixel Data, for the value checks that follow."""

    present: bool = False
    encapsulated: bool = False
    length: int = 0  # native: the value length
    fragments: int = 0  # encapsulated: fragments after the Basic Offset Table
    offset_table_entries: int = 0


@dataclass
class _Walk:
    data: memoryview
    implicit: bool
    little: bool
    relax: frozenset[Check]
    pixels: PixelLayout = field(default_factory=PixelLayout)

    def __post_init__(self) -> None:
        order = "<" if self.little else ">"
        self._tag = struct.Struct(f"{order}HH").unpack_from
        self._u32 = struct.Struct(f"{order}I").unpack_from
        self._u16 = struct.Struct(f"{order}H").unpack_from

    def fail(self, check: Check, message: str) -> None:
        if check not in self.relax:
            raise StructureError(check, message)

    def tag_at(self, pos: int) -> int:
        group, element = self._tag(self.data, pos)
        return int((group << 16) | element)

    def u32(self, pos: int) -> int:
        return int(self._u32(self.data, pos)[0])

    def u16(self, pos: int) -> int:
        return int(self._u16(self.data, pos)[0])


def _tag_text(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _header(walk: _Walk, pos: int, end: int) -> tuple[int, bytes | None, int, int]:
    """(tag, explicit VR or None, value length, value start) of the element at ``pos``."""
    if end - pos < 8:
        raise StructureError(
            Check.ELEMENT_LENGTH, f"{end - pos} bytes at offset {pos} are too few for an element"
        )
    tag = walk.tag_at(pos)
    if walk.implicit or tag >> 16 == 0xFFFE:
        return tag, None, walk.u32(pos + 4), pos + 8
    vr = bytes(walk.data[pos + 4 : pos + 6])
    if vr in SHORT_VRS:
        return tag, vr, walk.u16(pos + 6), pos + 8
    if vr not in LONG_VRS:
        raise StructureError(
            Check.VR,
            f"element {_tag_text(tag)} at offset {pos}: {vr!r} is not a VR "
            "(implicit-VR bytes on an explicit-VR transfer syntax?)",
        )
    if end - pos < 12:
        raise StructureError(Check.ELEMENT_LENGTH, f"element {_tag_text(tag)} header is cut off")
    return tag, vr, walk.u32(pos + 8), pos + 12


def _is_sequence(tag: int, vr: bytes | None) -> bool:
    if vr is not None:
        return vr == b"SQ"
    try:
        return dictionary_VR(tag) == "SQ"
    except KeyError:
        return False  # private or unknown tag with a defined length: opaque bytes


def _dataset(
    walk: _Walk, pos: int, end: int, depth: int, top: bool, delimited: bool = False
) -> int:
    """Walk one dataset from ``pos``; return where it ended (``end``, or after its item end)."""
    if depth > 32:
        raise StructureError(Check.ITEM_TAGS, "sequences nested more than 32 deep")
    previous = -1
    while pos < end:
        if top and end - pos < 8 or top and not any(walk.data[pos:end]):
            walk.fail(Check.TRAILING_BYTES, f"{end - pos} bytes after the last element")
            return end
        tag, vr, length, start = _header(walk, pos, end)
        if tag == ITEM_END and delimited:
            if length != 0:
                walk.fail(Check.ITEM_TAGS, f"item delimiter at offset {pos} with length {length}")
            return start
        if tag >> 16 == 0xFFFE:
            raise StructureError(
                Check.ITEM_TAGS, f"{_tag_text(tag)} at offset {pos} outside a sequence"
            )
        if tag <= previous:
            walk.fail(
                Check.TAG_ORDER,
                f"{_tag_text(tag)} at offset {pos} follows {_tag_text(previous)}",
            )
        if top and tag >> 16 == 0x0002:
            walk.fail(
                Check.FILE_META_IN_DATASET,
                f"file meta element {_tag_text(tag)} in the dataset (offset {pos})",
            )
        previous = tag
        pos = _value(walk, tag, vr, length, start, end, depth, top)
    if delimited:
        raise StructureError(Check.ITEM_TAGS, "an item of undefined length never ends")
    return pos


def _value(
    walk: _Walk,
    tag: int,
    vr: bytes | None,
    length: int,
    start: int,
    end: int,
    depth: int,
    top: bool,
) -> int:
    """Check one element's value; return the offset after it."""
    pixel = tag == PIXEL_DATA
    if length == UNDEFINED:
        if pixel and vr in (None, b"OB", b"OW"):
            return _fragments(walk, start, end, top)
        if vr == b"UN":  # PS3.5 6.2.2: a sequence encoded in implicit VR little endian
            return _items(_Walk(walk.data, True, True, walk.relax), start, end, depth, True)
        if vr in (None, b"SQ"):
            return _items(walk, start, end, depth, undefined=True)
        raise StructureError(
            Check.ELEMENT_LENGTH, f"{_tag_text(tag)} ({vr!r}) has an undefined length"
        )
    if length > end - start:
        raise StructureError(
            Check.ELEMENT_LENGTH,
            f"{_tag_text(tag)} declares {length} bytes, {end - start} remain",
        )
    if _is_sequence(tag, vr):
        _items(walk, start, start + length, depth, undefined=False)
    elif top and tag in KEY_UIDS:
        text = bytes(walk.data[start : start + length]).decode("latin-1")
        try:
            check_uid(text, KEY_UIDS[tag])
        except InvalidUID as exc:
            raise StructureError(Check.UID, str(exc)) from None
    elif pixel and top:
        walk.pixels.present, walk.pixels.length = True, length
    return start + length


def _items(walk: _Walk, pos: int, end: int, depth: int, undefined: bool) -> int:
    """A sequence's items up to ``end`` (defined length) or its delimiter (undefined)."""
    while pos < end:
        if end - pos < 8:
            raise StructureError(Check.ELEMENT_LENGTH, f"sequence cut off at offset {pos}")
        tag, length, start = walk.tag_at(pos), walk.u32(pos + 4), pos + 8
        if tag == SEQUENCE_END and undefined:
            if length != 0:
                walk.fail(Check.ITEM_TAGS, f"sequence delimiter at {pos} with length {length}")
            return start
        if tag != ITEM:
            raise StructureError(
                Check.ITEM_TAGS, f"{_tag_text(tag)} at offset {pos} where a sequence item belongs"
            )
        if length == UNDEFINED:
            pos = _dataset(walk, start, end, depth + 1, top=False, delimited=True)
        else:
            if length > end - start:
                raise StructureError(
                    Check.ELEMENT_LENGTH,
                    f"item at offset {pos} declares {length} bytes, {end - start} remain",
                )
            _dataset(walk, start, start + length, depth + 1, top=False)
            pos = start + length
    if undefined:
        raise StructureError(Check.ITEM_TAGS, "a sequence of undefined length never ends")
    return pos


def _fragments(walk: _Walk, pos: int, end: int, top: bool) -> int:
    """Encapsulated pixel data (PS3.5 A.4): offset table item, fragment items, delimiter."""
    count = 0
    while pos < end:
        if end - pos < 8:
            break
        tag, length = walk.tag_at(pos), walk.u32(pos + 4)
        if tag == SEQUENCE_END:
            if top:
                walk.pixels.present = walk.pixels.encapsulated = True
                walk.pixels.fragments = max(count - 1, 0)
            return pos + 8
        if tag != ITEM:
            raise StructureError(
                Check.ITEM_TAGS, f"{_tag_text(tag)} at offset {pos} inside encapsulated pixel data"
            )
        if length == UNDEFINED or length > end - pos - 8:
            raise StructureError(
                Check.ELEMENT_LENGTH, f"pixel data fragment at offset {pos} declares {length} bytes"
            )
        if count == 0:
            if length % 4:
                raise StructureError(
                    Check.ENCAPSULATION, f"Basic Offset Table of {length} bytes (not 4 per frame)"
                )
            if top:
                walk.pixels.offset_table_entries = length // 4
        count += 1
        pos += 8 + length
    raise StructureError(Check.ITEM_TAGS, "encapsulated pixel data without a sequence delimiter")


def _file_meta(data: memoryview) -> tuple[int, str]:
    """Where the dataset starts after the preamble and file meta, and the meta's syntax."""
    if len(data) < 132 or bytes(data[128:132]) != b"DICM":
        raise StructureError(Check.HEADER, "no DICM prefix after the 128-byte preamble")
    walk = _Walk(data, implicit=False, little=True, relax=frozenset())
    pos, meta_end, grouped = 132, len(data), False
    syntax = ""
    while pos < meta_end and len(data) - pos >= 8 and walk.tag_at(pos) >> 16 == 0x0002:
        tag, vr, length, start = _header(walk, pos, len(data))
        if length == UNDEFINED or length > len(data) - start:
            raise StructureError(Check.HEADER, f"file meta element {_tag_text(tag)} is cut off")
        value = bytes(data[start : start + length])
        if tag == 0x00020000 and vr == b"UL" and length == 4:
            meta_end, grouped = start + 4 + walk.u32(start), True
        elif tag == 0x00020010:
            syntax = value.decode("ascii", "replace").rstrip("\x00 ")
        pos = start + length
    if grouped and pos != meta_end:
        raise StructureError(Check.HEADER, "File Meta Information Group Length is wrong")
    return pos, syntax


def _gzip_trailer(extra: bytes, inflated: bytes) -> bool:
    """Some writers end the deflate stream with gzip's CRC-32 and length: harmless."""
    if len(extra) != 8:
        return False
    crc, size = struct.unpack("<II", extra)
    return crc == zlib.crc32(inflated) and size == len(inflated) & 0xFFFFFFFF


def check_structure(
    data: bytes, transfer_syntax: str, relax: Collection[Check] = ()
) -> PixelLayout:
    """Walk ``data`` (a PS3.10 file) under ``transfer_syntax``; raise StructureError if broken."""
    view = memoryview(data)
    start, meta_syntax = _file_meta(view)
    syntax = UID(transfer_syntax)
    if not syntax.is_transfer_syntax:
        raise StructureError(Check.TRANSFER_SYNTAX, f"unknown transfer syntax {syntax}")
    if meta_syntax and meta_syntax != str(syntax):
        raise StructureError(
            Check.TRANSFER_SYNTAX,
            f"file meta says {meta_syntax}, the transfer was {syntax}",
        )
    body = view[start:]
    if syntax.is_deflated:
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        try:
            inflated = inflater.decompress(body, MAX_INFLATED_BYTES)
        except zlib.error as exc:
            raise StructureError(
                Check.ELEMENT_LENGTH, f"deflated dataset is corrupt: {exc}"
            ) from None
        if inflater.unconsumed_tail:
            raise StructureError(Check.ELEMENT_LENGTH, "deflated dataset inflates too large")
        extra = inflater.unused_data
        trailing = extra.strip(b"\x00") and not _gzip_trailer(extra, inflated)
        if trailing and Check.TRAILING_BYTES not in relax:
            raise StructureError(Check.TRAILING_BYTES, "bytes after the deflated dataset")
        body = memoryview(inflated)
    walk = _Walk(body, syntax.is_implicit_VR, syntax.is_little_endian, frozenset(relax))
    _dataset(walk, 0, len(body), depth=0, top=True)
    pixels = walk.pixels
    if pixels.present and pixels.encapsulated != syntax.is_encapsulated:
        expected = "encapsulated" if syntax.is_encapsulated else "native"
        walk.fail(
            Check.ENCAPSULATION,
            f"transfer syntax {syntax.name or syntax} needs {expected} pixel data",
        )
    return pixels
