"""Evaluation: known AUCs on constructed cases, BTD layout, and the CLI end to end."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detector import registry
from detector.baselines import NoiseResidualDetector
from detector.evaluation import bootstrap_auc_ci, evaluate, metrics, roc_auc, tpr_at_fpr
from detector.forensics.copymove import CopyMoveDetector
from detector.interface import Detector, Location, RegionScore, SliceImage
from tamperscan.cli import main


def test_separable_scores_give_auc_one() -> None:
    labels = [0] * 20 + [1] * 10
    scores = list(np.linspace(0, 1, 20)) + list(np.linspace(2, 3, 10))
    assert roc_auc(labels, scores) == 1.0
    assert bootstrap_auc_ci(labels, scores, n_boot=200) == (1.0, 1.0)
    assert tpr_at_fpr(labels, scores, 0.01) == 1.0
    m = metrics(labels, scores)
    assert m["auc"] == 1.0 and m["tpr_at_5pct_fpr"] == 1.0
    assert m["n_tampered"] == 10 and m["n_genuine"] == 20


def test_identical_scores_give_auc_half() -> None:
    labels = [0] * 15 + [1] * 15
    scores = [0.3] * 30
    assert roc_auc(labels, scores) == 0.5
    lo, hi = bootstrap_auc_ci(labels, scores, n_boot=200)
    assert lo == hi == 0.5
    assert tpr_at_fpr(labels, scores, 0.05) == 0.0


def test_inverted_and_one_class() -> None:
    assert roc_auc([0, 0, 1, 1], [0.9, 0.8, 0.1, 0.2]) == 0.0
    assert np.isnan(roc_auc([1, 1], [0.1, 0.2]))


def test_baselines_follow_the_interface() -> None:
    rng = np.random.default_rng(0)
    pixels = (rng.normal(size=(96, 96)) * 20 - 850).astype(np.float32)
    copy = pixels.copy()
    copy[60:75, 60:75] = pixels[10:25, 10:25]  # a copy-move
    image = SliceImage(copy, "CT")
    for det in (NoiseResidualDetector(), CopyMoveDetector()):
        assert isinstance(det, Detector)
        out = det.score([Location(image, 67, 67), Location(image, 40, 40)])
        assert len(out) == 2 and all(isinstance(o, RegionScore) for o in out)
        assert out[0].heatmap.ndim == 2
    cm = CopyMoveDetector().score([Location(image, 67, 67), Location(image, 40, 40)])
    assert cm[0].score > cm[1].score + 2  # exact copy vs. genuine noise


def test_registry() -> None:
    assert {"noise-residual", "copy-move"} <= set(registry.names())
    assert isinstance(registry.create("copy-move"), CopyMoveDetector)
    with pytest.raises(registry.UnknownDetectorError, match="available"):
        registry.create("nope")


class _Oracle:
    """Scores 1 where the BTD CSV says fake: the harness must then report AUC 1."""

    name = "oracle"

    def __init__(self, fakes: set[str]) -> None:
        self.fakes = fakes

    def score(self, locations: Sequence[Location]) -> list[RegionScore]:
        return [
            RegionScore(
                float(Path(loc.image.source).name in self.fakes), np.zeros((4, 4), np.float32)
            )
            for loc in locations
        ]


def test_btd_layout_is_read(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    fakes = set()
    (tmp_path / "CT" / "injection").mkdir(parents=True)
    (tmp_path / "MRI").mkdir()
    with open(tmp_path / "CT/injection/CT_injection.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "x", "y", "type", "CTGAN-CT-injection", "SD-CT-injection"])
        for i in range(8):
            name = f"ct{i}.npy"
            np.save(
                tmp_path / "CT/injection" / name,
                (rng.normal(size=(64, 64)) * 20 - 850).astype(np.float32),
            )
            fake = i % 2
            if fake:
                fakes.add(name)
            w.writerow([f"CT/injection/{name}", 30, 32, fake, int(i % 4 == 1), int(i % 4 == 3)])
    with open(tmp_path / "MRI/MRI_removal.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "x", "y", "type"])
        for i in range(6):
            name = f"mr{i}.png"
            Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(
                tmp_path / "MRI" / name
            )
            if i % 2:
                fakes.add(name)
            w.writerow([f"MRI/{name}", 20, 20, "fake" if i % 2 else "real"])
    summary = evaluate(
        tmp_path, [], [], tmp_path / "out", detectors={"oracle": _Oracle(fakes)}, progress=False
    )
    ct = summary["detectors"]["oracle"]["CT"]
    assert ct["injection"]["auc"] == 1.0
    assert ct["injection/CTGAN"]["n_tampered"] == 2 and ct["injection/SD"]["n_tampered"] == 2
    assert summary["detectors"]["oracle"]["MR"]["removal"]["auc"] == 1.0
    assert (tmp_path / "out" / "roc_oracle_CT.png").is_file()


def test_cli_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data, tampered, out = tmp_path / "data", tmp_path / "tampered", tmp_path / "eval"
    assert (
        main(
            [
                "phantoms",
                "--modality",
                "CT",
                "--studies",
                "2",
                "--slices",
                "6",
                "--size",
                "128",
                "--out",
                str(data),
                "--seed",
                "4",
                "--quiet",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "phantoms",
                "--modality",
                "MR",
                "--studies",
                "1",
                "--slices",
                "6",
                "--size",
                "128",
                "--out",
                str(data),
                "--seed",
                "5",
                "--quiet",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "tamper",
                "--in",
                str(data),
                "--out",
                str(tampered),
                "--attack",
                "all",
                "--count",
                "1",
                "--seed",
                "2",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "evaluate",
                "--data",
                str(tampered),
                "--manifest",
                str(tampered / "manifest_btd.csv"),
                "--detector",
                "all",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "AUC" in printed and "copy-move" in printed
    summary = json.loads((out / "summary.json").read_text())
    forensic = set(registry.names()) - {"btd", "inpaint"}  # learned ones need --model
    assert set(summary["detectors"]) == forensic | {"fused"}
    ct = summary["detectors"]["copy-move"]["CT"]
    assert ct["copy-move"]["auc"] == 1.0  # an exact copy is always found
    for m in ct.values():
        lo, hi = m["auc_ci95"]
        assert lo <= m["auc"] <= hi
    with open(out / "scores.csv") as fh:
        rows = list(csv.DictReader(fh))
    n_manifest = len((tampered / "manifest_btd.csv").read_text().splitlines()) - 1
    assert len(rows) == (len(forensic) + 1) * n_manifest
    assert (out / "roc_noise-residual_CT.png").is_file()
    # The CHAIMELEON test.csv gives the same evaluation.
    assert (
        main(
            [
                "evaluate",
                "--data",
                str(tampered),
                "--manifest",
                str(tampered / "test.csv"),
                "--detector",
                "copy-move",
                "--out",
                str(tmp_path / "eval2"),
                "--quiet",
            ]
        )
        == 0
    )


def test_evaluate_user_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "d").mkdir()
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,x,y,type\nmissing.npy,1,2,1\nalso.npy,3,4,0\n")
    code = main(
        [
            "evaluate",
            "--data",
            str(tmp_path / "d"),
            "--manifest",
            str(manifest),
            "--detector",
            "noise-residual",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "missing files" in err and "missing.npy" in err
    code = main(
        [
            "evaluate",
            "--data",
            str(tmp_path / "d"),
            "--manifest",
            str(manifest),
            "--detector",
            "magic",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert code == 2 and "unknown detector" in capsys.readouterr().err
    code = main(
        [
            "evaluate",
            "--data",
            str(tmp_path / "nope"),
            "--detector",
            "all",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert code == 2 and "no such data folder" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    code = main(
        [
            "evaluate",
            "--data",
            str(tmp_path / "d"),
            "--manifest",
            str(bad),
            "--detector",
            "all",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert code == 2 and "'path' (BTD) or 'filename'" in capsys.readouterr().err
