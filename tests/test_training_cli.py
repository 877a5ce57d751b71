"""``tamperscan train`` and the CHAIMELEON ``-mode Train|Test`` command line, on phantom DICOM."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from detector.checkpoint import load_checkpoint
from tamperscan.cli import main

TINY_BTD = ["--patch-size", "32", "--model-dim", "8", "--dim-mults", "1,2"]


@pytest.fixture(scope="module")
def ct_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from detector.lab.phantoms import write_phantoms

    root = tmp_path_factory.mktemp("train-cli") / "data"
    write_phantoms("CT", 2, 4, root, seed=31, size=128)
    (root / "notes.txt").write_text("not DICOM: skipped")
    return root


def test_train_btd_writes_a_calibrated_checkpoint_and_resumes(
    ct_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "btd.ckpt"
    base = [
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
        "--lr",
        "1e-3",
        "--calibration-patches",
        "16",
        "--quiet",
        *TINY_BTD,
    ]
    assert main([*base, "--epochs", "1", "--max-steps", "2"]) == 0
    assert "calibrated on 16 held-out patches" in capsys.readouterr().out
    ckpt = load_checkpoint(model)
    assert (ckpt.kind, ckpt.modality, ckpt.preprocessing.patch_size) == ("btd", "CT", 32)
    assert ckpt.step == 2 and ckpt.epoch == 1
    assert ckpt.calibration is not None and ckpt.calibration.size == 16
    assert ckpt.ema_state is not None and ckpt.optimizer_state is not None
    assert ckpt.training["held_out"] == 4  # one of the two patients, 4 slices
    assert ckpt.versions["denoising-diffusion-pytorch"].startswith("1.8")
    assert ckpt.model_config["dim"] == 8 and ckpt.model_config["dim_mults"] == [1, 2]

    assert main([*base, "--epochs", "2", "--max-steps", "4", "--resume"]) == 0
    resumed = load_checkpoint(model)
    assert resumed.step == 4 and resumed.epoch == 2

    other = [a if a != "8" else "16" for a in base]  # another model size
    assert main([*other, "--epochs", "3", "--resume"]) == 2
    assert "cannot resume" in capsys.readouterr().err


def test_train_inpaint_on_regions_of_interest(ct_folder: Path, tmp_path: Path) -> None:
    regions = tmp_path / "regions.csv"
    files = sorted(p.relative_to(ct_folder).as_posix() for p in ct_folder.rglob("*.dcm"))
    with regions.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["filename", "X", "Y"])
        for f in files:
            w.writerow([f, 50, 60])
    model = tmp_path / "inpaint.ckpt"
    rc = main(
        [
            "train",
            "--detector",
            "inpaint",
            "--modality",
            "CT",
            "--data",
            str(ct_folder),
            "--model-path",
            str(model),
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--regions",
            str(regions),
            "--patch-size",
            "32",
            "--model-dim",
            "8",
            "--calibration-patches",
            "8",
            "--quiet",
        ]
    )
    assert rc == 0
    ckpt = load_checkpoint(model, expected_kind="inpaint", modality="CT")
    assert ckpt.training["regions"] == str(regions)
    assert ckpt.step == 2  # 4 training slices x 4 patches each = 16 patches, batch 8
    assert ckpt.calibration is not None and ckpt.calibration.size == 8


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--data": "/nonexistent/folder"}, "data folder not found"),
        ({"--modality": "MR"}, "no MR DICOM image files found"),
        ({"--regions": "/nonexistent/regions.csv"}, "regions CSV not found"),
    ],
)
def test_train_user_errors_say_what_was_expected(
    ct_folder: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    change: dict[str, str],
    message: str,
) -> None:
    args = {
        "--detector": "inpaint",
        "--modality": "CT",
        "--data": str(ct_folder),
        "--model-path": str(tmp_path / "m.ckpt"),
    }
    args.update(change)
    argv = ["train", *[x for kv in args.items() for x in kv], "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_chaimeleon_train_then_test(
    ct_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "CT_InPainting.ckpt"
    rc = main(
        [
            "-mode",
            "Train",
            "-model_path",
            str(model),
            "-data_path",
            str(ct_folder),
            "-epochs",
            "1",
            "-batch_size",
            "8",
            "-num_workers",
            "1",
            "-patch_size",
            "32",
            "-width",
            "8",
            "-max_steps",
            "2",
            "-quiet",
        ]
    )
    assert rc == 0
    ckpt = load_checkpoint(model)
    assert ckpt.kind == "inpaint" and ckpt.modality == "CT"  # modality read from the files

    files = sorted(p.relative_to(ct_folder).as_posix() for p in ct_folder.rglob("*.dcm"))[:3]
    with (ct_folder / "test.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["filename", "X", "Y"])
        for i, f in enumerate(files):
            w.writerow([f, 40 + 10 * i, 64])
    capsys.readouterr()
    try:
        assert main(["-mode", "Test", "-model_path", str(model), "-data_path", str(ct_folder)]) == 0
        out = capsys.readouterr().out
        results = ct_folder / "results.csv"
        assert str(results) in out
        with results.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert [r["filename"] for r in rows] == files
        assert all(float(r["score"]) >= 0 and 0 < float(r["p_value"]) <= 1 for r in rows)
    finally:
        (ct_folder / "test.csv").unlink()
        (ct_folder / "results.csv").unlink(missing_ok=True)


def test_chaimeleon_test_with_a_btd_checkpoint_and_errors(
    ct_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "btd.ckpt"
    assert (
        main(
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
                "--epochs",
                "1",
                "--max-steps",
                "1",
                "--batch-size",
                "4",
                "--calibration-patches",
                "4",
                "--quiet",
                *TINY_BTD,
            ]
        )
        == 0
    )
    test_dir = tmp_path / "test"
    test_dir.mkdir()
    assert main(["-mode", "Test", "-model_path", str(model), "-data_path", str(test_dir)]) == 2
    assert "test CSV not found" in capsys.readouterr().err
    f = sorted(p for p in ct_folder.rglob("*.dcm"))[0]
    (test_dir / "test.csv").write_text(f"filename,X,Y\n{f},64,64\n")
    out_csv = tmp_path / "out" / "scores.csv"
    assert (
        main(
            [
                "-mode",
                "Test",
                "-model_path",
                str(model),
                "-data_path",
                str(test_dir),
                "-output",
                str(out_csv),
            ]
        )
        == 0
    )
    assert out_csv.read_text().count("\n") == 2
    assert (
        main(
            [
                "-mode",
                "Test",
                "-model_path",
                str(tmp_path / "none.ckpt"),
                "-data_path",
                str(test_dir),
            ]
        )
        == 2
    )
    assert "checkpoint not found" in capsys.readouterr().err
