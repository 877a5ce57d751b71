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
    heatmaps: str = Field(
        "flagged", pattern="^(flagged|none)$", description="Save flagged regions' heatmap PNGs."
    )

    @model_validator(mode="after")
    def _rates(self) -> DetectorSettings:
        if self.suspicious_rate < self.false_alarm_rate:
            raise ValueError("suspicious_rate must be >= false_alarm_rate")
        return self
