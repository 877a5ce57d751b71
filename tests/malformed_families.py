"""The families of malformed DICOM (``tests.malformed`` builds the bytes), and a seeded mix.

Each function draws one case of its family from ``rng``; the case names the statuses a
correct receiver may answer. Used by tests/test_validation.py (a few of each) and
tests/test_fuzz_dicom.py (a seeded thousand).
"""

from __future__ import annotations

import random
import struct
import zlib
from collections.abc import Callable

from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    MRImageStorage,
    RLELossless,
)

from tests.malformed import (
    ANY_FAILURE,
    CANNOT_UNDERSTAND,
    DATASET_MISMATCH,
    DECODE_FAILED,
    ITEM,
    PIXEL_DATA,
    SEQUENCE_END,
    SIZE,
    Case,
    base_dataset,
    case_of,
    elements,
    encapsulated,
    item,
    parts_of,
    raw,
    replace_element,
)

# -- the families ----------------------------------------------------------------------------


def bad_uid(rng: random.Random) -> Case:
    ds = base_dataset(rng)
    keyword, tag = rng.choice(
        [
            ("SOPInstanceUID", 0x00080018),
            ("StudyInstanceUID", 0x0020000D),
            ("SeriesInstanceUID", 0x0020000E),
        ]
    )
    good = str(ds[keyword].value)
    value = rng.choice(
        [
            good + "\n",
            good + "\n\x00\n",
            good + "\x00\n",
            good + " \n",
            good + "\t",
            "\n" + good,
            " " + good,
            good.replace(".", "..", 1),
            good + ".0a",
            good + ".01",
            good[:1] + "\x00" + good[1:],
            "1." + "2" * rng.randint(63, 120),
            "../../" + good,
            good + "\r\n",
            "." + good,
        ]
    ).encode("latin-1")
    if len(value) % 2:
        value += b"\x00"
    return case_of(
        "uid", ds, replace_element(ds, tag, raw(tag, b"UI", value)), frozenset({CANNOT_UNDERSTAND})
    )


def pixel_length_beyond_data(rng: random.Random) -> Case:
    ds = base_dataset(rng)
    extra = rng.choice([0xFFFFFFF0, 2 * SIZE * SIZE + 2, rng.randrange(1, 1 << 30) * 2 + 1024])
    pixels = raw(PIXEL_DATA, b"OW", bytes(ds.PixelData), length=extra)
    return case_of(
        "pixel_length", ds, replace_element(ds, PIXEL_DATA, pixels), frozenset({DECODE_FAILED})
    )


def element_length_beyond_data(rng: random.Random) -> Case:
    ds = base_dataset(rng)
    parts, tags = parts_of(ds)
    n = rng.randrange(len(parts) - 1)
    rest = sum(len(p) for p in parts[n:])
    head = bytearray(parts[n])
    if head[4:6] in (b"OB", b"OW", b"SQ", b"UN", b"UT"):
        struct.pack_into("<I", head, 8, rest + rng.randrange(2, 5000, 2))
    else:  # a short VR: 16-bit length, so place the element last with a length past the end
        parts.append(parts.pop(n))
        head = bytearray(parts[-1])
        struct.pack_into("<H", head, 6, len(head) - 8 + rng.randrange(2, 5000, 2))
        parts[-1] = bytes(head)
        return case_of("element_length", ds, b"".join(parts), ANY_FAILURE)
    parts[n] = bytes(head)
    return case_of("element_length", ds, b"".join(parts), frozenset({DECODE_FAILED}))


def undefined_length_text(rng: random.Random) -> Case:
    ds = base_dataset(rng)
    tag = 0x0040A160  # Text Value, UT
    text = raw(tag, b"UT", str(ds[tag].value).encode(), length=0xFFFFFFFF)
    return case_of(
        "undefined_length", ds, replace_element(ds, tag, text), frozenset({DECODE_FAILED})
    )


def implicit_on_explicit(rng: random.Random) -> Case:
    ds = base_dataset(rng)
    body = b"".join(elements(ds, implicit=True))
    return case_of("implicit_on_explicit", ds, body, frozenset({DECODE_FAILED}))


def explicit_on_implicit(rng: random.Random) -> Case:
    ds = base_dataset(rng)
    body = b"".join(elements(ds))
    return case_of(
        "explicit_on_implicit", ds, body, frozenset({DECODE_FAILED}), ImplicitVRLittleEndian
    )


def native_pixels_on_compressed(rng: random.Random) -> Case:
    ds = base_dataset(rng)
    syntax = rng.choice([JPEGBaseline8Bit, JPEG2000Lossless, RLELossless])
    return case_of(
        "native_on_compressed", ds, b"".join(elements(ds)), frozenset({DECODE_FAILED}), syntax
    )


def encapsulated_on_native(rng: random.Random) -> Case:
    ds = base_dataset(rng)
    pixels = encapsulated([bytes(ds.PixelData)[: rng.randrange(2, 512, 2)]])
    syntax = rng.choice([ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian])
    body = replace_element(ds, PIXEL_DATA, pixels)
    if syntax == DeflatedExplicitVRLittleEndian:
        compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        body = compressor.compress(body) + compressor.flush()
    return case_of("encapsulated_on_native", ds, body, frozenset({DECODE_FAILED}), syntax)


def broken_encapsulation(rng: random.Random) -> Case:
    ds = base_dataset(rng)
    frame = b"\xff\xd8" + bytes(rng.randrange(256) for _ in range(30)) + b"\xff\xd9"
    choice = rng.randrange(5)
    if choice == 0:  # a Basic Offset Table that is not 4 bytes per frame
        pixels, expected = encapsulated([frame], offsets=b"\x00" * 6), DECODE_FAILED
    elif choice == 1:  # an offset table and no fragment at all
        pixels, expected = encapsulated([], offsets=b"\x00" * 4), CANNOT_UNDERSTAND
    elif choice == 2:  # two frames in the offset table, one frame declared
        pixels = encapsulated([frame, frame], offsets=struct.pack("<II", 0, 42))
        expected = CANNOT_UNDERSTAND
    elif choice == 3:  # no sequence delimiter
        pixels, expected = encapsulated([frame], delimiter=False), DECODE_FAILED
    else:  # a fragment that is not an item
        body = item(b"") + struct.pack("<HHI", 0x7FE0, 0x0010, len(frame)) + frame
        pixels, expected = raw(PIXEL_DATA, b"OB", body, length=0xFFFFFFFF), DECODE_FAILED
    return case_of(
        "encapsulation",
        ds,
        replace_element(ds, PIXEL_DATA, pixels),
        frozenset({expected}),
        JPEGBaseline8Bit,
    )


def frames_not_adding_up(rng: random.Random) -> Case:
    ds = base_dataset(rng)
    ds.NumberOfFrames = rng.choice(["-1", "0", "-7", str(rng.randint(2, 50))])
    return case_of("frames", ds, b"".join(elements(ds)), frozenset({CANNOT_UNDERSTAND}))


def bad_dimensions(rng: random.Random) -> Case:
    ds = base_dataset(rng)
    choice = rng.randrange(4)
    if choice == 0:
        setattr(ds, rng.choice(["Rows", "Columns"]), 0)
    elif choice == 1:
        ds.Rows = ds.Columns = 0
    elif choice == 2:
        tag = rng.choice([0x00280010, 0x00280011])
        del ds[tag]
        ds.add_new(tag, "SS", -rng.randint(1, 100))
    else:
        ds.BitsAllocated = rng.choice([0, 7, 12, 24])
    return case_of("dimensions", ds, b"".join(elements(ds)), frozenset({CANNOT_UNDERSTAND}))


def pixel_data_short(rng: random.Random) -> Case:
    ds = base_dataset(rng)
    ds.PixelData = bytes(ds.PixelData)[: rng.randrange(0, 2 * SIZE * SIZE - 1, 2)]
    return case_of("pixel_short", ds, b"".join(elements(ds)), frozenset({CANNOT_UNDERSTAND}))


def pixel_data_excess(rng: random.Random) -> Case:
    ds = base_dataset(rng)
    extra = bytes(rng.randrange(1, 256) for _ in range(rng.randrange(2, 400, 2)))
    ds.PixelData = bytes(ds.PixelData) + extra
    return case_of("pixel_excess", ds, b"".join(elements(ds)), frozenset({CANNOT_UNDERSTAND}))


def pixel_data_missing(rng: random.Random) -> Case:
    ds = base_dataset(rng)
    parts, tags = parts_of(ds)
    body = b"".join(parts[: tags.index(PIXEL_DATA)])  # a stream cut right before the pixels
    return case_of("pixel_missing", ds, body, frozenset({DATASET_MISMATCH}))


def wrong_item_tag(rng: random.Random) -> Case:
    ds = base_dataset(rng)
    tag = 0x00081140  # Referenced Image Sequence
    inner = b"".join(elements(ds[tag].value[0]))
    wrong = rng.choice(
        [
            (0xFFFE, 0xE00D),
            (0x0008, 0x1150),
            (0xFFFE, 0xE001),
            (rng.randrange(0x10000), rng.randrange(0x10000)),
        ]
    )
    if wrong == ITEM:
        wrong = (0x0008, 0x1150)
    undefined = rng.random() < 0.5
    if undefined:
        if wrong == SEQUENCE_END:
            wrong = (0xFFFE, 0xE001)
        seq = raw(tag, b"SQ", item(inner, wrong) + item(b"", SEQUENCE_END), length=0xFFFFFFFF)
    else:
        seq = raw(tag, b"SQ", item(inner, wrong))
    return case_of("item_tags", ds, replace_element(ds, tag, seq), ANY_FAILURE - {DATASET_MISMATCH})


def sequence_never_ends(rng: random.Random) -> Case:
    ds = base_dataset(rng)
    tag = 0x00081140
    inner = b"".join(elements(ds[tag].value[0]))
    if rng.random() < 0.5:  # sequence delimiter missing
        seq = raw(tag, b"SQ", item(inner), length=0xFFFFFFFF)
    else:  # item delimiter missing in an undefined-length item
        seq = raw(
            tag, b"SQ", item(inner, length=0xFFFFFFFF) + item(b"", SEQUENCE_END), length=0xFFFFFFFF
        )
    return case_of("sequence_end", ds, replace_element(ds, tag, seq), frozenset({DECODE_FAILED}))


def item_longer_than_sequence(rng: random.Random) -> Case:
    ds = base_dataset(rng)
    tag = 0x00081140
    inner = b"".join(elements(ds[tag].value[0]))
    seq = raw(tag, b"SQ", item(inner, length=len(inner) + rng.randrange(2, 4000, 2)))
    return case_of("item_length", ds, replace_element(ds, tag, seq), frozenset({DECODE_FAILED}))


def trailing_bytes(rng: random.Random) -> Case:
    ds = base_dataset(rng)
    if rng.random() < 0.5:
        garbage = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 8)))
    else:  # enough for an element header, starting with a tag before Pixel Data
        head = struct.pack("<HH", rng.randrange(0x0008, 0x7FE0), rng.randrange(0x10000))
        garbage = head + bytes(rng.randrange(256) for _ in range(rng.randrange(4, 300)))
    return case_of(
        "trailing_bytes", ds, b"".join(elements(ds)) + garbage, ANY_FAILURE - {DATASET_MISMATCH}
    )


def file_meta_in_dataset(rng: random.Random) -> Case:
    ds = base_dataset(rng)
    meta = rng.choice(
        [
            raw(0x00020010, b"UI", b"1.2.840.10008.1.2\x00"),
            raw(0x00020013, b"SH", b"EVIL"),
            raw(0x00020002, b"UI", b"1.2.840.10008.5.1.4.1.1.4\x00"),
        ]
    )
    parts, _ = parts_of(ds)
    # After the first element: one placed first would pass for file meta to a reader (and
    # pynetdicom's storescu would send it as such) - tests/test_validation.py sends that via
    # STOW-RS, where the File Meta Information Group Length shows it is not.
    parts.insert(1, meta)
    return case_of("file_meta_in_dataset", ds, b"".join(parts), frozenset({CANNOT_UNDERSTAND}))


def tags_out_of_order(rng: random.Random) -> Case:
    ds = base_dataset(rng)
    parts, _ = parts_of(ds)
    n = rng.randrange(len(parts) - 1)
    parts[n], parts[n + 1] = parts[n + 1], parts[n]
    return case_of("tag_order", ds, b"".join(parts), frozenset({CANNOT_UNDERSTAND}))


def truncated(rng: random.Random) -> Case:
    ds = base_dataset(rng)
    body = b"".join(elements(ds))
    return case_of(
        "truncated",
        ds,
        body[: rng.randrange(1, len(body))],
        frozenset({DECODE_FAILED, DATASET_MISMATCH}),
    )


def not_a_vr(rng: random.Random) -> Case:
    ds = base_dataset(rng)
    parts, tags = parts_of(ds)
    n = rng.randrange(len(parts))
    vr = rng.choice([b"ZZ", b"ob", b"\x00\x00", b"  ", b"Q1", bytes([65 + rng.randrange(26)]) * 2])
    if vr in (b"AA", b"CC", b"DD", b"FF", b"SS", b"TT", b"UU", b"OO"):
        vr = b"ZZ"
    parts[n] = parts[n][:4] + vr + parts[n][6:]
    return case_of("vr", ds, b"".join(parts), frozenset({DECODE_FAILED}))


def class_mismatch_or_missing_uid(rng: random.Random) -> Case:
    ds = base_dataset(rng)
    if rng.random() < 0.5:
        ds.SOPClassUID = MRImageStorage  # the context (and file meta) say CT
    else:
        delattr(ds, rng.choice(["StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID"]))
    return case_of("sop_class", ds, b"".join(elements(ds)), frozenset({DATASET_MISMATCH}))


FAMILIES: tuple[Callable[[random.Random], Case], ...] = (
    bad_uid,
    pixel_length_beyond_data,
    element_length_beyond_data,
    undefined_length_text,
    implicit_on_explicit,
    explicit_on_implicit,
    native_pixels_on_compressed,
    encapsulated_on_native,
    broken_encapsulation,
    frames_not_adding_up,
    bad_dimensions,
    pixel_data_short,
    pixel_data_excess,
    pixel_data_missing,
    wrong_item_tag,
    sequence_never_ends,
    item_longer_than_sequence,
    trailing_bytes,
    file_meta_in_dataset,
    tags_out_of_order,
    truncated,
    not_a_vr,
    class_mismatch_or_missing_uid,
)


def malformed_cases(count: int, seed: int) -> list[Case]:
    """``count`` malformed files, the families in turn, their details drawn from ``seed``."""
    rng = random.Random(seed)
    return [FAMILIES[n % len(FAMILIES)](rng) for n in range(count)]
