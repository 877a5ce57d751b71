"""A study goes from C-STORE to a stored verdict with every checked region recorded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom
import pytest
from sqlalchemy import select

from detector.lab.phantoms import write_phantoms
from detector.settings import DetectorSettings
from detector.training import TrainOptions, train
from storage.models import Region, Verdict
from tests.dicom_helpers import make_scu


@pytest.fixture(scope="module")
def phantom_ct(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("phantoms")
    write_phantoms("CT", studies=3, slices=4, out_dir=out, seed=11, size=128)
    return out


@pytest.fixture(scope="module")
def tiny_inpaint(phantom_ct: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = tmp_path_factory.mktemp("models") / "ct-inpaint.ckpt"
    train(
        TrainOptions(
            detector="inpaint",
            modality="CT",
            data=str(phantom_ct),
            model_path=str(model),
            epochs=1,
            batch_size=16,
            patch_size=32,
            model_dim=8,
            hole_size=16,
            max_steps=4,
            calibration_patches=64,
            holdout_fraction=0.34,
            progress=False,
            device="cpu",
        )
    )
    return model


def _send_folder(port: int, folder: Path) -> None:
    datasets = [pydicom.dcmread(p) for p in sorted(folder.rglob("*.dcm"))]
    ae = make_scu("CT01")
    ae.add_requested_context(datasets[0].SOPClassUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="TAMPERSCAN")
    assert assoc.is_established
    assert all(assoc.send_c_store(ds).Status == 0 for ds in datasets)
    assoc.release()


def test_c_store_to_scored_verdict_with_regions(
    service_factory: Any, phantom_ct: Path, tiny_inpaint: Path
) -> None:
    import time

    service = service_factory(
        detector={"models": [str(tiny_inpaint)], "device": "cpu", "window_stride_px": 32},
        assembly={"stable_age_s": 1.0, "released_age_s": 0.3, "poll_interval_s": 0.1},
        worker={"poll_interval_s": 0.1},
    )
    study_dir = next(p for p in sorted(phantom_ct.iterdir()) if p.is_dir())
    _send_folder(service.scp.port, study_dir)
    deadline = time.monotonic() + 120
    verdict = None
    while time.monotonic() < deadline and verdict is None:
        with service.db.reading() as session:
            verdict = session.scalars(select(Verdict)).one_or_none()
        time.sleep(0.2)
    assert verdict is not None, "no verdict within 120 s"
    assert verdict.outcome in ("clean", "suspicious", "tampered"), verdict.reason
    details = verdict.details or {}
    assert details["models"][0]["name"] == "inpaint"
    assert len(details["models"][0]["version"]) == 16
    with service.db.reading() as session:
        regions = session.scalars(select(Region).where(Region.verdict_id == verdict.id)).all()
    assert len(regions) == details["regions_checked"] > 0
    assert (
        {"proposal", "window"}
        <= {r.source for r in regions}
        <= {"proposal", "window", "hotspot", "repeat"}
    )
    sops = {pydicom.dcmread(p).SOPInstanceUID for p in study_dir.rglob("*.dcm")}
    assert {r.sop_instance_uid for r in regions} <= sops
    for region in regions:
        assert 0 < region.scores["inpaint"]["p"] <= 1
        ps = [e["p"] for e in region.scores.values() if e["p"] is not None]
        assert set(region.scores) == {"inpaint", *DetectorSettings().checks}
        assert region.p_value == pytest.approx(min(1.0, len(ps) * min(ps)))
        assert region.slice_index is not None and region.instance_number is not None
    assert verdict.score == pytest.approx(min(1.0, len(regions) * min(r.p_value for r in regions)))


def test_modality_without_model_is_not_scored_honestly(
    service_factory: Any, phantom_ct: Path, tiny_inpaint: Path, tmp_path: Path
) -> None:
    from detector.settings import DetectorSettings
    from detector.study_scoring import ModelSet, StudyScorer

    service = service_factory()
    models = ModelSet.load([tiny_inpaint], "cpu")
    scorer = StudyScorer(service.db, tmp_path, DetectorSettings(device="cpu"), models)
    assert scorer.score(12345, 1).reason == "study has no series"


def test_evaluate_picks_the_model_for_each_detector_and_modality(tiny_inpaint: Path) -> None:
    from detector.evaluation import EvaluationError, pick_model

    assert pick_model([tiny_inpaint], "inpaint", "CT") == tiny_inpaint
    assert pick_model([tiny_inpaint], "inpaint", "MR") is None
    assert pick_model([tiny_inpaint], "btd", "CT") is None
    with pytest.raises(EvaluationError, match="2 --model files fit inpaint/CT"):
        pick_model([tiny_inpaint, tiny_inpaint], "inpaint", "CT")


def test_admin_requested_region_is_scored(
    service_factory: Any, phantom_ct: Path, tiny_inpaint: Path, tmp_path: Path
) -> None:
    from detector.settings import DetectorSettings
    from detector.study_scoring import ModelSet, StudyScorer
    from storage.admin_actions import add_requested_region
    from storage.models import Instance, utcnow
    from tests.admin_helpers import store_phantom_study

    service = service_factory(worker={"enabled": False})
    study_id = store_phantom_study(service.store, tmp_path / "phantoms")
    with service.db.session() as session:
        instance = session.scalars(select(Instance).where(Instance.study_id == study_id)).first()
        add_requested_region(session, study_id, instance.id, 50, 60, 7.0, "alice", utcnow())
    models = ModelSet.load([tiny_inpaint], "cpu")
    settings = DetectorSettings(device="cpu", window_stride_px=0)
    result = StudyScorer(service.db, service.settings.storage.data_dir, settings, models).score(
        study_id, 1
    )
    admin = [r for r in result.regions if r.source == "admin"]
    assert [(r.sop_instance_uid, r.x, r.y, r.radius_px) for r in admin] == [
        (instance.sop_instance_uid, 50, 60, 7.0)
    ]
    assert admin[0].scores["inpaint"]["p"] is not None
