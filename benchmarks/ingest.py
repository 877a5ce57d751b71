"""Ingest throughput: ``tamperscan serve`` against Orthanc, DCMTK and bare pynetdicom.

N uncompressed 512x512 CT instances are sent with DCMTK ``storescu`` over loopback, once over
1 association and once over 4 concurrent associations (4 ``storescu`` processes, N/4 files
each), to:

- ``tamperscan serve``: validates, writes durably (fdatasync, folder fsync), indexes in
  SQLite (WAL, synchronous=FULL) through the group committer, then acknowledges; once with
  the receiver inside serve, once with ``[scp] receivers`` = the number of cores (receiver
  processes sharing the port);
- Orthanc (if installed): its defaults, files synced and a SQLite index;
- DCMTK ``storescp`` writing to disk (no fsync, no index);
- a bare pynetdicom SCP that only writes each dataset to disk (the floor for a pynetdicom
  receiver: how much of the cost is the DICOM library itself).

Every receiver starts fresh for each measurement; rounds alternate between receivers so
machine noise hits all, and the median of the rounds is reported. Targets (issue #12): with 1
association tamperscan >= 0.6x bare pynetdicom; with 4 associations >= 1.0x Orthanc.

    python benchmarks/ingest.py [--count 200] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
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


def send(port: int, folders: list[Path]) -> float:
    """Send each folder over its own association, all at once; seconds until all are done."""
    started = time.perf_counter()
    senders = [
        subprocess.Popen(
            ["storescu", "-aec", "TAMPERSCAN", "+sd", "127.0.0.1", str(port), str(folder)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=DCMTK_ENV,
        )
        for folder in folders
    ]
    for sender in senders:
        _, err = sender.communicate()
        if sender.returncode:
            raise RuntimeError(f"storescu failed: {err.decode(errors='replace')[-500:]}")
    return time.perf_counter() - started


def split(files: list[Path], folder: Path, parts: int) -> list[Path]:
    """The same files in ``parts`` folders (hard links), one per association."""
    folders = [folder / str(n) for n in range(parts)]
    for sub in folders:
        sub.mkdir(parents=True)
    for index, path in enumerate(files):
        os.link(path, folders[index % parts] / path.name)
    return folders


def start_serve(work: Path, receivers: int = 1) -> tuple[subprocess.Popen, int]:
    port = free_port()
    config = work / "config.toml"
    config.write_text(
        f"[scp]\nport = {port}\nreceivers = {receivers}\n"
        f'[storage]\ndata_dir = "{work / "data"}"\nmin_free_mb = 0\n'
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


def start_orthanc(work: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    config = {
        "Name": "IngestBench",
        "StorageDirectory": str(work / "orthanc"),
        "IndexDirectory": str(work / "orthanc"),
        "HttpPort": free_port(),
        "DicomPort": port,
        "DicomAet": "TAMPERSCAN",
        "RemoteAccessAllowed": False,
        "Plugins": [],
    }
    (work / "orthanc.json").write_text(json.dumps(config))
    process = subprocess.Popen(
        ["Orthanc", str(work / "orthanc.json")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=DCMTK_ENV,  # Orthanc's DICOM side is DCMTK: the same Nagle switch
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


CONCURRENCY = (1, 4)


def measure(args: argparse.Namespace, root: Path) -> dict[str, dict[int, list[float]]]:
    files = root / "files"
    files.mkdir()
    paths = write_series(files, args.count)
    size_mb = sum(p.stat().st_size for p in paths) / 1e6
    print(f"{args.count} CT instances, 512x512 uncompressed, {size_mb:.0f} MB per round")
    folders = {n: split(paths, root / f"split-{n}", n) for n in CONCURRENCY}
    receivers: dict[str, Callable[[Path], tuple[subprocess.Popen, int]]] = {
        "tamperscan": start_serve,
        # [scp] receivers = one per core: processes sharing the port (SO_REUSEPORT)
        f"tamperscan x{os.cpu_count()}": partial(start_serve, receivers=os.cpu_count() or 1),
    }
    if shutil.which("Orthanc"):
        receivers["orthanc"] = start_orthanc
    else:
        print("Orthanc not installed: no Orthanc column")
    receivers.update({"storescp": start_storescp, "pynetdicom": start_bare})
    timings: dict[str, dict[int, list[float]]] = {
        name: {n: [] for n in CONCURRENCY} for name in receivers
    }
    for round_no in range(args.rounds):
        for name, start in receivers.items():
            for n in CONCURRENCY:
                work = root / f"{name}-{n}-{round_no}"
                work.mkdir()
                process, port = start(work)
                try:
                    timings[name][n].append(send(port, folders[n]))
                finally:
                    process.terminate()
                    process.wait(timeout=60)
                shutil.rmtree(work, ignore_errors=True)
    return timings


def report(count: int, timings: dict[str, dict[int, list[float]]]) -> None:
    rates = {
        name: {n: count / statistics.median(runs) for n, runs in by_n.items()}
        for name, by_n in timings.items()
    }
    print(f"\n| receiver | {' | '.join(f'{n} assoc. (inst/s)' for n in CONCURRENCY)} |")
    print(f"|---|{'---:|' * len(CONCURRENCY)}")
    for name, by_n in rates.items():
        cells = []
        for n in CONCURRENCY:
            spread = "/".join(f"{count / t:.0f}" for t in timings[name][n])
            cells.append(f"{by_n[n]:.0f} ({spread})")
        print(f"| {name} | {' | '.join(cells)} |")
    ours = rates["tamperscan"]
    pool = rates[f"tamperscan x{os.cpu_count()}"]
    print(f"\non {os.cpu_count()} cores, median of the rounds (each round in brackets)")
    print(
        f"1 assoc.: tamperscan/bare pynetdicom = {ours[1] / rates['pynetdicom'][1]:.2f}"
        " (target >= 0.6)"
    )
    if "orthanc" in rates:
        for n in CONCURRENCY:
            target = " (target >= 1.0)" if n == 4 else ""
            print(f"{n} assoc.: tamperscan/Orthanc = {ours[n] / rates['orthanc'][n]:.2f}{target}")
            print(
                f"{n} assoc.: tamperscan x{os.cpu_count()}/Orthanc = "
                f"{pool[n] / rates['orthanc'][n]:.2f}{target}"
            )
    for n in CONCURRENCY:
        print(f"{n} assoc.: tamperscan/storescp = {ours[n] / rates['storescp'][n]:.2f}")


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
        report(args.count, measure(args, Path(tmp)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
