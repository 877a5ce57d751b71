# ruff: noqa: F811 - the lab_set fixture is imported by name and used as a parameter
"""Attacks: pixels change only inside the recorded region, headers stay identical, manifests
point at the right file and coordinates, controls are genuine."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut

from detector.lab.attacks import (
    BTD_MANIFEST,
    CHAIMELEON_MANIFEST,
    REGIONS_JSON,
    disc,
    tamper_dataset,
)
from detector.lab.manifest import ATTACKS, read_manifest
from tamperscan.cli import main
from tests.conftest_lab import LabSet, lab_set  # noqa: F401 - the fixture is used by name


def _pixels(path: Path) -> tuple[pydicom.Dataset, np.ndarray]:
    ds = pydicom.dcmread(path)
    return ds, np.asarray(apply_modality_lut(ds.pixel_array, ds), dtype=np.float64)


def _header_elements(ds: pydicom.Dataset) -> dict:
    out = {f"meta:{e.tag}": (e.VR, e.value) for e in ds.file_meta}
    for e in ds:
        if e.tag != 0x7FE00010:
            out[str(e.tag)] = (e.VR, e.value)
    return out


def test_every_attack_was_applied(lab_set: LabSet) -> None:
    attacks = {r.attack for r in lab_set.result.records}
    assert attacks == set(ATTACKS)
    assert {r.modality for r in lab_set.result.records} <= {"CT", "MR"}


def test_changes_only_inside_recorded_regions(lab_set: LabSet) -> None:
    regions_by_file: dict[str, list] = {}
    for rec in lab_set.result.records:
        for reg in rec.regions:
            regions_by_file.setdefault(reg.path, []).append((rec, reg))
    for path in sorted(p for p in lab_set.genuine.rglob("*.dcm")):
        rel = path.relative_to(lab_set.genuine).as_posix()
        ds_a, before = _pixels(path)
        ds_b, after = _pixels(lab_set.tampered / rel)
        changed = before != after
        if rel not in regions_by_file:
            assert not changed.any(), f"{rel} changed but is not in the manifest"
            assert ds_a.PixelData == ds_b.PixelData
            continue
        allowed = np.zeros_like(changed)
        for _, reg in regions_by_file[rel]:
            allowed |= disc(changed.shape, reg.x, reg.y, reg.radius_px)
        assert not (changed & ~allowed).any(), f"{rel}: pixels changed outside the region"
        assert changed.any(), f"{rel}: recorded as tampered but unchanged"


def test_headers_identical_except_pixel_data(lab_set: LabSet) -> None:
    for rec in lab_set.result.records:
        for reg in rec.regions:
            a = pydicom.dcmread(lab_set.genuine / reg.path)
            b = pydicom.dcmread(lab_set.tampered / reg.path)
            assert _header_elements(a) == _header_elements(b), reg.path
            assert a.SOPInstanceUID == b.SOPInstanceUID
            assert len(a.PixelData) == len(b.PixelData)


def test_adversarial_noise_within_bound(lab_set: LabSet) -> None:
    recs = [r for r in lab_set.result.records if r.attack == "adversarial-noise"]
    assert recs
    for rec in recs:
        assert rec.epsilon is not None and rec.epsilon > 0
        if rec.modality == "CT":
            assert rec.epsilon == pytest.approx(10.0)
        reg = rec.regions[0]
        _, before = _pixels(lab_set.genuine / reg.path)
        _, after = _pixels(lab_set.tampered / reg.path)
        diff = np.abs(after - before)
        assert diff.max() <= rec.epsilon + 1e-9
        assert diff.max() > 0
        # Concentrated: most of the disc is perturbed.
        inside = disc(diff.shape, reg.x, reg.y, reg.radius_px)
        assert (diff[inside] > 0).mean() > 0.5


def test_manifest_rows_point_at_the_edits(lab_set: LabSet) -> None:
    rows = read_manifest(lab_set.tampered / BTD_MANIFEST)
    fake = [r for r in rows if r.label == 1]
    real = [r for r in rows if r.label == 0]
    assert len(fake) == len(real) > 0
    assert {r.type for r in fake} <= {"FM", "FB"}
    assert {r.type for r in real} <= {"TM", "TB"}
    assert "TM" in {r.type for r in real}, "some controls sit on real lesions"
    for r in fake:
        _, before = _pixels(lab_set.genuine / r.path)
        _, after = _pixels(lab_set.tampered / r.path)
        near = disc(before.shape, r.x, r.y, 4)
        assert (before != after)[near].any(), f"{r.path} ({r.x},{r.y}) shows no edit"
    for r in real:
        _, before = _pixels(lab_set.genuine / r.path)
        _, after = _pixels(lab_set.tampered / r.path)
        assert np.array_equal(before, after), f"control {r.path} was modified"
    chaimeleon = read_manifest(lab_set.tampered / CHAIMELEON_MANIFEST)
    assert [(r.path, r.x, r.y, r.label, r.attack) for r in chaimeleon] == [
        (r.path, r.x, r.y, r.label, r.attack) for r in rows
    ]
    header = (lab_set.tampered / CHAIMELEON_MANIFEST).read_text().splitlines()[0]
    assert header.startswith("filename,X,Y")
    assert (lab_set.tampered / REGIONS_JSON).is_file()


def test_no_control_sits_on_a_copy_move_source(lab_set: LabSet) -> None:
    """A copy's source is genuine but its content now occurs twice (and resembles the slice
    either side): no clean control. Every control keeps clear of every source disc."""
    from detector.slices import series_files

    rows = read_manifest(lab_set.tampered / BTD_MANIFEST)
    copies = [r for r in lab_set.result.records if r.attack == "copy-move" and r.source]
    assert copies, "the lab set has copy-moves"
    for row in (r for r in rows if r.label == 0):
        study, name = row.path.split("/")
        order = {p.name: k for k, p in enumerate(series_files(lab_set.genuine / study))}
        header = pydicom.dcmread(lab_set.genuine / row.path, stop_before_pixels=True)
        spacing = float(header.PixelSpacing[0])
        for rec in (c for c in copies if c.study == study):
            first = int(rec.source["slice_index"])
            last = first + int((rec.detail or {}).get("slices", 1)) - 1
            if first - 1 <= order[name] <= last + 1:
                gap = np.hypot(row.x - rec.source["x"], row.y - rec.source["y"])
                assert gap > (rec.radius_mm or 0) / spacing, (row, rec.source)


def test_removal_hides_the_lesion(lab_set: LabSet) -> None:
    rec = next(r for r in lab_set.result.records if r.attack == "removal")
    reg = max(rec.regions, key=lambda g: g.radius_px)
    _, before = _pixels(lab_set.genuine / reg.path)
    _, after = _pixels(lab_set.tampered / reg.path)
    core = disc(before.shape, reg.x, reg.y, 1.5)
    ring = disc(before.shape, reg.x, reg.y, reg.radius_px + 6) & ~disc(
        before.shape, reg.x, reg.y, reg.radius_px + 1
    )
    # After removal the centre looks like its surroundings, before it did not.
    assert abs(after[core].mean() - np.median(after[ring])) < abs(
        before[core].mean() - np.median(before[ring])
    )


def test_same_seed_same_tampering(lab_set: LabSet, tmp_path: Path) -> None:
    again = tamper_dataset(lab_set.genuine, tmp_path / "again", ["adversarial-noise"], 1, seed=3)
    other = tamper_dataset(lab_set.genuine, tmp_path / "again2", ["adversarial-noise"], 1, seed=3)
    assert [(r.path, r.x, r.y) for r in again.rows] == [(r.path, r.x, r.y) for r in other.rows]


def test_cli_errors_are_clean(
    lab_set: LabSet,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    code = main(
        ["tamper", "--in", str(lab_set.genuine), "--out", str(tmp_path / "o"), "--attack", "splice"]
    )
    assert code == 2 and "unknown attack" in capsys.readouterr().err
    code = main(
        [
            "tamper",
            "--in",
            str(tmp_path / "nope"),
            "--out",
            str(tmp_path / "o"),
            "--attack",
            "injection",
        ]
    )
    assert code == 2 and "no such folder" in capsys.readouterr().err
    no_lesions = tmp_path / "nolesions"
    study = next(p for p in lab_set.genuine.iterdir() if p.is_dir())
    (no_lesions / study.name).mkdir(parents=True)
    for f in study.glob("*.dcm"):
        (no_lesions / study.name / f.name).write_bytes(f.read_bytes())
    code = main(
        ["tamper", "--in", str(no_lesions), "--out", str(tmp_path / "o2"), "--attack", "removal"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "lesions.csv" in err and "Traceback" not in err
    assert not (tmp_path / "o2").exists()
    code = main(
        [
            "tamper",
            "--in",
            str(lab_set.genuine),
            "--out",
            str(lab_set.tampered),
            "--attack",
            "injection",
        ]
    )
    assert code == 2 and "not empty" in capsys.readouterr().err
