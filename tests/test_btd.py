"""BTD: the fast step equals p_sample; released checkpoints load strictly; training works."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from detector import registry
from detector.btd import (
    BTDDetector,
    BTDModelConfig,
    BTDScoring,
    OneStep,
    build_diffusion,
    default_preprocessing,
    load_btd,
    reduce_residual,
    reference_residual,
)
from detector.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from detector.interface import Detector, Location, SliceImage
from detector.preprocess import Preprocessing
from detector.training import fit

TINY = BTDModelConfig(dim=8, dim_mults=(1, 2), image_size=32)


def _patches(n: int, size: int, seed: int = 0) -> np.ndarray:
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    smooth = ndimage.gaussian_filter(rng.normal(size=(n, size, size)), (0, 3, 3)) * 2
    return np.clip(0.4 + smooth + 0.02 * rng.normal(size=smooth.shape), 0, 1).astype(np.float32)


def _tiny(seed: int = 0, cfg: BTDModelConfig = TINY) -> torch.nn.Module:
    torch.manual_seed(seed)
    diffusion = build_diffusion(cfg)
    with torch.no_grad():  # the library zero-inits nothing, but make outputs clearly non-trivial
        for p in diffusion.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return diffusion.eval()


@pytest.mark.parametrize("t", [0, 5])
def test_fast_step_matches_library_step_fp32(t: int) -> None:
    diffusion = _tiny()
    patches = _patches(5, 32)
    ref = np.stack([reference_residual(diffusion, p, t) for p in patches])
    ours = OneStep(copy.deepcopy(diffusion), t, "cpu", "fp32")(torch.from_numpy(patches)[:, None])
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-6)
    assert ref.max() > 1e-4  # the residual is not trivially zero


def test_t0_step_is_deterministic_in_the_library() -> None:
    # sigmoid schedule: posterior variance 0 at t=0, so p_sample adds no noise there
    diffusion = _tiny()
    assert float(diffusion.posterior_variance[0]) == 0.0
    p = _patches(1, 32)[0]
    first = reference_residual(diffusion, p)
    np.testing.assert_array_equal(first, reference_residual(diffusion, p))


def test_bf16_step_agrees_with_fp32_within_two_percent() -> None:
    diffusion = _tiny()
    patches = torch.from_numpy(_patches(4, 32))[:, None]
    fp32 = OneStep(copy.deepcopy(diffusion), 0, "cpu", "fp32")(patches)
    bf16 = OneStep(copy.deepcopy(diffusion), 0, "cpu", "bf16")(patches)
    s32, s16 = (reduce_residual(r, BTDScoring()) for r in (fp32, bf16))
    np.testing.assert_allclose(s16, s32, rtol=0.02)


def test_detector_scores_locations_with_residual_heatmaps() -> None:
    det = BTDDetector(_tiny(), Preprocessing("CT", 32), device="cpu", precision="fp32")
    assert isinstance(det, Detector)
    hu = np.full((64, 80), 40.0, np.float32)
    image = SliceImage(
        hu + np.random.default_rng(0).normal(0, 20, hu.shape).astype(np.float32), "CT"
    )
    out = det.score([Location(image, 10, 60), Location(image, 79, 0)])
    assert [r.heatmap.shape for r in out] == [(32, 32), (32, 32)]
    for r in out:
        assert r.heatmap.dtype == np.float32 and r.heatmap.min() >= 0
        assert r.score == pytest.approx(float(np.mean(r.heatmap.astype(np.float64) ** 2)))
    centre = det.with_scoring(BTDScoring(reduction="centre_mse", centre_size=8))
    c = centre.score([Location(image, 10, 60)])[0]
    assert c.score == pytest.approx(float(np.mean(c.heatmap[12:20, 12:20].astype(np.float64) ** 2)))
    assert det.score([]) == []


def _save_like_the_released_trainer(path: Path, modality_size: int = 96) -> torch.nn.Module:
    """Library 1.8.x Unet + GaussianDiffusion, saved exactly as Trainer.save() does."""
    from denoising_diffusion_pytorch import GaussianDiffusion, Unet
    from denoising_diffusion_pytorch.version import __version__
    from ema_pytorch import EMA

    torch.manual_seed(3)
    unet = Unet(dim=32, dim_mults=(1, 2, 4, 8), channels=1)
    diffusion = GaussianDiffusion(
        unet,
        objective="pred_noise",
        image_size=modality_size,
        timesteps=1000,
        sampling_timesteps=250,
    )
    opt = torch.optim.Adam(diffusion.parameters(), lr=8e-6, betas=(0.9, 0.99))
    ema = EMA(diffusion, beta=0.995, update_every=10)
    with torch.no_grad():  # make EMA weights differ from the online ones
        for p in ema.ema_model.parameters():
            p.add_(0.01)
    data = {
        "step": 700000,
        "model": diffusion.state_dict(),
        "opt": opt.state_dict(),
        "ema": ema.state_dict(),
        "scaler": None,
        "version": __version__,
    }
    torch.save(data, str(path))
    return ema.ema_model


def test_released_btd_layout_loads_strictly_prefers_ema_and_scores(tmp_path: Path) -> None:
    path = tmp_path / "CT_model.pt"
    ema_model = _save_like_the_released_trainer(path)
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"step", "model", "opt", "ema", "scaler", "version"}
    assert len([k for k in raw["model"] if k.startswith("model.")]) == 274  # 1.8.x Unet layout

    det = registry.create("btd", path, "CT")
    assert isinstance(det, BTDDetector) and det.modality == "CT"
    assert det.info["weights"] == "ema" and det.info["layout"] == "btd-release"
    loaded = dict(det.diffusion.named_parameters())
    for name, p in ema_model.named_parameters():
        torch.testing.assert_close(loaded[name], p)
    assert sum(p.numel() for p in det.diffusion.parameters()) == 9_190_977
    image = SliceImage(np.random.default_rng(1).normal(0, 30, (128, 128)).astype(np.float32), "CT")
    out = det.score([Location(image, 64, 64)])
    assert out[0].heatmap.shape == (96, 96) and np.isfinite(out[0].score) and out[0].score > 0
    with pytest.raises(ValueError, match="no calibration"):
        det.p_values([out[0].score])


def test_released_layout_needs_a_modality_and_a_matching_network(tmp_path: Path) -> None:
    path = tmp_path / "CT_model.pt"
    _save_like_the_released_trainer(path)
    with pytest.raises(CheckpointError, match="do not record their modality"):
        load_btd(str(path))
    # The MR model is 128-pixel: the weights load (convolutions do not care) but our
    # preprocessing then uses 128-pixel patches, as the released MRI model expects.
    assert load_btd(str(path), "MR").prep.patch_size == 128
    data = torch.load(path, weights_only=True)
    data["model"]["model.extra.weight"] = torch.zeros(1)  # e.g. a 1.9.x file with more keys
    data["ema"] = None
    torch.save(data, path)
    with pytest.raises(CheckpointError, match=r"1 unexpected keys.*1\.8\.x"):
        load_btd(str(path), "CT")


def test_our_checkpoint_round_trip_and_modality_check(tmp_path: Path) -> None:
    diffusion = _tiny()
    path = save_checkpoint(
        tmp_path / "btd.ckpt",
        kind="btd",
        preprocessing=Preprocessing("MR", 32),
        model_config=TINY.to_dict(),
        scoring=BTDScoring(t=3, reduction="centre_mse").to_dict(),
        model_state=diffusion.state_dict(),
        step=5,
        epoch=1,
    )
    det = load_btd(str(path), "MRI", device="cpu", precision="fp32")
    assert det.scoring == BTDScoring(t=3, reduction="centre_mse") and det.info["weights"] == "model"
    assert load_checkpoint(path).versions["denoising-diffusion-pytorch"].startswith("1.8")
    with pytest.raises(CheckpointError, match="trained on MR, but CT was requested"):
        load_btd(str(path), "CT")
    with pytest.raises(CheckpointError, match="expected a 'inpaint' detector checkpoint"):
        load_checkpoint(path, expected_kind="inpaint")
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_btd(str(tmp_path / "missing.ckpt"), "CT")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_btd(str(tmp_path / "junk.ckpt"), "CT")


def test_tiny_btd_trains_and_its_loss_falls() -> None:
    torch.manual_seed(0)
    diffusion = build_diffusion(TINY)
    data = torch.from_numpy(_patches(32, 32, seed=2))[:, None]

    def batches(epoch: int) -> DataLoader:
        return DataLoader(
            TensorDataset(data),
            batch_size=8,
            shuffle=True,
            generator=torch.Generator().manual_seed(epoch),
            collate_fn=lambda items: torch.stack([i[0] for i in items]),
        )

    _, ema, losses = fit("btd", diffusion, batches, epochs=4, lr=2e-3, device="cpu", progress=False)
    assert len(losses) == 16
    first, last = np.mean(losses[:4]), np.mean(losses[-4:])
    assert last < 0.7 * first, (first, last)  # pred_noise MSE starts near 1
    assert ema.ema_model is not None


def test_default_preprocessing_is_the_papers() -> None:
    assert default_preprocessing("CT").patch_size == 96
    assert default_preprocessing("mri").patch_size == 128
    with pytest.raises(ValueError, match="reduction"):
        BTDScoring(reduction="max")
