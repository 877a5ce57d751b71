"""The detectors one process serves, loaded once and grouped by modality.

Learned detectors come from checkpoints (``[detector] models`` and the registry's production
versions); forensic checks (``[detector] checks``) need nothing loaded and serve every modality.
Verdicts and SRs name each by :func:`model_version`.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from detector.forensics import VERSION as FORENSIC_VERSION
from detector.interface import Detector, EvidenceKind

log = logging.getLogger(__name__)


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ModelSet:
    """Detectors loaded once per process, grouped by modality."""

    def __init__(self, detectors: Sequence[Detector] = (), checks: Sequence[Detector] = ()) -> None:
        self.by_modality: dict[str, list[Detector]] = {}
        for detector in detectors:
            self.by_modality.setdefault(detector.modality, []).append(detector)  # type: ignore[attr-defined]
        self.checks: list[Detector] = [c for c in checks if c.kind == EvidenceKind.FORENSIC]

    @classmethod
    def load(
        cls,
        paths: Sequence[Path],
        device: str,
        batch_size: int = 0,
        registry_ids: dict[Path, int] | None = None,
        checks: Sequence[str] = (),
    ) -> ModelSet:
        """Load checkpoints; ``registry_ids`` names the registry version of those that have one."""
        from detector.loading import load_detector  # torch only when models are configured

        detectors = []
        for path in paths:
            detector = load_detector(path, device=device, batch_size=batch_size or None)
            detector.info["sha256"] = _file_digest(Path(path))
            registry_id = (registry_ids or {}).get(Path(path))
            if registry_id is not None:
                detector.info["registry_version"] = registry_id
            log.info(
                "model loaded",
                extra={
                    "detector": detector.name,
                    "modality": detector.modality,
                    "path": str(path),
                    "sha256": detector.info["sha256"][:16],
                },
            )
            detectors.append(detector)
        return cls(detectors, build_checks(checks))

    def for_modality(self, modality: str) -> list[Detector]:
        """The learned detectors of ``modality`` (forensic checks are in ``checks``)."""
        return self.by_modality.get(modality.upper(), [])

    def describe(self) -> list[dict[str, Any]]:
        return [
            {
                "name": d.name,
                "modality": d.modality,  # type: ignore[attr-defined]
                "kind": EvidenceKind.LEARNED.value,
                "version": model_version(d),
                "registry_version": d.info.get("registry_version"),
                "weights": d.info.get("weights"),
                "calibration_size": d.info.get("calibration_size", 0),
                "path": d.info.get("path"),
            }
            for group in self.by_modality.values()
            for d in group
        ] + [
            {
                "name": c.name,
                "modality": "any",
                "kind": EvidenceKind.FORENSIC.value,
                "version": FORENSIC_VERSION,
            }
            for c in self.checks
        ]


def model_version(detector: Any) -> str:  # a learned detector (has ``info``)
    """What verdicts and SRs call a model: its file's sha256 prefix, plus the registry id."""
    digest = detector.info.get("sha256", "")[:16]
    registry_id = detector.info.get("registry_version")
    return digest if registry_id is None else f"r{registry_id}-{digest}"


def build_checks(names: Sequence[str]) -> list[Detector]:
    """The configured forensic checks, by registry name (an unknown name is an error)."""
    from detector import registry

    return [registry.create(name) for name in names]
