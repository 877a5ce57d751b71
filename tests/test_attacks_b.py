# ruff: noqa: F811 - the lab_set fixture is imported by name and used as a parameter
"""Attack family B and the run around it: families recorded everywhere, the white-box attack
lowers its target's score, genuine-lesion controls in every manifest, cells filled to size.

The pixel-only checks (changes only inside the recorded region, every header element kept)
run over both families in tests/test_attacks.py, on the same session fixture.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut

from detector.btd import load_btd
from detector.inpainting import load_inpaint
from detector.interface import Location
from detector.lab.attacks import (
    BTD_MANIFEST,
    CHAIMELEON_MANIFEST,
    REGIONS_JSON,
    TamperError,
    disc,
    tamper_dataset,
)
from detector.lab.b_tools import poisson_fill
from detector.lab.manifest import ATTACKS, FAMILIES, GENUINE, read_manifest
from detector.preprocess import patches_for
from detector.slices import read_slice, series_files, volume_intensity_range
from tamperscan.cli import main
from tests.conftest_lab import LabSet, lab_set  # noqa: F401 - the fixture is used by name


def _values(path: Path) -> np.ndarray:
    ds = pydicom.dcmread(path)
    return np.asarray(apply_modality_lut(ds.pixel_array, ds), dtype=np.float64)


def test_both_families_ran_every_attack(lab_set: LabSet) -> None:
    done = {(r.attack, r.family) for r in lab_set.result.records}
    assert done == {(a, f) for a in ATTACKS for f in FAMILIES}
    b = [r for r in lab_set.result.records if r.family == "B"]
    assert all(r.detail for r in b)
    inj = next(r for r in b if r.attack == "injection")
    assert inj.detail["shape"] in (
        "lobulated",
        "spiculated",
        "part-solid",
        "calcified",
        "heterogeneous",
    )
    copy = next(r for r in b if r.attack == "copy-move")
    assert {"angle", "scale", "mirror", "blend"} <= set(copy.detail)


def test_family_in_every_row_and_record(lab_set: LabSet) -> None:
    rows = read_manifest(lab_set.tampered / BTD_MANIFEST)
    assert {r.family for r in rows if r.label == 1} == set(FAMILIES)
    assert {r.family for r in rows if r.label == 0} == {GENUINE}
    for name in (BTD_MANIFEST, CHAIMELEON_MANIFEST):
        with open(lab_set.tampered / name, newline="") as fh:
            header = next(csv.reader(fh))
        assert header[-1] == "family", name
    chaimeleon = read_manifest(lab_set.tampered / CHAIMELEON_MANIFEST)
    assert [r.family for r in chaimeleon] == [r.family for r in rows]
    regions = json.loads((lab_set.tampered / REGIONS_JSON).read_text())
    assert regions["families"] == list(FAMILIES)
    assert {rec["family"] for rec in regions["records"]} == set(FAMILIES)
    per_cell = Counter((r.attack, r.family) for r in rows if r.label == 1)
    assert set(per_cell) == {(a, f) for a in ATTACKS for f in FAMILIES}


def test_manifest_without_family_column_reads_as_family_a(tmp_path: Path) -> None:
    path = tmp_path / "old.csv"
    path.write_text(
        "path,x,y,type,attack,label,modality\na.dcm,3,4,FM,injection,1,CT\nb.dcm,5,6,TB,none,0,CT\n"
    )
    assert [r.family for r in read_manifest(path)] == ["A", "A"]


def _serving_detector(kind: str, path: str, modality: str) -> Any:
    if kind == "btd":
        return load_btd(path, modality, device="cpu", precision="fp32")
    return load_inpaint(path, modality, device="cpu", precision="fp32")


def test_whitebox_lowers_every_targeted_detectors_score(lab_set: LabSet) -> None:
    """PGD descends the sum of its targets' relative scores; each target, scored as serving
    scores it (its own preprocessing, on the stored, quantised pixels), must end lower."""
    recs = [
        r for r in lab_set.result.records if r.family == "B" and r.attack == "adversarial-noise"
    ]
    assert {r.modality for r in recs} == {"CT", "MR"}
    for rec in recs:
        reg = rec.regions[0]
        targets = rec.detail["targets"]
        assert [t["model"] for t in targets] == [str(p) for p in lab_set.models[rec.modality]]
        rng = None
        if rec.modality == "MR":  # the same series range for both, as evaluation uses one
            rng = volume_intensity_range(series_files((lab_set.genuine / reg.path).parent))
        before = read_slice(lab_set.genuine / reg.path, rng)
        after = read_slice(lab_set.tampered / reg.path, rng)
        for target in targets:
            det = _serving_detector(target["kind"], target["model"], rec.modality)
            scores, _ = det.score_patches(
                patches_for(
                    [Location(before, reg.x, reg.y), Location(after, reg.x, reg.y)], det.prep
                )
            )
            assert scores[1] < scores[0], (rec.modality, target["kind"], scores)
            assert target["score_after"] < target["score_before"]
        diff = np.abs(_values(lab_set.tampered / reg.path) - _values(lab_set.genuine / reg.path))
        assert 0 < diff.max() <= rec.epsilon + 1e-9
        if rec.modality == "CT":
            assert rec.epsilon == pytest.approx(10.0)
        assert (diff[disc(diff.shape, reg.x, reg.y, reg.radius_px)] > 0).mean() > 0.3


def test_whitebox_refuses_without_a_checkpoint(
    lab_set: LabSet,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    with pytest.raises(TamperError, match="--target-model CKPT for CT, MR"):
        tamper_dataset(
            lab_set.genuine, tmp_path / "o", ["adversarial-noise"], 1, seed=1, families=["B"]
        )
    assert not (tmp_path / "o").exists()
    code = main(
        [
            "tamper",
            "--in",
            str(lab_set.genuine),
            "--out",
            str(tmp_path / "o2"),
            "--attack",
            "adversarial-noise",
            "--family",
            "B",
            "--target-model",
            str(lab_set.models["CT"][0]),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "for MR" in err and "Traceback" not in err


def test_removal_b_hides_the_lesion(lab_set: LabSet) -> None:
    rec = next(r for r in lab_set.result.records if r.attack == "removal" and r.family == "B")
    reg = max(rec.regions, key=lambda g: g.radius_px)
    before = _values(lab_set.genuine / reg.path)
    after = _values(lab_set.tampered / reg.path)
    core = disc(before.shape, reg.x, reg.y, 1.5)
    ring = disc(before.shape, reg.x, reg.y, reg.radius_px + 6) & ~disc(
        before.shape, reg.x, reg.y, reg.radius_px + 1
    )
    assert abs(after[core].mean() - np.median(after[ring])) < abs(
        before[core].mean() - np.median(before[ring])
    )


def test_harmonic_fill_is_smooth_and_poisson_clone_keeps_the_source_gradient() -> None:
    yy, xx = np.mgrid[:40, :40].astype(float)
    plane = 3.0 * xx + 2.0 * yy  # harmonic: the fill must reproduce it
    hole = disc(plane.shape, 20, 20, 8)
    broken = plane.copy()
    broken[hole] = 1000.0
    np.testing.assert_allclose(poisson_fill(broken, hole)[hole], plane[hole], atol=1e-6)
    source = np.sin(xx / 3.0) * 10
    cloned = poisson_fill(np.zeros_like(plane), hole, guidance=source + 50.0)
    inner = disc(plane.shape, 20, 20, 6)

    def lap(a: np.ndarray) -> np.ndarray:
        return 4 * a - np.roll(a, 1, 0) - np.roll(a, -1, 0) - np.roll(a, 1, 1) - np.roll(a, -1, 1)

    np.testing.assert_allclose(lap(cloned)[inner], lap(source)[inner], atol=1e-6)


def test_every_manifest_holds_genuine_lesion_controls(
    lab_set: LabSet,
    tmp_path: Path,
) -> None:
    runs = [read_manifest(lab_set.tampered / BTD_MANIFEST)]
    for i, attacks in enumerate((["removal"], ["copy-move", "adversarial-noise"])):
        tamper_dataset(lab_set.genuine, tmp_path / f"r{i}", attacks, 2, seed=20 + i)
        runs.append(read_manifest(tmp_path / f"r{i}" / BTD_MANIFEST))
    for rows in runs:
        for modality in ("CT", "MR"):
            tm = [r for r in rows if r.modality == modality and r.type == "TM"]
            assert tm, f"no on-lesion control for {modality}"
            assert all(r.label == 0 and r.attack == GENUINE for r in tm)


def test_min_rows_fills_every_cell(lab_set: LabSet, tmp_path: Path) -> None:
    tamper_dataset(
        lab_set.genuine,
        tmp_path / "cells",
        ["copy-move", "injection"],
        0,
        seed=5,
        min_rows=4,
        families=FAMILIES,
    )
    rows = read_manifest(tmp_path / "cells" / BTD_MANIFEST)
    cells = Counter((r.attack, r.family, r.modality) for r in rows if r.label == 1)
    for attack in ("copy-move", "injection"):
        for family in FAMILIES:
            for modality in ("CT", "MR"):
                assert cells[(attack, family, modality)] >= 4, cells


def test_cli_family_b_writes_family_b_montages(
    lab_set: LabSet,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    code = main(
        [
            "tamper",
            "--in",
            str(lab_set.genuine),
            "--out",
            str(tmp_path / "o"),
            "--attack",
            "copy-move",
            "--family",
            "B",
            "--count",
            "2",
            "--seed",
            "9",
            "--montages",
            str(tmp_path / "m"),
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "copy-move-b-mr.png",
        "copy-move-b.png",
    ]
    rows = read_manifest(tmp_path / "o" / BTD_MANIFEST)
    fakes = [r for r in rows if r.label == 1]
    assert {r.family for r in fakes} == {"B"}
    assert all(n >= 2 for n in Counter(r.modality for r in fakes).values())


def test_overfull_cells_stop_short_and_leave_room_for_controls(
    lab_set: LabSet,
    tmp_path: Path,
) -> None:
    out = tmp_path / "full"
    result = tamper_dataset(lab_set.genuine, out, ["adversarial-noise"], 0, seed=8, min_rows=1000)
    assert set(result.short_cells) == {"adversarial-noise/A/CT", "adversarial-noise/A/MR"}
    assert json.loads((out / REGIONS_JSON).read_text())["short_cells"] == result.short_cells
    recorded = {reg.path for rec in result.records for reg in rec.regions}
    for modality in ("CT", "MR"):
        files = sorted(lab_set.genuine.glob(f"LAB-{modality}-*/*.dcm"))
        edited = [
            f
            for f in files
            if f.read_bytes() != (out / f.relative_to(lab_set.genuine)).read_bytes()
        ]
        assert 0 < len(edited) <= 0.75 * len(files)
        # Every changed file is a recorded one: an instance taken back left no trace.
        assert {f.relative_to(lab_set.genuine).as_posix() for f in edited} <= recorded
    rows = read_manifest(out / BTD_MANIFEST)
    assert sum(r.label == 0 for r in rows) == sum(r.label == 1 for r in rows)


def test_whitebox_targets_refuse_released_weights_and_other_kinds(
    lab_set: LabSet, tmp_path: Path
) -> None:
    import torch

    from detector.lab.whitebox_targets import targets_by_modality

    released = tmp_path / "released.pt"
    torch.save({"step": 1, "model": {}}, released)
    with pytest.raises(TamperError, match="do not record their modality"):
        targets_by_modality([released], {"CT"})
    both = targets_by_modality(lab_set.models["CT"], {"CT"})
    assert both == {"CT": lab_set.models["CT"]}
    with pytest.raises(TamperError, match="for MR"):
        targets_by_modality(lab_set.models["CT"], {"CT", "MR"})
    with pytest.raises(TamperError, match="no such file"):
        targets_by_modality([tmp_path / "missing.ckpt"], {"CT"})
