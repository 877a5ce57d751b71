"""The first-model path as an operator meets it: why a run trained nothing, which key to change,
and read-only commands that never create a database."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from detector.lab.phantoms import write_phantoms
from storage.db import Database
from storage.instances import InstanceStore
from storage.models import utcnow
from tamperscan.cli import main
from tests.dicom_helpers import write_config
from tests.retrain_helpers import give_verdict, store_folder


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    out = tmp_path_factory.mktemp("first-model")
    return write_phantoms("CT", studies=2, slices=3, out_dir=out, seed=5, size=64)


def _config(tmp_path: Path, **retrain: Any) -> Path:
    values = {"modalities": ["CT"], "detectors": ["inpaint"], "device": "cpu", **retrain}
    return write_config(tmp_path / "config.toml", 0, tmp_path / "data", retrain=values)


def test_retrain_names_each_filter_that_emptied_the_pool_and_exits_4(
    tmp_path: Path, phantoms: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    db = Database(f"sqlite:///{(data / 'tamperscan.db').resolve()}")
    db.migrate()
    store = InstanceStore(db, data)
    for folder in phantoms:  # just arrived, from an AE nobody listed as trusted
        give_verdict(
            db,
            store_folder(store, folder, "CT01"),
            "not_scored",
            utcnow(),
            reason="no model for CT",
        )
    db.dispose()

    config = _config(tmp_path)
    assert main(["retrain", "--now", "--config", str(config)]) == 4
    out = capsys.readouterr()
    assert "quarantine_days = 7" in out.out and "nothing was trained" in out.err

    config = _config(tmp_path, quarantine_days=0.0)
    assert main(["retrain", "--now", "--config", str(config)]) == 4
    out = capsys.readouterr().out
    assert "trusted_calling_aets" in out and "6 instances came from calling AEs" in out

    config = _config(tmp_path, quarantine_days=0.0, trusted_calling_aets=["CT01"])
    assert main(["retrain", "--now", "--config", str(config)]) == 4
    out = capsys.readouterr().out
    assert (
        "the genuine pool has 2 patients" in out
        and "at least 3 are needed ([retrain] min_patients)" in out
    )

    # --bootstrap lifts the quarantine (the operator vouches), and no other limit.
    config = _config(tmp_path, trusted_calling_aets=["CT01"])
    assert main(["retrain", "--bootstrap", "--config", str(config)]) == 4
    out = capsys.readouterr().out
    assert "quarantine_days" not in out and "[retrain] min_patients" in out


@pytest.mark.parametrize(
    "argv",
    [
        ["status"],
        ["models", "list"],
        ["models", "rollback", "CT", "btd"],
        ["deliveries"],
        ["user", "list"],
        ["retrain", "--now"],
        ["retrain", "--bootstrap"],
    ],
)
def test_commands_that_need_a_database_refuse_a_missing_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    config = write_config(tmp_path / "config.toml", 0, tmp_path / "nowhere")
    assert main([*argv, "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "no database at" in err and str(config.resolve()) in err
    assert not (tmp_path / "nowhere").exists()


def test_studies_waiting_for_a_model_are_queued_once_for_their_modality(
    tmp_path: Path, phantoms: list[Path]
) -> None:
    from sqlalchemy import select

    from storage.models import Job, Study
    from storage.rescore import requeue_unscored

    db = Database(f"sqlite:///{tmp_path / 'index.db'}")
    db.migrate()
    store = InstanceStore(db, tmp_path / "data")
    waiting, failed = (store_folder(store, folder, "CT01") for folder in phantoms)
    give_verdict(db, waiting, "not_scored", utcnow(), reason="no model for CT")
    give_verdict(db, failed, "not_scored", utcnow(), reason="scoring failed after 3 attempts")
    with db.session() as session:
        assert requeue_unscored(session, ["MR"], utcnow()) == []  # not its modality
        assert requeue_unscored(session, ["CT"], utcnow()) == [waiting]
        assert requeue_unscored(session, ["CT"], utcnow()) == []  # queued already: not twice
    with db.reading() as session:
        study = session.get(Study, waiting)
        assert study is not None and (study.version, study.state) == (2, "queued")
        jobs = session.scalars(select(Job).where(Job.study_id == waiting)).all()
        assert [(j.study_version, j.state) for j in jobs] == [(2, "queued")]
        assert session.get(Study, failed).version == 1  # a failure is not "no model"
    db.dispose()
