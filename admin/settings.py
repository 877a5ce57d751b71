"""The ``[admin]`` section of config.toml."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class AdminSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = Field("127.0.0.1", description="Address of the admin web report.")
    port: int = Field(8080, ge=0, le=65535, description="0 picks a free port (tests).")
