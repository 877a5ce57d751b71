"""Shared helpers for the DICOM tests: real files, real sockets, real processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_file_meta_info
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
REPO = Path(__file__).resolve().parent.parent


def dataset_bytes(data: bytes | Path) -> bytes:
    """The encoded dataset after the preamble and file meta, as it travels on the wire."""
    raw = data.read_bytes() if isinstance(data, Path) else data
    stream = BytesIO(raw)
    stream.seek(128)
    assert stream.read(4) == b"DICM"
    stream.seek(0)
    pydicom.filereader.read_preamble(stream, False)
    pydicom.filereader._read_file_meta_info(stream)
    return raw[stream.tell() :]


def transfer_syntax_of(path: Path) -> str:
    return str(read_file_meta_info(path).TransferSyntaxUID)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    port: int, timeout: float = 30.0, process: subprocess.Popen | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited early with {process.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listening on port {port}")


def ct_dataset(
    study_uid: str,
    series_uid: str,
    index: int = 1,
    size: int = 64,
    sop_uid: str | None = None,
    seed: int = 0,
) -> Dataset:
    """A small, valid, uncompressed CT slice (random noise in HU)."""
    rng = np.random.default_rng(seed + index)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid or generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientID = "TEST-0001"
    ds.PatientName = "Test^Phantom"
    ds.Modality = "CT"
    ds.SeriesNumber = 1
    ds.InstanceNumber = index
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleSlope = 1
    ds.RescaleIntercept = 0
    ds.PixelData = rng.integers(-1000, 1000, (size, size), dtype=np.int16).tobytes()
    return ds


def make_scu(ae_title: str = "TESTSCU") -> AE:
    ae = AE(ae_title=ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    return ae


def serve_process(config: Path, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``tamperscan serve`` as a real process."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("TAMPERSCAN_CONFIG", None)
    return subprocess.Popen(
        [sys.executable, "-m", "tamperscan.cli", "serve", "--config", str(config)],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        env=full_env,
        cwd=REPO,
    )


def write_config(path: Path, port: int, data_dir: Path, **sections: dict[str, object]) -> Path:
    """A config.toml for a test service; ``sections`` override keys per section."""
    base: dict[str, dict[str, object]] = {
        "scp": {"port": port, "allowed_hosts": []},
        "storage": {"data_dir": str(data_dir), "min_free_mb": 0},
        "assembly": {"stable_age_s": 2.0, "released_age_s": 1.0, "poll_interval_s": 0.2},
        "worker": {"poll_interval_s": 0.2},
        "admin": {"port": 0},  # the HTTP server (STOW-RS) on a free port, never a fixed one
    }
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    lines = []
    for name, values in base.items():
        lines.append(f"[{name.replace('__', '.')}]")
        for key, value in values.items():
            lines.append(f"{key} = {_toml(value)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
