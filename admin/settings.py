"""The ``[admin]`` section of config.toml."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, IPvAnyNetwork


class AdminSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = Field("127.0.0.1", description="Address of the admin web report.")
    port: int = Field(8080, ge=0, le=65535, description="0 picks a free port (tests).")
    enabled: bool = Field(True, description="Serve the admin web report on the HTTP server.")
    session_secret_file: Path | None = Field(
        None,
        description="Key that signs session cookies; empty: <data_dir>/admin/session.key, "
        "generated on first start with 0600 permissions.",
    )
    cookie_secure: Literal["auto", "always", "never"] = Field(
        "auto", description="Secure cookie flag; auto sets it when the request came over HTTPS."
    )
    session_hours: float = Field(12.0, gt=0, le=24 * 30, description="Session lifetime.")
    login_max_failures: int = Field(
        5, ge=1, description="Wrong passwords allowed per user name or client address..."
    )
    login_lockout_s: float = Field(
        300.0, gt=0, description="...before further logins are refused for this long."
    )
    metrics_token: str = Field(
        "", description="Bearer token that lets Prometheus read /metrics without logging in."
    )
    delivery_overdue_s: float = Field(
        300.0,
        gt=0,
        description="A report delivery still pending after this long is a dashboard warning.",
    )
    job_stuck_s: float = Field(
        900.0,
        gt=0,
        description="A scoring job queued or running longer than this counts as stuck.",
    )
    trusted_proxies: list[IPvAnyNetwork] = Field(
        default_factory=list,
        description="Reverse proxies (addresses or CIDR networks) whose X-Forwarded-For and "
        "X-Forwarded-Proto are believed; empty: the headers are ignored from everyone.",
    )
