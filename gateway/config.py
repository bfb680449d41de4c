"""All configuration in one place: AQUAFLEET_* environment variables, an optional TOML file.

Precedence: command-line flags > environment > TOML file > defaults (read by
gateway/config_sources.py). Every setting, its variable and its default are listed in
docs/configuration.md (generated from this module by `aquafleet config --docs`, and checked by
a test).
"""

from __future__ import annotations

import os
import secrets
import socket
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from aquafleet.gateway.errors import ConfigError
from aquafleet.gateway.startup import TCP_BACKLOG

ENV_PREFIX = "AQUAFLEET_"
EMBEDDED_DATABASE = "aquafleet.sqlite3"  # in data_dir, when no database_url is set
CONFIG_FILE_ENV = "AQUAFLEET_CONFIG"


class Settings(BaseSettings):
    """aquafleet settings. Field descriptions become docs/configuration.md."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", validate_default=True, frozen=True
    )

    data_dir: Path = Field(
        Path("aquafleet-data"),
        description="Directory for the SQLite database, the embedded Redis and the master key.",
    )
    database_url: str | None = Field(
        None,
        description="Tortoise database URL (sqlite://PATH or postgres://USER@HOST:PORT/DB). "
        "Default: a SQLite file in data_dir.",
    )
    migrate_on_start: bool = Field(
        True, description="Apply pending database migrations when `serve` starts."
    )
    redis_url: str | None = Field(
        None,
        description="Redis URL (redis://, rediss://, unix://, or redis+cluster://HOST:PORT naming "
        "any node of a Redis Cluster). Default: start and supervise an embedded redis-server "
        "persisting to data_dir/redis.",
    )
    redis_prefix: str = Field(
        "aq", min_length=1, max_length=32, description="Prefix of every Redis key aquafleet uses."
    )
    redis_shards: int = Field(
        16,
        ge=1,
        le=1024,
        description="Hash-tag shards of the device keyspace (one ledger stream per shard; on a "
        "Redis Cluster one Lua call per shard and round). Fixed for the life of the data.",
    )
    embedded_redis_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="TCP port of the embedded Redis on 127.0.0.1 (0: Unix socket only).",
    )
    ledger_retention_days: int = Field(
        400,
        ge=0,
        description="Raw ledger records (usage_record) older than this many days are removed, "
        "hourly, by the scheduler's owner: on PostgreSQL a whole monthly partition once all of "
        "its month is older, on SQLite row by row; the per-day rollups stay. 0: keep them for "
        "good.",
    )
    redis_ack_replicas: int = Field(
        0,
        ge=0,
        le=8,
        description="Replicas that must hold a metering round before its records are acked, and "
        "what the ledger writer read before it commits it (Redis WAIT, once per round and "
        "master). 1 on a Redis Cluster with replicas: an ack then survives a master's death "
        "(docs/deploy.md). 0: Redis' asynchronous replication.",
    )
    redis_ack_timeout_ms: int = Field(
        1000,
        ge=1,
        le=60_000,
        description="How long a WAIT for redis_ack_replicas may take; when it runs out the "
        "round is not acked (the devices resend it) and reading pauses as in an outage.",
    )
    master_secret: SecretStr | None = Field(
        None,
        description="Hex master secret (>= 32 bytes) device keys are derived from. Default: "
        "generated once into data_dir/master.key. Never logged.",
    )
    node_id: str | None = Field(
        None, description="Name of this gateway node in presence records. Default: host-pid."
    )
    tcp_host: str = Field("0.0.0.0", description="Address of the device TCP listener.")
    tcp_port: int = Field(7700, ge=0, le=65535, description="Port of the device TCP listener.")
    http_host: str = Field("0.0.0.0", description="Address of the REST API.")
    http_port: int = Field(8080, ge=0, le=65535, description="Port of the REST API.")
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description="Gateway processes `serve` runs (a device socket each, sharing the port).",
    )
    tcp_backlog: int = Field(
        TCP_BACKLOG,
        ge=1,
        le=1 << 20,
        description="Connections the kernel queues for each worker's device socket until it "
        "accepts them (a reconnect storm waits there); Linux caps it at net.core.somaxconn.",
    )
    heartbeat_s: int = Field(
        60, ge=2, le=3600, description="Heartbeat told to devices; idle timeout is 2.5x this."
    )
    login_timeout_s: float = Field(
        15.0,
        gt=0,
        le=120,
        description="Time a device has to send its AUTH; the answer to an AUTH is due as long "
        "after it arrived (docs/protocol.md).",
    )
    max_connections: int = Field(
        60000, ge=1, description="Device connections one node accepts before refusing more."
    )
    failed_logins_per_ip: int = Field(
        30, ge=1, description="Failed logins from one IP within the window before it is refused."
    )
    failed_login_window_s: int = Field(60, ge=1, description="Window of the failed-login limit.")
    meter_batch_max: int = Field(
        4000, ge=1, le=100000, description="Most records one metering round trip carries."
    )
    meter_linger_ms: float = Field(
        0.0,
        ge=0,
        le=50,
        description="Time a metering round waits for more records when few are pending (a "
        "round costs Redis a script call and the ledger a stream entry, per shard on a Redis "
        "Cluster, however few records it carries): less CPU per record with devices that send "
        "one record at a time, for that much more ack latency.",
    )
    coalesce_acks: bool = Field(
        True,
        description="Ack only the last of the records of a boot stored in one round (its "
        "watermark covers the others); false: one ACK per record, for firmware that ignores "
        "watermarks.",
    )
    pending_pause_records: int = Field(
        20000,
        ge=100,
        description="Records waiting for Redis at which the node stops reading from sockets.",
    )
    backlog_pause_records: int = Field(
        500000,
        ge=1000,
        description="Ledger records not yet in the database at which nodes stop reading.",
    )
    ledger_writer: bool = Field(
        True, description="Run a ledger writer (Redis stream -> database) in this process."
    )
    registry_sync: bool = Field(
        True,
        description="Apply device changes from the database to the registry copy in Redis "
        "every 5 s in this process; `serve --workers N` runs it in the first worker only (they "
        "share one Redis).",
    )
    ledger_batch: int = Field(
        8000,
        ge=1,
        le=50000,
        description="Records a ledger read aims for: a read of fewer waits ledger_linger_ms for "
        "more (unless a stream filled its page); a read takes at most ledger_batch / 100 "
        "entries (metering rounds) per stream. Larger: fewer, larger transactions under heavy "
        "load (a transaction writes an index page per device in it, so rows of one device "
        "share it), each holding SQLite's write lock longer (docs/benchmarks.md, session 14).",
    )
    ledger_linger_ms: float = Field(
        200.0,
        ge=0,
        le=5000,
        description="When a ledger read brings fewer than ledger_batch records and no stream "
        "filled its page (more waiting), the writer waits "
        "this long and reads once more before it writes them: fewer, larger transactions (most "
        "of a transaction's cost is per commit and per device in it). Only the database lags by "
        "it; devices are acked once Redis holds their records. 0: write every read at once.",
    )
    ledger_snapshot_interval_ms: float = Field(
        1000.0,
        ge=0,
        le=60000,
        description="A device's snapshot (its newest readings: TDS, temperature, filters, "
        "faults) is written at most once in this interval; a newer one waits, the newest only, "
        "for the first transaction after it (or the idle writer within a second; a graceful "
        "stop writes them all). Spares the upsert per device per transaction for devices "
        "reporting faster than the ledger's linger; records and water are never delayed by it. "
        "A crash of the writer loses held readings at most this old of devices that have not "
        "reported since. 0: every transaction writes its snapshots.",
    )
    ledger_claim_idle_s: int = Field(
        60, ge=5, description="Idle time after which a dead writer's pending entries are claimed."
    )
    filter_threshold_pct: int = Field(
        10,
        ge=0,
        le=100,
        description="Filter life left (percent) below which the ledger writer opens a "
        "maintenance ticket, once per filter cycle; 0: no maintenance tickets.",
    )
    rental_scheduler: bool = Field(
        True,
        description="Take part in running the time-rental scheduler (one node of a cluster "
        "holds it at a time).",
    )
    rental_reminder_days: int = Field(
        3, ge=0, le=60, description="Days before a rental expires that its reminder is recorded."
    )
    rental_grace_days: int = Field(
        7,
        ge=0,
        le=365,
        description="Days after a rental expired without renewal that a dismantle ticket opens.",
    )
    ticket_sla: str = Field(
        "install=72,exchange=72,return=72,fault=24,maintenance=72,dismantle=168",
        description="Hours per ticket type an open ticket may take before AE-02 counts it "
        "overdue (type=hours, comma separated; types left out: 72).",
    )
    dispatch_radius_km: int = Field(
        50, ge=1, le=1000, description="How far dispatch by distance looks for a technician."
    )
    notify_sender: bool = Field(
        True, description="Run a notification sender (outbox -> WeChat/SMS) in this process."
    )
    order_timers: bool = Field(
        True,
        description="Take part in running the order timers (unpaid orders close, delivered "
        "ones are received, the return window ends); one node of a cluster holds them at a "
        "time. Off: run `aquafleet orders run-timers` from cron instead.",
    )
    order_timer_interval_s: float = Field(
        60.0, gt=0, le=3600, description="How often the node holding the order timers sweeps."
    )
    order_unpaid_close_h: int = Field(
        24, ge=1, le=24 * 90, description="Hours after which an unpaid order closes itself."
    )
    order_auto_receive_days: int = Field(
        10, ge=1, le=365, description="Days after delivery that an order counts as received."
    )
    presence_flush_s: float = Field(
        5.0, gt=0, le=60, description="How often last-seen times are written to Redis."
    )
    presence_history_size: int = Field(
        50,
        ge=1,
        le=1000,
        description="Sessions a device's presence history lists, the current or last one "
        "included (each kept 90 days after the device's last login).",
    )
    shutdown_grace_s: float = Field(
        10.0, ge=0, le=300, description="Time SIGTERM gives in-flight records to become durable."
    )
    api_access_token_ttl_s: int = Field(
        900, ge=60, le=86400, description="Lifetime of an API access token (bearer)."
    )
    api_token_cache_s: float = Field(
        5.0,
        ge=0,
        le=60,
        description="How long a node may answer an access token it verified from memory, "
        "while it follows the revocation channel (logout, password change and rotation reach "
        "every node at once through it); 0: every request reads the session from Redis.",
    )
    api_refresh_token_ttl_s: int = Field(
        14 * 86400,
        ge=300,
        le=90 * 86400,
        description="Lifetime of an API refresh token; each refresh rotates it.",
    )
    api_signature_window_s: int = Field(
        300,
        ge=30,
        le=3600,
        description="Clock skew a signed API request may have; older or newer ones are refused.",
    )
    admin_login_free_attempts: int = Field(
        5,
        ge=1,
        le=1000,
        description="Admin login attempts per user name and client IP before each further one "
        "waits; a successful login from that IP clears them (docs/api-auth.md).",
    )
    admin_login_max_wait_s: int = Field(
        900,
        ge=1,
        le=86400,
        description="The wait before a further admin login attempt starts at 1 s and doubles "
        "with each one, up to this.",
    )
    admin_login_per_ip: int = Field(
        60, ge=1, description="Admin login attempts per client IP within the login window."
    )
    admin_login_window_s: int = Field(
        900,
        ge=1,
        description="Window of the per-IP admin login limit; attempts of a user name and IP "
        "are forgotten this long after the last one.",
    )
    member_login_free_attempts: int = Field(
        5,
        ge=1,
        le=1000,
        description="Member login attempts per mobile and client IP before each further one "
        "waits; a successful login from that IP clears them (docs/api-members.md).",
    )
    member_login_max_wait_s: int = Field(
        900,
        ge=1,
        le=86400,
        description="The wait before a further member login attempt starts at 1 s and doubles "
        "with each one, up to this.",
    )
    member_login_per_ip: int = Field(
        60,
        ge=1,
        description="Member login and WeChat sign-in attempts per client IP within the login "
        "window.",
    )
    member_login_window_s: int = Field(
        900,
        ge=1,
        description="Window of the per-IP member login limit; attempts of a mobile and IP are "
        "forgotten this long after the last one.",
    )
    sms_provider: Literal["log", "aliyun"] = Field(
        "log",
        description="Who sends SMS verification codes: log (development: the code is logged "
        "at debug level only, nothing is sent) or aliyun (Aliyun SMS, dysmsapi SendSms).",
    )
    sms_endpoint: str = Field(
        "https://dysmsapi.aliyuncs.com/", description="URL of the SMS provider's API."
    )
    sms_access_key_id: str = Field("", max_length=128, description="Aliyun AccessKey ID.")
    sms_access_key_secret: SecretStr | None = Field(
        None, description="Aliyun AccessKey secret. Never logged."
    )
    sms_sign_name: str = Field(
        "", max_length=64, description="Approved SMS sign name (签名), e.g. the brand."
    )
    sms_template_code: str = Field(
        "",
        max_length=64,
        description="Approved SMS template code (模板CODE); the template takes one variable, "
        "${code}.",
    )
    commission_min_withdrawal_fen: int = Field(
        100,
        ge=1,
        le=100_000_000,
        description="The smallest commission withdrawal (AE-03), in fen (docs/commissions.md).",
    )
    wechat_api_url: str = Field(
        "https://api.weixin.qq.com",
        description="Base URL of WeChat's HTTP API (member sign-in with WeChat).",
    )
    wechatpay_api_url: str = Field(
        "https://api.mch.weixin.qq.com",
        description="Base URL of WeChat Pay API v3 (docs/payments.md; the fake's in development).",
    )
    allinpay_api_url: str = Field(
        "https://vsp.allinpay.com",
        description="Base URL of Allinpay 收银宝's unified API, the card acquirer "
        "(docs/payments.md; the fake's in development).",
    )
    alipay_gateway_url: str = Field(
        "https://openapi.alipay.com/gateway.do",
        description="Alipay Open Platform's gateway (docs/payments.md; the fake's in development; "
        "the sandbox is https://openapi-sandbox.dl.alipaydev.com/gateway.do).",
    )
    payments_notify_url: str = Field(
        "",
        max_length=255,
        description="Public base URL WeChat Pay posts payment and refund notifications to, "
        "e.g. https://api.example.com (the path /api/v1/payments/... is appended). Unset: "
        "WeChat Pay prepay (AD-07) answers payment_not_configured.",
    )
    payments_sweep_interval_s: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="How often the node holding the payments lease executes due refunds, "
        "closes the bills of closed orders and queries late ones (docs/payments.md).",
    )
    payments_query_after_s: int = Field(
        60,
        ge=1,
        le=86_400,
        description="A bill with no notification this long after its prepay is queried at the "
        "channel by the payments sweep, then again after 1, 2, 5, 10, 30 and then every 60 "
        "times this (a backoff kept on the bill); a number a bill left open at a provider is "
        "asked about at most this often (docs/payments.md).",
    )
    mqtt_url: str | None = Field(
        None,
        description="MQTT broker of ESP8266 devices (mqtt://HOST:PORT or mqtts://HOST:PORT). "
        "Unset: no MQTT bridge. See docs/mqtt.md.",
    )
    mqtt_username: str = Field(
        "aquafleet-gateway",
        min_length=1,
        max_length=64,
        description="User name the bridge connects to the broker with; the broker auth "
        "endpoints treat it as the bridge (superuser).",
    )
    mqtt_password: SecretStr | None = Field(
        None,
        description="Password of the bridge's broker account; unset: the broker auth endpoints "
        "refuse the bridge user (fine for a broker without auth). Never logged.",
    )
    mqtt_topic_prefix: str = Field(
        "aq",
        min_length=1,
        max_length=32,
        pattern=r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$",
        description="First topic level(s) of device topics: <prefix>/<did>/up/tele, ...",
    )
    mqtt_share_group: str = Field(
        "aquafleet",
        min_length=1,
        max_length=32,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="Shared-subscription group of the bridges ($share/<group>/...): nodes of "
        "one group split the uplink.",
    )
    mqtt_queue_max: int = Field(
        20000,
        ge=100,
        le=1_000_000,
        description="Uplink messages received and not yet handled; beyond it the newest are "
        "dropped and counted (devices resend what is not acked).",
    )
    mqtt_outbound_max: int = Field(
        50000,
        ge=100,
        le=1_000_000,
        description="Acks and commands waiting for the broker; beyond it the oldest are "
        "dropped and counted.",
    )
    metrics_token: SecretStr | None = Field(
        None,
        description="Bearer token GET /metrics requires (Authorization: Bearer ...), at least 32 "
        "characters; without one, /metrics answers loopback clients only (a scraper on the same "
        "host, or behind a proxy that adds the header).",
    )
    console_tile_url: str | None = Field(
        None,
        max_length=500,
        description="Map tiles of the console's device map, https://HOST/.../{z}/{x}/{y}.png "
        "(the operator's map provider); unset: markers over a plain background (offline).",
    )
    console_feed_interval_s: float = Field(
        2.0,
        ge=0.1,
        le=60,
        description="How often the console's live fleet overview (GET /api/v1/fleet/overview "
        "as an event stream) sends fresh counts.",
    )
    fleet_sampler: bool = Field(
        True,
        description="Take part in sampling the fleet's online devices for the console's "
        "history charts (one node of a cluster holds it at a time).",
    )
    fleet_sample_interval_s: int = Field(
        300,
        ge=1,
        le=3600,
        description="How often the online devices are sampled (per vendor and agent node) "
        "for GET /api/v1/fleet/statistics; must divide 3600 (the hourly samples are kept 31 "
        "days, the others 26 h).",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Log level."
    )
    log_format: Literal["auto", "json", "console"] = Field(
        "auto",
        description="auto: human-readable lines on a terminal, JSON otherwise; json: one JSON "
        "object per line; console: human-readable lines.",
    )

    @field_validator("master_secret")
    @classmethod
    def _check_master_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            try:
                raw = bytes.fromhex(value.get_secret_value())
            except ValueError:
                raise ValueError("must be hexadecimal") from None
            if len(raw) < 32:
                raise ValueError("must be at least 32 bytes (64 hex digits)")
        return value

    @field_validator("fleet_sample_interval_s")
    @classmethod
    def _check_fleet_sample_interval(cls, value: int) -> int:
        if 3600 % value:
            raise ValueError("must divide 3600 (e.g. 60, 300, 600, 900, 3600)")
        return value

    @field_validator("ticket_sla")
    @classmethod
    def _check_ticket_sla(cls, value: str) -> str:
        from aquafleet.models.errors import InvalidInput
        from aquafleet.models.ticket_flow import parse_sla

        try:
            parse_sla(value)
        except InvalidInput as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("metrics_token")
    @classmethod
    def _check_metrics_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            token = value.get_secret_value()
            if len(token) < 32 or not token.isascii() or not token.isprintable() or " " in token:
                raise ValueError("must be at least 32 printable ASCII characters, no spaces")
        return value

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("sqlite://", "postgres://", "psycopg://")):
            raise ValueError("must start with sqlite:// or postgres://")
        if value is not None and not value.startswith("sqlite://"):
            # Without one, the driver picks a database named like the user (`postgres://` alone
            # migrated whatever database the local socket's user owned).
            netloc, _, database = value.partition("://")[2].partition("?")[0].partition("/")
            if not database.strip("/") or not netloc.rpartition("@")[2]:
                raise ValueError("must name its host and database: postgres://USER@HOST:PORT/DB")
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        schemes = ("redis://", "rediss://", "unix://", "redis+cluster://")
        if value is not None and not value.startswith(schemes):
            raise ValueError("must start with redis://, rediss://, unix:// or redis+cluster://")
        return value

    @field_validator("console_tile_url")
    @classmethod
    def _check_tile_url(cls, value: str | None) -> str | None:
        if value is not None:
            if not value.startswith(("https://", "http://")):
                raise ValueError("must start with https:// or http://")
            if not all(part in value for part in ("{z}", "{x}", "{y}")) or any(
                c in value for c in "\"'<> "
            ):
                raise ValueError("must hold {z}, {x} and {y}, and no quotes, spaces or <>")
        return value

    @field_validator("mqtt_url")
    @classmethod
    def _check_mqtt_url(cls, value: str | None) -> str | None:
        if value is not None:
            scheme, _, rest = value.partition("://")
            if scheme not in ("mqtt", "mqtts") or not rest.split(":")[0]:
                raise ValueError("must be mqtt://HOST[:PORT] or mqtts://HOST[:PORT]")
        return value

    @model_validator(mode="after")
    def _check_sms(self) -> Settings:
        if self.sms_provider == "aliyun" and not (
            self.sms_access_key_id
            and self.sms_access_key_secret
            and self.sms_sign_name
            and self.sms_template_code
        ):
            raise ValueError(
                "sms_provider aliyun needs sms_access_key_id, sms_access_key_secret, "
                "sms_sign_name and sms_template_code"
            )
        return self

    @model_validator(mode="after")
    def _check_ports(self) -> Settings:
        same_port = self.tcp_port and self.tcp_port == self.http_port
        if same_port and self.tcp_host == self.http_host:
            raise ValueError("tcp_port and http_port must differ")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings)

    # ------------------------------------------------------------------ derived values

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite://{self.embedded_database}"

    @property
    def embedded_database(self) -> Path:
        """The SQLite file of the embedded default (no database_url): data_dir/aquafleet.sqlite3."""
        return (self.data_dir / EMBEDDED_DATABASE).resolve()

    def require_platform_data(self) -> None:
        """For a command that reads or changes the platform's data (not serve, not migrate):
        on the embedded default, ConfigError when data_dir holds no database. Run in the wrong
        directory, such a command used to create and migrate an empty ./aquafleet-data and
        report 0 devices, as if the fleet were gone. A configured database_url is the
        operator's own naming: it is used as it is."""
        if self.database_url is not None or self.embedded_database.is_file():
            return
        raise ConfigError(
            f"no platform data in data_dir {self.data_dir.resolve()} (no {EMBEDDED_DATABASE} "
            "there): run this where `aquafleet serve` runs, or name its data dir with "
            "--data-dir DIR, AQUAFLEET_DATA_DIR or --config FILE (a new platform's data is "
            "made by `aquafleet serve` or `aquafleet migrate`)"
        )

    @property
    def resolved_node_id(self) -> str:
        return self.node_id or f"{socket.gethostname()}-{os.getpid()}"

    def master_secret_bytes(self) -> bytes:
        """The configured master secret, or the one kept in data_dir/master.key (made once)."""
        if self.master_secret is not None:
            return bytes.fromhex(self.master_secret.get_secret_value())
        return load_or_create_master_key(self.data_dir / "master.key")


def load_or_create_master_key(path: Path) -> bytes:
    """The master key kept in data_dir/master.key, made once; ConfigError when it cannot be."""
    try:
        if path.exists():
            secret = bytes.fromhex(path.read_text().strip())
            if len(secret) < 32:
                raise ValueError("shorter than 32 bytes")
            return secret
        path.parent.mkdir(parents=True, exist_ok=True)
        secret = secrets.token_bytes(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secret.hex() + "\n")
        return secret
    except OSError as exc:
        problem = f"cannot use it: {exc.strerror or exc}"
    except ValueError as exc:  # never echo the file's contents: it is the secret
        problem = f"not a hex master key ({str(exc).split(':')[0]})"
    raise ConfigError(
        f"master key {path} (in data_dir; or set master_secret, AQUAFLEET_MASTER_SECRET): {problem}"
    )
