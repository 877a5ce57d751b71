"""Detector names -> factories, so the command line and the harness never import models directly.

A factory is ``(model_path: Path | None, modality: str | None) -> Detector``. Learned detectors
are registered by dotted path (``"module:callable"``) and imported only when asked for, so
``tamperscan evaluate --detector noise-residual`` never pays torch's import time. Adding a
detector is one line in ``_FACTORIES``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

from detector.interface import Detector

Factory = Callable[[Path | None, str | None], Detector]

_FACTORIES: dict[str, str | Factory] = {
    "noise-residual": "detector.baselines:NoiseResidualDetector.create",
    "copy-move": "detector.forensics.copymove:CopyMoveDetector.create",
    "noise-consistency": "detector.forensics.noise:NoiseConsistencyCheck.create",
    "slice-consistency": "detector.forensics.consistency:SliceConsistencyCheck.create",
    "exact-repeat": "detector.forensics.duplicates:ExactRepeatCheck.create",
    "noise-copy": "detector.forensics.noisecopy:NoiseCopyCheck.create",
    "btd": "detector.btd:create",
    "inpaint": "detector.inpainting:create",
}


class UnknownDetectorError(KeyError):
    """A detector name nobody registered."""

    def __str__(self) -> str:
        return str(self.args[0])


def register(name: str, factory: str | Factory) -> None:
    """Add (or replace) a detector: a factory or its ``"module:attr.attr"`` path."""
    _FACTORIES[name] = factory


def names() -> list[str]:
    """Registered detector names, in registration order."""
    return list(_FACTORIES)


def _resolve(spec: str) -> Factory:
    module_name, _, attr = spec.partition(":")
    obj: object = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj  # type: ignore[return-value]


def create(name: str, model_path: Path | None = None, modality: str | None = None) -> Detector:
    """Build the detector registered under ``name``."""
    try:
        spec = _FACTORIES[name]
    except KeyError:
        raise UnknownDetectorError(
            f"unknown detector {name!r}; available: {', '.join(names())}"
        ) from None
    factory = _resolve(spec) if isinstance(spec, str) else spec
    return factory(model_path, modality)
