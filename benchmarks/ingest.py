"""Ingest throughput: ``tamperscan serve`` against DCMTK ``storescp``, same files, same run.

N uncompressed 512x512 CT instances are sent with DCMTK ``storescu`` over loopback to
(a) ``tamperscan serve`` (validates, writes durably with fsync, indexes in SQLite, then
acknowledges) and (b) ``storescp`` writing to disk (no fsync, no index). Rounds alternate
between the receivers so machine noise hits all; the median of each is reported, and the
ratio serve/storescp (target >= 0.8). A third receiver, (c) a bare pynetdicom SCP that only
writes each dataset to disk, shows how much of the gap is the DICOM library itself.

    python benchmarks/ingest.py [--count 200] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

REPO = Path(__file__).resolve().parent.parent


def write_series(folder: Path, count: int) -> list[Path]:
    rng = np.random.default_rng(0)
    study, series = generate_uid(), generate_uid()
    paths = []
    for index in range(count):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.PatientID, ds.PatientName, ds.Modality = "BENCH", "Bench^Mark", "CT"
        ds.InstanceNumber = index + 1
        ds.Rows = ds.Columns = 512
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelData = rng.integers(0, 2000, (512, 512), dtype=np.int16).tobytes()
        path = folder / f"{index:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, process: subprocess.Popen) -> None:
    for _ in range(600):
        if process.poll() is not None:
            raise RuntimeError("receiver exited early")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(port)


# Debian's DCMTK leaves Nagle's algorithm on unless TCP_NODELAY=1; with it off every
# message waits for a delayed ACK (~40 ms), which would make the baseline look slow.
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


def send(port: int, files_dir: Path) -> float:
    started = time.perf_counter()
    subprocess.run(
        ["storescu", "-aec", "TAMPERSCAN", "+sd", "127.0.0.1", str(port), str(files_dir)],
        check=True,
        capture_output=True,
        env=DCMTK_ENV,
    )
    return time.perf_counter() - started


def start_serve(work: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    config = work / "config.toml"
    config.write_text(
        f'[scp]\nport = {port}\n[storage]\ndata_dir = "{work / "data"}"\nmin_free_mb = 0\n'
        '[logging]\nlevel = "WARNING"\n'
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "tamperscan.cli", "serve", "--config", str(config)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_port(port, process)
    return process, port


def start_storescp(work: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    out = work / "storescp"
    out.mkdir(exist_ok=True)
    process = subprocess.Popen(
        ["storescp", "-aet", "TAMPERSCAN", "-od", str(out), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=DCMTK_ENV,
    )
    wait_port(port, process)
    return process, port


def bare_pynetdicom_scp(port: int, out: Path) -> None:
    """The floor for any pynetdicom receiver: write the bytes, answer success, nothing else."""
    from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt

    def store(event: evt.Event) -> int:
        (out / str(event.request.AffectedSOPInstanceUID)).write_bytes(event.encoded_dataset())
        return 0x0000

    ae = AE("TAMPERSCAN")
    ae.maximum_pdu_size = 262144
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, store)]
    )
    server.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        while True:
            time.sleep(3600)
    finally:
        server.shutdown()


def start_bare(work: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    out = work / "bare"
    out.mkdir(exist_ok=True)
    process = subprocess.Popen(
        [sys.executable, __file__, "--bare-scp", str(port), str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_port(port, process)
    return process, port


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--bare-scp":
        bare_pynetdicom_scp(int(sys.argv[2]), Path(sys.argv[3]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200, help="instances per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per receiver")
    args = parser.parse_args()
    if shutil.which("storescu") is None:
        print("DCMTK (storescu, storescp) is required: apt-get install dcmtk", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="ingest-bench-") as tmp:
        root = Path(tmp)
        files = root / "files"
        files.mkdir()
        write_series(files, args.count)
        size_mb = sum(p.stat().st_size for p in files.iterdir()) / 1e6
        print(f"{args.count} CT instances, 512x512 uncompressed, {size_mb:.0f} MB per round")
        receivers = {
            "tamperscan": start_serve,
            "storescp": start_storescp,
            "pynetdicom": start_bare,
        }
        timings: dict[str, list[float]] = {name: [] for name in receivers}
        for round_no in range(args.rounds):
            for name, start in receivers.items():
                work = root / f"{name}-{round_no}"
                work.mkdir()
                process, port = start(work)
                try:
                    timings[name].append(send(port, files))
                finally:
                    process.terminate()
                    process.wait(timeout=60)
                shutil.rmtree(work, ignore_errors=True)
        rates = {k: args.count / statistics.median(v) for k, v in timings.items()}
        for name, rate in rates.items():
            spread = ", ".join(f"{args.count / t:.0f}" for t in timings[name])
            print(f"{name:>10}: {rate:7.1f} instances/s (median of {spread})")
        ratio = rates["tamperscan"] / rates["storescp"]
        print(f"ratio tamperscan/storescp: {ratio:.2f} (target >= 0.8) on {os.cpu_count()} cores")
        floor = rates["pynetdicom"] / rates["storescp"]
        print(f"ratio bare pynetdicom/storescp: {floor:.2f} (the ceiling for a pynetdicom SCP)")
        print(f"ratio tamperscan/bare pynetdicom: {rates['tamperscan'] / rates['pynetdicom']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
