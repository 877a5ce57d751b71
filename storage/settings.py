"""The ``[storage]`` and ``[assembly]`` sections of config.toml."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class StorageSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data_dir: Path = Field(
        Path("data"), description="Received instances, models and the default database live here."
    )
    database_url: str = Field(
        "", description="SQLAlchemy URL; empty means SQLite at <data_dir>/tamperscan.db."
    )
    min_free_mb: int = Field(
        500, ge=0, description="Refuse C-STORE with 0xA700 when the data disk has less free space."
    )

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'tamperscan.db').resolve()}"


class AssemblySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stable_age_s: float = Field(
        60.0, gt=0, description="A study is complete after this much quiet (Orthanc's StableAge)."
    )
    released_age_s: float = Field(
        5.0, gt=0, description="Shorter quiet once the sending association was released normally."
    )
    poll_interval_s: float = Field(1.0, gt=0, le=60, description="How often stability is checked.")
