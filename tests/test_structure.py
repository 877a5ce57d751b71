"""The encoding walk on its own, over every file pydicom ships: the conformant ones pass, the
three that are broken on purpose are refused for what is broken in them."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from scp.checks import Check, relaxations
from scp.structure import StructureError, check_structure
from tests.dicom_helpers import TEST_FILES, transfer_syntax_of

BROKEN = {
    "MR_truncated.dcm": Check.ELEMENT_LENGTH,  # pixel data cut short
    "rtplan_truncated.dcm": Check.ELEMENT_LENGTH,
    "SC_rgb_jpeg.dcm": Check.VR,  # implicit-VR bytes behind an explicit-VR file meta
}


def _with_meta() -> list[Path]:
    files = []
    for path in sorted(TEST_FILES.glob("*.dcm")):
        try:
            meta = pydicom.filereader.read_file_meta_info(path)
        except Exception:  # no preamble or no file meta: not a PS3.10 file
            continue
        if "TransferSyntaxUID" in meta:
            files.append(path)
    return files


@pytest.mark.parametrize("path", _with_meta(), ids=lambda p: p.name)
def test_pydicom_test_files(path: Path) -> None:
    data = path.read_bytes()
    if path.name in BROKEN:
        with pytest.raises(StructureError) as caught:
            check_structure(data, transfer_syntax_of(path))
        assert caught.value.check is BROKEN[path.name]
    else:
        check_structure(data, transfer_syntax_of(path))


def test_the_file_meta_must_agree_with_the_transfer() -> None:
    path = TEST_FILES / "CT_small.dcm"
    with pytest.raises(StructureError) as caught:
        check_structure(path.read_bytes(), "1.2.840.10008.1.2")
    assert caught.value.check is Check.TRANSFER_SYNTAX


def test_only_harmless_checks_can_be_relaxed() -> None:
    assert relaxations(["tag_order", Check.TRAILING_BYTES]) == {
        Check.TAG_ORDER,
        Check.TRAILING_BYTES,
    }
    with pytest.raises(ValueError, match="always enforced"):
        relaxations(["element_length"])
    with pytest.raises(ValueError, match="not a check"):
        relaxations(["everything"])
