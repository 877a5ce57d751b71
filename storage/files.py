"""Instance files on disk: checked paths and crash-safe writes.

A file is written to a temporary name in its final folder, flushed, fsynced, renamed into
place and the folder fsynced, so after a crash a name either holds the complete bytes or
does not exist. Paths are built only from UIDs that passed ``check_uid``: a UID is digits
and dots, so it can never climb out of the data folder.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from pathlib import Path

from pydicom.uid import UID

_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")  # used with fullmatch: no "$" trap
TEMP_SUFFIX = ".partial"


class InvalidUID(ValueError):
    """A UID that is not a valid DICOM UID (digits and dots, at most 64 characters)."""


def check_uid(value: object, name: str) -> str:
    """Return ``value`` as a UID string, or raise InvalidUID saying which one is wrong.

    Only the padding PS3.5 allows is removed (trailing NULs, and trailing spaces some
    modalities send); a newline, a NUL inside, or anything else makes the UID invalid. Both
    pydicom's own check and a full match of the UID grammar must pass: pydicom's regex ends in
    ``$``, which also matches before a final newline.
    """
    text = str(value).rstrip("\x00 ") if value is not None else ""
    if not text:
        raise InvalidUID(f"{name} is missing")
    if len(text) > 64 or not UID(text).is_valid or not _UID.fullmatch(text):
        raise InvalidUID(f"{name} {text[:80]!r} is not a valid UID")
    return text


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def instance_relpath(study_uid: str, series_uid: str, sop_uid: str, sha256: str) -> Path:
    """Where one version of an instance lives, relative to the instance root.

    The content hash is part of the name so a replaced instance never overwrites the bytes
    an index row still points at; the old version stays on disk for forensics.
    """
    for uid, name in ((study_uid, "Study"), (series_uid, "Series"), (sop_uid, "SOP Instance")):
        check_uid(uid, f"{name} Instance UID" if name != "SOP Instance" else "SOP Instance UID")
    return Path(study_uid) / series_uid / f"{sop_uid}.{sha256[:16]}.dcm"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_dirs_durably(folder: Path) -> None:
    missing: list[Path] = []
    probe = folder
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    for path in reversed(missing):
        path.mkdir(exist_ok=True)
        _fsync_dir(path.parent)


def write_atomically(target: Path, data: bytes) -> None:
    """Write ``data`` to ``target`` so that it is durable and never seen half-written."""
    write_unsynced_name(target, data)
    _fsync_dir(target.parent)


def write_unsynced_name(target: Path, data: bytes) -> None:
    """Write ``data`` durably under a temporary name and rename it to ``target``.

    The bytes are synced (``fdatasync``: a new file's size is data, so it is synced too) but
    the rename is not durable until the folder is fsynced (``fsync_dirs``): the group
    committer syncs each folder once per batch instead of once per file.
    """
    _make_dirs_durably(target.parent)
    temp = target.with_name(f".{target.name}.{secrets.token_hex(6)}{TEMP_SUFFIX}")
    try:
        with open(temp, "xb", buffering=0) as handle:
            view = memoryview(data)
            while view:
                view = view[handle.write(view) :]
            os.fdatasync(handle.fileno())
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def fsync_dirs(folders: set[Path]) -> None:
    """Make the renames into ``folders`` durable: one fsync per folder."""
    for folder in sorted(folders):
        _fsync_dir(folder)


def remove_partial_files(root: Path) -> int:
    """Delete temporary files a crash left behind; they were never acknowledged."""
    count = 0
    if root.exists():
        for path in root.rglob(f"*{TEMP_SUFFIX}"):
            path.unlink(missing_ok=True)
            count += 1
    return count
