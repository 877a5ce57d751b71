"""The fused decision on a fresh installation: forensic checks only, real phantom studies.

No learned model exists on a new site, yet its first studies must get real verdicts. These
tests store tamper-lab studies through the storage layer exactly as the receiver does, score
them with the serving scorer and the default forensic checks, and check the study decisions:

- a copy-move study is ``tampered``: an exact copy repeats textured blocks value for value,
  which genuine tissue never does, so its p-value (1e-12 per region, times regions and checks)
  clears the 1 % study threshold with orders of magnitude to spare;
- its genuine twin (same patient, untouched pixels) is ``clean`` or at worst ``suspicious``
  never ``tampered``: the promise is a false-alarm rate of at most 1 % per study, and this
  one draw is not a measurement of it (benchmarks/detection.py measures it on 50 studies).
"""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from detector.model_set import ModelSet, build_checks
from detector.settings import DetectorSettings
from detector.study_scoring import StudyScorer
from scp.validate import inspect_dataset
from storage.db import Database
from storage.instances import InstanceStore, Origin
from tamperscan.cli import main


def _store_folder(folder: Path, root: Path) -> tuple[Database, Path, int]:
    data = root / "data"
    db = Database(f"sqlite:///{root / 'index.db'}")
    db.migrate()
    store = InstanceStore(db, data, 0)
    study_id = 0
    for path in sorted(folder.rglob("*.dcm")):
        ds = pydicom.dcmread(path)
        meta = inspect_dataset(ds, str(ds.file_meta.TransferSyntaxUID))
        origin = Origin(channel="dimse", calling_ae="CT01", peer_address="127.0.0.1")
        study_id = store.store(path.read_bytes(), meta, origin).study_id
    return db, data, study_id


@pytest.fixture(scope="module")
def copy_lab(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("fused")
    genuine, tampered = root / "genuine", root / "tampered"
    assert main(["phantoms", "--modality", "CT", "--studies", "1", "--slices", "12",
                 "--size", "192", "--out", str(genuine), "--seed", "41", "--quiet"]) == 0  # fmt: skip
    assert main(["tamper", "--in", str(genuine), "--out", str(tampered), "--attack",
                 "copy-move", "--count", "2", "--seed", "42"]) == 0  # fmt: skip
    return next(p for p in genuine.iterdir() if p.is_dir()), tampered


def _score(folder: Path, root: Path):  # noqa: ANN202
    db, data, study_id = _store_folder(folder, root)
    settings = DetectorSettings(device="cpu", window_stride_px=0)
    scorer = StudyScorer(db, data, settings, ModelSet(checks=build_checks(settings.checks)))
    return scorer.score(study_id, 1)


def test_fresh_install_calls_a_copy_move_study_tampered(
    copy_lab: tuple[Path, Path], tmp_path: Path
) -> None:
    genuine_study, tampered = copy_lab
    result = _score(tampered / genuine_study.name, tmp_path)
    assert result.outcome == "tampered", result.reason
    assert result.details["forensic_only"] is True
    assert "exact-repeat" in result.details["deciding_detectors"]
    flagged = [r for r in result.regions if r.flagged]
    assert flagged and all(r.finding is not None for r in flagged)


def test_fresh_install_keeps_the_genuine_twin_out_of_tampered(
    copy_lab: tuple[Path, Path], tmp_path: Path
) -> None:
    genuine_study, _ = copy_lab
    result = _score(genuine_study, tmp_path)
    assert result.outcome in ("clean", "suspicious"), result.reason
    assert result.details["regions_checked"] > 0
    assert {"noise-consistency", "exact-repeat"} <= {m["name"] for m in result.details["models"]}
