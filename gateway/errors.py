"""The gateway's exception root; third-party errors are translated into these at the boundary."""

from __future__ import annotations


class GatewayError(Exception):
    """Something the gateway cannot do; the message says what and, where known, why."""


class ConfigError(GatewayError):
    """Invalid configuration; the message names the setting."""


class RedisUnavailable(GatewayError):
    """Redis did not answer or refused a command."""


class ScriptFailed(GatewayError):
    """A Lua script raised an error: a bug or bad data, not an outage; retrying will not help."""


class EmbeddedRedisError(GatewayError):
    """The embedded redis-server could not be found or started."""
