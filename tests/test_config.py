"""config.toml: valid as shipped, overridable from the environment, clear when wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from tamperscan.cli import main
from tamperscan.config import ConfigError, Settings, load_config
from tests.dicom_helpers import REPO


def test_shipped_config_is_valid_and_equals_the_built_in_defaults() -> None:
    shipped = load_config(REPO / "config.toml", environ={})
    defaults = Settings()
    assert shipped.storage.data_dir == (REPO / "data").resolve()
    assert shipped.model_dump(exclude={"storage": {"data_dir"}}) == defaults.model_dump(
        exclude={"storage": {"data_dir"}}
    )


def test_every_shipped_key_is_commented() -> None:
    lines = (REPO / "config.toml").read_text().splitlines()
    for number, line in enumerate(lines):
        if "=" in line and not line.lstrip().startswith("#"):
            above = lines[number - 1].strip()
            assert above.startswith("#") or "=" in above, f"key without a comment: {line}"


def test_environment_overrides_any_key() -> None:
    settings = load_config(
        REPO / "config.toml",
        environ={
            "TAMPERSCAN_SCP__PORT": "104",
            "TAMPERSCAN_SCP__ALLOWED_CALLING_AETS": '["PACS", "CT01"]',
            "TAMPERSCAN_ASSEMBLY__STABLE_AGE_S": "12.5",
            "TAMPERSCAN_STORAGE__DATABASE_URL": "postgresql://db/tamperscan",
            "TAMPERSCAN_CONFIG": "ignored-here",
        },
    )
    assert settings.scp.port == 104
    assert settings.scp.allowed_calling_aets == ["PACS", "CT01"]
    assert settings.assembly.stable_age_s == 12.5
    assert settings.storage.resolved_database_url() == "postgresql://db/tamperscan"


def test_bad_value_names_key_file_and_problem(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[scp]\nport = 70000\nallowed_hosts = ["not-an-ip"]\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    text = str(caught.value)
    assert f"{path}: [scp] port: Input should be less than or equal to 65535 (got 70000)" in text
    assert "[scp] allowed_hosts" in text and "not-an-ip" in text


def test_unknown_key_and_env_source_are_named(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[storage]\ndata_dri = 'x'\n")
    with pytest.raises(ConfigError, match=r"\[storage\] data_dri: unknown key"):
        load_config(path, environ={})
    with pytest.raises(ConfigError, match="environment variable TAMPERSCAN_WORKER__LEASE_S"):
        load_config(None, environ={"TAMPERSCAN_WORKER__LEASE_S": "soon"})


def test_broken_toml_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[scp\nport = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path, environ={})
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml", environ={})


def test_tls_needs_its_files(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[scp.tls]\nenabled = true\ncert_file = "server.pem"\nkey_file = ""\n')
    with pytest.raises(ConfigError, match=r"\[scp\] tls: .*cert_file and key_file are required"):
        load_config(path, environ={})


def test_serve_refuses_to_start_on_bad_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[worker]\nconcurrency = 0\n")
    assert main(["serve", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "refusing to start" in err and "[worker] concurrency" in err and str(path) in err
