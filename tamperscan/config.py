"""Configuration: config.toml, overridden by environment variables, validated at start.

Environment variables are named ``TAMPERSCAN_<SECTION>__<KEY>`` (double underscore between
levels, e.g. ``TAMPERSCAN_SCP__PORT=104`` or ``TAMPERSCAN_SCP__TLS__ENABLED=true``); values are
read as TOML values (numbers, booleans, ``["lists"]``) and otherwise as plain strings.
Relative paths are resolved against the folder of the config file. A bad value stops the
service with a message naming the key, where it came from and what is wrong.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from admin.settings import AdminSettings
from detector.settings import DetectorSettings, RetrainSettings, WorkerSettings
from scp.settings import (
    DeliverySettings,
    DicomwebSettings,
    ReportSettings,
    ScpSettings,
    ValidationSettings,
)
from storage.settings import AssemblySettings, StorageSettings

ENV_PREFIX = "TAMPERSCAN_"


class LoggingSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["logfmt", "json"] = Field("logfmt", description="One line per event.")


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scp: ScpSettings = Field(default_factory=ScpSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    assembly: AssemblySettings = Field(default_factory=AssemblySettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    detector: DetectorSettings = Field(default_factory=DetectorSettings)
    retrain: RetrainSettings = Field(default_factory=RetrainSettings)
    admin: AdminSettings = Field(default_factory=AdminSettings)
    reports: ReportSettings = Field(default_factory=ReportSettings)
    delivery: DeliverySettings = Field(default_factory=DeliverySettings)
    dicomweb: DicomwebSettings = Field(default_factory=DicomwebSettings)
    validation: ValidationSettings = Field(default_factory=ValidationSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)


class ConfigError(Exception):
    """The configuration cannot be used; the message says which key, where, and why."""


def _parse_env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"value = {raw}")["value"]
    except tomllib.TOMLDecodeError:
        return raw


def _apply_env(data: dict[str, Any], environ: Mapping[str, str]) -> dict[tuple[str, ...], str]:
    sources: dict[tuple[str, ...], str] = {}
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        path = tuple(part.lower() for part in name[len(ENV_PREFIX) :].split("__"))
        if any(not part for part in path):
            raise ConfigError(f"environment variable {name}: empty key in the name")
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"environment variable {name}: {part} is not a section")
            node = child
        node[path[-1]] = _parse_env_value(raw)
        sources[path] = f"environment variable {name}"
    return sources


def _describe(error: Mapping[str, Any]) -> tuple[tuple[str, ...], str]:
    loc = tuple(str(part) for part in error["loc"])
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        message = "unknown key"
    elif error["type"] != "missing" and "input" in error:
        message += f" (got {error['input']!r})"
    return loc, message


def _key_name(loc: tuple[str, ...]) -> str:
    if not loc:
        return "(top level)"
    if len(loc) == 1:
        return f"[{loc[0]}]" if loc[0] in Settings.model_fields else loc[0]
    return f"[{'.'.join(loc[:-1])}] {loc[-1]}"


def _resolve_paths(settings: Settings, base: Path) -> Settings:
    def absolute(path: Path | None) -> Path | None:
        return path if path is None or path.is_absolute() else (base / path).resolve()

    storage = settings.storage.model_copy(update={"data_dir": absolute(settings.storage.data_dir)})
    tls = settings.scp.tls.model_copy(
        update={
            key: absolute(getattr(settings.scp.tls, key))
            for key in ("cert_file", "key_file", "client_ca_file")
        }
    )
    scp = settings.scp.model_copy(update={"tls": tls})
    models = [absolute(path) for path in settings.detector.models]
    detector = settings.detector.model_copy(update={"models": models})
    admin = settings.admin.model_copy(
        update={"session_secret_file": absolute(settings.admin.session_secret_file)}
    )
    return settings.model_copy(
        update={"storage": storage, "scp": scp, "detector": detector, "admin": admin}
    )


def load_config(path: Path | None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read ``path`` (None: built-in defaults), apply the environment, validate."""
    environ = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    where = "built-in defaults"
    base = Path.cwd()
    if path is not None:
        where = str(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        base = path.resolve().parent
    sources = _apply_env(data, environ)
    # TLS files are checked relative to the config folder, so resolve before validating.
    tls_sections = [data.get("scp", {}).get("tls") if isinstance(data.get("scp"), dict) else None]
    delivery = data.get("delivery")
    if isinstance(delivery, dict) and isinstance(delivery.get("dicom"), list):
        tls_sections += [d.get("tls") for d in delivery["dicom"] if isinstance(d, dict)]
    for tls in tls_sections:
        if not isinstance(tls, dict):
            continue
        for key in ("cert_file", "key_file", "client_ca_file", "ca_file"):
            if isinstance(tls.get(key), str) and tls[key] and not Path(tls[key]).is_absolute():
                tls[key] = str(base / tls[key])
            elif tls.get(key) == "":
                tls[key] = None
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            loc, message = _describe(error)
            origin = next((src for key, src in sources.items() if loc[: len(key)] == key), where)
            lines.append(f"{origin}: {_key_name(loc)}: {message}")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None
    return _resolve_paths(settings, base)
