"""docker-compose.yml: valid for the compose CLI, and consistent with TamperScan's own config
keys and with the Orthanc configuration it mounts. Docker itself does not run in CI."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tamperscan.cli import build_parser
from tamperscan.config import load_config
from tests.dicom_helpers import REPO

COMPOSE = REPO / "docker-compose.yml"


def _compose_cli() -> list[str]:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return ["docker", "compose"]  # the plugin, where Docker is installed


def test_compose_config_validates_and_requires_a_database_password() -> None:
    env = {k: v for k, v in os.environ.items() if k != "POSTGRES_PASSWORD"}
    cli = [*_compose_cli(), "-f", str(COMPOSE), "config", "-q"]
    ok = subprocess.run(cli, env={**env, "POSTGRES_PASSWORD": "pw"}, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    missing = subprocess.run(cli, env=env, capture_output=True, text=True)
    assert missing.returncode != 0 and "POSTGRES_PASSWORD" in missing.stderr


def _services() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def _environment(service: dict[str, Any]) -> dict[str, str]:
    """The service's environment as the container gets it (compose interpolation applied)."""
    values = {}
    for key, value in service.get("environment", {}).items():
        values[key] = re.sub(r"\$\{POSTGRES_PASSWORD[^}]*\}", "pw", str(value))
    return values


def test_tamperscan_services_use_real_commands_and_valid_config_keys() -> None:
    services = _services()
    assert {"orthanc", "postgres", "tamperscan", "worker", "worker-gpu"} <= set(services)
    parser = build_parser()
    for name in ("tamperscan", "worker", "worker-gpu"):
        service = services[name]
        assert parser.parse_args(service["command"]).command in ("serve", "worker")
        assert "tamperscan-data:/data" in service["volumes"]  # one shared data folder
        settings = load_config(None, environ=_environment(service))
        assert str(settings.storage.data_dir) == "/data"
        url = settings.storage.resolved_database_url()
        assert url == "postgresql+psycopg://tamperscan:pw@postgres:5432/tamperscan"
        [pacs] = settings.delivery.dicom
        assert (pacs.host, pacs.ae_title) == ("orthanc", "ORTHANC")
    assert load_config(None, environ=_environment(services["tamperscan"])).worker.enabled is False
    assert load_config(None, environ=_environment(services["worker-gpu"])).detector.device == "cuda"


def test_orthanc_forwards_to_tamperscan_and_accepts_its_reports() -> None:
    services = _services()
    orthanc = services["orthanc"]
    mounts = {v.split(":")[1]: REPO / v.split(":")[0] for v in orthanc["volumes"] if "./" in v}
    config = json.loads(mounts["/etc/orthanc/orthanc.json"].read_text())
    serve = load_config(None, environ=_environment(services["tamperscan"]))
    # Orthanc sends to the serve container by its service name, AE title and DICOM port.
    assert config["DicomModalities"]["tamperscan"] == ["TAMPERSCAN", "tamperscan", serve.scp.port]
    assert serve.scp.ae_title == "TAMPERSCAN"
    assert config["DicomAet"] in serve.scp.allowed_calling_aets
    subnet = yaml.safe_load(COMPOSE.read_text())["networks"]["tamperscan"]["ipam"]["config"]
    # The compose network, plus loopback for the image's HEALTHCHECK (`tamperscan echo`).
    assert [str(n) for n in serve.scp.allowed_hosts] == [subnet[0]["subnet"], "127.0.0.1/32"]
    assert "HEALTHCHECK" in serve.scp.allowed_calling_aets
    # Reports go back to Orthanc's DICOM port, which it stores from any AE.
    [pacs] = serve.delivery.dicom
    assert pacs.port == config["DicomPort"] and config["DicomAlwaysAllowStore"] is True
    assert any(p.endswith(f"{config['DicomPort']}:{config['DicomPort']}") for p in orthanc["ports"])
    # The forwarding script is mounted where the config names it, and stores to "tamperscan".
    [script] = config["LuaScripts"]
    lua = Path(mounts[script]).read_text()
    assert "OnStableStudy" in lua and "/modalities/tamperscan/store" in lua
