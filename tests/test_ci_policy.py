"""On CI a skipped test fails the run (``tests/conftest.py``); elsewhere it is only a skip."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.dicom_helpers import REPO

pytestmark = pytest.mark.slow  # each run imports the service (torch): about 8 s


def _run(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    test = tmp_path / "test_needs_a_peer.py"
    test.write_text(
        "import pytest\n\n\n"
        "@pytest.mark.skipif(True, reason='peer not installed')\n"
        "def test_with_peer():\n    pass\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "tests.conftest",
            "-p",
            "no:cacheprovider",
            str(test),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )


def test_a_skip_fails_the_run_on_ci(tmp_path: Path) -> None:
    result = _run(tmp_path, "true")
    assert result.returncode != 0
    assert "skipped on CI" in result.stdout and "peer not installed" in result.stdout


def test_a_skip_is_a_skip_elsewhere(tmp_path: Path) -> None:
    result = _run(tmp_path, "false")
    assert result.returncode == 0 and "1 skipped" in result.stdout, result.stdout
