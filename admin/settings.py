"""The ``[admin]`` section of config.toml."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class AdminSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = Field("127.0.0.1", description="Address of the admin web report.")
    port: int = Field(8080, ge=1, le=65535)
