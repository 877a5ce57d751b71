"""Shared tamper-lab fixtures: one small phantom set and one tampered copy per test session.

Imported explicitly by the lab tests (``from tests.conftest_lab import ...``) so that the lead's
``tests/conftest.py`` stays untouched. Phantoms are 128x128 so the whole lab suite stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from detector.lab.attacks import ATTACKS, TamperResult, tamper_dataset
from detector.lab.phantoms import write_phantoms

LAB_SIZE = 128
LAB_SLICES = 8


@dataclass
class LabSet:
    genuine: Path
    tampered: Path
    result: TamperResult


@pytest.fixture(scope="session")
def lab_set(tmp_path_factory: pytest.TempPathFactory) -> LabSet:
    root = tmp_path_factory.mktemp("lab")
    genuine = root / "genuine"
    write_phantoms("CT", 2, LAB_SLICES, genuine, seed=11, size=LAB_SIZE)
    write_phantoms("MR", 2, LAB_SLICES, genuine, seed=12, size=LAB_SIZE)
    tampered = root / "tampered"
    result = tamper_dataset(genuine, tampered, ATTACKS, count=1, seed=3)
    return LabSet(genuine, tampered, result)
