"""The inpainting detector (the CHAIMELEON "deepfakes-detector" approach).

CHAIMELEON published only the idea: an in-painting network trained unsupervised on genuine
scans of one modality and body region; the user points at a region and gets a score. Their
architecture is not public, so this is a context encoder in the spirit of Pathak et al. 2016:

- input: a ``patch_size`` patch (default 128) in [0, 1] whose centre ``hole_size`` square
  (default 64) is zeroed, plus the hole mask as a second channel;
- network: a small U-Net — two stride-2 stages, a dilated residual bottleneck whose receptive
  field spans the whole hole, and skip connections carrying the surround at full resolution;
- trained on genuine patches to reconstruct the hidden centre (MSE inside the hole).

Score: the mean squared reconstruction error inside the hole. Genuine anatomy is predictable
from its surround in the way the network learned; injected or removed lesions, pasted tissue
and adversarial noise are not. With ``normalise=True`` the error is divided by the variance of
the visible surround (+ ``eps``), so busy textured regions — which are simply harder to
in-paint — do not outrank smooth tampered ones; whether that helps is measured, not assumed
(``tests/test_inpainting.py``), and the choice travels in the checkpoint. Heatmap: the
per-pixel absolute error inside the hole (zero outside), in [0, 1] image units.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from detector.calibration import Calibration
from detector.checkpoint import Checkpoint, load_checkpoint
from detector.device import autocast, default_batch_size, resolve_device, resolve_precision
from detector.learned import LearnedDetector, require_model
from detector.preprocess import Preprocessing

log = logging.getLogger(__name__)

DEFAULT_PATCH = {"CT": 128, "MR": 128}


@dataclass(frozen=True)
class InpaintConfig:
    """Network size and geometry; stored in the checkpoint so the same net is rebuilt."""

    patch_size: int = 128
    hole_size: int = 64
    width: int = 32
    dilations: tuple[int, ...] = (2, 4, 8, 8)

    def __post_init__(self) -> None:
        if self.patch_size % 4:
            raise ValueError(f"patch size must be divisible by 4, got {self.patch_size}")
        if not 0 < self.hole_size < self.patch_size:
            raise ValueError(
                f"hole size must be between 0 and the patch size {self.patch_size}, "
                f"got {self.hole_size}"
            )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["dilations"] = list(self.dilations)
        return d

    @classmethod
    def from_dict(cls, data: dict) -> InpaintConfig:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        if "dilations" in known:
            known["dilations"] = tuple(int(v) for v in known["dilations"])
        return cls(**known)


@dataclass(frozen=True)
class InpaintScoring:
    """How the hole error becomes a score."""

    normalise: bool = False
    eps: float = 1e-4  # [0, 1]-units variance floor: about the noise floor of a flat region

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> InpaintScoring:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def hole_mask(cfg: InpaintConfig) -> torch.Tensor:
    """(S, S) float mask, 1 inside the centred hole."""
    mask = torch.zeros(cfg.patch_size, cfg.patch_size)
    lo = (cfg.patch_size - cfg.hole_size) // 2
    mask[lo : lo + cfg.hole_size, lo : lo + cfg.hole_size] = 1.0
    return mask


def _groups(channels: int) -> int:
    return 8 if channels % 8 == 0 else 1


class _ConvBlock(nn.Sequential):
    def __init__(self, cin: int, cout: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation),
            nn.GroupNorm(_groups(cout), cout),
            nn.SiLU(),
        )


class _Dilated(nn.Module):
    def __init__(self, channels: int, dilation: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _ConvBlock(channels, channels, dilation=dilation),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.GroupNorm(_groups(channels), channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(x + self.body(x))


class InpaintNet(nn.Module):
    """Context encoder U-Net: (masked patch, mask) -> reconstructed patch."""

    def __init__(self, cfg: InpaintConfig) -> None:
        super().__init__()
        w = cfg.width
        self.cfg = cfg
        self.register_buffer("mask", hole_mask(cfg)[None, None], persistent=False)
        self.stem = nn.Sequential(nn.Conv2d(2, w, 5, padding=2), nn.SiLU(), _ConvBlock(w, w))
        self.down1 = _ConvBlock(w, 2 * w, stride=2)
        self.down2 = _ConvBlock(2 * w, 4 * w, stride=2)
        self.middle = nn.Sequential(*[_Dilated(4 * w, d) for d in cfg.dilations])
        self.up1 = _ConvBlock(4 * w + 2 * w, 2 * w)
        self.up2 = _ConvBlock(2 * w + w, w)
        self.head = nn.Conv2d(w, 1, 3, padding=1)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """``patches`` (B, 1, S, S) in [0, 1], centre visible or not: the net hides it itself."""
        mask = self.mask.to(patches.dtype).expand(patches.shape[0], -1, -1, -1)
        x = torch.cat((patches * (1 - mask), mask), dim=1)
        s1 = self.stem(x)
        s2 = self.down1(s1)
        h = self.middle(self.down2(s2))
        h = self.up1(torch.cat((F.interpolate(h, scale_factor=2.0, mode="nearest"), s2), 1))
        h = self.up2(torch.cat((F.interpolate(h, scale_factor=2.0, mode="nearest"), s1), 1))
        return self.head(h)

    def loss(self, patches: torch.Tensor) -> torch.Tensor:
        """Training loss: MSE of the reconstruction inside the hole."""
        pred = self(patches)
        err = (pred - patches).square() * self.mask
        return err.sum() / (self.mask.sum() * patches.shape[0])


class InpaintDetector(LearnedDetector):
    """The inpainting detector behind the :class:`detector.interface.Detector` contract."""

    name = "inpaint"

    def __init__(
        self,
        net: InpaintNet,
        prep: Preprocessing,
        scoring: InpaintScoring | None = None,
        calibration: Calibration | None = None,
        device: str | torch.device = "auto",
        precision: str = "auto",
        batch_size: int | None = None,
        info: dict[str, Any] | None = None,
    ) -> None:
        if net.cfg.patch_size != prep.patch_size:
            raise ValueError(
                f"network patch size {net.cfg.patch_size} != preprocessing patch size "
                f"{prep.patch_size}"
            )
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.net = net.to(self.device).eval().to(memory_format=torch.channels_last)
        self.prep = prep
        self.scoring = scoring or InpaintScoring()
        self.calibration = calibration
        self.batch_size = batch_size or 4 * default_batch_size(self.device)
        self.info = dict(info or {})
        mask = hole_mask(net.cfg).to(self.device)
        self._mask = mask.bool()
        self._ring = ~self._mask

    @torch.inference_mode()
    def _batch(self, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = patches.to(self.device, torch.float32)[:, None]
        with autocast(self.device, self.precision):
            pred = self.net(x.contiguous(memory_format=torch.channels_last))
        err = (pred.float() - x)[:, 0].abs() * self._mask  # heatmap: zero outside the hole
        score = err.square().sum(dim=(1, 2)) / self._mask.sum()
        if self.scoring.normalise:
            score = score / (x[:, 0][:, self._ring].var(dim=1) + self.scoring.eps)
        return score, err

    def score_patches(self, patches: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw scores and per-pixel error maps for preprocessed (N, S, S) patches."""
        scores = np.empty(len(patches), dtype=np.float64)
        maps = np.empty(patches.shape, dtype=np.float32)
        tensor = torch.from_numpy(np.ascontiguousarray(patches, dtype=np.float32))
        for start in range(0, len(patches), self.batch_size):
            s, m = self._batch(tensor[start : start + self.batch_size])
            scores[start : start + len(s)] = s.double().cpu().numpy()
            maps[start : start + len(s)] = m.cpu().numpy()
        return scores, maps


def load_inpaint(
    model_path: str,
    modality: str | None = None,
    *,
    device: str | torch.device = "auto",
    precision: str = "auto",
    batch_size: int | None = None,
) -> InpaintDetector:
    """Load an inpainting detector from a TamperScan checkpoint (EMA weights preferred)."""
    ckpt = load_checkpoint(model_path, expected_kind="inpaint", modality=modality)
    return inpaint_from_checkpoint(ckpt, device=device, precision=precision, batch_size=batch_size)


def inpaint_from_checkpoint(
    ckpt: Checkpoint,
    *,
    device: str | torch.device = "auto",
    precision: str = "auto",
    batch_size: int | None = None,
) -> InpaintDetector:
    """Build the network a loaded checkpoint describes and wrap it as a detector."""
    net = InpaintNet(InpaintConfig.from_dict(ckpt.model_config))
    ckpt.load_weights_into(net)
    return InpaintDetector(
        net,
        ckpt.preprocessing,
        InpaintScoring.from_dict(ckpt.scoring),
        ckpt.calibration,
        device,
        precision,
        batch_size,
        info=ckpt.describe(),
    )


def create(model_path: Path | str | None, modality: str | None = None) -> Any:
    """Registry factory ``(model_path, modality) -> Detector`` (see :mod:`detector.registry`)."""
    return load_inpaint(require_model(model_path, "inpainting detector", modality), modality)
