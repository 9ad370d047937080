"""Typed, frozen settings read at the edge (env prefix ``CHURN_``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from features.errors import ConfigError

LogLevel = Literal["debug", "info", "warning", "error"]


class Settings(BaseSettings):
    """Engine settings. Each field is read from ``CHURN_<NAME>`` (e.g. ``CHURN_DATA_DIR``)."""

    model_config = SettingsConfigDict(env_prefix="CHURN_", frozen=True, extra="ignore")

    data_dir: Path = Field(Path("data"), description="where generated data, models and stores go")
    log_level: LogLevel = Field("info", description="log verbosity")
    kafka_url: str = Field(
        "", description="Kafka bootstrap, e.g. kafka://host:9092 (empty: the local dev broker)"
    )
    broker_port: int = Field(9092, ge=1, le=65535, description="port of the local dev broker")
    partitions: int = Field(8, ge=1, le=1024, description="partitions of the topics")
    store: Literal["memory://", "rocksdb://"] = Field("memory://", description="faust table store")
    model_poll_seconds: float = Field(30.0, gt=0, description="how often the champion is checked")
    alert_policy: str = Field(
        "", description="alert policy YAML file (empty: the built-in default policy)"
    )
    web_port: int = Field(6066, ge=1, le=65535, description="worker web port (/stats/)")
    managers: str = Field(
        "", description="managers file (YAML): e-mail, language, team, token hash"
    )
    webhook_url: str = Field("", description="digests are POSTed here (signed) when set")
    webhook_secret: SecretStr = Field(SecretStr(""), description="HMAC key of webhook signatures")
    smtp_host: str = Field("", description="digests are e-mailed through this server when set")
    smtp_port: int = Field(25, ge=1, le=65535, description="SMTP port")
    smtp_sender: str = Field("churn-alerts@localhost", description="From: of digest e-mails")
    smtp_user: str = Field("", description="SMTP login (empty: none)")
    smtp_password: SecretStr = Field(SecretStr(""), description="SMTP password")
    inbox_host: str = Field("127.0.0.1", description="address the inbox (churn serve) listens on")
    inbox_port: int = Field(8080, ge=1, le=65535, description="port of the inbox (churn serve)")
    inbox_secret: SecretStr = Field(
        SecretStr(""), description="key that signs inbox sessions (empty: random per start)"
    )
    batch_size: int = Field(500, ge=1, le=100_000, description="most events in one micro-batch")
    batch_within: float = Field(
        0.05, gt=0, le=60, description="seconds between the starts of two micro-batches at most"
    )
    fetch_wait_ms: int = Field(
        50, ge=10, le=60_000, description="longest wait of a worker's fetch (ms)"
    )
    flush_seconds: float = Field(
        1.0,
        ge=0,
        le=60,
        description="seconds a worker keeps changed states before writing them to the table "
        "and its changelog (0: every micro-batch); offsets are committed only after",
    )
    catchup_seconds: float = Field(
        2.0,
        ge=0,
        le=3600,
        description="a worker whose events are older than this when read is behind: it "
        "scores each touched customer once per flush, not once per micro-batch (0: never)",
    )
    catchup_flush_seconds: float = Field(
        3.0,
        ge=0,
        le=60,
        description="how often a worker that is behind writes its changed states (so "
        "scores its customers); flush_seconds if that is longer",
    )
    state_cache: int = Field(
        5000, ge=0, le=10_000_000, description="decoded customer states kept in worker memory"
    )
    monitoring: bool = Field(
        True, description="worker histograms and drift (false only to measure their cost)"
    )
    drift_window_days: float = Field(
        7.0, gt=0, le=365, description="event time covered by the workers' drift window (days)"
    )
    notify_metrics_port: int = Field(
        9108, ge=0, le=65535, description="/metrics port of churn notify (0: none)"
    )

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Settings:
        """Settings from an explicit environment (tests pass their own)."""
        values = {
            name: environ[f"CHURN_{name.upper()}"]
            for name in cls.model_fields
            if f"CHURN_{name.upper()}" in environ
        }
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            err = exc.errors()[0]
            field = f"CHURN_{str(err['loc'][0]).upper()}"
            allowed = err.get("ctx", {}).get("expected", err["msg"])
            raise ConfigError(field, err.get("input"), str(allowed)) from exc


def env_help() -> str:
    """One line per setting, for ``--help``."""
    return "\n".join(
        f"  CHURN_{name.upper():<20} {f.description} (default: {f.default})"
        for name, f in Settings.model_fields.items()
    )
