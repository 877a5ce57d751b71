"""From an empty installation to production models, through the real command line.

The README's first-install path: phantom studies arrive over C-STORE from a trusted modality AE
and get the honest verdict "no model for CT"; ``tamperscan retrain --bootstrap`` (a separate
process, as an operator would run it; the default 7-day quarantine does not hold it back) trains
both detectors from scratch, gates and promotes them; the running service picks the promotion up
without a restart, re-scores the studies that were waiting, and scores the next study with them.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pydicom
import pytest
from sqlalchemy import select

from detector.lab.phantoms import write_phantoms
from storage.models import ModelVersion, Study, Verdict
from tests.dicom_helpers import REPO, make_scu

pytestmark = pytest.mark.slow


def _send(port: int, folder: Path, calling_ae: str) -> str:
    datasets = [pydicom.dcmread(p) for p in sorted(folder.rglob("*.dcm"))]
    ae = make_scu(calling_ae)
    ae.add_requested_context(datasets[0].SOPClassUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="TAMPERSCAN")
    assert assoc.is_established
    assert all(assoc.send_c_store(ds).Status == 0 for ds in datasets)
    assoc.release()
    return str(datasets[0].StudyInstanceUID)


def _verdict(service: Any, study_uid: str, timeout: float = 60) -> Verdict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with service.db.reading() as session:
            verdict = session.scalars(
                select(Verdict)
                .join(Study, Study.id == Verdict.study_id)
                .where(Study.study_uid == study_uid, Verdict.is_current.is_(True))
            ).one_or_none()
        if verdict is not None:
            return verdict
        time.sleep(0.1)
    raise AssertionError(f"no verdict for {study_uid} within {timeout} s")


def test_first_install_bootstrap_gives_production_models_and_verdicts_to_waiting_studies(
    service_factory: Any, tmp_path: Path
) -> None:
    phantoms = write_phantoms("CT", studies=5, slices=8, out_dir=tmp_path / "ph", seed=33, size=128)
    service = service_factory(
        assembly={"stable_age_s": 1.0, "released_age_s": 0.2, "poll_interval_s": 0.1},
        worker={"poll_interval_s": 0.1},
        # No forensic checks: this site's studies wait, not_scored, for a first model (with
        # the default checks they get forensic verdicts at once; tests/test_fused.py).
        detector={"device": "cpu", "window_stride_px": 0, "checks": []},
        retrain={
            "trusted_calling_aets": ["CT01"],
            "modalities": ["CT"],
            "max_steps": 4,  # a tiny BTD step takes ~4 s on 2 shared CPU cores
            "batch_size": 16,
            "patch_size": 32,
            "model_dim": 8,
            "dim_mults": [1, 2],
            "calibration_patches": 64,
            "gate_count": 2,
            "gate_attacks": ["injection", "adversarial-noise"],
            "gate_genuine_patches": 64,
            "holdout_fraction": 0.5,
            "calibration_tolerance": 0.15,  # 64 patches: the false-alarm estimate is coarse
            "min_auc": 0.0,  # 20 steps detect little; the gate's floor is tested elsewhere
            "device": "cpu",
            "reload_interval_s": 0.5,
        },
    )
    waiting = []
    for folder in phantoms[:4]:
        uid = _send(service.scp.port, folder, "CT01")
        assert _verdict(service, uid).reason == "no model for CT"
        waiting.append(uid)

    started = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tamperscan.cli",
            "retrain",
            "--bootstrap",
            "--config",
            str(tmp_path / "config.toml"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    seconds = time.monotonic() - started
    assert done.returncode == 0, done.stdout + done.stderr
    print(f"\nretrain --now: {seconds:.1f} s\n{done.stdout}")
    with service.db.reading() as session:
        production = session.scalars(
            select(ModelVersion).where(ModelVersion.state == "production")
        ).all()
    assert sorted(v.detector for v in production) == ["btd", "inpaint"], done.stdout

    deadline = time.monotonic() + 30
    while len(service.models.describe()) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert {m["registry_version"] for m in service.models.describe()} == {v.id for v in production}
    for uid in waiting:  # re-scored once the models arrived: a real verdict now
        deadline = time.monotonic() + 60
        while (verdict := _verdict(service, uid)).outcome == "not_scored":
            assert time.monotonic() < deadline, f"{uid} still {verdict.reason}"
            time.sleep(0.2)
        assert verdict.outcome in ("clean", "suspicious", "tampered"), verdict.reason
    verdict = _verdict(service, _send(service.scp.port, phantoms[4], "CT01"))
    assert verdict.outcome in ("clean", "suspicious", "tampered"), verdict.reason
    used = {m["name"]: m["version"] for m in verdict.details["models"]}
    assert used == {v.detector: f"r{v.id}-{v.sha256[:16]}" for v in production}
