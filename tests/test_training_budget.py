"""``tamperscan train``: the progress bar, the time budget, and where patches are drawn."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from detector.btd import load_btd
from detector.checkpoint import load_checkpoint
from detector.preprocess import Preprocessing
from detector.training import (
    PatchDataset,
    TrainOptions,
    build_model,
    find_dicom_slices,
    hole_pixels,
    median_spacing_mm,
    snapshot_path,
    training_loss,
)
from tamperscan.cli import main

TINY_BTD = ["--patch-size", "32", "--model-dim", "8", "--dim-mults", "1,2"]


@pytest.fixture(scope="module")
def ct_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from detector.lab.phantoms import write_phantoms

    root = tmp_path_factory.mktemp("train-budget") / "data"
    write_phantoms("CT", 2, 6, root, seed=41, size=128)
    return root


def test_time_budget_stops_cleanly_with_a_calibrated_checkpoint(
    ct_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "btd.ckpt"
    budget_min = 0.1  # 6 s: far fewer than the 1,000 epochs asked for
    started = time.monotonic()
    rc = main(
        [
            "train",
            "--detector",
            "btd",
            "--modality",
            "CT",
            "--data",
            str(ct_folder),
            "--model-path",
            str(model),
            "--batch-size",
            "4",
            "--epochs",
            "1000",
            "--calibration-patches",
            "16",
            "--time-budget",
            str(budget_min),
            "--snapshots",
            "0.01,0.5",
            *TINY_BTD,
        ]
    )
    seconds = time.monotonic() - started
    assert rc == 0
    captured = capsys.readouterr()
    assert "time budget of 0.1 min spent" in captured.out
    assert seconds < budget_min * 60 + 45  # headers, first batch; a shared CPU on top
    ckpt = load_checkpoint(model)
    assert ckpt.calibration is not None and ckpt.calibration.size == 16
    assert 1 <= ckpt.step < 1000 * 2
    assert ckpt.training["max_seconds"] == pytest.approx(6.0)
    # Snapshots: the weights at 0.6 s of training, uncalibrated; none for a minute never reached.
    early = load_checkpoint(snapshot_path(model, 0.01))
    assert early.calibration is None and early.training["snapshot_minutes"] == 0.01
    assert early.training["snapshot_elapsed_s"] >= 0.6 and 1 <= early.step <= ckpt.step
    assert load_btd(str(early.path), "CT", device="cpu").info["weights"] == "ema"
    assert not snapshot_path(model, 0.5).exists()
    # The progress bar (stderr): steps, the loss and an ETA.
    assert "train btd" in captured.err and "loss=" in captured.err and "budget=" in captured.err
    assert "step/s" in captured.err or "s/step" in captured.err


def test_btd_trains_on_the_timesteps_it_is_scored_at(ct_folder: Path) -> None:
    opts = TrainOptions(
        "btd",
        "CT",
        str(ct_folder),
        "unused",
        patch_size=32,
        model_dim=8,
        dim_mults=(1, 2),
        max_timestep=3,
    )
    diffusion, *_ = build_model(opts)
    seen: list[torch.Tensor] = []
    original = diffusion.p_losses

    def record(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.append(t)
        return original(x, t)

    diffusion.p_losses = record  # type: ignore[method-assign]
    batch = torch.rand(64, 1, 32, 32)
    loss = training_loss("btd", diffusion, batch, max_timestep=3)
    assert loss.requires_grad
    assert int(seen[0].max()) <= 3 and set(seen[0].tolist()) == {0, 1, 2, 3}
    training_loss("btd", diffusion, batch, max_timestep=None)  # the library's full range
    assert len(seen) == 2 and int(seen[1].max()) > 3


def test_inpainting_hole_follows_lesion_scale_in_mm(ct_folder: Path) -> None:
    slices = find_dicom_slices(ct_folder, "CT")
    spacing = median_spacing_mm(slices)
    assert spacing is not None and spacing > 0
    opts = TrainOptions("inpaint", "CT", str(ct_folder), "unused", patch_size=64)
    assert hole_pixels(opts, 64, spacing) == min(32, round(20.0 / spacing))
    opts.hole_mm = 8.0
    assert hole_pixels(opts, 64, 0.5) == 16
    opts.hole_size = 10  # pixels win
    assert hole_pixels(opts, 64, 0.5) == 10
    net, _, config, scoring = build_model(
        TrainOptions("inpaint", "MR", ".", "u", patch_size=64, hole_mm=12.0), spacing_mm=1.0
    )
    assert config["hole_size"] == 12 and scoring["normalise"] is True  # MR: per-volume units


def test_patches_are_drawn_on_region_proposals_and_in_the_body(ct_folder: Path) -> None:
    slices = find_dicom_slices(ct_folder, "CT")
    prep = Preprocessing("CT", 32)
    ds = PatchDataset(slices, prep, patches_per_item=8, proposal_fraction=0.5)
    where = [ds.centre(i)[4] for i in range(len(ds))]
    assert where.count("proposal") > 0 and where.count("body") > 0
    body = PatchDataset(slices, prep, patches_per_item=2, proposal_fraction=0.0)
    assert {body.centre(i)[4] for i in range(len(body))} == {"body"}
    patch = ds[0]
    assert patch.shape == (1, 32, 32) and 0.0 <= float(patch.min()) <= float(patch.max()) <= 1.0
    assert np.isfinite(patch.numpy()).all()
