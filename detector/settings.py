"""The ``[worker]`` section of config.toml: how scoring jobs are run."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator


class WorkerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Run scoring jobs inside serve.")
    concurrency: int = Field(1, ge=1, le=64, description="Scoring jobs run at the same time.")
    lease_s: float = Field(
        600.0, gt=0, description="A job not renewed for this long is taken over by another worker."
    )
    max_attempts: int = Field(3, ge=1, description="Tries before a job is given up as failed.")
    poll_interval_s: float = Field(1.0, gt=0, le=60, description="Idle wait between queue checks.")
    delivery_lease_s: float = Field(
        300.0,
        gt=0,
        description="A report one process is sending is left to it this long before another "
        "may send it (a process killed mid-send: its reports go out after this).",
    )


class DetectorSettings(BaseModel):
    """The ``[detector]`` section: which models score, on what device, at what alarm rate."""

    model_config = ConfigDict(extra="forbid")

    models: list[Path] = Field(
        default_factory=list,
        description="Checkpoint files; each records its detector (btd/inpaint) and modality.",
    )
    device: str = Field("auto", description='"auto" (CUDA when present), "cuda", "cpu".')
    false_alarm_rate: float = Field(
        0.01, gt=0, lt=1, description="Chance a genuine study is called tampered."
    )
    suspicious_rate: float = Field(
        0.05, gt=0, lt=1, description="Looser rate below which a study is called suspicious."
    )
    window_stride_px: int | None = Field(
        None, ge=0, description="Sliding-window stride; 0 off; unset: on (48) on GPU, off on CPU."
    )
    max_blobs_per_slice: int = Field(8, ge=0, description="Strongest blob candidates per slice.")
    max_regions_per_study: int = Field(
        5000, ge=1, description="Cap on checked regions; later slices are not checked."
    )
    batch_size: int = Field(0, ge=0, description="Patches per device batch; 0 picks by device.")
    checks: list[str] = Field(
        default_factory=lambda: [
            "noise-consistency",
            "slice-consistency",
            "exact-repeat",
            "noise-copy",
        ],
        description="Forensic checks (no training) run on every series, learned models or not.",
    )
    hotspots_per_slice: int = Field(
        2, ge=0, description="Extra regions per slice and map check at its strongest anomalies."
    )
    references_per_series: int = Field(
        600, ge=40, le=100000, description="Reference locations each check's null is fitted on."
    )
    heatmaps: str = Field(
        "flagged", pattern="^(flagged|none)$", description="Save flagged regions' heatmap PNGs."
    )

    @model_validator(mode="after")
    def _rates(self) -> DetectorSettings:
        if self.suspicious_rate < self.false_alarm_rate:
            raise ValueError("suspicious_rate must be >= false_alarm_rate")
        from detector import registry

        unknown = [c for c in self.checks if c not in registry.names()]
        if unknown:
            raise ValueError(f"unknown check(s) {unknown}; available: {registry.names()}")
        return self


class RetrainSettings(BaseModel):
    """The ``[retrain]`` section: when to retrain, from what, and when to promote."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Schedule retraining inside serve.")
    cron: str = Field("0 2 * * *", description="Crontab line (server local time) of the runs.")
    misfire_grace_hours: float = Field(
        12.0, gt=0, description="A run missed by more than this (service down) is skipped."
    )
    trusted_calling_aets: list[str] = Field(
        default_factory=list,
        description="Calling AE titles whose instances may enter the genuine pool.",
    )
    quarantine_days: float = Field(7.0, ge=0, description="Age before a study may be trained on.")
    max_instances_per_patient: int = Field(64, ge=1, description="Cap per patient in the pool.")
    min_patients: int = Field(
        3, ge=2, description="Fewer patients in a modality's pool: that modality is skipped."
    )
    modalities: list[str] = Field(default_factory=lambda: ["CT", "MR"])
    detectors: list[str] = Field(default_factory=lambda: ["inpaint", "btd"])
    max_steps: int = Field(2000, ge=1, description="Optimiser steps per detector and run.")
    max_minutes: float = Field(120.0, gt=0, description="Wall-clock training budget per run.")
    batch_size: int = Field(32, ge=1)
    device: str = Field("auto", description='Training device: "auto", "cuda", "cpu".')
    holdout_fraction: float = Field(
        0.25, gt=0, lt=1, description="Share of pool patients kept out of training for the gate."
    )
    gate_attacks: list[str] = Field(
        default_factory=lambda: ["injection", "copy-move", "adversarial-noise"]
    )
    gate_count: int = Field(4, ge=1, description="Tamper-lab attacks of each kind in the gate.")
    gate_genuine_patches: int = Field(256, ge=8, description="Genuine patches for false alarms.")
    gate_alpha: float = Field(
        0.05, gt=0, lt=1, description="p-value threshold the false-alarm rate is measured at."
    )
    gate_study_threshold: float = Field(
        0.01 / 300,
        gt=0,
        lt=1,
        description="p at which one region alone makes a study tampered (false_alarm_rate / "
        "regions per study): genuine gate patches below it are tail false alarms.",
    )
    max_auc_drop: float = Field(0.02, description="Candidate AUC may be this much lower.")
    max_false_alarm_increase: float = Field(
        0.02, description="Candidate false-alarm rate may be this much higher."
    )
    calibration_tolerance: float = Field(
        0.05, ge=0, description="Candidate false-alarm rate may exceed gate_alpha by this much."
    )
    min_auc: float = Field(
        0.5, ge=0, le=1, description="Floor for any promotion: never a model worse than chance."
    )
    calibration_patches: int = Field(512, ge=8)
    lease_s: float = Field(600.0, gt=0, description="A run not renewed this long counts as dead.")
    reload_interval_s: float = Field(
        30.0, gt=0, description="How often serve looks for a newly promoted model."
    )
    # Model size overrides (tests use tiny models); unset: the detectors' defaults.
    patch_size: int | None = Field(None, ge=16)
    model_dim: int | None = Field(None, ge=1)
    dim_mults: list[int] | None = None

    @model_validator(mode="after")
    def _check(self) -> RetrainSettings:
        from apscheduler.triggers.cron import CronTrigger

        try:
            CronTrigger.from_crontab(self.cron)
        except ValueError as exc:
            raise ValueError(f"cron {self.cron!r} is not a crontab line: {exc}") from None
        self.modalities = [m.upper().replace("MRI", "MR") for m in self.modalities]
        bad = [m for m in self.modalities if m not in ("CT", "MR")]
        bad += [d for d in self.detectors if d not in ("btd", "inpaint")]
        if bad:
            raise ValueError(f"unknown modality or detector {bad}")
        return self
