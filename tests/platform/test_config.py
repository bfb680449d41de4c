"""Configuration: environment over TOML over defaults; a bad value names its key."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from aquafleet.gateway.config_sources import load_settings, settings_reference
from aquafleet.gateway.errors import ConfigError


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch):
    def set_env(**values: str) -> None:
        for key, value in values.items():
            monkeypatch.setenv(key, value)

    return set_env


def test_defaults_are_the_embedded_quick_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    settings = load_settings()
    assert settings.redis_url is None  # embedded redis-server
    assert (
        settings.resolved_database_url
        == f"sqlite://{tmp_path / 'aquafleet-data' / 'aquafleet.sqlite3'}"
    )
    assert (settings.tcp_port, settings.http_port) == (7700, 8080)


def test_environment_overrides_the_toml_file(tmp_path: Path, env):
    config = tmp_path / "aquafleet.toml"
    config.write_text('tcp_port = 9000\nhttp_port = 9001\nredis_prefix = "fromfile"\n')
    env(AQUAFLEET_TCP_PORT="9100")
    settings = load_settings(config)
    assert settings.tcp_port == 9100  # environment wins
    assert settings.http_port == 9001  # file beats default
    assert settings.redis_prefix == "fromfile"


def test_an_aquafleet_table_in_the_file_is_read(tmp_path: Path):
    config = tmp_path / "aquafleet.toml"
    config.write_text("[aquafleet]\nheartbeat_s = 30\n")
    assert load_settings(config).heartbeat_s == 30


def test_a_bad_environment_value_names_the_variable(env):
    env(AQUAFLEET_TCP_PORT="seventy")
    with pytest.raises(ConfigError, match="AQUAFLEET_TCP_PORT"):
        load_settings()


def test_a_bad_file_value_names_the_key_and_the_file(tmp_path: Path):
    config = tmp_path / "aquafleet.toml"
    config.write_text("heartbeat_s = 1\n")
    with pytest.raises(ConfigError, match=r"heartbeat_s \(in .*aquafleet.toml\)"):
        load_settings(config)


def test_unknown_settings_are_refused(tmp_path: Path, env):
    config = tmp_path / "aquafleet.toml"
    config.write_text("tcp_prot = 1\n")
    with pytest.raises(ConfigError, match=r"tcp_prot.*unknown setting"):
        load_settings(config)
    env(AQUAFLEET_REDIS_URLL="redis://x")
    with pytest.raises(ConfigError, match="AQUAFLEET_REDIS_URLL: unknown setting"):
        load_settings()


def test_urls_are_checked(env):
    env(AQUAFLEET_REDIS_URL="http://localhost")
    with pytest.raises(ConfigError, match="AQUAFLEET_REDIS_URL"):
        load_settings()


def test_a_short_master_secret_is_refused_without_echoing_it(env):
    env(AQUAFLEET_MASTER_SECRET="abcd")
    with pytest.raises(ConfigError, match="AQUAFLEET_MASTER_SECRET") as error:
        load_settings()
    assert "abcd" not in str(error.value)


def test_a_missing_config_file_is_reported(tmp_path: Path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")


def test_the_master_key_is_made_once_and_private(tmp_path: Path):
    settings = load_settings(data_dir=tmp_path / "data")
    first = settings.master_secret_bytes()
    assert len(first) == 32
    assert settings.master_secret_bytes() == first
    mode = stat.S_IMODE(os.stat(tmp_path / "data" / "master.key").st_mode)
    assert mode == 0o600


def test_the_settings_reference_is_in_the_docs():
    docs = Path(__file__).parents[2] / "docs" / "configuration.md"
    assert settings_reference() in docs.read_text(), "run: aquafleet config --docs"


def test_keys_beside_the_aquafleet_table_are_refused(tmp_path: Path):
    config = tmp_path / "aquafleet.toml"
    config.write_text('log_level = "debug"\n[aquafleet]\nworkers = 2\n')  # read by nobody
    with pytest.raises(ConfigError, match=r"log_level \(in .*\): outside the \[aquafleet\] table"):
        load_settings(config)
    config.write_text("[aquafleet]\nworkers = 2\n[aquafleeet]\nheartbeat_s = 30\n")
    with pytest.raises(ConfigError, match=r"aquafleeet \(in .*\): outside the \[aquafleet\]"):
        load_settings(config)


def test_a_bad_flag_value_is_blamed_on_the_flag(tmp_path: Path, env):
    config = tmp_path / "aquafleet.toml"
    config.write_text("workers = 2\n")
    env(AQUAFLEET_TCP_PORT="7700")
    with pytest.raises(ConfigError) as error:
        load_settings(config, workers=0, tcp_port=-1)
    assert "workers (--workers): Input should be greater than or equal to 1" in str(error.value)
    assert "tcp_port (--tcp-port)" in str(error.value)
    assert "aquafleet.toml" not in str(error.value) and "AQUAFLEET_" not in str(error.value)


def test_a_missing_config_file_names_where_it_was_named(tmp_path: Path, env):
    with pytest.raises(ConfigError, match=r"^--config: config file .* does not exist"):
        load_settings(tmp_path / "nope.toml")
    env(AQUAFLEET_CONFIG=str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigError, match=r"^AQUAFLEET_CONFIG: config file .* does not exist"):
        load_settings()


@pytest.mark.parametrize(
    "url",
    [
        "postgres://",
        "postgres://aquafleet@db:5432",
        "postgres://aquafleet@db:5432/",
        "postgres:///x",
    ],
)
def test_a_postgres_url_must_name_its_host_and_database(env, url: str):
    env(AQUAFLEET_DATABASE_URL=url)
    with pytest.raises(
        ConfigError, match=r"AQUAFLEET_DATABASE_URL: .*must name its host and database"
    ):
        load_settings()


def test_a_password_in_a_refused_url_is_not_echoed(env):
    env(AQUAFLEET_DATABASE_URL="postgres://aquafleet:hunter2@db.internal:5432/")
    with pytest.raises(ConfigError) as error:
        load_settings()
    assert "hunter2" not in str(error.value)
    assert "postgres://aquafleet:***@db.internal:5432/" in str(error.value)


def test_aquafleet_config_shows_no_url_password(
    tmp_path: Path, env, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    from aquafleet.cli import main

    monkeypatch.chdir(tmp_path)
    env(
        AQUAFLEET_DATABASE_URL="postgres://aquafleet:hunter2@db.internal:5432/aquafleet",
        AQUAFLEET_REDIS_URL="redis://:s3cret@redis.internal:6379/0",
    )
    for args in (["config"], ["config", "--json"]):
        assert main(args) == 0
        out = capsys.readouterr().out
        assert "hunter2" not in out and "s3cret" not in out
        assert "postgres://aquafleet:***@db.internal:5432/aquafleet" in out
        assert "redis://:***@redis.internal:6379/0" in out
