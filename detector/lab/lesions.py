"""Ground truth of the genuine lesions in the phantoms, and its ``lesions.csv`` file.

The tamper command needs it for removal attacks and for the genuine on-lesion (TM) controls:
a genuine tumour must be a negative in every manifest, never a "hit".
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

LESIONS_CSV = "lesions.csv"
LESION_COLUMNS = ["study", "path", "slice_index", "x", "y", "z_mm", "radius_mm", "kind"]


@dataclass(frozen=True)
class Lesion:
    """A lesion's ground truth: the slice nearest its centre and its centre pixel there."""

    slice_index: int
    x: int  # column
    y: int  # row
    radius_mm: float
    kind: str  # solid-nodule, part-solid-nodule, mass, rim-enhancing-mass
    z_mm: float = 0.0  # centre along the slice normal, in the series' nominal z
    study: str = ""  # folder name of the study
    file: str = ""  # file name of the centre slice inside the study folder

    def radius_on_slice_mm(self, z_mm: float) -> float:
        """Radius of the lesion's cross-section on the plane at ``z_mm`` (0 when it misses)."""
        dz = abs(z_mm - self.z_mm)
        return float(np.sqrt(self.radius_mm**2 - dz**2)) if dz < self.radius_mm else 0.0


def write_lesions_csv(lesions: list[Lesion], path: Path) -> None:
    """Write ``lesions.csv`` (x = column, y = row; path relative to the phantom folder)."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(LESION_COLUMNS)
        for les in lesions:
            w.writerow(
                [
                    les.study,
                    f"{les.study}/{les.file}",
                    les.slice_index,
                    les.x,
                    les.y,
                    les.z_mm,
                    les.radius_mm,
                    les.kind,
                ]
            )


def read_lesions_csv(path: Path) -> list[Lesion]:
    """Inverse of :func:`write_lesions_csv`."""
    out = []
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            out.append(
                Lesion(
                    int(row["slice_index"]),
                    int(row["x"]),
                    int(row["y"]),
                    float(row["radius_mm"]),
                    row["kind"],
                    float(row["z_mm"]),
                    row["study"],
                    Path(row["path"]).name,
                )
            )
    return out
