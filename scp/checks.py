"""The names of the rules every received instance must pass, and which a site may relax.

One enum for the encoding rules (``scp.structure``) and the value rules (``scp.validate``), so
``[validation] relax`` in config.toml, the audit trail and the docs use the same words. Only
rules whose breach leaves the instance readable and safe may be relaxed; the rest (lengths
past the data, bad UIDs, missing or short pixel data, ...) are always enforced.
"""

from __future__ import annotations

import enum
from collections.abc import Collection


class Check(enum.Enum):
    HEADER = "header"  # preamble, DICM prefix, file meta
    TRANSFER_SYNTAX = "transfer_syntax"  # known, and the file meta agrees with the transfer
    ELEMENT_LENGTH = "element_length"  # a declared length runs past the data or its parent
    VR = "vr"  # an explicit VR that is not a VR (implicit-VR bytes on an explicit context)
    ITEM_TAGS = "item_tags"  # a sequence or encapsulated pixel data holding a non-item
    ENCAPSULATION = "encapsulation"  # pixel data encapsulated iff the transfer syntax says so
    TRAILING_BYTES = "trailing_bytes"  # bytes after the last element that form no element
    TAG_ORDER = "tag_order"  # tags not strictly ascending within a dataset
    FILE_META_IN_DATASET = "file_meta_in_dataset"  # a group 0002 element in the dataset
    UID = "uid"  # a UID that fails pydicom's check or the UID grammar
    DIMENSIONS = "dimensions"  # Rows, Columns, Samples per Pixel, Bits Allocated usable
    FRAMES = "frames"  # Number of Frames a positive integer that matches the pixel data
    PIXEL_DATA_MISSING = "pixel_data_missing"  # an image SOP class without Pixel Data
    PIXEL_DATA_SHORT = "pixel_data_short"  # native pixel data shorter than the image needs
    PIXEL_DATA_EXCESS = "pixel_data_excess"  # native pixel data longer than needed (+1 pad)


RELAXABLE = frozenset(
    {Check.TRAILING_BYTES, Check.TAG_ORDER, Check.FILE_META_IN_DATASET, Check.PIXEL_DATA_EXCESS}
)


def relaxations(names: Collection[Check | str]) -> frozenset[Check]:
    """The configured leniency list as checks; raises ValueError for a name not relaxable."""
    known = {c.value for c in Check}
    allowed = ", ".join(sorted(c.value for c in RELAXABLE))
    checks = set()
    for name in names:
        value = name.value if isinstance(name, Check) else name
        if value not in known:
            raise ValueError(f"{value!r} is not a check; relaxable: {allowed}")
        if Check(value) not in RELAXABLE:
            raise ValueError(f"{value!r} is always enforced; relaxable: {allowed}")
        checks.add(Check(value))
    return frozenset(checks)
