"""One validated settings object; every field has an environment twin (CONTRACT section 4)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.errors import InputError
from store.ddl import CLUSTER_NAME, DeploymentMode

__all__ = ["Settings", "SettingsError", "load_settings"]


def _env(name: str) -> AliasChoices:
    return AliasChoices(name, name.lower())


class SettingsError(InputError):
    """Every invalid setting at once, each named by its environment variable."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    kafka_bootstrap_servers: Annotated[
        str, Field(validation_alias=_env("KAFKA_BOOTSTRAP_SERVERS"), min_length=1)
    ] = "127.0.0.1:9092"
    events_topic: Annotated[
        str, Field(validation_alias=_env("METERING_EVENTS_TOPIC"), pattern=r"^[A-Za-z0-9._-]+$")
    ] = "usage.events"
    dlq_topic: Annotated[
        str, Field(validation_alias=_env("METERING_DLQ_TOPIC"), pattern=r"^[A-Za-z0-9._-]+$")
    ] = "usage.events.dlq"
    # `metering correct` publishes here; the worker owning the store applies each record.
    corrections_topic: Annotated[
        str,
        Field(validation_alias=_env("METERING_CORRECTIONS_TOPIC"), pattern=r"^[A-Za-z0-9._-]+$"),
    ] = "usage.corrections"
    kafka_security_protocol: Annotated[
        Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"],
        Field(validation_alias=_env("KAFKA_SECURITY_PROTOCOL")),
    ] = "PLAINTEXT"
    kafka_sasl_mechanism: Annotated[
        Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None,
        Field(validation_alias=_env("KAFKA_SASL_MECHANISM")),
    ] = None
    kafka_sasl_username: Annotated[
        str | None, Field(validation_alias=_env("KAFKA_SASL_USERNAME"))
    ] = None
    kafka_sasl_password: Annotated[
        SecretStr | None, Field(validation_alias=_env("KAFKA_SASL_PASSWORD"))
    ] = None
    kafka_ssl_cafile: Annotated[str | None, Field(validation_alias=_env("KAFKA_SSL_CAFILE"))] = None
    kafka_ssl_certfile: Annotated[
        str | None, Field(validation_alias=_env("KAFKA_SSL_CERTFILE"))
    ] = None
    kafka_ssl_keyfile: Annotated[str | None, Field(validation_alias=_env("KAFKA_SSL_KEYFILE"))] = (
        None
    )
    topic_replication_factor: Annotated[
        int, Field(validation_alias=_env("METERING_TOPIC_REPLICATION_FACTOR"), ge=1, le=7)
    ] = 1
    topic_retention_hours: Annotated[
        int, Field(validation_alias=_env("METERING_TOPIC_RETENTION_HOURS"), ge=-1)
    ] = 1008
    # The local server of infra/clickhouse/start (CONTRACT section 4), or any server.
    clickhouse_url: Annotated[str, Field(validation_alias=_env("CLICKHOUSE_URL"))] = (
        "http://127.0.0.1:8123"
    )
    # None: inferred from CLICKHOUSE_URL (see effective_clickhouse_mode).
    clickhouse_mode: Annotated[
        Literal["embedded", "server", "cluster"] | None,
        Field(validation_alias=_env("CLICKHOUSE_MODE")),
    ] = None
    clickhouse_cluster: Annotated[
        str | None, Field(validation_alias=_env("CLICKHOUSE_CLUSTER"), validate_default=True)
    ] = None
    consumer_group: Annotated[
        str, Field(validation_alias=_env("METERING_CONSUMER_GROUP"), pattern=r"^[A-Za-z0-9._-]+$")
    ] = "govmeter"
    topic_partitions: Annotated[
        int, Field(validation_alias=_env("METERING_TOPIC_PARTITIONS"), ge=1, le=1024)
    ] = 6
    batch_max_events: Annotated[
        int, Field(validation_alias=_env("METERING_BATCH_MAX_EVENTS"), ge=1, le=1_000_000)
    ] = 20_000
    batch_max_seconds: Annotated[
        float, Field(validation_alias=_env("METERING_BATCH_MAX_SECONDS"), gt=0, le=60)
    ] = 1.0
    batch_min_seconds: Annotated[
        float, Field(validation_alias=_env("METERING_BATCH_MIN_SECONDS"), ge=0, le=60)
    ] = 0.25
    store_retry_max_seconds: Annotated[
        float, Field(validation_alias=_env("METERING_STORE_RETRY_MAX_SECONDS"), gt=0, le=600)
    ] = 30.0
    # Tries of a store step that fails in a way retrying does not fix (credentials,
    # schema, a bug) before the worker stops; transient failures are retried forever.
    store_fatal_tries: Annotated[
        int, Field(validation_alias=_env("METERING_STORE_FATAL_TRIES"), ge=1, le=100)
    ] = 3
    # chdb:// with no path (or `memory`) keeps the store in the worker's memory: every
    # count vanishes with the process. A worker refuses it unless this is set.
    allow_ephemeral_store: Annotated[
        bool, Field(validation_alias=_env("METERING_ALLOW_EPHEMERAL_STORE"))
    ] = False
    # The longest an event may arrive after it occurred and still be counted (CONTRACT:
    # "however late"); the events topic must keep messages at least this long.
    max_lateness_days: Annotated[
        int, Field(validation_alias=_env("METERING_MAX_LATENESS_DAYS"), ge=1, le=36500)
    ] = 35
    session_timeout_seconds: Annotated[
        float, Field(validation_alias=_env("METERING_SESSION_TIMEOUT_SECONDS"), ge=6, le=300)
    ] = 10.0
    intake: Annotated[
        Literal["batch", "agent"], Field(validation_alias=_env("METERING_INTAKE"))
    ] = "batch"
    raw_retention_days: Annotated[
        int, Field(validation_alias=_env("METERING_RAW_RETENTION_DAYS"), ge=35, le=36500)
    ] = 400
    dedupe_filter_mb: Annotated[
        int, Field(validation_alias=_env("METERING_DEDUPE_FILTER_MB"), ge=0, le=4096)
    ] = 64
    health_host: Annotated[str, Field(validation_alias=_env("METERING_HEALTH_HOST"))] = "127.0.0.1"
    health_port: Annotated[
        int, Field(validation_alias=_env("METERING_HEALTH_PORT"), ge=0, le=65535)
    ] = 9464
    worker_name: Annotated[str, Field(validation_alias=_env("METERING_WORKER_NAME"))] = ""
    # Every writer registers in the store and beats this often (server clock). One
    # silent for writer_timeout_seconds may have a lease it holds taken over; nothing
    # that decides a count waits for it (docs/several-writers.md).
    heartbeat_seconds: Annotated[
        float, Field(validation_alias=_env("METERING_HEARTBEAT_SECONDS"), gt=0, le=60)
    ] = 2.0
    writer_timeout_seconds: Annotated[
        float, Field(validation_alias=_env("METERING_WRITER_TIMEOUT_SECONDS"), ge=1, le=3600)
    ] = 30.0
    replay_compression: Annotated[
        Literal["none", "gzip", "snappy", "lz4", "zstd"],
        Field(validation_alias=_env("METERING_REPLAY_COMPRESSION")),
    ] = "none"
    # `metering serve` reads the store in CLICKHOUSE_URL as this read-only user; without
    # a password, the local server's own reporter.password when CLICKHOUSE_URL is it.
    reporter_user: Annotated[
        str, Field(validation_alias=_env("CLICKHOUSE_REPORTER_USER"), min_length=1)
    ] = "reporter"
    reporter_password: Annotated[
        SecretStr | None, Field(validation_alias=_env("CLICKHOUSE_REPORTER_PASSWORD"))
    ] = None
    serve_host: Annotated[
        str, Field(validation_alias=_env("METERING_SERVE_HOST"), min_length=1)
    ] = "127.0.0.1"
    serve_port: Annotated[
        int, Field(validation_alias=_env("METERING_SERVE_PORT"), ge=1, le=65535)
    ] = 8080

    @field_validator("dedupe_filter_mb")
    @classmethod
    def _power_of_two_or_off(cls, value: int) -> int:
        if value and value & (value - 1):
            raise ValueError(
                "must be a power of two (e.g. 64 MiB holds 18 million ids at a 0.1% "
                "false-positive rate), or 0 to look every event id up in the store"
            )
        return value

    @field_validator("clickhouse_url")
    @classmethod
    def _known_store_scheme(cls, value: str) -> str:
        if not value.startswith(("chdb://", "http://", "https://")):
            raise ValueError(
                "must start with chdb:// (embedded store on disk, e.g. chdb://./var/clickhouse) "
                "or http(s):// (a ClickHouse server, e.g. http://user:pass@host:8123)"
            )
        return value

    @field_validator("clickhouse_mode")
    @classmethod
    def _mode_fits_the_url(cls, value: str | None, info: ValidationInfo) -> str | None:
        url = info.data.get("clickhouse_url")
        if value is None or url is None:
            return value
        if value == "embedded" and not url.startswith("chdb://"):
            raise ValueError("embedded needs CLICKHOUSE_URL=chdb://PATH")
        if value != "embedded" and url.startswith("chdb://"):
            raise ValueError(f"{value} needs CLICKHOUSE_URL=http(s)://host:port of a server")
        return value

    @field_validator("clickhouse_cluster")
    @classmethod
    def _cluster_named_in_cluster_mode(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None:
            value = value.strip() or None
        if value is not None and CLUSTER_NAME.fullmatch(value) is None:
            raise ValueError(
                "a cluster name from remote_servers (letters, digits, '_', '.', '-') "
                "or one macro such as {cluster}"
            )
        if "clickhouse_mode" not in info.data:  # the mode itself is invalid
            return value
        mode = info.data["clickhouse_mode"]
        if mode == "cluster" and value is None:
            raise ValueError("required when CLICKHOUSE_MODE=cluster: the cluster's name")
        if mode != "cluster" and value is not None:
            raise ValueError("only used with CLICKHOUSE_MODE=cluster; set both or neither")
        return value

    @property
    def effective_clickhouse_mode(self) -> DeploymentMode:
        """CLICKHOUSE_MODE, else embedded for a chdb:// URL and server for http(s)://."""
        if self.clickhouse_mode is not None:
            return self.clickhouse_mode
        return "embedded" if self.clickhouse_url.startswith("chdb://") else "server"

    @model_validator(mode="after")
    def _timeout_spans_heartbeats(self) -> Settings:
        if self.writer_timeout_seconds < 3 * self.heartbeat_seconds:
            raise ValueError(
                f"METERING_WRITER_TIMEOUT_SECONDS={self.writer_timeout_seconds:g} must be at "
                f"least three heartbeats (METERING_HEARTBEAT_SECONDS={self.heartbeat_seconds:g}):"
                " a writer that missed one beat is not silent"
            )
        return self

    @model_validator(mode="after")
    def _sasl_needs_credentials(self) -> Settings:
        if self.kafka_security_protocol.startswith("SASL_"):
            missing = [
                name
                for name, value in (
                    ("KAFKA_SASL_MECHANISM", self.kafka_sasl_mechanism),
                    ("KAFKA_SASL_USERNAME", self.kafka_sasl_username),
                    ("KAFKA_SASL_PASSWORD", self.kafka_sasl_password),
                )
                if value is None
            ]
            if missing:
                raise ValueError(
                    f"KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} needs "
                    + ", ".join(missing)
                )
        return self


_ENV_NAMES = {
    name: str(field.validation_alias.choices[0])  # type: ignore[union-attr]
    for name, field in Settings.model_fields.items()
}


def load_settings(**overrides: object) -> Settings:
    """Read the environment, apply command-line overrides, report every problem at once."""
    given = {key: value for key, value in overrides.items() if value is not None}
    try:
        return Settings(**given)  # type: ignore[arg-type]
    except ValidationError as error:
        problems = []
        for item in error.errors(include_url=False, include_input=False):
            field = str(item["loc"][0]) if item["loc"] else "settings"
            name = _ENV_NAMES.get(field, field)
            problems.append(f"  {name}: {item['msg']}")
        raise SettingsError("invalid configuration:\n" + "\n".join(problems)) from None
