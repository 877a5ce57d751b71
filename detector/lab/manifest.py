"""Ground-truth manifests in the two formats users already hold.

- BTD style (the paper's Kaggle test sets): ``path, x, y, type`` plus flag columns. The BTD
  loader takes ``type`` as the label; their files live at ``CT/<attack>/CT_<attack>.csv`` and
  ``MRI/MRI_<attack>.csv`` with generator flags such as ``CTGAN-CT-injection``. We write
  ``type`` in CT-GAN's vocabulary (TB/TM genuine without/with a lesion, FB/FM fake without/with
  one) and add ``attack``, ``label`` (1 = tampered) and ``modality`` columns.
- CHAIMELEON style (``test.csv``): ``filename, X, Y`` as the deepfakes-detector reads it, plus
  ``label`` and ``attack`` columns that its own reader ignores.

Both end with a ``family`` column: which independently written attack family (``A``, ``B``)
made a tampered row; genuine rows say ``none``. Manifests without it (older lab runs, the BTD
and CHAIMELEON files) read as family ``A``.

:func:`read_manifest` reads either, including the real BTD files (numeric or textual ``type``,
attack taken from the flag columns or the file name).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

ATTACKS = ("injection", "removal", "copy-move", "adversarial-noise")
FAMILIES = ("A", "B")
GENUINE = "none"
DEFAULT_FAMILY = "A"
BTD_COLUMNS = ["path", "x", "y", "type", "attack", "label", "modality", "family"]
CHAIMELEON_COLUMNS = ["filename", "X", "Y", "label", "attack", "type", "family"]

_FAKE_WORDS = {"1", "fake", "tampered", "fm", "fb", "manipulated", "true", "yes"}
_REAL_WORDS = {"0", "real", "genuine", "tb", "tm", "authentic", "false", "no", "clean"}


class ManifestError(ValueError):
    """A manifest that cannot be read (message names the file, row and column)."""


@dataclass(frozen=True)
class ManifestRow:
    """One location to score: ``path`` relative to the data folder, x = column, y = row."""

    path: str
    x: int
    y: int
    label: int  # 1 tampered, 0 genuine
    attack: str = GENUINE  # an ATTACKS entry for tampered rows, "none" for genuine ones
    type: str = ""  # TB / TM / FB / FM
    modality: str = ""  # CT / MR when known
    group: str = ""  # finer split where known (e.g. BTD generator CTGAN / SD)
    family: str = DEFAULT_FAMILY  # attack family (A, B) of a tampered row; "none" when genuine


def write_btd(rows: Iterable[ManifestRow], path: str | Path) -> None:
    """Write ``path, x, y, type, attack, label, modality, family`` (BTD's columns first)."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(BTD_COLUMNS)
        for r in rows:
            w.writerow([r.path, r.x, r.y, r.type, r.attack, r.label, r.modality, r.family])


def write_chaimeleon(rows: Iterable[ManifestRow], path: str | Path) -> None:
    """Write CHAIMELEON ``test.csv``: ``filename, X, Y`` then label, attack, type, family."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(CHAIMELEON_COLUMNS)
        for r in rows:
            w.writerow([r.path, r.x, r.y, r.label, r.attack, r.type, r.family])


def _label_of(value: str, where: str) -> int:
    v = value.strip().lower()
    if v in _FAKE_WORDS:
        return 1
    if v in _REAL_WORDS:
        return 0
    try:
        return 1 if float(v) >= 0.5 else 0
    except ValueError:
        raise ManifestError(f"{where}: cannot read a label from {value!r}") from None


def _attack_from_name(path: Path) -> str:
    """BTD file names carry the attack: CT_injection.csv, MRI_removal.csv."""
    stem = path.stem.lower()
    for attack in ATTACKS:
        if attack in stem or attack.replace("-", "_") in stem:
            return attack
    if "inject" in stem:
        return "injection"
    if "remov" in stem:
        return "removal"
    return ""


_FLAG = re.compile(r"^(?P<gen>[A-Za-z0-9]+)-(?P<mod>CT|MRI|MR)-(?P<attack>[A-Za-z_-]+)$")


def read_manifest(path: str | Path) -> list[ManifestRow]:
    """Read a BTD-style or CHAIMELEON-style CSV (the header decides which)."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: no such manifest file")
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh, skipinitialspace=True)
        if reader.fieldnames is None:
            raise ManifestError(f"{path}: empty manifest")
        fields = {f.strip(): f for f in reader.fieldnames}
        lower = {f.lower(): f for f in fields}
        if "path" in lower:
            col_path, col_x, col_y = lower["path"], lower.get("x"), lower.get("y")
        elif "filename" in lower:
            col_path, col_x, col_y = lower["filename"], lower.get("x"), lower.get("y")
        else:
            raise ManifestError(
                f"{path}: needs a 'path' (BTD) or 'filename' (CHAIMELEON) column; "
                f"found {', '.join(fields)}"
            )
        if col_x is None or col_y is None:
            raise ManifestError(f"{path}: needs x and y columns (x = column, y = row)")
        col_label = lower.get("label")
        col_type = lower.get("type")
        if col_label is None and col_type is None:
            raise ManifestError(f"{path}: needs a 'label' or 'type' column for the ground truth")
        flags = {f: _FLAG.match(f) for f in fields if _FLAG.match(f)}
        default_attack = _attack_from_name(path)
        rows: list[ManifestRow] = []
        for i, raw in enumerate(reader, start=2):
            rec = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
            where = f"{path}:{i}"
            try:
                x = int(round(float(rec[col_x])))
                y = int(round(float(rec[col_y])))
            except (TypeError, ValueError):
                raise ManifestError(
                    f"{where}: x/y must be numbers, got {rec.get(col_x)!r}, {rec.get(col_y)!r}"
                ) from None
            kind = rec.get(col_type, "") if col_type else ""
            label = _label_of(rec[col_label] if col_label else kind, where)
            attack = rec.get(lower.get("attack", ""), "") or ""
            group = ""
            for name, m in flags.items():
                if rec.get(name, "").strip() in ("1", "1.0", "True", "true"):
                    group = m.group("gen")
                    attack = attack or m.group("attack").lower()
            if label == 0:
                attack = GENUINE
            elif not attack or attack == GENUINE:
                attack = default_attack or {"fm": "injection", "fb": "removal"}.get(
                    kind.lower(), "unknown"
                )
            modality = rec.get(lower.get("modality", ""), "") or ""
            family = rec.get(lower.get("family", ""), "") or DEFAULT_FAMILY
            if not rec[col_path]:
                raise ManifestError(f"{where}: empty path")
            rows.append(
                ManifestRow(rec[col_path], x, y, label, attack, kind, modality, group, family)
            )
    if not rows:
        raise ManifestError(f"{path}: no rows")
    return rows


def discover_btd_manifests(root: str | Path) -> list[Path]:
    """The BTD Kaggle layout's CSVs under ``root`` (CT/<attack>/CT_<attack>.csv, MRI/MRI_*.csv)."""
    root = Path(root)
    found = sorted(root.glob("CT/*/CT_*.csv")) + sorted(root.glob("MRI/MRI_*.csv"))
    return found
