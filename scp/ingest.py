"""One received instance, whichever way it came in (C-STORE or STOW-RS): check, store, answer.

Both receivers hand over the bytes as they arrived and a way to decode them; this module
applies the same checks (``scp.validate``: first the encoding of the whole file under the
transfer syntax, then the values), the same durable store (``InstanceStore.store``), maps
every failure to its DICOM status, logs it and writes the refusal to the audit trail.

The checks a site relaxed (``[validation] relax``) are set once at start with
``set_default_relax``; a caller may pass its own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass

from pydicom.dataset import Dataset
from sqlalchemy.exc import OperationalError

from scp.checks import Check, relaxations
from scp.validate import (
    CANNOT_UNDERSTAND,
    DATASET_MISMATCH,
    DECODE_FAILED,
    OUT_OF_RESOURCES,
    RejectedInstance,
    check_encoding,
    inspect_dataset,
)
from storage.db import Database
from storage.instances import (
    InstanceMeta,
    InstanceStore,
    Origin,
    OutOfSpace,
    StoreOutcome,
    record_rejection,
)

log = logging.getLogger(__name__)

SUCCESS = 0x0000
_default_relax: frozenset[Check] = frozenset()


def set_default_relax(names: Collection[Check | str]) -> None:
    """The checks this process relaxes for every instance (``[validation] relax``)."""
    global _default_relax
    _default_relax = relaxations(names)


def _uid_for_audit(dataset: Dataset) -> tuple[str, str]:
    """SOP class and instance as sent, for the log and the audit row; never raises."""
    try:
        return (
            str(dataset.get("SOPClassUID", "") or ""),
            str(dataset.get("SOPInstanceUID", "") or ""),
        )
    except Exception:  # a broken element: the refusal names what broke
        return "", ""


@dataclass(frozen=True)
class IngestResult:
    status: int  # 0x0000, or the failure status to answer
    reason: str = ""
    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    outcome: StoreOutcome | None = None

    @property
    def ok(self) -> bool:
        return self.status == SUCCESS


def ingest(
    db: Database,
    store: InstanceStore,
    data: bytes,
    decode: Callable[[], tuple[Dataset, str, str | None]],
    origin: Origin,
    negotiated_sop_class: str | None = None,
    announced_sop_instance: str | None = None,
    expected_study_uid: str | None = None,
    relax: frozenset[Check] | None = None,
) -> IngestResult:
    """Store ``data`` (a complete DICOM file) if it passes every check, else refuse it.

    ``decode`` returns the dataset, its transfer syntax and the SOP class its wrapper announced
    (a STOW-RS part's file meta; None when ``negotiated_sop_class`` already says it); whatever
    it raises is a decode failure. Returns only after the instance is durable and indexed, or
    refused and audited.
    """
    relax = _default_relax if relax is None else relax
    sop_class = sop_uid = ""
    try:
        try:
            dataset, transfer_syntax, announced_class = decode()
        except RejectedInstance:
            raise
        except Exception as exc:  # pydicom and pynetdicom raise many types for broken data
            raise RejectedInstance(DECODE_FAILED, f"dataset could not be decoded: {exc}") from exc
        sop_class, sop_uid = _uid_for_audit(dataset)
        meta = _check(
            data,
            dataset,
            transfer_syntax,
            negotiated_sop_class or announced_class,
            announced_sop_instance,
            relax,
        )
        if expected_study_uid is not None and meta.study_uid != expected_study_uid:
            raise RejectedInstance(
                DATASET_MISMATCH,
                f"Study Instance UID {meta.study_uid} is not the requested {expected_study_uid}",
                meta.sop_instance_uid,
            )
        outcome = store.store(data, meta, origin)
    except RejectedInstance as exc:
        sop_uid = exc.sop_instance_uid or sop_uid
        return _refuse(db, origin, exc.status, exc.reason, sop_class, sop_uid)
    except OutOfSpace as exc:
        log.warning("disk below free-space watermark, refusing", extra={"why": str(exc)})
        reason = f"out of storage space: {exc}"
        return _refuse(db, origin, OUT_OF_RESOURCES, reason, sop_class, sop_uid)
    except OSError as exc:
        log.exception("could not write instance")
        reason = f"could not store: {exc}"
        return _refuse(db, origin, OUT_OF_RESOURCES, reason, sop_class, sop_uid)
    except OperationalError as exc:  # the index could not be written (disk full, locked)
        log.exception("could not index instance")
        reason = f"could not index: {exc.orig}"
        return _refuse(db, origin, OUT_OF_RESOURCES, reason, sop_class, sop_uid)
    log.info(
        "instance stored",
        extra={
            "result": outcome.result.value,
            "sop": meta.sop_instance_uid,
            "study": meta.study_uid,
            "channel": origin.channel,
            "calling_ae": origin.calling_ae,
            "peer": origin.peer_address,
            "transfer_syntax": meta.transfer_syntax_uid,
        },
    )
    return IngestResult(SUCCESS, "", meta.sop_class_uid, meta.sop_instance_uid, outcome)


def _check(
    data: bytes,
    dataset: Dataset,
    transfer_syntax: str,
    sop_class: str | None,
    announced_sop_instance: str | None,
    relax: frozenset[Check],
) -> InstanceMeta:
    """The encoding, then the values; a dataset the checks did not foresee is refused too."""
    try:
        pixels = check_encoding(data, transfer_syntax, relax)
        return inspect_dataset(
            dataset,
            transfer_syntax,
            negotiated_sop_class=sop_class,
            announced_sop_instance=announced_sop_instance,
            pixels=pixels,
            relax=relax,
        )
    except RejectedInstance:
        raise
    except Exception as exc:  # a bug of ours on odd data: refuse loudly, never crash
        log.exception("instance could not be checked")
        raise RejectedInstance(
            CANNOT_UNDERSTAND, f"dataset could not be checked: {type(exc).__name__}: {exc}"
        ) from exc


def refuse(db: Database, origin: Origin, status: int, reason: str) -> IngestResult:
    """Refuse something that never got as far as a dataset (an empty or mistyped part)."""
    return _refuse(db, origin, status, reason, "", "")


def _refuse(
    db: Database, origin: Origin, status: int, reason: str, sop_class: str, sop_uid: str
) -> IngestResult:
    log.warning(
        "instance refused",
        extra={
            "status": f"0x{status:04X}",
            "reason": reason,
            "sop": sop_uid or None,
            "channel": origin.channel,
            "calling_ae": origin.calling_ae,
            "peer": origin.peer_address,
        },
    )
    try:
        record_rejection(db, origin, reason, sop_uid or None)
    except Exception:
        log.exception("could not audit a refused instance")
    return IngestResult(status, reason, sop_class, sop_uid)
