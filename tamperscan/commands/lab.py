"""The tamper lab commands: ``phantoms``, ``tamper`` and ``evaluate``.

Nothing public can be downloaded here, so every detector is measured on synthetic studies
tampered the way attackers do it, with exact ground truth; ``evaluate`` runs unchanged on the
BTD paper's test sets and on CHAIMELEON-style ``test.csv`` folders for users who have them.
User errors print one line and exit with status 2; no tracebacks.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from detector.lab.manifest import ATTACKS, FAMILIES, ManifestError
from tamperscan.argtypes import positive

EXIT_USAGE = 2


def _fail(message: str) -> int:
    print(f"tamperscan: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _modality(value: str) -> str:
    v = value.upper()
    if v == "MRI":
        v = "MR"
    if v not in ("CT", "MR"):
        raise argparse.ArgumentTypeError(f"modality must be CT or MR, got {value!r}")
    return v


# ----------------------------------------------------------------------------- phantoms


def run_phantoms(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from detector.lab.phantoms import write_phantoms

    if args.size < 64 or args.size > 2048:
        return _fail(f"--size must be between 64 and 2048, got {args.size}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        return _fail(f"{out}: exists and is not a folder")
    with tqdm(
        total=args.studies, desc=f"{args.modality} phantoms", unit="study", disable=args.quiet
    ) as bar:
        folders = write_phantoms(
            args.modality,
            args.studies,
            args.slices,
            out,
            args.seed,
            size=args.size,
            progress=lambda i: bar.update(1),
        )
    print(
        f"wrote {len(folders)} {args.modality} studies x {args.slices} slices to {out} "
        f"(ground-truth lesions in {out / 'lesions.csv'})"
    )
    return 0


# ----------------------------------------------------------------------------- tamper


def run_tamper(args: argparse.Namespace) -> int:
    from detector.lab.attacks import TamperError, save_montage, tamper_dataset

    attacks: list[str] = []
    for item in args.attack:
        for a in item.split(","):
            a = a.strip()
            if a == "all":
                attacks += [x for x in ATTACKS if x not in attacks]
            elif a not in ATTACKS:
                return _fail(f"unknown attack {a!r}; choose from {', '.join(ATTACKS)} or all")
            elif a not in attacks:
                attacks.append(a)
    families = list(FAMILIES) if args.family == "all" else [args.family]
    in_dir, out_dir = Path(args.in_dir), Path(args.out)
    if not in_dir.is_dir():
        return _fail(f"--in {in_dir}: no such folder")
    try:
        result = tamper_dataset(
            in_dir,
            out_dir,
            attacks,
            0,
            args.seed,
            epsilon_hu=args.epsilon_hu,
            epsilon_mr=args.epsilon_mr,
            families=families,
            min_rows=args.count,
            target_models=args.target_model or [],
        )
    except TamperError as exc:
        return _fail(str(exc))
    if args.montages:
        mdir = Path(args.montages)
        mdir.mkdir(parents=True, exist_ok=True)
        for (attack, modality, family), (before, after, rec) in sorted(result.examples.items()):
            name = attack + ("" if family == "A" else f"-{family.lower()}")
            name += ".png" if modality == "CT" else "-mr.png"
            save_montage(before, after, rec, mdir / name)
    for cell, n in sorted(result.short_cells.items()):
        print(
            f"note: {cell}: {n} of {args.count} tampered rows (no untouched room left; give "
            "more studies or slices for a full cell)",
            file=sys.stderr,
        )
    n_fake = sum(r.label for r in result.rows)
    print(
        f"tampered {len(result.records)} instances ({n_fake} slice locations) + "
        f"{len(result.rows) - n_fake} genuine controls -> {out_dir}/manifest_btd.csv, "
        f"{out_dir}/test.csv, {out_dir}/regions.json"
    )
    return 0


# ----------------------------------------------------------------------------- evaluate


def run_evaluate(args: argparse.Namespace) -> int:
    from detector import registry
    from detector.evaluation import EvaluationError, evaluate, format_table
    from detector.slices import SliceReadError

    names: list[str] = []
    optional: list[str] = []  # from 'all': skipped (with a note) when they cannot load
    for item in args.detector:
        for n in item.split(","):
            n = n.strip()
            if n == "all":
                optional += [x for x in registry.names() if x not in names]
                names += [x for x in registry.names() if x not in names]
            elif n not in registry.names():
                return _fail(
                    f"unknown detector {n!r}; available: {', '.join(registry.names())} or all"
                )
            elif n not in names:
                names.append(n)
    models = [Path(m) for m in args.model or []]
    for model in models:
        if not model.is_file():
            return _fail(f"--model {model}: no such file")
    try:
        summary = evaluate(
            args.data,
            args.manifest or [],
            names,
            args.out,
            models=models,
            seed=args.seed,
            progress=not args.quiet,
            optional_names=optional,
            holdout=args.holdout_family,
        )
    except (
        EvaluationError,
        ManifestError,
        SliceReadError,
        registry.UnknownDetectorError,
        FileNotFoundError,
    ) as exc:
        return _fail(str(exc))
    for name, why in summary.get("skipped_detectors", {}).items():
        print(f"note: skipped detector {name!r} ({why})", file=sys.stderr)
    if not summary["detectors"]:
        return _fail("no detector could be loaded")
    print(format_table(summary))
    print(
        f"wrote {Path(args.out) / 'summary.json'}, scores.csv and "
        f"{len(summary['plots'])} ROC plot(s)"
    )
    return 0


# ----------------------------------------------------------------------------- parser


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``phantoms``, ``tamper`` and ``evaluate`` to the ``tamperscan`` command line."""
    fmt = argparse.ArgumentDefaultsHelpFormatter

    p = subparsers.add_parser(
        "phantoms",
        formatter_class=fmt,
        help="write synthetic chest CT / breast MRI DICOM studies with known lesions",
        description="Write realistic synthetic DICOM series (one folder per patient/study) "
        "and lesions.csv, the ground truth of every genuine nodule/mass. Deterministic by seed.",
    )
    p.add_argument(
        "--modality",
        type=_modality,
        required=True,
        help="CT (chest CT, CT Image Storage, HU) or MR (breast MRI, MR Image Storage)",
    )
    p.add_argument("--studies", type=positive, default=1, help="number of patients/studies")
    p.add_argument("--slices", type=positive, default=32, help="axial slices per series")
    p.add_argument("--size", type=int, default=512, help="rows and columns of every slice")
    p.add_argument("--out", required=True, help="output folder (created; studies are added)")
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="random seed; study i uses seed*1000+i, so the same seed gives the "
        "same pixels and UIDs",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=run_phantoms)

    t = subparsers.add_parser(
        "tamper",
        formatter_class=fmt,
        help="tamper studies (pixel-only) and write BTD/CHAIMELEON ground-truth manifests",
        description="Copy --in to --out and tamper pixels only (every header element, SOP "
        "Instance UID included, is kept, as CT-GAN does). Writes manifest_btd.csv "
        "(path,x,y,type,attack,label,modality,family), test.csv (CHAIMELEON filename,X,Y + "
        "label) and regions.json, with as many genuine control locations as tampered ones, "
        "some of them always on real lesions.",
    )
    t.add_argument(
        "--in",
        dest="in_dir",
        required=True,
        help="folder of studies (e.g. from 'tamperscan phantoms'); removal needs its lesions.csv",
    )
    t.add_argument("--out", required=True, help="new, empty output folder")
    t.add_argument(
        "--attack",
        action="append",
        required=True,
        help=f"one of {', '.join(ATTACKS)}, a comma list, or 'all'; repeatable",
    )
    t.add_argument(
        "--count",
        type=positive,
        default=30,
        help="tampered slice rows wanted per attack, modality and family (instances are "
        "added until every cell has this many or no room is left, which is reported; an "
        "instance may span several slices and each tampered slice is one manifest row). "
        "A 10-study, 32-slice lab per modality fills every cell of one family; "
        "--family all needs more slices or studies",
    )
    t.add_argument(
        "--family",
        choices=[*FAMILIES, "all"],
        default="A",
        help="attack family: A (the lab's first attacks), B (written independently: other "
        "shapes, the scan's own noise, diffusion fills, rotated/scaled copies, white-box "
        "PGD), or all",
    )
    t.add_argument(
        "--target-model",
        action="append",
        default=None,
        help="inpainting or BTD checkpoint that family B's white-box adversarial-noise "
        "attacks (repeat it: at least one per modality, several are attacked together; "
        "required when family B includes adversarial-noise)",
    )
    t.add_argument("--seed", type=int, default=0, help="random seed for locations and textures")
    t.add_argument(
        "--epsilon-hu",
        type=float,
        default=10.0,
        help="adversarial-noise L-infinity bound for CT, in HU",
    )
    t.add_argument(
        "--epsilon-mr",
        type=float,
        default=0.015,
        help="adversarial-noise bound for MR, as a fraction of the slice's "
        "0.5-99.5 percentile intensity range",
    )
    t.add_argument(
        "--montages",
        default=None,
        help="also write one before/after/difference PNG per attack and family to this "
        "folder (<attack>.png for CT, <attack>-mr.png for MR; family B adds -b)",
    )
    t.set_defaults(handler=run_tamper)

    e = subparsers.add_parser(
        "evaluate",
        formatter_class=fmt,
        help="score manifest locations with detectors; ROC AUC (95%% CI), TPR at 1%%/5%% FPR",
        description="Score every manifest location and report, per detector, modality and "
        "attack: ROC AUC with a stratified bootstrap 95% interval and TPR at 1% and 5% FPR "
        "(negatives: all genuine rows of the modality), plus the 'fused' row: the serving "
        "rule (Bonferroni over the calibrated p-values of the default [detector] checks and the "
        "learned models among those scored). Writes summary.json, "
        "scores.csv and "
        "roc_<detector>_<modality>.png. Reads lab manifests, CHAIMELEON test.csv and the BTD "
        "test-set layout (CT .npy in HU, MRI .png; CSV path,x,y,type).",
    )
    e.add_argument(
        "--data",
        required=True,
        help="folder the manifest paths are relative to (the tamper output, or the "
        "root of the BTD test sets)",
    )
    e.add_argument(
        "--manifest",
        action="append",
        default=None,
        help="CSV in BTD (path,x,y,type) or CHAIMELEON (filename,X,Y,label) format; "
        "repeatable. Default: manifest_btd.csv / test.csv in --data, or every BTD CSV "
        "(CT/<attack>/CT_<attack>.csv, MRI/MRI_<attack>.csv)",
    )
    e.add_argument(
        "--detector",
        action="append",
        required=True,
        help="registered detector name, comma list, or 'all'; repeatable",
    )
    e.add_argument(
        "--model",
        action="append",
        default=None,
        help="checkpoint of a learned detector; repeatable: each file records its "
        "detector and modality, so give one per detector and modality (released "
        "BTD weights fit either modality)",
    )
    e.add_argument("--out", required=True, help="folder for summary.json, scores.csv, ROC PNGs")
    e.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    e.add_argument(
        "--holdout-family",
        default=None,
        metavar="FAMILY",
        help="report only tampered rows of this attack family (e.g. B); the summary names "
        "the other families as the ones the detectors were tuned on",
    )
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.set_defaults(handler=run_evaluate)
