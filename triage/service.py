"""Building a ready pipeline from settings: the one place that decides which model is served and
loads it (or first trains the default one)."""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from triage.config import Settings
from triage.cues import load_cue_lexicon
from triage.drafts import DraftContext, EncoderIndex, ReplySuggester
from triage.errors import ModelError
from triage.models.linear import CONFIG_FILE
from triage.pipeline import TriagePipeline
from triage.registry import ModelRegistry
from triage.replies import (
    load_product_lexicon,
    load_situation_keywords,
    load_template_bank,
    load_tone_rules,
)
from triage.taxonomy import load_taxonomy

if TYPE_CHECKING:
    from triage.store.service import TicketService

logger = logging.getLogger("triage")

FIRST_START_REASON = "first start: default model trained from the seed corpus"


def _train_default(out_dir: Path) -> None:
    from triage.training.train import TrainArguments, train_linear

    logger.info("training the default model from the seed corpus into %s", out_dir)
    train_linear(TrainArguments(out_dir=out_dir), log=logger.info)


def ensure_default_model(model_dir: Path) -> None:
    """Train the default model into ``model_dir`` unless one is there already.

    Training writes to a temporary sibling directory that is renamed into place, so a crash or
    a second process starting at the same time never leaves a half-written model behind.
    """
    if (model_dir / CONFIG_FILE).is_file():
        return
    model_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".training-", dir=model_dir.parent))
    try:
        _train_default(staging)
        if (model_dir / CONFIG_FILE).is_file():  # another process finished first
            return
        if model_dir.exists():
            shutil.rmtree(model_dir)
        staging.rename(model_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def promote_default_model(registry: ModelRegistry) -> Path:
    """Train the default model into the registry and promote it (a fresh machine's first
    start). Two processes doing this at once register the same version (training is
    deterministic) and both promote it."""
    with registry.staging() as scratch:
        _train_default(scratch / "model")
        registration = registry.register(
            scratch / "model", move=True, promote_reason=FIRST_START_REASON
        )
    return registration.version.path


def pending_training(settings: Settings) -> str | None:
    """Why :func:`resolve_model_dir` is about to train the default model (slow), or None."""
    if not settings.train_if_missing:
        return None
    if settings.model_dir is not None:
        missing = not (settings.model_dir / CONFIG_FILE).is_file()
        return f"no model in {settings.model_dir}" if missing else None
    registry = ModelRegistry(settings.registry_dir)
    return None if registry.state().versions else f"no model in registry {registry.root}"


def resolve_model_dir(settings: Settings) -> Path:
    """The model to serve: TRIAGE_MODEL_DIR when set; else the registry's promoted version;
    else, on a fresh machine (empty registry), the default model, trained and promoted.

    A registry that holds versions but promotes none is an error rather than a reason to
    train: which version to serve is then the operator's choice.
    """
    if settings.model_dir is not None:
        if not (settings.model_dir / CONFIG_FILE).is_file():
            if not settings.train_if_missing:
                raise ModelError(
                    f"{settings.model_dir}: no model found (run `triage train` or set "
                    "TRIAGE_TRAIN_IF_MISSING=true)"
                )
            ensure_default_model(settings.model_dir)
        logger.info("model from TRIAGE_MODEL_DIR: %s", settings.model_dir)
        return settings.model_dir
    registry = ModelRegistry(settings.registry_dir)
    promoted = registry.promoted()
    if promoted is not None:
        logger.info("model: promoted registry version %s (%s)", promoted.id, promoted.path)
        return promoted.path
    known = registry.versions()
    if known:
        raise ModelError(
            f"registry {registry.root} has no promoted version: run `triage models promote "
            f"VERSION` with one of {', '.join(v.id for v in known)}"
        )
    if not settings.train_if_missing:
        raise ModelError(
            f"registry {registry.root} is empty (run `triage train --promote`, set "
            "TRIAGE_MODEL_DIR, or set TRIAGE_TRAIN_IF_MISSING=true)"
        )
    return promote_default_model(registry)


def pin_model(settings: Settings) -> Settings:
    """Settings that name the resolved model directory, so that later loads (batch workers,
    server workers) get the same model even if another version is promoted meanwhile."""
    return settings.model_copy(
        update={"model_dir": resolve_model_dir(settings), "train_if_missing": False}
    )


def load_pipeline(settings: Settings) -> TriagePipeline:
    """The pipeline the service and the CLI use, built from settings."""
    model_dir = resolve_model_dir(settings)
    taxonomy = load_taxonomy(settings.taxonomy_path)
    bank = load_template_bank(taxonomy, settings.replies_dir)
    suggester = ReplySuggester(
        bank,
        load_tone_rules(settings.tone_rules_path),
        DraftContext(company=settings.company_name, hotline=settings.hotline),
        load_situation_keywords(bank, settings.situation_keywords_path),
        load_product_lexicon(settings.products_path),
        index=EncoderIndex(settings.reply_encoder, bank.templates)
        if settings.reply_encoder
        else None,
    )
    return TriagePipeline.from_directory(
        model_dir,
        taxonomy=taxonomy,
        lexicon=load_cue_lexicon(taxonomy, settings.cues_path),
        max_text_length=settings.max_text_length,
        suggester=suggester,
    )


def load_ticket_service(settings: Settings, pipeline: TriagePipeline) -> TicketService:
    """The ticket store over the configured database: migrated (unless switched off) and with
    the routing file's teams and handlers in place."""
    from triage.followups import load_followup_lexicon
    from triage.routing import Router, load_routing
    from triage.store.database import Database
    from triage.store.service import TicketService

    routing = load_routing(pipeline.taxonomy, pipeline.lexicon.kinds, settings.routing_path)
    database = Database(settings.database_url)
    if settings.database_migrate_on_start:
        database.upgrade()
    service = TicketService(
        database, pipeline, Router(routing), load_followup_lexicon(settings.followups_path)
    )
    service.sync_roster()
    return service
