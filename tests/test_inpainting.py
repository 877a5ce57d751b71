"""Inpainting detector: hole geometry, training, checkpoints, separation on tampered phantoms."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from detector import registry
from detector.checkpoint import save_checkpoint
from detector.inpainting import (
    InpaintConfig,
    InpaintDetector,
    InpaintNet,
    InpaintScoring,
    hole_mask,
    load_inpaint,
)
from detector.interface import Location, SliceImage
from detector.preprocess import Preprocessing
from detector.training import TrainOptions, fit, train

TINY = InpaintConfig(patch_size=32, hole_size=16, width=8, dilations=(2, 4))


def _patches(n: int, seed: int = 0) -> np.ndarray:
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    smooth = ndimage.gaussian_filter(rng.normal(size=(n, 32, 32)), (0, 4, 4)) * 3
    return np.clip(0.4 + smooth + 0.01 * rng.normal(size=smooth.shape), 0, 1).astype(np.float32)


def test_the_net_never_sees_the_hole() -> None:
    torch.manual_seed(0)
    net = InpaintNet(TINY).eval()
    a = torch.from_numpy(_patches(2))[:, None]
    b = a.clone()
    b[:, :, 8:24, 8:24] = torch.rand(2, 1, 16, 16)  # change only the hidden centre
    with torch.no_grad():
        torch.testing.assert_close(net(a), net(b))
    assert hole_mask(TINY).sum() == 16 * 16


def test_scores_are_hole_errors_and_heatmaps_are_zero_outside() -> None:
    torch.manual_seed(0)
    det = InpaintDetector(InpaintNet(TINY), Preprocessing("MR", 32), device="cpu", precision="fp32")
    patches = _patches(3)
    scores, maps = det.score_patches(patches)
    assert maps.shape == (3, 32, 32)
    assert np.all(maps[:, :8] == 0) and np.all(maps[:, :, 24:] == 0)
    np.testing.assert_allclose(
        scores, (maps[:, 8:24, 8:24].astype(np.float64) ** 2).mean((1, 2)), rtol=1e-5
    )
    ring = np.ones((32, 32), bool)
    ring[8:24, 8:24] = False
    det.scoring = InpaintScoring(normalise=True, eps=1e-4)
    normalised, _ = det.score_patches(patches)
    np.testing.assert_allclose(
        normalised, scores / (patches[:, ring].var(axis=1, ddof=1) + 1e-4), rtol=1e-4
    )
    image = SliceImage(
        np.random.default_rng(0).normal(100, 10, (50, 40)).astype(np.float32),
        "MR",
        intensity_range=(50.0, 150.0),
    )
    assert det.score([Location(image, 0, 0)])[0].heatmap.shape == (32, 32)


def test_tiny_inpainting_net_trains_and_its_loss_falls() -> None:
    torch.manual_seed(0)
    data = torch.from_numpy(_patches(64, seed=1))[:, None]

    def batches(epoch: int) -> DataLoader:
        return DataLoader(
            TensorDataset(data),
            batch_size=16,
            shuffle=True,
            generator=torch.Generator().manual_seed(epoch),
            collate_fn=lambda items: torch.stack([i[0] for i in items]),
        )

    _, _, losses = fit(
        "inpaint", InpaintNet(TINY), batches, epochs=8, lr=3e-3, device="cpu", progress=False
    )
    assert np.mean(losses[-4:]) < 0.5 * np.mean(losses[:4]), losses


def test_checkpoint_round_trip_through_the_registry(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = InpaintNet(TINY)
    path = save_checkpoint(
        tmp_path / "CT_InPainting.ckpt",
        kind="inpaint",
        preprocessing=Preprocessing("CT", 32),
        model_config=TINY.to_dict(),
        scoring=InpaintScoring(normalise=True).to_dict(),
        model_state=net.state_dict(),
    )
    det = registry.create("inpaint", path, "CT")
    assert isinstance(det, InpaintDetector) and det.scoring.normalise
    assert det.info["weights"] == "model"
    for name, p in net.state_dict().items():
        torch.testing.assert_close(det.net.state_dict()[name], p)
    with pytest.raises(ValueError, match="needs a checkpoint"):
        registry.create("inpaint", None, "CT")
    with pytest.raises(ValueError, match="hole size"):
        InpaintConfig(patch_size=32, hole_size=32)
    with pytest.raises(ValueError, match="expected a 'inpaint' detector"):
        bad = save_checkpoint(
            tmp_path / "b.ckpt",
            kind="btd",
            preprocessing=Preprocessing("CT", 32),
            model_config={},
            scoring={},
            model_state={},
        )
        load_inpaint(str(bad), "CT")


@pytest.fixture(scope="module")
def tampered_ct(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from detector.lab.attacks import tamper_dataset
    from detector.lab.phantoms import write_phantoms

    root = tmp_path_factory.mktemp("inpaint-sep")
    write_phantoms("CT", 6, 16, root / "genuine", seed=21, size=128)
    tamper_dataset(
        root / "genuine", root / "tampered", ["injection", "adversarial-noise"], 8, seed=4
    )
    return root / "genuine", root / "tampered"


def test_ci_sized_model_separates_tampered_from_genuine(
    tampered_ct: tuple[Path, Path], tmp_path: Path
) -> None:
    """A 32-pixel, width-8 inpainting model trained for 500 steps (~30 s on 2 cores) on genuine
    phantom CT separates injected nodules and adversarial noise from genuine locations.

    Bound: AUC >= 0.70. Measured 0.80 on this seed (0.75-0.81 over other phantom seeds). Half
    the genuine controls sit ON real lesions, so "is there a blob" does not separate: the model
    must notice texture the surround does not predict. With ~16 tampered and ~16 genuine rows
    an AUC has a standard error near 0.07, so the bound is checked together with a label
    permutation test (p < 0.05) rather than read as a precise performance figure.
    """
    from detector.evaluation import roc_auc
    from detector.slices import read_slice

    genuine, tampered = tampered_ct
    model = tmp_path / "inpaint.ckpt"
    train(
        TrainOptions(
            detector="inpaint",
            modality="CT",
            data=str(genuine),
            model_path=str(model),
            epochs=100,
            batch_size=16,
            max_steps=500,
            lr=2e-3,
            patch_size=32,
            model_dim=8,
            calibration_patches=64,
            progress=False,
            device="cpu",
        )
    )
    det = load_inpaint(str(model), "CT", device="cpu")
    with (tampered / "test.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    locations = [
        Location(read_slice(tampered / r["filename"]), int(r["X"]), int(r["Y"])) for r in rows
    ]
    labels = np.array([int(r["label"]) for r in rows])
    scores = np.array([r.score for r in det.score(locations)])
    assert labels.sum() >= 16 and (1 - labels).sum() >= 16
    auc = roc_auc(labels, scores)
    rng = np.random.default_rng(0)
    null = np.array([roc_auc(rng.permutation(labels), scores) for _ in range(400)])
    p_value = (1 + np.sum(null >= auc)) / (1 + null.size)
    print(f"inpainting separation: AUC {auc:.3f}, permutation p {p_value:.4f}")
    assert auc >= 0.70, auc
    assert p_value < 0.05, p_value
    # calibrated p-values of tampered locations are smaller than those of genuine ones
    p = det.p_values(scores)
    assert np.median(p[labels == 1]) < np.median(p[labels == 0])
