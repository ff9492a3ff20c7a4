"""All runtime settings, in one place, read from ``TRIAGE_*`` environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_model_dir() -> Path:
    return Path.home() / ".local" / "share" / "triage" / "models" / "default"


class Settings(BaseSettings):
    """Service and library settings; e.g. ``TRIAGE_MODEL_DIR=/srv/models/v3``."""

    model_config = SettingsConfigDict(env_prefix="TRIAGE_", env_file=".env", extra="ignore")

    model_dir: Path = Field(default_factory=_default_model_dir)
    train_if_missing: bool = Field(
        default=True, description="train the default model from the seed corpus on first start"
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
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    log_level: str = "info"
