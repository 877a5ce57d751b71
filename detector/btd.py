"""BTD — Back-in-Time Diffusion (Grabovski et al., arXiv 2407.15169) as a TamperScan detector.

A DDPM (``denoising_diffusion_pytorch`` 1.8.x ``Unet`` in ``GaussianDiffusion``,
``objective="pred_noise"``) is trained on genuine patches only. To check a patch, the clean
patch x0 is treated as if it were the diffusion state at step ``t`` and ONE reverse step is
taken without adding noise:

    x(-1) = coef1[t] * clip(x0 / sqrt(abar_t) - sqrt(1/abar_t - 1) * eps(x0, t)) + coef2[t] * x0

(the library's ``p_sample`` posterior mean, in the model's [-1, 1] space). Genuine anatomy and
scanner noise sit on the learned manifold and barely move; synthetic content (GAN or diffusion
in-painting) carries residual structure the model "removes". Choices, made explicit here:

- Timestep ``t = 0`` by default. The public BTD code (README, trainers, demo notebook) does not
  show the detection step; "one step back from the clean image" is t = 0, and with the default
  sigmoid schedule the posterior variance at t = 0 is exactly 0, so the step is deterministic
  and equal to the library's ``p_sample(x, 0)``. Other ``t`` are configurable; for t > 0 we
  still take the mean (no noise), so scores stay deterministic.
- Heatmap: the per-pixel residual ``|x0 - x(-1)|`` in [0, 1] image units (half the [-1, 1]
  difference), kept for every patch.
- Score (``reduction``): ``"mse"`` (default) = mean squared residual over the whole patch, the
  paper's MSE(x0, x(-1)); ``"centre_mse"`` = mean squared residual over the central
  ``centre_size`` window (default half the patch), which focuses on the pointed-at region.

Speed: the reference path (``p_sample``, fp32, one patch at a time) spends all its time in the
Unet. We run the same weights through :func:`fast_eps`, a mirror of ``Unet.forward`` for a fixed
``t`` that (1) computes the time embedding and every ResnetBlock's scale/shift once per model,
not per call, (2) runs channels-last with linear attention laid out so no activation is copied
between layouts, and (3) batches patches under ``torch.inference_mode`` with bf16 autocast where
the hardware supports it. ``benchmarks/scoring.py`` checks it agrees with ``p_sample``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from detector.btd_config import DEFAULT_PATCH, BTDModelConfig, BTDScoring
from detector.calibration import Calibration
from detector.checkpoint import Checkpoint, load_checkpoint
from detector.device import autocast, default_batch_size, resolve_device, resolve_precision
from detector.learned import LearnedDetector, require_model
from detector.preprocess import Preprocessing

log = logging.getLogger(__name__)


def build_diffusion(cfg: BTDModelConfig) -> nn.Module:
    """A fresh ``GaussianDiffusion`` with the library's ``Unet``, as the BTD authors built it."""
    from denoising_diffusion_pytorch import GaussianDiffusion, Unet

    stages = len(cfg.dim_mults)
    # Full attention in the last stage only: the library default for 4 stages, spelled out so
    # tiny test models with fewer stages pass the library's length check.
    full_attn = tuple(i == stages - 1 for i in range(stages))
    unet = Unet(dim=cfg.dim, dim_mults=tuple(cfg.dim_mults), channels=1, full_attn=full_attn)
    factor = 2 ** (stages - 1)
    if cfg.image_size % factor:
        raise ValueError(f"patch size {cfg.image_size} must be divisible by {factor}")
    return GaussianDiffusion(
        unet,
        image_size=cfg.image_size,
        timesteps=cfg.timesteps,
        sampling_timesteps=min(cfg.sampling_timesteps, cfg.timesteps),
        objective=cfg.objective,
        beta_schedule=cfg.beta_schedule,
    )


# --------------------------------------------------------------------------- fast forward


def _resnet_blocks(unet: nn.Module) -> list[nn.Module]:
    blocks: list[nn.Module] = []
    for block1, block2, _, _ in unet.downs:
        blocks += [block1, block2]
    blocks += [unet.mid_block1, unet.mid_block2]
    for block1, block2, _, _ in unet.ups:
        blocks += [block1, block2]
    blocks.append(unet.final_res_block)
    return blocks


class _TimeConditioning:
    """Scale/shift of every ResnetBlock for one fixed t, computed once (they do not depend on x)."""

    def __init__(self, unet: nn.Module, t: int) -> None:
        # no_grad, not inference_mode: the white-box attack differentiates through these
        with torch.no_grad():
            device = next(unet.parameters()).device
            emb = unet.time_mlp(torch.full((1,), t, device=device, dtype=torch.long))
            self.by_block: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
            for block in _resnet_blocks(unet):
                scale, shift = block.mlp(emb)[:, :, None, None].chunk(2, dim=1)
                self.by_block[id(block)] = (scale, shift)


def _resnet(block: nn.Module, x: torch.Tensor, cond: _TimeConditioning) -> torch.Tensor:
    h = block.block1(x, scale_shift=cond.by_block[id(block)])
    h = block.block2(h)
    return h + block.res_conv(x)


def _linear_attention(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``LinearAttention.forward`` computed in (b, n, heads, d) layout: no layout copies."""
    b, _, rows, cols = x.shape
    qkv = attn.to_qkv(attn.norm(x))
    heads = attn.heads
    d = qkv.shape[1] // (3 * heads)
    # Channels-last memory is (b, rows, cols, 3*heads*d): this permute+reshape is a view.
    q, k, v = qkv.permute(0, 2, 3, 1).reshape(b, rows * cols, 3, heads, d).unbind(2)
    q = q.softmax(dim=-1) * attn.scale  # library: softmax over the head dimension
    k = k.softmax(dim=1)  # library: softmax over positions
    context = torch.matmul(k.permute(0, 2, 3, 1), v.transpose(1, 2))  # b h d e
    out = torch.matmul(q.transpose(1, 2), context)  # b h n e
    out = out.transpose(1, 2).reshape(b, rows, cols, heads * d).permute(0, 3, 1, 2)
    return attn.to_out(out)


def fast_eps(unet: nn.Module, x: torch.Tensor, cond: _TimeConditioning) -> torch.Tensor:
    """``Unet.forward(x, t)`` (library 1.8.x) with the time conditioning precomputed."""
    from denoising_diffusion_pytorch.denoising_diffusion_pytorch import LinearAttention

    def attend(module: nn.Module, h: torch.Tensor) -> torch.Tensor:
        if isinstance(module, LinearAttention):
            return _linear_attention(module, h)
        return module(h)

    if unet.self_condition:
        x = torch.cat((torch.zeros_like(x), x), dim=1)
    x = unet.init_conv(x)
    r = x
    skips: list[torch.Tensor] = []
    for block1, block2, attn, downsample in unet.downs:
        x = _resnet(block1, x, cond)
        skips.append(x)
        x = _resnet(block2, x, cond)
        x = attend(attn, x) + x
        skips.append(x)
        x = downsample(x)
    x = _resnet(unet.mid_block1, x, cond)
    x = unet.mid_attn(x) + x
    x = _resnet(unet.mid_block2, x, cond)
    for block1, block2, attn, upsample in unet.ups:
        x = _resnet(block1, torch.cat((x, skips.pop()), dim=1), cond)
        x = _resnet(block2, torch.cat((x, skips.pop()), dim=1), cond)
        x = attend(attn, x) + x
        x = upsample(x)
    x = _resnet(unet.final_res_block, torch.cat((x, r), dim=1), cond)
    return unet.final_conv(x)


class OneStep:
    """The deterministic back-in-time step, batched; returns |x0 - x(-1)| in [0, 1] units."""

    def __init__(
        self,
        diffusion: nn.Module,
        t: int = 0,
        device: str | torch.device = "auto",
        precision: str = "auto",
    ) -> None:
        if not 0 <= t < diffusion.num_timesteps:
            raise ValueError(f"timestep t must be in [0, {diffusion.num_timesteps}), got {t}")
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.diffusion = diffusion.to(self.device).eval()
        self.unet = self.diffusion.model.to(memory_format=torch.channels_last)
        self.t = t
        self.cond = _TimeConditioning(self.unet, t)
        d = self.diffusion
        self._coef = {
            name: float(getattr(d, name)[t])
            for name in (
                "sqrt_recip_alphas_cumprod",
                "sqrt_recipm1_alphas_cumprod",
                "posterior_mean_coef1",
                "posterior_mean_coef2",
                "sqrt_alphas_cumprod",
                "sqrt_one_minus_alphas_cumprod",
            )
        }

    @torch.inference_mode()
    def __call__(self, patches: torch.Tensor) -> torch.Tensor:
        """``patches``: (B, 1, S, S) in [0, 1]. Returns (B, S, S) residuals, float32."""
        return self.residual(patches)

    def residual(self, patches: torch.Tensor) -> torch.Tensor:
        """The step itself, differentiable (``__call__`` runs it under inference mode)."""
        x01 = patches.to(self.device, torch.float32, non_blocking=True)
        x = (x01 * 2 - 1).contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.precision):
            out = fast_eps(self.unet, x, self.cond)
        out = out.float()  # the posterior step stays in fp32: it subtracts nearly equal numbers
        c = self._coef
        objective = self.diffusion.objective
        if objective == "pred_noise":
            x_start = c["sqrt_recip_alphas_cumprod"] * x - c["sqrt_recipm1_alphas_cumprod"] * out
        elif objective == "pred_x0":
            x_start = out
        else:  # pred_v
            x_start = c["sqrt_alphas_cumprod"] * x - c["sqrt_one_minus_alphas_cumprod"] * out
        x_start = x_start.clamp(-1.0, 1.0)
        x_prev = c["posterior_mean_coef1"] * x_start + c["posterior_mean_coef2"] * x
        return ((x - x_prev).abs() * 0.5)[:, 0].contiguous()


def reference_residual(diffusion: nn.Module, patch: np.ndarray, t: int = 0) -> np.ndarray:
    """The library's own step on one patch, fp32: the ground truth :class:`OneStep` must match.

    At t = 0 this is ``p_sample`` itself (deterministic there); for t > 0 ``p_sample`` would add
    noise, so the reference is its noise-free mean from ``p_mean_variance``.
    """
    device = diffusion.betas.device
    x01 = torch.as_tensor(patch, dtype=torch.float32, device=device)[None, None]
    x = diffusion.normalize(x01)  # p_sample works in [-1, 1]; only forward() normalises itself
    with torch.inference_mode():
        if t == 0:
            x_prev, _ = diffusion.p_sample(x, 0)
        else:
            times = torch.full((1,), t, device=device, dtype=torch.long)
            x_prev, *_ = diffusion.p_mean_variance(x, times, clip_denoised=True)
    return ((x - x_prev).abs() * 0.5)[0, 0].float().cpu().numpy()


def residual_scores(residual: torch.Tensor, scoring: BTDScoring) -> torch.Tensor:
    """Score(s) from residual map(s) (..., S, S) by the configured reduction, as a tensor
    (differentiable: the white-box attack descends it)."""
    r = residual
    if scoring.reduction == "centre_mse":
        size = r.shape[-1]
        c = scoring.centre_size or size // 2
        lo = (size - c) // 2
        r = r[..., lo : lo + c, lo : lo + c]
    return r.square().mean(dim=(-2, -1))


def reduce_residual(residual: np.ndarray | torch.Tensor, scoring: BTDScoring) -> np.ndarray:
    """Score(s) from residual map(s) (..., S, S) by the configured reduction."""
    r = torch.as_tensor(residual, dtype=torch.float32)
    return residual_scores(r, scoring).double().cpu().numpy()


class BTDDetector(LearnedDetector):
    """BTD behind the :class:`detector.interface.Detector` contract. Load once, reuse."""

    name = "btd"

    def __init__(
        self,
        diffusion: nn.Module,
        prep: Preprocessing,
        scoring: BTDScoring | None = None,
        calibration: Calibration | None = None,
        device: str | torch.device = "auto",
        precision: str = "auto",
        batch_size: int | None = None,
        info: dict[str, Any] | None = None,
    ) -> None:
        if diffusion.image_size != prep.patch_size:
            raise ValueError(
                f"model patch size {diffusion.image_size} != preprocessing patch size "
                f"{prep.patch_size}"
            )
        self.prep = prep
        self.scoring = scoring or BTDScoring()
        self.calibration = calibration
        self.step = OneStep(diffusion, self.scoring.t, device, precision)
        self.batch_size = batch_size or default_batch_size(self.step.device)
        self.info = dict(info or {})

    @property
    def diffusion(self) -> nn.Module:
        return self.step.diffusion

    def with_scoring(self, scoring: BTDScoring) -> BTDDetector:
        """Same weights, other timestep/reduction (the calibration is dropped if t changes)."""
        calibration = self.calibration if scoring == self.scoring else None
        return BTDDetector(
            self.diffusion,
            self.prep,
            scoring,
            calibration,
            self.step.device,
            self.step.precision,
            self.batch_size,
            self.info,
        )

    def residual_maps(self, patches: np.ndarray) -> np.ndarray:
        """(N, S, S) patches in [0, 1] -> (N, S, S) residual maps, in device-sized batches."""
        out = np.empty(patches.shape, dtype=np.float32)
        tensor = torch.from_numpy(np.ascontiguousarray(patches, dtype=np.float32))
        for start in range(0, len(patches), self.batch_size):
            chunk = tensor[start : start + self.batch_size, None]
            if self.step.device.type == "cuda":
                chunk = chunk.pin_memory()
            out[start : start + len(chunk)] = self.step(chunk).cpu().numpy()
        return out

    def score_patches(self, patches: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw scores and residual maps for preprocessed patches."""
        maps = self.residual_maps(patches)
        return reduce_residual(maps, self.scoring), maps


def default_preprocessing(modality: str, patch_size: int | None = None) -> Preprocessing:
    """The paper's preprocessing for ``modality`` (patch 96 for CT, 128 for MR)."""
    from detector.preprocess import normalise_modality

    m = normalise_modality(modality)
    return Preprocessing(modality=m, patch_size=patch_size or DEFAULT_PATCH[m])


def load_btd(
    model_path: str,
    modality: str | None = None,
    *,
    device: str | torch.device = "auto",
    precision: str = "auto",
    batch_size: int | None = None,
    scoring: BTDScoring | None = None,
) -> BTDDetector:
    """Load a BTD detector from our checkpoint or the released ``{step, model, ema, ...}`` file.

    ``modality`` is required for released weights (they do not record it) and checked against
    ours. ``scoring`` overrides the checkpoint's timestep/reduction. EMA weights are preferred
    when the file has them; ``detector.info["weights"]`` says which were loaded.
    """
    ckpt = load_checkpoint(model_path, expected_kind="btd", modality=modality)
    return btd_from_checkpoint(
        ckpt, device=device, precision=precision, batch_size=batch_size, scoring=scoring
    )


def btd_from_checkpoint(
    ckpt: Checkpoint,
    *,
    device: str | torch.device = "auto",
    precision: str = "auto",
    batch_size: int | None = None,
    scoring: BTDScoring | None = None,
) -> BTDDetector:
    """Build the network a loaded checkpoint describes and wrap it as a detector."""
    diffusion = build_diffusion(BTDModelConfig.from_dict(ckpt.model_config))
    ckpt.load_weights_into(diffusion)
    stored = BTDScoring.from_dict(ckpt.scoring)
    chosen = scoring or stored
    calibration = ckpt.calibration if chosen == stored else None
    if ckpt.calibration is not None and calibration is None:
        log.warning("%s: scoring overridden (%s); stored calibration dropped", ckpt.path, chosen)
    return BTDDetector(
        diffusion,
        ckpt.preprocessing,
        chosen,
        calibration,
        device,
        precision,
        batch_size,
        info=ckpt.describe(),
    )


def create(model_path: Path | str | None, modality: str | None = None) -> Any:
    """Registry factory ``(model_path, modality) -> Detector`` (see :mod:`detector.registry`)."""
    return load_btd(require_model(model_path, "BTD detector", modality), modality)


__all__ = [
    "BTDDetector",
    "BTDModelConfig",
    "BTDScoring",
    "OneStep",
    "btd_from_checkpoint",
    "build_diffusion",
    "create",
    "default_preprocessing",
    "fast_eps",
    "load_btd",
    "reduce_residual",
    "reference_residual",
    "residual_scores",
]
