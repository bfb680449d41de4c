"""Where settings come from: defaults < a TOML file < AQUAFLEET_* environment < overrides, with
errors that name the key as the operator wrote it; and docs/configuration.md's table, generated
from the Settings fields (gateway/config.py holds the fields themselves)."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from aquafleet.gateway.config import CONFIG_FILE_ENV, ENV_PREFIX, Settings
from aquafleet.gateway.errors import ConfigError


@dataclass(frozen=True)
class _Problem:
    key: str
    message: str


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{CONFIG_FILE_ENV}: config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    table = data.get("aquafleet", data)
    if not isinstance(table, dict):
        raise ConfigError(f"config file {path}: [aquafleet] must be a table")
    return table


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Settings from defaults < TOML file < environment < overrides; ConfigError names the key."""
    file_path = config_file or (
        Path(os.environ[CONFIG_FILE_ENV]) if CONFIG_FILE_ENV in os.environ else None
    )
    file_values = _read_toml(file_path) if file_path else {}
    env_keys = {
        name for name in Settings.model_fields if f"{ENV_PREFIX}{name.upper()}" in os.environ
    }
    unknown_env = sorted(
        key
        for key in os.environ
        if key.startswith(ENV_PREFIX)
        and key != CONFIG_FILE_ENV
        and not key.startswith("AQUAFLEET_TEST_")
        and key[len(ENV_PREFIX) :].lower() not in Settings.model_fields
    )
    if unknown_env:
        raise ConfigError(f"{unknown_env[0]}: unknown setting (see docs/configuration.md)")
    init_values = {k: v for k, v in file_values.items() if k not in env_keys}
    init_values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return Settings(**init_values)
    except ValidationError as exc:
        problems = [
            _describe(error, file_path, set(file_values), env_keys) for error in exc.errors()
        ]
        raise ConfigError(
            "invalid configuration: " + "; ".join(f"{p.key}: {p.message}" for p in problems)
        ) from None


def _describe(
    error: Any, file_path: Path | None, file_keys: set[str], env_keys: set[str]
) -> _Problem:
    field = str(error["loc"][0]) if error["loc"] else "configuration"
    if field in env_keys:
        key = f"{ENV_PREFIX}{field.upper()}"
    elif field in file_keys and file_path is not None:
        key = f"{field} (in {file_path})"
    else:
        key = f"{field} ({ENV_PREFIX}{field.upper()})" if field in Settings.model_fields else field
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        message = "unknown setting"
    elif "input" in error and field != "master_secret":
        message = f"{message} (got {error['input']!r})"
    return _Problem(key, message)


def settings_reference() -> str:
    """docs/configuration.md's table, generated from the Settings fields."""
    lines = [
        "| setting | environment variable | default | meaning |",
        "|---|---|---|---|",
    ]
    for name, field in Settings.model_fields.items():
        default = field.default
        shown = "(none)" if default is None else f"`{default}`"
        lines.append(f"| `{name}` | `{ENV_PREFIX}{name.upper()}` | {shown} | {field.description} |")
    return "\n".join(lines) + "\n"
