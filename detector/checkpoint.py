"""TamperScan's detector checkpoint format, and the released BTD layout.

Ours (``format == "tamperscan-detector"``, ``format_version`` 1) is one ``torch.save`` dict of
plain types only, so it loads with ``weights_only=True`` (no pickled code runs on load):

    format, format_version, kind ("btd" | "inpaint"), modality,
    preprocessing   Preprocessing.to_dict(): modality, patch size, CT window, MR percentiles
    model_config    network hyper-parameters (BTDModelConfig / InpaintConfig .to_dict())
    scoring         timestep/reduction (BTD) or normalisation (inpaint)
    model           state dict of the online network
    ema             ema_pytorch EMA state dict ("ema_model.*" keys) or None
    opt, scaler     optimizer / grad-scaler state, for --resume
    step, epoch     training progress
    calibration     {"genuine_scores": float64 tensor} or None
    versions        tamperscan, torch, denoising_diffusion_pytorch at save time
    training        the training arguments (data folder, lr, batch size, ...)

The released BTD weights are the ``denoising_diffusion_pytorch`` Trainer's ``save()`` dict
``{step, model, opt, ema, scaler, version}``; ``model`` is the GaussianDiffusion state dict. They
record neither modality nor patch size, so the caller names the modality and the paper's
settings (CT 96, MR 128, dim 32, mults 1-2-4-8) are assumed. Both layouts load strictly: the
online weights first (proves the layout), then the EMA weights when present, which are the
ones used for scoring — :attr:`Checkpoint.weights_used` says which.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from detector.calibration import Calibration
from detector.preprocess import Preprocessing, normalise_modality

log = logging.getLogger(__name__)

FORMAT = "tamperscan-detector"
FORMAT_VERSION = 1
KINDS = ("btd", "inpaint")
RELEASED_KEYS = frozenset({"step", "model", "opt", "ema", "scaler", "version"})
EMA_PREFIX = "ema_model."


class CheckpointError(ValueError):
    """A checkpoint that cannot be used as asked; the message says what was expected and found."""


def library_versions() -> dict[str, str]:
    """Versions recorded in every checkpoint, so a model can be traced to its software."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"torch": str(torch.__version__)}  # TorchVersion would not load weights_only
    for package in ("tamperscan", "denoising-diffusion-pytorch", "ema-pytorch"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "unknown"
    return out


def ema_weights(ema_state: dict[str, Any] | None) -> dict[str, torch.Tensor] | None:
    """The EMA model's own state dict out of an ``ema_pytorch.EMA`` state dict."""
    if not ema_state:
        return None
    weights = {k[len(EMA_PREFIX) :]: v for k, v in ema_state.items() if k.startswith(EMA_PREFIX)}
    return weights or None


@dataclass
class Checkpoint:
    """A loaded checkpoint, normalised across the two layouts."""

    path: str
    layout: str  # "tamperscan" or "btd-release"
    kind: str
    preprocessing: Preprocessing
    model_config: dict[str, Any]
    scoring: dict[str, Any]
    model_state: dict[str, torch.Tensor]
    ema_state: dict[str, Any] | None
    calibration: Calibration | None
    step: int = 0
    epoch: int = 0
    versions: dict[str, str] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    optimizer_state: dict[str, Any] | None = None
    scaler_state: dict[str, Any] | None = None
    weights_used: str = "none"

    @property
    def modality(self) -> str:
        return self.preprocessing.modality

    def load_weights_into(self, module: nn.Module, prefer_ema: bool = True) -> str:
        """Strictly load the weights; EMA ones when present and preferred. Returns which."""
        _strict_load(module, self.model_state, self, "model")
        ema = ema_weights(self.ema_state) if prefer_ema else None
        if ema is not None:
            _strict_load(module, ema, self, "ema")
            self.weights_used = "ema"
        else:
            self.weights_used = "model"
        log.info("%s: loaded %s weights (%s layout)", self.path, self.weights_used, self.layout)
        return self.weights_used

    def describe(self) -> dict[str, Any]:
        """What a report needs to say about the model it used."""
        return {
            "path": self.path,
            "layout": self.layout,
            "kind": self.kind,
            "modality": self.modality,
            "patch_size": self.preprocessing.patch_size,
            "weights": self.weights_used,
            "step": self.step,
            "epoch": self.epoch,
            "versions": dict(self.versions),
            "calibration_size": self.calibration.size if self.calibration else 0,
        }


def _strict_load(module: nn.Module, state: dict, ckpt: Checkpoint, which: str) -> None:
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches: same keys, other model dimensions
        raise CheckpointError(
            f"{ckpt.path}: the {which} weights do not fit the {ckpt.kind} network "
            f"{ckpt.model_config}: {str(exc)[:600]}"
        ) from exc
    if result.missing_keys or result.unexpected_keys:
        written = ckpt.versions.get("denoising-diffusion-pytorch", "unknown")
        raise CheckpointError(
            f"{ckpt.path}: the {which} weights do not match the expected {ckpt.kind} network "
            f"({ckpt.model_config}): {len(result.missing_keys)} missing keys "
            f"(e.g. {result.missing_keys[:3]}), {len(result.unexpected_keys)} unexpected keys "
            f"(e.g. {result.unexpected_keys[:3]}). Written with denoising_diffusion_pytorch "
            f"{written}; the BTD layout needs 1.8.x (1.9+ adds keys, 2.x changes blocks)."
        )
    # strict=False above only so the error can say what differs; any difference still fails.


def save_checkpoint(
    path: str | Path,
    *,
    kind: str,
    preprocessing: Preprocessing,
    model_config: dict[str, Any],
    scoring: dict[str, Any],
    model_state: dict[str, torch.Tensor],
    ema_state: dict[str, Any] | None = None,
    optimizer_state: dict[str, Any] | None = None,
    scaler_state: dict[str, Any] | None = None,
    step: int = 0,
    epoch: int = 0,
    calibration: Calibration | None = None,
    training: dict[str, Any] | None = None,
) -> Path:
    """Write our checkpoint atomically (temp file + rename: a crash never leaves half a file)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "modality": preprocessing.modality,
        "preprocessing": preprocessing.to_dict(),
        "model_config": dict(model_config),
        "scoring": dict(scoring),
        "model": {k: v.detach().cpu() for k, v in model_state.items()},
        "ema": {k: v.detach().cpu() if torch.is_tensor(v) else v for k, v in ema_state.items()}
        if ema_state is not None
        else None,
        "opt": optimizer_state,
        "scaler": scaler_state,
        "step": int(step),
        "epoch": int(epoch),
        "calibration": None
        if calibration is None
        else {"genuine_scores": torch.from_numpy(calibration.genuine_scores.copy())},
        "versions": library_versions(),
        "training": _plain(training or {}),
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(data, tmp)
    os.replace(tmp, path)
    return path


def _plain(value: Any) -> Any:
    """Training arguments as plain types (paths -> str), so weights_only loading accepts them."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip errors of many types
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint (expected a TamperScan detector "
            f"checkpoint or the released BTD {{step, model, opt, ema, scaler, version}} dict): "
            f"{exc}"
        ) from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, found {type(data).__name__}")
    return data


def kind_and_modality(path: str | Path) -> tuple[str, str | None]:
    """What a checkpoint file holds, without building a model: released BTD files give
    ("btd", None) since they do not record their modality."""
    path = Path(path)
    data = _read(path)
    if data.get("format") == FORMAT:
        return str(data.get("kind")), Preprocessing.from_dict(data["preprocessing"]).modality
    if "model" in data and set(data) <= RELEASED_KEYS:
        return "btd", None
    raise CheckpointError(f"{path}: unknown checkpoint layout with keys {sorted(data)[:8]}")


def load_checkpoint(
    path: str | Path,
    expected_kind: str | None = None,
    modality: str | None = None,
) -> Checkpoint:
    """Read either layout; check kind and modality against what the caller expects."""
    path = Path(path)
    data = _read(path)
    wanted = normalise_modality(modality) if modality else None
    if data.get("format") == FORMAT:
        ckpt = _from_ours(path, data)
    elif "model" in data and set(data) <= RELEASED_KEYS:
        ckpt = _from_release(path, data, wanted)
    else:
        raise CheckpointError(
            f"{path}: unknown checkpoint layout with keys {sorted(data)[:8]}; expected a "
            f"TamperScan detector checkpoint (format={FORMAT!r}) or the released BTD dict "
            f"{sorted(RELEASED_KEYS)}"
        )
    if expected_kind is not None and ckpt.kind != expected_kind:
        raise CheckpointError(
            f"{path}: expected a {expected_kind!r} detector checkpoint, found {ckpt.kind!r}"
        )
    if wanted is not None and ckpt.modality != wanted:
        raise CheckpointError(
            f"{path}: the model was trained on {ckpt.modality}, but {wanted} was requested"
        )
    return ckpt


def _from_ours(path: Path, data: dict[str, Any]) -> Checkpoint:
    version = int(data.get("format_version", 0))
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version} is newer than this TamperScan "
            f"understands ({FORMAT_VERSION}); upgrade TamperScan"
        )
    kind = str(data.get("kind"))
    if kind not in KINDS:
        raise CheckpointError(f"{path}: unknown detector kind {kind!r}; expected one of {KINDS}")
    cal = data.get("calibration")
    return Checkpoint(
        path=str(path),
        layout="tamperscan",
        kind=kind,
        preprocessing=Preprocessing.from_dict(data["preprocessing"]),
        model_config=dict(data["model_config"]),
        scoring=dict(data.get("scoring") or {}),
        model_state=data["model"],
        ema_state=data.get("ema"),
        calibration=Calibration.from_scores(cal["genuine_scores"].numpy()) if cal else None,
        step=int(data.get("step", 0)),
        epoch=int(data.get("epoch", 0)),
        versions=dict(data.get("versions") or {}),
        training=dict(data.get("training") or {}),
        optimizer_state=data.get("opt"),
        scaler_state=data.get("scaler"),
    )


def _from_release(path: Path, data: dict[str, Any], modality: str | None) -> Checkpoint:
    from detector.btd_config import DEFAULT_PATCH, BTDModelConfig, BTDScoring

    if modality is None:
        raise CheckpointError(
            f"{path}: released BTD weights do not record their modality; pass modality "
            f"'CT' (CT_model.pt, 96-pixel patches) or 'MR' (MRI_model.pt, 128-pixel patches)"
        )
    version = str(data.get("version", "unknown"))
    if not version.startswith("1.8"):
        log.warning("%s: written by denoising_diffusion_pytorch %s, not 1.8.x", path, version)
    cfg = BTDModelConfig(image_size=DEFAULT_PATCH[modality])
    return Checkpoint(
        path=str(path),
        layout="btd-release",
        kind="btd",
        preprocessing=Preprocessing(modality=modality, patch_size=cfg.image_size),
        model_config=cfg.to_dict(),
        scoring=BTDScoring().to_dict(),
        model_state=data["model"],
        ema_state=data.get("ema"),
        calibration=None,
        step=int(data.get("step") or 0),
        versions={"denoising-diffusion-pytorch": version},
        optimizer_state=data.get("opt"),
        scaler_state=data.get("scaler"),
    )
