"""One retraining run: curated pool -> candidates -> promotion gate -> registry.

For each configured modality:

1. select the genuine pool (``storage.pool``: trusted sources, clean, unmarked, quarantined,
   de-duplicated, capped per patient) and record every instance's sha256 in the run, split by
   patient into a training part and a held-out gate part (``holdout_fraction``);
2. build the gate once: the held-out studies copied and attacked by the tamper lab
   (``gate_attacks`` x ``gate_count``, with as many genuine control locations), plus
   ``gate_genuine_patches`` genuine patches from the same held-out patients;
3. for each detector: fine-tune from the production version (from scratch when there is none,
   or when its size differs from the configured one) within the step and time budget, on the
   GPU when there is one (``accelerate``), calibrate on held-out training patients, register
   the result as a candidate;
4. measure candidate and production on the same gate (AUC over the attacks; false-alarm rate:
   share of genuine patches with p <= ``gate_alpha``; tail false alarms: genuine patches
   with p <= ``gate_study_threshold``, the p at which one region decides a study, using the
   tail p-values serving uses) and promote only if the candidate's calibration holds at both
   thresholds and it is not worse than production by more than the margins; otherwise
   it stays in the registry as ``rejected`` with the reason.

The run holds the registry's run lock (never two at once, across processes) and renews its
lease; a run killed midway is marked failed by the next start (``fail_dead_runs``).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from detector.settings import RetrainSettings
from storage.db import Database
from storage.models import ModelVersion, TrainingRun, utcnow
from storage.pool import PoolInstance, select_pool_with_report
from storage.registry import (
    RunHolder,
    add_version,
    fail_dead_runs,
    finish_run,
    production,
    promote,
    reject,
    renew_run,
    run_owner,
    start_run,
)

log = logging.getLogger(__name__)

MODELS_DIR = "models"


class RetrainBusy(RuntimeError):
    """Another run holds the lock."""


class RetrainCancelled(RuntimeError):
    """The service is stopping: the run ends as failed, production is untouched."""


@dataclass
class RunReport:
    run_id: int
    state: str
    summary: dict[str, Any]
    promoted: list[int] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0


@dataclass(frozen=True)
class GateMetrics:
    auc: float
    false_alarm_rate: float
    tampered: int
    genuine: int
    genuine_patches: int
    tail_false_alarms: int = 0  # genuine patches with p <= gate_study_threshold

    def as_dict(self) -> dict[str, Any]:
        return {
            "auc": self.auc,
            "false_alarm_rate": self.false_alarm_rate,
            "tampered": self.tampered,
            "genuine": self.genuine,
            "genuine_patches": self.genuine_patches,
            "tail_false_alarms": self.tail_false_alarms,
        }


def tail_allowance(patches: int, threshold: float) -> int:
    """Genuine patches allowed below the study threshold: the 99.9 % Poisson quantile of their
    expected count, so a calibrated model fails this by chance once in a thousand runs."""
    from scipy import stats

    return int(stats.poisson.ppf(0.999, patches * threshold))


def decide(
    candidate: GateMetrics, current: GateMetrics | None, settings: RetrainSettings
) -> tuple[bool, str]:
    """(promote?, reason). Calibration first: a model whose p-values lie must never score."""
    limit = settings.gate_alpha + settings.calibration_tolerance
    if candidate.false_alarm_rate > limit:
        return False, (
            f"calibration does not hold: {candidate.false_alarm_rate:.3f} of held-out genuine "
            f"patches have p <= {settings.gate_alpha:g} (allowed {limit:.3f})"
        )
    allowed = tail_allowance(candidate.genuine_patches, settings.gate_study_threshold)
    if candidate.tail_false_alarms > allowed:
        return False, (
            f"tail calibration does not hold at the study threshold: "
            f"{candidate.tail_false_alarms} of {candidate.genuine_patches} held-out genuine "
            f"patches have p <= {settings.gate_study_threshold:.2g} (allowed {allowed})"
        )
    if not candidate.auc >= settings.min_auc:  # NaN fails too
        return False, f"AUC {candidate.auc:.3f} is below min_auc {settings.min_auc:g}"
    if current is None:
        return True, (
            f"first model: AUC {candidate.auc:.3f}, false-alarm rate "
            f"{candidate.false_alarm_rate:.3f} at p <= {settings.gate_alpha:g}"
        )
    if candidate.auc < current.auc - settings.max_auc_drop:
        return False, (
            f"AUC fell from {current.auc:.3f} (production) to {candidate.auc:.3f} "
            f"(allowed drop {settings.max_auc_drop:g})"
        )
    if candidate.false_alarm_rate > current.false_alarm_rate + settings.max_false_alarm_increase:
        return False, (
            f"false-alarm rate rose from {current.false_alarm_rate:.3f} (production) to "
            f"{candidate.false_alarm_rate:.3f} (allowed +{settings.max_false_alarm_increase:g})"
        )
    return True, (
        f"AUC {candidate.auc:.3f} vs production {current.auc:.3f}; false-alarm rate "
        f"{candidate.false_alarm_rate:.3f} vs {current.false_alarm_rate:.3f}"
    )


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------- the run


class Retrainer:
    """Runs retraining against one database and data folder (serve, CLI and tests alike)."""

    def __init__(
        self,
        db: Database,
        data_dir: Path,
        settings: RetrainSettings,
        *,
        clock: Callable[[], datetime] = utcnow,
        between_steps: Callable[[], None] | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.db = db
        self.data_dir = Path(data_dir)
        self.settings = settings
        self.clock = clock
        self.between_steps = between_steps
        self.stop = stop or threading.Event()

    def run(self, trigger: str, actor: str | None = None) -> RunReport:
        """One run; raises ``RetrainBusy`` if another holds the lock. Never raises on failure
        of the work itself: the run is recorded as failed and the report says why."""
        settings = self.settings
        started = time.monotonic()
        owner = run_owner()
        budget = {
            "max_steps": settings.max_steps,
            "max_minutes": settings.max_minutes,
            "device": settings.device,
        }
        with self.db.session() as session:
            failed = fail_dead_runs(session, self.clock())
            got = start_run(
                session,
                trigger=trigger,
                now=self.clock(),
                lease_s=settings.lease_s,
                budget=budget,
                actor=actor,
                owner=owner,
            )
            if isinstance(got, TrainingRun):
                run_id = got.id
        if failed:
            log.warning("interrupted retraining runs marked failed", extra={"runs": failed})
        if isinstance(got, RunHolder):
            raise RetrainBusy(
                f"a retraining run is already in progress (run {got.run_id}, owner {got.owner})"
            )
        log.info("retraining started", extra={"run": run_id, "trigger": trigger})
        beat_stop = threading.Event()
        beat = threading.Thread(
            target=self._heartbeat, args=(run_id, owner, beat_stop), daemon=True, name="retrain"
        )
        beat.start()
        work = self.data_dir / "retrain" / f"run-{run_id}"
        summary: dict[str, Any] = {}
        promoted: list[int] = []
        error = None
        try:
            self._work(run_id, work, summary, promoted, started)
        except Exception as exc:  # recorded, not raised: the scheduler must keep going
            log.exception("retraining failed", extra={"run": run_id})
            error = f"{type(exc).__name__}: {exc}"
        except BaseException as exc:  # KeyboardInterrupt: record, then let it go on
            error = f"{type(exc).__name__}: interrupted"
            raise
        finally:
            beat_stop.set()
            beat.join()
            shutil.rmtree(work, ignore_errors=True)
            with self.db.session() as session:
                finish_run(session, run_id, self.clock(), summary, error)
        seconds = time.monotonic() - started
        log.info(
            "retraining finished",
            extra={"run": run_id, "error": error, "promoted": promoted, "seconds": round(seconds)},
        )
        state = "failed" if error else "succeeded"
        return RunReport(run_id, state, summary, promoted, error, seconds)

    def _heartbeat(self, run_id: int, owner: str, stop: threading.Event) -> None:
        while not stop.wait(self.settings.lease_s / 3):
            with self.db.session() as session:
                if not renew_run(session, run_id, owner, self.clock(), self.settings.lease_s):
                    log.warning("lost the lease of the running retraining", extra={"run": run_id})
                    return

    def _step_hook(self) -> None:
        if self.stop.is_set():
            raise RetrainCancelled("the service is stopping")
        if self.between_steps is not None:
            self.between_steps()

    # -- per modality -----------------------------------------------------------------------

    def _work(
        self,
        run_id: int,
        work: Path,
        summary: dict[str, Any],
        promoted: list[int],
        started: float,
    ) -> None:
        settings = self.settings
        deadline = started + settings.max_minutes * 60
        manifest: dict[str, Any] = {}
        for modality in settings.modalities:
            with self.db.reading() as session:
                current = {d: production(session, d, modality) for d in settings.detectors}
                bootstrap = all(v is None for v in current.values())
                pool, pool_report = select_pool_with_report(
                    session,
                    modality=modality,
                    now=self.clock(),
                    trusted_calling_aets=settings.trusted_calling_aets,
                    quarantine_days=settings.quarantine_days,
                    max_per_patient=settings.max_instances_per_patient,
                    bootstrap=bootstrap,
                )
            patients = sorted({p.patient for p in pool})
            if len(patients) < settings.min_patients:
                summary[modality] = {
                    "skipped": f"the genuine pool has {len(patients)} patients "
                    f"({len(pool)} instances); at least {settings.min_patients} are needed "
                    "([retrain] min_patients)",
                    "filters": pool_report.reasons(modality, settings.quarantine_days),
                    "pool": pool_report.as_dict(),
                }
                continue
            rng = np.random.default_rng(run_id)
            n_gate = round(settings.holdout_fraction * len(patients))
            n_gate = min(len(patients) - 1, max(1, n_gate))
            gate_patients = set(rng.choice(patients, size=n_gate, replace=False).tolist())
            train_items = [p for p in pool if p.patient not in gate_patients]
            gate_items = [p for p in pool if p.patient in gate_patients]
            data_manifest = {
                "patients": len(patients),
                "bootstrap": bootstrap,
                "train": [p.sha256 for p in train_items],
                "gate": [p.sha256 for p in gate_items],
            }
            manifest[modality] = data_manifest
            with self.db.session() as session:  # recorded before training: auditable if killed
                run = session.get(TrainingRun, run_id)
                assert run is not None
                run.manifest = dict(manifest)
            train_dir = self._materialise(train_items, work / modality / "train")
            gate_dir = self._materialise(gate_items, work / modality / "gate")
            try:
                gate = Gate.build(gate_dir, work / modality / "lab", modality, settings, run_id)
            except Exception as exc:
                summary[modality] = {
                    "skipped": f"the gate could not be built: {exc}",
                    "filters": [
                        f"the gate attacks copies of the {len(gate_patients)} held-out patients "
                        f"({len(gate_items)} instances): lower [retrain] gate_count "
                        f"(= {settings.gate_count}) or trim gate_attacks, or raise "
                        f"holdout_fraction (= {settings.holdout_fraction:g}) or add patients"
                    ],
                }
                continue
            results: dict[str, Any] = {}
            summary[modality] = results
            for i, det in enumerate(settings.detectors):
                remaining = deadline - time.monotonic()
                if remaining <= 5:
                    results[det] = {"skipped": "the run's time budget is spent"}
                    continue
                share = remaining / (len(settings.detectors) - i)
                results[det] = self._train_and_judge(
                    run_id, modality, det, train_dir, gate, data_manifest, share, promoted
                )

    def _materialise(self, items: Sequence[PoolInstance], root: Path) -> Path:
        """Patient/series folders of links to the stored files (training reads folders)."""
        patients: dict[str, str] = {}
        series: dict[str, str] = {}
        instances = self.data_dir / "instances"
        for item in items:
            p = patients.setdefault(item.patient, f"patient-{len(patients) + 1:04d}")
            s = series.setdefault(item.series_uid, f"series-{len(series) + 1:04d}")
            target = root / p / s / f"{item.sha256[:24]}.dcm"
            target.parent.mkdir(parents=True, exist_ok=True)
            source = instances / item.file_path
            try:
                os.symlink(source, target)
            except OSError:  # filesystems without symlinks
                shutil.copyfile(source, target)
        return root

    def _train_and_judge(
        self,
        run_id: int,
        modality: str,
        det: str,
        train_dir: Path,
        gate: Gate,
        data_manifest: dict[str, Any],
        seconds: float,
        promoted: list[int],
    ) -> dict[str, Any]:
        from detector.checkpoint import CheckpointError
        from detector.training import TrainOptions, find_dicom_slices, train

        settings = self.settings
        models_dir = self.data_dir / MODELS_DIR
        models_dir.mkdir(parents=True, exist_ok=True)
        with self.db.reading() as session:
            current = production(session, det, modality)
        current_path = models_dir / current.checkpoint_path if current is not None else None
        rel = f"{modality.lower()}-{det}-run{run_id}.ckpt"
        n_slices = len(find_dicom_slices(train_dir, modality))
        # Epochs of at least ~50 steps: a checkpoint is written after each.
        per_slice = max(4, math.ceil(min(settings.max_steps, 50) * settings.batch_size / n_slices))
        steps_per_epoch = max(1, n_slices * per_slice // settings.batch_size)
        options: dict[str, Any] = dict(
            detector=det,
            modality=modality,
            data=str(train_dir),
            model_path=str(models_dir / rel),
            epochs=math.ceil(settings.max_steps / steps_per_epoch) + 1,
            batch_size=settings.batch_size,
            patch_size=settings.patch_size,
            model_dim=settings.model_dim,
            dim_mults=tuple(settings.dim_mults) if settings.dim_mults else None,
            patches_per_slice=per_slice,
            calibration_patches=settings.calibration_patches,
            max_steps=settings.max_steps,
            max_seconds=seconds * 0.7,  # training and calibration; the rest is for the gate
            device=settings.device,
            seed=run_id,
            progress=False,
        )
        init_note = "from scratch (no production model)"
        train_started = time.monotonic()
        try:
            if current_path is not None:
                init_note = f"fine-tuned from version {current.id}"  # type: ignore[union-attr]
                result = train(
                    TrainOptions(**options, init_from=str(current_path)), self._step_hook
                )
            else:
                result = train(TrainOptions(**options), self._step_hook)
        except CheckpointError as exc:
            if "cannot fine-tune" not in str(exc):
                raise
            init_note = f"from scratch: {exc}"
            result = train(TrainOptions(**options), self._step_hook)
        train_seconds = time.monotonic() - train_started
        losses = result.losses
        train_metrics = {
            "steps": result.steps,
            "seconds": round(train_seconds, 1),
            "init": init_note,
            "loss_first": float(np.mean(losses[:5])) if losses else None,
            "loss_last": float(np.mean(losses[-5:])) if losses else None,
            "train_slices": result.train_slices,
            "calibration_size": result.calibration.size if result.calibration else 0,
        }
        with self.db.session() as session:
            version = add_version(
                session,
                detector=det,
                modality=modality,
                checkpoint_path=rel,
                sha256=file_sha256(models_dir / rel),
                now=self.clock(),
                run_id=run_id,
                parent_id=current.id if current is not None and current_path else None,
                metrics={"train": train_metrics},
                manifest={"run_id": run_id, **data_manifest},
            )
            version_id = version.id
        candidate = gate.measure(models_dir / rel, self._step_hook)
        baseline = gate.measure(current_path, self._step_hook) if current_path else None
        ok, reason = decide(candidate, baseline, settings)
        actor = f"retrain:run-{run_id}"
        with self.db.session() as session:
            version = session.get(ModelVersion, version_id)
            assert version is not None
            version.metrics = {
                "train": train_metrics,
                "gate": candidate.as_dict(),
                "production": baseline.as_dict() if baseline else None,
                "production_version": current.id if current is not None else None,
            }
            if ok:
                promote(session, version_id, actor, self.clock(), reason)
            else:
                reject(session, version_id, reason, actor)
        if ok:
            promoted.append(version_id)
        log.info(
            "candidate judged",
            extra={
                "version": version_id,
                "promoted": ok,
                "reason": reason,
                "detector": det,
                "modality": modality,
            },
        )
        return {"version": version_id, "promoted": ok, "reason": reason}


# --------------------------------------------------------------------------- the gate


@dataclass
class Gate:
    """Attacked copies of held-out studies plus genuine patches; the same for both models."""

    lab_dir: Path
    rows: list[Any]
    slices: list[Any]
    modality: str
    settings: RetrainSettings
    seed: int

    @classmethod
    def build(
        cls, gate_dir: Path, lab_dir: Path, modality: str, settings: RetrainSettings, seed: int
    ) -> Gate:
        from detector.lab.attacks import TamperError, tamper_dataset
        from detector.training import find_dicom_slices

        # Few held-out slices: fewer attacks of each kind, then fewer kinds (the lab refuses
        # to stack attacks on one slice, and a 3-D injection takes several).
        attacks, count = list(settings.gate_attacks), settings.gate_count
        while True:
            try:
                result = tamper_dataset(gate_dir, lab_dir, attacks, count, seed)
                break
            except TamperError:
                if count > 1:
                    count = max(1, count // 2)
                elif len(attacks) > 1:
                    attacks.pop()
                else:
                    raise
        slices = find_dicom_slices(gate_dir, modality)
        return cls(lab_dir, list(result.rows), slices, modality, settings, seed)

    def measure(self, checkpoint: Path, step_hook: Callable[[], None]) -> GateMetrics:
        from detector.evaluation import roc_auc, score_rows
        from detector.loading import load_detector
        from detector.training import DEFAULT_PROPOSAL_FRACTION, calibration_patches

        step_hook()
        det = load_detector(checkpoint, device=self.settings.device)
        scored = score_rows(
            self.rows,
            self.lab_dir,
            detectors={det.name: det},
            manifest_dir=self.lab_dir,
            progress=False,
        )[det.name]
        labels = [s.row.label for s in scored]
        auc = roc_auc(labels, [s.score for s in scored])
        step_hook()
        patches = calibration_patches(
            self.slices,
            det.prep,
            [],
            self.settings.gate_genuine_patches,
            self.seed + 7,
            proposal_fraction=DEFAULT_PROPOSAL_FRACTION,  # drawn as calibration drew them
        )
        raw, _ = det.score_patches(patches)
        p = det.p_values(raw)
        far = float(np.mean(np.asarray(p) <= self.settings.gate_alpha))
        tail = int(np.sum(np.asarray(p) <= self.settings.gate_study_threshold))
        return GateMetrics(
            float(auc), far, sum(labels), len(labels) - sum(labels), len(patches), tail
        )
