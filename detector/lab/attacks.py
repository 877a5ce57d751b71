"""Attacker-style tampering of DICOM studies, pixel-only, with exact ground truth (the runner).

Every attack edits PixelData and nothing else (CT-GAN keeps every header element, the SOP
Instance UID included), so header checks cannot give the fake away; see :mod:`.edits` for the
pixel-only guarantee. Two independently written families implement the same four attacks
(:data:`detector.lab.manifest.ATTACKS`):

- family A (:mod:`.attacks_a`): the lab's first, CT-GAN-style attacks;
- family B (:mod:`.attacks_b`, :mod:`.whitebox`): other shape models, noise taken from the scan
  itself, diffusion fills, single- and multi-slice edits, rotated/scaled/blended copies and a
  white-box PGD attack on a TamperScan checkpoint.

This module runs them, reserves genuine lesions as controls (:mod:`.controls`) and writes the
manifests (``manifest_btd.csv``, ``test.csv``) and ``regions.json``; the family travels in
every row and record so evaluation can tune on one family and report on the other.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from detector.lab import attacks_a, attacks_b, whitebox
from detector.lab.controls import controls, reserve_lesions
from detector.lab.edits import (
    Example,
    LabState,
    Region,
    StudySeries,
    TamperError,
    TamperRecord,
    candidate_mask,
    disc,
    stored_range,
    to_stored,
)
from detector.lab.lesions import LESIONS_CSV
from detector.lab.manifest import ATTACKS, FAMILIES, ManifestRow, write_btd, write_chaimeleon
from detector.lab.montage import save_montage

BTD_MANIFEST = "manifest_btd.csv"
CHAIMELEON_MANIFEST = "test.csv"
REGIONS_JSON = "regions.json"
DEFAULT_EPSILON_HU = 10.0
DEFAULT_EPSILON_MR = 0.015
CONTROL_SHARE = 0.25  # filling never leaves fewer of a modality's slices unedited

__all__ = [
    "ATTACKS",
    "BTD_MANIFEST",
    "CHAIMELEON_MANIFEST",
    "FAMILIES",
    "REGIONS_JSON",
    "Region",
    "TamperError",
    "TamperRecord",
    "TamperResult",
    "candidate_mask",
    "disc",
    "save_montage",
    "stored_range",
    "tamper_dataset",
    "to_stored",
]

AttackFn = Callable[[LabState, list[StudySeries]], TamperRecord | None]
FAMILY_ATTACKS: dict[str, dict[str, AttackFn]] = {
    "A": {
        "injection": attacks_a.inject,
        "removal": attacks_a.remove,
        "copy-move": attacks_a.copy_move,
        "adversarial-noise": attacks_a.adversarial,
    },
    "B": {
        "injection": attacks_b.inject,
        "removal": attacks_b.remove,
        "copy-move": attacks_b.copy_move,
        "adversarial-noise": whitebox.attack,
    },
}


@dataclass
class TamperResult:
    rows: list[ManifestRow]
    records: list[TamperRecord]
    # One example per (attack, modality, family) for montages.
    examples: dict[tuple[str, str, str], Example] = field(default_factory=dict)
    # "attack/family/modality" -> rows, for cells that stayed below min_rows (no room left).
    short_cells: dict[str, int] = field(default_factory=dict)


def tamper_dataset(
    in_dir: str | Path,
    out_dir: str | Path,
    attacks: Sequence[str],
    count: int,
    seed: int,
    epsilon_hu: float = DEFAULT_EPSILON_HU,
    epsilon_mr: float = DEFAULT_EPSILON_MR,
    progress: Callable[[str], None] | None = None,
    families: Sequence[str] = ("A",),
    min_rows: int = 0,
    target_models: Sequence[str | Path] = (),
) -> TamperResult:
    """Copy ``in_dir`` to ``out_dir``, tamper, and write the manifests and ``regions.json``.

    ``count`` instances of each attack and family are drawn across all studies (an instance
    may span several slices; no room for one is an error); then, with ``min_rows``, instances
    are added per modality until every (attack, family, modality) cell has at least
    ``min_rows`` tampered slice rows or no room is left for it (``short_cells`` says which);
    an instance that would leave less than a quarter of a modality's slices unedited (the room
    the genuine controls need) is taken back and closes its cell.
    ``target_models`` are the checkpoints family B's white-box attack differentiates (one per
    modality). Rows cover every tampered slice plus as many genuine controls.
    """
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    if not in_dir.is_dir():
        raise TamperError(f"{in_dir}: no such folder")
    for attack in attacks:
        if attack not in ATTACKS:
            raise TamperError(f"unknown attack {attack!r}; choose from {', '.join(ATTACKS)}")
    for family in families:
        if family not in FAMILIES:
            raise TamperError(f"unknown family {family!r}; choose from {', '.join(FAMILIES)}")
    if count < 0 or min_rows < 0 or count + min_rows < 1:
        raise TamperError("--count must be at least 1")
    if out_dir.resolve() == in_dir.resolve() or in_dir.resolve() in out_dir.resolve().parents:
        raise TamperError("--out must be a new folder outside --in")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise TamperError(f"{out_dir}: exists and is not empty")
    if epsilon_hu <= 0 or epsilon_mr <= 0:
        raise TamperError("epsilon must be positive")
    lab = LabState(in_dir, out_dir, seed, epsilon_hu, epsilon_mr)
    if "removal" in attacks and not lab.lesions:
        raise TamperError(
            f"removal needs {in_dir / LESIONS_CSV} (the genuine lesions, written by "
            "'tamperscan phantoms')"
        )
    if "B" in families and "adversarial-noise" in attacks:
        lab.target_models = whitebox.targets_by_modality(
            target_models, {st.modality for st in lab.studies}
        )
    created = not out_dir.exists()
    try:
        return _run(lab, attacks, families, count, min_rows, seed, progress)
    except BaseException:
        if created:  # leave no half-tampered copy behind
            shutil.rmtree(out_dir, ignore_errors=True)
        raise


def _place(lab: LabState, attack: str, family: str, modality: str | None) -> TamperRecord | None:
    rec = FAMILY_ATTACKS[family][attack](lab, lab.of_modality(modality))
    if rec is not None:
        rec.family = family
        lab.records.append(rec)
    return rec


def _unedited_share(lab: LabState, modality: str) -> float:
    studies = lab.of_modality(modality)
    total = sum(len(st.paths) for st in studies)
    edited = sum(lab.edited(st, k) for st in studies for k in range(len(st.paths)))
    return 1.0 - edited / max(total, 1)


def _undo(lab: LabState, rec: TamperRecord, before: tuple) -> None:
    """Take one instance back: its files get their genuine bytes again."""
    for region in rec.regions:
        shutil.copyfile(lab.in_dir / region.path, lab.out_dir / region.path)
    lab.touched, lab.reserved, lab.removed, lab.examples = before
    lab.records.remove(rec)


def _run(
    lab: LabState,
    attacks: Sequence[str],
    families: Sequence[str],
    count: int,
    min_rows: int,
    seed: int,
    progress: Callable[[str], None] | None,
) -> TamperResult:
    in_dir, out_dir = lab.in_dir, lab.out_dir
    shutil.copytree(
        in_dir,
        out_dir,
        dirs_exist_ok=True,
        ignore=shutil.ignore_patterns(LESIONS_CSV, BTD_MANIFEST, CHAIMELEON_MANIFEST, REGIONS_JSON),
    )
    reserve_lesions(lab, seed, removal="removal" in attacks)
    # Removal needs particular lesions and their slices: it goes first, before other edits
    # cover them.
    attacks = sorted(attacks, key=lambda a: a != "removal")
    for family in families:
        for attack in attacks:
            for _ in range(count):
                if _place(lab, attack, family, None) is None:
                    raise TamperError(
                        f"could not place {attack} (family {family}): no untouched slice/lesion "
                        "left; use fewer --count or more studies/slices"
                    )
                if progress:
                    progress(attack)
    rows: Counter[tuple[str, str, str]] = Counter()
    for rec in lab.records:
        rows[(rec.attack, rec.family, rec.modality)] += len(rec.regions)
    modalities = sorted({st.modality for st in lab.studies})
    cells = [(a, f, m) for a in attacks for f in families for m in modalities]
    full: set[tuple[str, str, str]] = set()  # cells with no room left
    while short := [c for c in cells if rows[c] < min_rows and c not in full]:
        for cell in short:  # round robin: no cell starves the others
            before = (set(lab.touched), set(lab.reserved), set(lab.removed), dict(lab.examples))
            rec = _place(lab, *cell)
            if rec is not None and _unedited_share(lab, cell[2]) < CONTROL_SHARE:
                _undo(lab, rec, before)  # the rest of the modality stays genuine for controls
                rec = None
            if rec is None:
                full.add(cell)
                continue
            rows[cell] += len(rec.regions)
            if progress:
                progress(cell[0])
    small = {f"{a}/{f}/{m}": rows[(a, f, m)] for a, f, m in cells if rows[(a, f, m)] < min_rows}
    tampered = [
        ManifestRow(r.path, r.x, r.y, 1, rec.attack, rec.type, rec.modality, family=rec.family)
        for rec in lab.records
        for r in rec.regions
    ]
    genuine: list[ManifestRow] = []
    for modality in sorted({r.modality for r in tampered}):
        genuine += controls(lab, sum(1 for r in tampered if r.modality == modality), modality)
    manifest = tampered + genuine
    write_btd(manifest, out_dir / BTD_MANIFEST)
    write_chaimeleon(manifest, out_dir / CHAIMELEON_MANIFEST)
    with open(out_dir / REGIONS_JSON, "w") as fh:
        json.dump(
            {
                "seed": seed,
                "families": list(families),
                "epsilon_hu": lab.eps_hu,
                "epsilon_mr_fraction": lab.eps_mr,
                "min_rows": min_rows,
                "short_cells": small,
                "records": [asdict(r) for r in lab.records],
            },
            fh,
            indent=1,
        )
    return TamperResult(manifest, lab.records, lab.examples, small)
