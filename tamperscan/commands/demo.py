"""``tamperscan demo``: the whole product on phantom studies, in a few minutes on a laptop CPU.

One command, in a new folder (default ``./tamperscan-demo``):

1. phantom studies to train on, and others to send (``detector.lab.phantoms``);
2. both detectors trained on the first set with small models, each within its time box
   (``detector.training``, calibrated on held-out patients as always);
3. the lab places one attack of each kind among the studies to send; the studies it did not
   touch stay genuine (the truth printed beside each verdict comes from the lab's records);
4. the service started on free ports with those models (``config.toml`` written beside, so
   ``tamperscan status --config DIR/config.toml`` works afterwards), the studies sent over
   DICOM C-STORE, the verdicts awaited and printed beside the truth;
5. an admin user ``demo`` with a fresh password, and the admin URL printed; the service keeps
   running until Ctrl-C (``--exit`` stops it at once, as CI does).

Small models trained for minutes detect little: the demo shows the product's path from DICOM
to verdict, SR and admin page, not detection power (see docs/detectors.md for the recipes).
"""

from __future__ import annotations

import argparse
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tamperscan.argtypes import positive

EXIT_FAILED, EXIT_USAGE = 1, 2
ATTACKS = ("injection", "removal", "copy-move", "adversarial-noise")

#: (detector, options) of the two small models; ``tiny`` is for CI.
SIZES = {
    "small": {
        "btd": {"patch_size": 64, "model_dim": 16, "dim_mults": (1, 2, 4), "batch_size": 8},
        "inpaint": {"patch_size": 64, "model_dim": 16, "batch_size": 16},
        "calibration_patches": 256,
    },
    "tiny": {
        "btd": {"patch_size": 32, "model_dim": 8, "dim_mults": (1, 2), "batch_size": 8},
        "inpaint": {"patch_size": 32, "model_dim": 8, "batch_size": 8},
        "calibration_patches": 64,
    },
}


@dataclass
class SentStudy:
    uid: str
    folder: Path
    truth: str  # "genuine" or the attacks it carries


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "demo",
        help="see the whole product on phantom studies in a few minutes",
        description="Make phantom studies, train small models (time-boxed), start the "
        "service, send genuine and tampered studies over DICOM, wait for the verdicts and "
        "print the admin URL with a login.",
    )
    p.add_argument(
        "--dir",
        type=Path,
        default=Path("tamperscan-demo"),
        help="new or empty folder for everything (./tamperscan-demo)",
    )
    p.add_argument("--modality", type=str.upper, choices=("CT", "MR"), default="CT")
    p.add_argument("--train-studies", type=positive, default=4, help="patients to train on")
    p.add_argument("--slices", type=positive, default=16, help="slices per study (16)")
    p.add_argument("--image-size", type=positive, default=256, help="rows and columns (256)")
    p.add_argument("--genuine", type=positive, default=2, help="genuine studies to send (2)")
    p.add_argument(
        "--attacks", default=",".join(ATTACKS), help="attacks, one tampered study each (all four)"
    )
    p.add_argument(
        "--minutes", type=float, default=4.0, help="training time for both models together (4)"
    )
    p.add_argument("--model-size", choices=tuple(SIZES), default="small")
    p.add_argument(
        "--timeout", type=float, default=900.0, help="seconds to wait for the verdicts (900)"
    )
    p.add_argument(
        "--exit",
        action="store_true",
        help="stop the service once the verdicts are in (default: keep serving)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from detector.lab.attacks import TamperError
    from detector.training import TrainingError

    attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
    bad = [a for a in attacks if a not in ATTACKS]
    if bad or args.minutes <= 0:
        print(f"tamperscan: demo: unknown attack {bad} or --minutes <= 0", file=sys.stderr)
        return EXIT_USAGE
    root: Path = args.dir.resolve()
    if root.exists() and any(root.iterdir()):
        print(f"tamperscan: demo: {root} is not empty; give a new --dir", file=sys.stderr)
        return EXIT_USAGE
    started = time.monotonic()
    try:
        models = _train_models(root, args)
        studies = _studies_to_send(root, args, attacks)
    except (TamperError, TrainingError) as exc:
        print(f"tamperscan: demo: {exc}", file=sys.stderr)
        return EXIT_FAILED
    config = _write_config(root, models)
    _say(f"models trained and studies made in {time.monotonic() - started:.0f} s")
    return _serve_and_send(config, studies, args)


def _say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def _train_models(root: Path, args: argparse.Namespace) -> list[Path]:
    from detector.lab.phantoms import write_phantoms
    from detector.training import TrainOptions, train

    data = root / "train"
    _say(f"writing {args.train_studies} genuine {args.modality} training studies to {data}")
    write_phantoms(
        args.modality, args.train_studies, args.slices, data, seed=args.seed, size=args.image_size
    )
    sizes = SIZES[args.model_size]
    paths = []
    for detector in ("inpaint", "btd"):
        path = root / "models" / f"{args.modality.lower()}-{detector}.ckpt"
        path.parent.mkdir(parents=True, exist_ok=True)
        _say(f"training {detector} for at most {args.minutes / 2:.1f} min")
        result = train(
            TrainOptions(
                detector=detector,
                modality=args.modality,
                data=str(data),
                model_path=str(path),
                epochs=1000,
                device="cpu",
                seed=args.seed,
                calibration_patches=sizes["calibration_patches"],
                max_seconds=args.minutes * 30,
                holdout_fraction=0.25,
                **sizes[detector],
            )
        )
        _say(
            f"{detector}: {result.steps} steps, calibrated on {result.calibration.size} patches"
            if result.calibration
            else f"{detector}: {result.steps} steps"
        )
        paths.append(path)
    return paths


def _studies_to_send(root: Path, args: argparse.Namespace, attacks: list[str]) -> list[SentStudy]:
    """Phantoms of other patients; one attack of each kind placed among them by the lab."""
    import pydicom

    from detector.lab.attacks import tamper_dataset
    from detector.lab.phantoms import write_phantoms

    count = len(attacks) + args.genuine
    clean, sent = root / "send-genuine", root / "send"
    _say(f"writing {count} {args.modality} studies to send; placing {len(attacks)} attacks")
    folders = write_phantoms(
        args.modality, count, args.slices, clean, seed=args.seed + 1000, size=args.image_size
    )
    truth: dict[str, set[str]] = {}
    if attacks:
        # The lab copies the folder and tampers in place: each study is sent once, from there.
        result = tamper_dataset(clean, sent, attacks, 1, seed=args.seed + 7)
        for record in result.records:
            for region in record.regions:
                truth.setdefault(Path(region.path).parts[0], set()).add(record.attack)
    else:
        sent = clean
    out = []
    for folder in folders:
        target = sent / folder.name
        first = next(iter(sorted(target.rglob("*.dcm"))))
        uid = str(pydicom.dcmread(first, stop_before_pixels=True).StudyInstanceUID)
        out.append(
            SentStudy(uid, target, ", ".join(sorted(truth.get(folder.name, ()))) or "genuine")
        )
    return out


def _write_config(root: Path, models: list[Path]) -> Path:
    model_list = ", ".join(f'"{p}"' for p in models)
    config = root / "config.toml"
    config.write_text(
        "# Written by 'tamperscan demo': free ports, this machine only, the demo's models.\n"
        "[scp]\nport = 0\n\n"
        f'[storage]\ndata_dir = "{root / "data"}"\nmin_free_mb = 0\n\n'
        "[assembly]\nstable_age_s = 2.0\nreleased_age_s = 1.0\npoll_interval_s = 0.2\n\n"
        "[worker]\npoll_interval_s = 0.2\n\n"
        f'[detector]\nmodels = [{model_list}]\ndevice = "cpu"\nwindow_stride_px = 0\n\n'
        "[retrain]\nenabled = false\n\n"
        '[admin]\nhost = "127.0.0.1"\nport = 0\n'
    )
    return config


def _serve_and_send(config: Path, studies: list[SentStudy], args: argparse.Namespace) -> int:
    from tamperscan.config import load_config
    from tamperscan.logs import setup_logging
    from tamperscan.service import Service

    settings = load_config(config, environ={})
    setup_logging("WARNING")
    service = Service(settings)
    service.start()
    try:
        password = _admin_user(service)
        _say(f"service up: DICOM on 127.0.0.1:{service.scp.port} (AE TAMPERSCAN)")
        for study in studies:
            _send(service.scp.port, study.folder)
        _say(f"sent {len(studies)} studies; waiting for the verdicts")
        verdicts = _wait_for_verdicts(service, studies, args.timeout)
        _print_table(studies, verdicts)
        missing = [s.uid for s in studies if s.uid not in verdicts]
        url = f"http://127.0.0.1:{service.http.port}/"
        _say(f"admin report: {url}  login: demo / {password}")
        _say(f"status: tamperscan status --config {config}")
        if missing:
            print(f"tamperscan: demo: no verdict for {missing}", file=sys.stderr)
            return EXIT_FAILED
        if not args.exit:
            _say("serving until Ctrl-C")
            while True:
                time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        service.stop()
    return 0


def _admin_user(service: Any) -> str:
    from admin.auth import hash_password
    from storage.models import utcnow
    from storage.users import add_user

    password = secrets.token_urlsafe(12)
    with service.db.session() as session:
        add_user(session, "demo", hash_password(password), "admin", utcnow(), "demo")
    return password


def _send(port: int, folder: Path) -> None:
    import pydicom
    from pynetdicom import AE

    datasets = [pydicom.dcmread(p) for p in sorted(folder.rglob("*.dcm"))]
    ae = AE(ae_title="DEMO")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(datasets[0].SOPClassUID, datasets[0].file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="TAMPERSCAN")
    if not assoc.is_established:
        raise RuntimeError(f"the demo service refused the association on port {port}")
    try:
        failed = [ds.SOPInstanceUID for ds in datasets if assoc.send_c_store(ds).Status != 0]
    finally:
        assoc.release()
    if failed:
        raise RuntimeError(f"{len(failed)} instances of {folder} were not stored")


def _wait_for_verdicts(
    service: Any, studies: list[SentStudy], timeout: float
) -> dict[str, tuple[str, str]]:
    """study UID -> (outcome, reason) of the current verdict, for as many as arrive in time."""
    from sqlalchemy import select

    from storage.models import Study, Verdict

    uids = [s.uid for s in studies]
    found: dict[str, tuple[str, str]] = {}
    deadline = time.monotonic() + timeout
    while len(found) < len(uids) and time.monotonic() < deadline:
        with service.db.reading() as session:
            rows = session.execute(
                select(Study.study_uid, Verdict.outcome, Verdict.reason)
                .join(Verdict, Verdict.study_id == Study.id)
                .where(Study.study_uid.in_(uids), Verdict.is_current.is_(True))
            ).all()
        found = {uid: (outcome, reason or "") for uid, outcome, reason in rows}
        time.sleep(0.5)
    return found


def _print_table(studies: list[SentStudy], verdicts: dict[str, tuple[str, str]]) -> None:
    width = max(len(s.folder.name) for s in studies)
    print(f"\n{'STUDY':<{width}}  {'TRUTH':<20} {'VERDICT':<11} REASON")
    for study in studies:
        outcome, reason = verdicts.get(study.uid, ("(none)", "no verdict in time"))
        print(f"{study.folder.name:<{width}}  {study.truth:<20} {outcome:<11} {reason}")
    print()
