"""Training both detectors from folders of DICOM files, then calibrating them.

Data: ``DATA/<patient>/.../*.dcm`` (any depth; non-DICOM files and other modalities are
skipped). Patches are sampled per epoch:

- with a regions CSV (``filename, X, Y``; filenames relative to DATA): centred near each point,
  jittered by up to a quarter patch, so the model learns the areas of interest (as the BTD CT
  trainer did with its nodule locations);
- otherwise anywhere inside the body (:func:`detector.preprocess.body_mask`).

About 10 % of the patients (at least one when there are two or more) are held out: they never
reach the optimiser and their genuine patches calibrate the finished model. The loop runs under
``accelerate`` (one or many GPUs, bf16 on CUDA, plain CPU otherwise), keeps an EMA copy
(``ema_pytorch``, decay 0.995 like the paper), shows tqdm progress, and writes a resumable
checkpoint after every epoch (atomically); ``--resume`` continues to ``--epochs``.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from detector.calibration import Calibration
from detector.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from detector.preprocess import (
    Preprocessing,
    body_mask,
    extract_patch,
    normalise_modality,
    to_unit,
)

log = logging.getLogger(__name__)

DETECTORS = ("btd", "inpaint")
DEFAULT_LR = {"btd": 1e-4, "inpaint": 2e-4}


class TrainingError(ValueError):
    """A user error in the training inputs; the message says what was expected and found."""


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class SliceRef:
    path: str
    patient: str
    series: str
    intensity_range: tuple[float, float] | None = None


def find_dicom_slices(data_dir: str | Path, modality: str | None = None) -> list[SliceRef]:
    """All single-frame DICOM images of ``modality`` under ``data_dir`` (headers only).

    The patient is the first folder level below ``data_dir``. MR series get their per-volume
    intensity range here, so training normalises exactly as scoring will.
    """
    import pydicom

    root = Path(data_dir)
    if not root.is_dir():
        raise TrainingError(f"data folder not found: {root}")
    wanted = normalise_modality(modality) if modality else None
    found: list[SliceRef] = []
    other: dict[str, int] = {}
    # os.walk follows symlinked patient folders (a training set is often a folder of links).
    files = (Path(d) / f for d, _, names in os.walk(root, followlinks=True) for f in names)
    for path in sorted(p for p in files if p.is_file()):
        if path.suffix.lower() in (".csv", ".json", ".txt", ".md", ".npy", ".png", ".ckpt"):
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # not DICOM: training folders hold notes and CSVs too
            continue
        if "Rows" not in ds or "Columns" not in ds:
            continue
        file_modality = str(ds.get("Modality", "")).upper()
        file_modality = "MR" if file_modality == "MR" else file_modality
        if wanted is not None and file_modality != wanted:
            other[file_modality or "unknown"] = other.get(file_modality or "unknown", 0) + 1
            continue
        rel = path.relative_to(root)
        patient = rel.parts[0] if len(rel.parts) > 1 else "."
        found.append(SliceRef(str(path), patient, str(ds.get("SeriesInstanceUID", patient))))
    if not found:
        detail = f" (found {other} of other modalities)" if other else ""
        raise TrainingError(
            f"{root}: no {wanted or ''} DICOM image files found{detail}; expected "
            f"patient sub-folders of .dcm slices"
        )
    if wanted == "MR":
        from detector.slices import volume_intensity_range

        by_series: dict[str, list[str]] = {}
        for ref in found:
            by_series.setdefault(ref.series, []).append(ref.path)
        ranges = {s: volume_intensity_range(paths) for s, paths in by_series.items()}
        found = [SliceRef(r.path, r.patient, r.series, ranges[r.series]) for r in found]
    return found


def infer_modality(data_dir: str | Path) -> str:
    """The majority modality of the DICOM files under ``data_dir`` (CHAIMELEON CLI has none)."""
    refs = find_dicom_slices(data_dir)
    import pydicom

    counts: dict[str, int] = {}
    for ref in refs:
        m = str(pydicom.dcmread(ref.path, stop_before_pixels=True).get("Modality", "")).upper()
        counts[m] = counts.get(m, 0) + 1
    best = max(counts, key=lambda k: counts[k])
    try:
        return normalise_modality(best)
    except ValueError as exc:
        raise TrainingError(f"{data_dir}: DICOM modality {best!r} is neither CT nor MR") from exc


def read_regions_csv(path: str | Path, data_dir: str | Path) -> list[tuple[str, int, int]]:
    """Rows ``(absolute file path, x, y)`` of a ``filename, X, Y`` CSV (header required)."""
    path, root = Path(path), Path(data_dir)
    if not path.is_file():
        raise TrainingError(f"regions CSV not found: {path}")
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        fields = {(f or "").strip().lower(): f for f in reader.fieldnames or []}
        missing = [c for c in ("filename", "x", "y") if c not in fields]
        if missing:
            raise TrainingError(
                f"{path}: expected columns filename, X, Y; found {reader.fieldnames}"
            )
        rows = []
        for i, row in enumerate(reader, start=2):
            name = (row[fields["filename"]] or "").strip()
            try:
                x, y = int(float(row[fields["x"]])), int(float(row[fields["y"]]))
            except (TypeError, ValueError) as exc:
                raise TrainingError(f"{path}:{i}: X and Y must be numbers, got {row}") from exc
            file = Path(name) if Path(name).is_absolute() else root / name
            if not file.is_file():
                raise TrainingError(f"{path}:{i}: file {name!r} not found under {root}")
            rows.append((str(file), x, y))
    if not rows:
        raise TrainingError(f"{path}: no rows")
    return rows


class _UnitCache:
    """A small per-process LRU of normalised slices and their body pixels."""

    def __init__(self, prep: Preprocessing, size: int = 32) -> None:
        self.prep = prep
        self.size = size
        self.items: OrderedDict[str, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def get(self, ref: SliceRef) -> tuple[np.ndarray, np.ndarray]:
        if ref.path in self.items:
            self.items.move_to_end(ref.path)
            return self.items[ref.path]
        from detector.slices import read_slice

        unit = to_unit(read_slice(ref.path, intensity_range=ref.intensity_range), self.prep)
        rows, cols = np.nonzero(body_mask(unit, self.prep.modality))
        points = np.stack([cols, rows], axis=1) if rows.size else np.empty((0, 2), np.int64)
        self.items[ref.path] = (unit, points)
        if len(self.items) > self.size:
            self.items.popitem(last=False)
        return unit, points


class PatchDataset(Dataset):
    """Random genuine patches: near region points if given, else inside the body."""

    def __init__(
        self,
        slices: Sequence[SliceRef],
        prep: Preprocessing,
        regions: Sequence[tuple[str, int, int]] = (),
        patches_per_item: int = 4,
        seed: int = 0,
        jitter: bool = True,
    ) -> None:
        self.slices = {s.path: s for s in slices}
        self.prep = prep
        self.regions = [r for r in regions if r[0] in self.slices]
        self.items: list[tuple[SliceRef, int, int] | SliceRef] = (
            [(self.slices[p], x, y) for p, x, y in self.regions] if regions else list(slices)
        )
        self.repeat = max(1, patches_per_item)
        self.seed = seed
        self.jitter = jitter
        self.epoch = 0
        self._cache: _UnitCache | None = None

    def __len__(self) -> int:
        return len(self.items) * self.repeat

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int) -> torch.Tensor:
        if self._cache is None:  # created lazily so each DataLoader worker has its own
            self._cache = _UnitCache(self.prep)
        rng = np.random.default_rng((self.seed, self.epoch, index))
        item = self.items[index % len(self.items)]
        size = self.prep.patch_size
        if isinstance(item, tuple):
            ref, x, y = item
            unit, _ = self._cache.get(ref)
            if self.jitter:
                x += int(rng.integers(-(size // 4), size // 4 + 1))
                y += int(rng.integers(-(size // 4), size // 4 + 1))
        else:
            unit, points = self._cache.get(item)
            if len(points):
                x, y = (int(v) for v in points[rng.integers(len(points))])
            else:
                y, x = int(rng.integers(unit.shape[0])), int(rng.integers(unit.shape[1]))
        return torch.from_numpy(extract_patch(unit, x, y, size))[None]


def split_holdout(
    slices: Sequence[SliceRef], fraction: float, seed: int
) -> tuple[list[SliceRef], list[SliceRef]]:
    """(train, held-out) by patient; by slice when there is one patient only."""
    rng = np.random.default_rng(seed)
    patients = sorted({s.patient for s in slices})
    if len(patients) >= 2:
        n = min(len(patients) - 1, max(1, math.ceil(fraction * len(patients))))
        held = set(rng.choice(patients, size=n, replace=False).tolist())
        train = [s for s in slices if s.patient not in held]
        return train, [s for s in slices if s.patient in held]
    if len(slices) >= 2:
        n = min(len(slices) - 1, max(1, math.ceil(fraction * len(slices))))
        idx = set(rng.choice(len(slices), size=n, replace=False).tolist())
        return (
            [s for i, s in enumerate(slices) if i not in idx],
            [s for i, s in enumerate(slices) if i in idx],
        )
    log.warning("one slice only: calibrating on the training slice itself (biased low)")
    return list(slices), list(slices)


# --------------------------------------------------------------------------- models


@dataclass
class TrainOptions:
    """Everything ``tamperscan train`` accepts; saved in the checkpoint's ``training``."""

    detector: str
    modality: str
    data: str
    model_path: str
    epochs: int = 10
    batch_size: int = 64
    num_workers: int = 0
    regions: str | None = None
    resume: bool = False
    lr: float | None = None
    patch_size: int | None = None
    model_dim: int | None = None  # BTD Unet dim / inpainting width
    dim_mults: tuple[int, ...] | None = None  # BTD only
    hole_size: int | None = None  # inpainting only
    patches_per_slice: int = 4
    holdout_fraction: float = 0.1
    calibration_patches: int = 512
    ema_decay: float = 0.995
    max_steps: int | None = None
    max_seconds: float | None = None  # wall-clock budget of the optimisation loop
    init_from: str | None = None  # fine-tune: start from this checkpoint's weights (same size)
    device: str = "auto"
    seed: int = 0
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.detector not in DETECTORS:
            raise TrainingError(f"--detector must be one of {DETECTORS}, got {self.detector!r}")
        self.modality = normalise_modality(self.modality)
        if self.epochs < 1 or self.batch_size < 1 or self.num_workers < 0:
            raise TrainingError("--epochs and --batch-size must be >= 1, --num-workers >= 0")


def build_model(opts: TrainOptions) -> tuple[nn.Module, Preprocessing, dict, dict]:
    """A fresh network for ``opts`` with its preprocessing, config and scoring dicts."""
    if opts.detector == "btd":
        from detector.btd import DEFAULT_PATCH, BTDModelConfig, BTDScoring, build_diffusion

        cfg = BTDModelConfig(
            dim=opts.model_dim or 32,
            dim_mults=tuple(opts.dim_mults or (1, 2, 4, 8)),
            image_size=opts.patch_size or DEFAULT_PATCH[opts.modality],
        )
        prep = Preprocessing(opts.modality, cfg.image_size)
        return build_diffusion(cfg), prep, cfg.to_dict(), BTDScoring().to_dict()
    from detector.inpainting import DEFAULT_PATCH as IP_PATCH
    from detector.inpainting import InpaintConfig, InpaintNet, InpaintScoring

    patch = opts.patch_size or IP_PATCH[opts.modality]
    icfg = InpaintConfig(
        patch_size=patch, hole_size=opts.hole_size or patch // 2, width=opts.model_dim or 32
    )
    prep = Preprocessing(opts.modality, patch)
    return InpaintNet(icfg), prep, icfg.to_dict(), InpaintScoring().to_dict()


def training_loss(kind: str, model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """BTD: the library's diffusion loss (random t, pred_noise). Inpaint: hole MSE."""
    if kind == "btd":
        return model(batch)
    pred = model(batch)
    mask = _unwrap(model).mask
    return ((pred - batch).square() * mask).sum() / (mask.sum() * batch.shape[0])


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


def fit(
    kind: str,
    model: nn.Module,
    batches: Callable[[int], Iterable[torch.Tensor]],
    *,
    epochs: int,
    lr: float,
    start_epoch: int = 0,
    start_step: int = 0,
    ema_decay: float = 0.995,
    optimizer_state: dict | None = None,
    ema_state: dict | None = None,
    max_steps: int | None = None,
    device: str = "auto",
    progress: bool = True,
    on_epoch_end: Callable[[int, int, nn.Module, Any, Any], None] | None = None,
    accelerator: Any = None,
    max_seconds: float | None = None,
    between_steps: Callable[[], None] | None = None,
) -> tuple[nn.Module, Any, list[float]]:
    """The training loop shared by both detectors. Returns (model, ema, per-step losses).

    ``batches(epoch)`` yields the epoch's batches (a DataLoader, or anything iterable).
    ``between_steps`` runs after every optimiser step: retraining inside serve passes one that
    waits while studies are being scored, so live scoring keeps the device.
    """
    import time

    from accelerate import Accelerator
    from ema_pytorch import EMA
    from tqdm.auto import tqdm

    if accelerator is None:
        cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
        bf16 = not cpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        accelerator = Accelerator(cpu=cpu, mixed_precision="bf16" if bf16 else "no")
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.99))
    if optimizer_state:
        opt.load_state_dict(optimizer_state)
    ema = EMA(model, beta=ema_decay, update_every=10, include_online_model=False)
    if ema_state:
        ema.load_state_dict(ema_state)
    ema.to(accelerator.device)
    model, opt = accelerator.prepare(model, opt)
    losses: list[float] = []
    step = start_step
    deadline = None if max_seconds is None else time.monotonic() + max_seconds

    def out_of_budget() -> bool:
        if max_steps is not None and step >= max_steps:
            return True
        return deadline is not None and time.monotonic() >= deadline

    for epoch in range(start_epoch, epochs):
        model.train()
        loader = batches(epoch)
        if isinstance(loader, DataLoader):  # shard across processes under `accelerate launch`
            loader = accelerator.prepare_data_loader(loader)
        bar = tqdm(
            loader,
            desc=f"epoch {epoch + 1}/{epochs}",
            file=sys.stderr,
            disable=not (progress and accelerator.is_main_process),
            leave=False,
        )
        for batch in bar:
            with accelerator.autocast():
                loss = training_loss(kind, model, batch.to(accelerator.device))
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            ema.update()
            step += 1
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
            if between_steps is not None:
                between_steps()
            if out_of_budget():
                break
        if on_epoch_end is not None and accelerator.is_main_process:
            on_epoch_end(epoch + 1, step, accelerator.unwrap_model(model), ema, opt)
        if out_of_budget():
            break
    return accelerator.unwrap_model(model), ema, losses


# --------------------------------------------------------------------------- calibration


def calibration_patches(
    held_out: Sequence[SliceRef],
    prep: Preprocessing,
    regions: Sequence[tuple[str, int, int]],
    count: int,
    seed: int,
) -> np.ndarray:
    """``count`` deterministic genuine patches from held-out slices.

    Near the held-out region points when the regions CSV has any (the locations users will
    point at), otherwise inside the body — the same distribution training sampled from.
    """
    ds = PatchDataset(held_out, prep, regions, patches_per_item=1, seed=seed + 1)
    if not ds.items:  # regions given, none on held-out slices: fall back to the body
        ds = PatchDataset(held_out, prep, (), patches_per_item=1, seed=seed + 1)
    ds.repeat = max(1, math.ceil(count / len(ds.items)))
    idx = np.random.default_rng(seed).permutation(len(ds))[:count]
    return np.stack([ds[int(i)][0].numpy() for i in idx])


def calibrate(detector: Any, patches: np.ndarray) -> Calibration:
    """Score held-out genuine patches with the finished detector; keep the distribution."""
    scores, _ = detector.score_patches(patches)
    return Calibration.from_scores(scores)


def detector_from_model(
    kind: str, model: nn.Module, prep: Preprocessing, scoring: dict, device: str = "auto"
) -> Any:
    """Wrap a trained network as its detector (for calibration right after training)."""
    if kind == "btd":
        from detector.btd import BTDDetector, BTDScoring

        return BTDDetector(model, prep, BTDScoring.from_dict(scoring), device=device)
    from detector.inpainting import InpaintDetector, InpaintScoring

    return InpaintDetector(model, prep, InpaintScoring.from_dict(scoring), device=device)


# --------------------------------------------------------------------------- entry point


@dataclass
class TrainResult:
    model_path: Path
    losses: list[float]
    steps: int
    epochs: int
    calibration: Calibration | None  # None on non-main processes of a multi-GPU run
    train_slices: int
    held_out_slices: int


def train(opts: TrainOptions, between_steps: Callable[[], None] | None = None) -> TrainResult:
    """Train, checkpoint every epoch, calibrate on held-out patients, write the final file.

    ``between_steps`` is passed to :func:`fit` (it is not an option: checkpoints store options).
    """
    import copy

    torch.manual_seed(opts.seed)
    model_path = Path(opts.model_path)
    slices = find_dicom_slices(opts.data, opts.modality)
    regions = read_regions_csv(opts.regions, opts.data) if opts.regions else []
    model, prep, model_config, scoring = build_model(opts)
    start_epoch = start_step = 0
    opt_state = ema_state = None
    if opts.resume:
        if not model_path.is_file():
            raise TrainingError(f"--resume: no checkpoint at {model_path} to resume from")
        ckpt = load_checkpoint(model_path, expected_kind=opts.detector, modality=opts.modality)
        if ckpt.model_config != model_config or ckpt.preprocessing != prep:
            raise CheckpointError(
                f"{model_path}: cannot resume: it holds {ckpt.model_config} with "
                f"{ckpt.preprocessing}, but these options build {model_config} with {prep}"
            )
        model.load_state_dict(ckpt.model_state)
        start_epoch, start_step = ckpt.epoch, ckpt.step
        opt_state, ema_state = ckpt.optimizer_state, ckpt.ema_state
        log.info("resuming %s from epoch %d, step %d", model_path, start_epoch, start_step)
    elif opts.init_from:
        ckpt = load_checkpoint(opts.init_from, expected_kind=opts.detector, modality=opts.modality)
        if ckpt.model_config != model_config or ckpt.preprocessing != prep:
            raise CheckpointError(
                f"{opts.init_from}: cannot fine-tune from it: it holds {ckpt.model_config} with "
                f"{ckpt.preprocessing}, but these options build {model_config} with {prep}"
            )
        model.load_state_dict(ckpt.model_state)
        ema_state = ckpt.ema_state  # the EMA continues from the production weights too
        log.info("fine-tuning from %s (step %d)", opts.init_from, ckpt.step)
    elif model_path.exists():
        log.warning("%s exists and will be overwritten (use --resume to continue it)", model_path)

    train_slices, held_out = split_holdout(slices, opts.holdout_fraction, opts.seed)
    if regions:
        train_paths = {s.path for s in train_slices}
        if not any(r[0] in train_paths for r in regions):
            raise TrainingError(
                f"{opts.regions}: none of its files are among the training slices under {opts.data}"
            )
    dataset = PatchDataset(train_slices, prep, regions, opts.patches_per_slice, opts.seed)

    def batches(epoch: int) -> DataLoader:
        dataset.set_epoch(epoch)
        g = torch.Generator().manual_seed(opts.seed * 1000 + epoch)
        return DataLoader(
            dataset,
            batch_size=opts.batch_size,
            shuffle=True,
            generator=g,
            num_workers=opts.num_workers,
            drop_last=len(dataset) > opts.batch_size,
            persistent_workers=False,
            pin_memory=torch.cuda.is_available(),
        )

    training = {**asdict(opts), "train_slices": len(train_slices), "held_out": len(held_out)}
    lr = opts.lr or DEFAULT_LR[opts.detector]
    training["lr"] = lr

    def save(
        epoch: int,
        step: int,
        net: nn.Module,
        ema: Any,
        opt: Any,
        calibration: Calibration | None = None,
    ) -> None:
        save_checkpoint(
            model_path,
            kind=opts.detector,
            preprocessing=prep,
            model_config=model_config,
            scoring=scoring,
            model_state=net.state_dict(),
            ema_state=ema.state_dict(),
            optimizer_state=opt.state_dict() if opt is not None else opt_state,
            step=step,
            epoch=epoch,
            calibration=calibration,
            training=training,
        )

    last: dict[str, Any] = {"epoch": start_epoch, "step": start_step, "opt": None}

    def on_epoch_end(epoch: int, step: int, net: nn.Module, ema: Any, opt: Any) -> None:
        last.update(epoch=epoch, step=step, opt=opt)
        save(epoch, step, net, ema, opt)

    model, ema, losses = fit(
        opts.detector,
        model,
        batches,
        epochs=opts.epochs,
        lr=lr,
        start_epoch=start_epoch,
        start_step=start_step,
        ema_decay=opts.ema_decay,
        optimizer_state=opt_state,
        ema_state=ema_state,
        max_steps=opts.max_steps,
        device=opts.device,
        progress=opts.progress,
        on_epoch_end=on_epoch_end,
        max_seconds=opts.max_seconds,
        between_steps=between_steps,
    )
    from accelerate.state import PartialState

    if not PartialState().is_main_process:  # other GPUs: the main process calibrates and saves
        return TrainResult(
            model_path,
            losses,
            int(last["step"]),
            int(last["epoch"]),
            None,
            len(train_slices),
            len(held_out),
        )
    scoring_model = copy.deepcopy(ema.ema_model).float()
    detector = detector_from_model(opts.detector, scoring_model, prep, scoring, opts.device)
    patches = calibration_patches(held_out, prep, regions, opts.calibration_patches, opts.seed)
    calibration = calibrate(detector, patches)
    save(int(last["epoch"]), int(last["step"]), model, ema, last["opt"], calibration)
    return TrainResult(
        model_path,
        losses,
        int(last["step"]),
        int(last["epoch"]),
        calibration,
        len(train_slices),
        len(held_out),
    )
