"""All runtime settings, in one place, read from ``TRIAGE_*`` environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _data_home() -> Path:
    return Path.home() / ".local" / "share" / "triage"


def _default_registry_dir() -> Path:
    return _data_home() / "registry"


def _default_database_url() -> str:
    return f"sqlite:///{_data_home() / 'triage.db'}"


def _default_encoders_dir() -> Path:
    return Path.home() / ".local" / "share" / "triage" / "encoders"


class Settings(BaseSettings):
    """Service and library settings; e.g. ``TRIAGE_REGISTRY_DIR=/srv/triage/registry``."""

    model_config = SettingsConfigDict(env_prefix="TRIAGE_", env_file=".env", extra="ignore")

    model_dir: Path | None = Field(
        default=None,
        description="serve this model directory; unset: the registry's promoted version",
    )
    registry_dir: Path = Field(
        default_factory=_default_registry_dir,
        description="model registry: saved versions and the promoted one (triage models ...)",
    )
    train_if_missing: bool = Field(
        default=True,
        description="train the default model from the seed corpus on first start (into "
        "model_dir when it is set, else into the registry, promoted)",
    )
    encoders_dir: Path = Field(
        default_factory=_default_encoders_dir,
        description="where `triage models import-e5` writes encoders; base models are also "
        "looked up here by name",
    )
    taxonomy_path: Path | None = None
    cues_path: Path | None = None
    max_text_length: int = Field(default=5000, ge=1, le=100_000)
    max_batch_items: int = Field(default=100, ge=1, le=10_000)
    replies_dir: Path | None = Field(
        default=None, description="folder of reply template YAML files (default: packaged bank)"
    )
    tone_rules_path: Path | None = None
    situation_keywords_path: Path | None = None
    reply_encoder: Path | None = Field(
        default=None,
        description="sentence-transformers model directory that compares messages with the reply"
        " bank's examples (needs sentence-transformers; default: character n-grams)",
    )
    products_path: Path | None = Field(
        default=None, description="product lexicon that fills {product} (default: packaged)"
    )
    company_name: str = Field(default="本公司", description="fills {company} in reply drafts")
    hotline: str = Field(default="客服热线", description="fills {hotline} in reply drafts")
    database_url: str = Field(
        default_factory=_default_database_url,
        description="ticket store: sqlite:///PATH or postgresql://USER:PASSWORD@HOST:PORT/DB",
    )
    database_migrate_on_start: bool = Field(
        default=True, description="apply pending schema migrations when the service starts"
    )
    routing_path: Path | None = Field(
        default=None, description="routing file: teams, handlers, rules, SLA (default: packaged)"
    )
    followups_path: Path | None = Field(
        default=None, description="closing phrases of follow-ups (default: packaged)"
    )
    micro_batch_max_items: int = Field(
        default=32,
        ge=1,
        le=1000,
        description="concurrent POST /v1/triage and /v1/replies/suggest requests whose messages"
        " arrive together share one model call, up to this many (1: no micro-batching)",
    )
    worker_healthcheck_timeout: int = Field(
        default=60,
        ge=1,
        le=3600,
        description="`triage serve --workers N`: seconds a worker may take to answer the"
        " supervisor's health check before it is killed and restarted; a starting worker"
        " answers only after its imports, which take over 5 s (uvicorn's default) on a busy"
        " machine, so workers were restarted over and over",
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    log_level: str = "info"
