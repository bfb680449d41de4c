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


def _read_toml(path: Path, named_by: str) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{named_by}: config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"{named_by}: config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    if "aquafleet" not in data:
        return data
    table = data["aquafleet"]
    if not isinstance(table, dict):
        raise ConfigError(f"config file {path}: [aquafleet] must be a table")
    # With an [aquafleet] table, the settings are its keys: anything beside it (a key written
    # above the table, another table) would otherwise be read by nobody, without a word.
    outside = sorted(key for key in data if key != "aquafleet")
    if outside:
        raise ConfigError(
            f"invalid configuration: {outside[0]} (in {path}): outside the [aquafleet] table "
            "(put every setting in it, or write them all at the top level)"
        )
    return table


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Settings from defaults < TOML file < environment < overrides; ConfigError names the key."""
    file_path = config_file or (
        Path(os.environ[CONFIG_FILE_ENV]) if CONFIG_FILE_ENV in os.environ else None
    )
    named_by = "--config" if config_file else CONFIG_FILE_ENV
    file_values = _read_toml(file_path, named_by) if file_path else {}
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
    given = {k: v for k, v in overrides.items() if v is not None}
    init_values = {k: v for k, v in file_values.items() if k not in env_keys}
    init_values.update(given)
    try:
        return Settings(**init_values)
    except ValidationError as exc:
        problems = [
            _describe(error, file_path, set(file_values), env_keys, set(given))
            for error in exc.errors()
        ]
        raise ConfigError(
            "invalid configuration: " + "; ".join(f"{p.key}: {p.message}" for p in problems)
        ) from None


def _describe(
    error: Any,
    file_path: Path | None,
    file_keys: set[str],
    env_keys: set[str],
    flag_keys: set[str],
) -> _Problem:
    field = str(error["loc"][0]) if error["loc"] else "configuration"
    if field in flag_keys:  # a command-line flag wins over both: it is the value refused
        key = f"{field} (--{field.replace('_', '-')})"
    elif field in env_keys:
        key = f"{ENV_PREFIX}{field.upper()}"
    elif field in file_keys and file_path is not None:
        key = f"{field} (in {file_path})"
    else:
        key = f"{field} ({ENV_PREFIX}{field.upper()})" if field in Settings.model_fields else field
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        message = "unknown setting"
    elif "input" in error and field != "master_secret":
        shown = error["input"]
        shown = hide_password(shown) if isinstance(shown, str) else shown
        message = f"{message} (got {shown!r})"
    return _Problem(key, message)


def hide_password(value: str) -> str:
    """A URL's password as `***` (`postgres://aquafleet:***@db/aquafleet`); other text as is.
    For what is shown to people: messages, `aquafleet config`."""
    scheme, sep, rest = value.partition("://")
    netloc, slash, tail = rest.partition("/")
    userinfo, at, host = netloc.rpartition("@")
    if not (sep and at and ":" in userinfo):
        return value
    user = userinfo.partition(":")[0]
    return f"{scheme}://{user}:***@{host}{slash}{tail}"


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
