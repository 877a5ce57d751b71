"""The ``[worker]`` section of config.toml: how scoring jobs are run."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class WorkerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Run scoring jobs inside serve.")
    concurrency: int = Field(1, ge=1, le=64, description="Scoring jobs run at the same time.")
    lease_s: float = Field(
        600.0, gt=0, description="A job not renewed for this long is taken over by another worker."
    )
    max_attempts: int = Field(3, ge=1, description="Tries before a job is given up as failed.")
    poll_interval_s: float = Field(1.0, gt=0, le=60, description="Idle wait between queue checks.")
