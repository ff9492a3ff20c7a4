"""Building a ready pipeline from settings: the one place that loads (or first trains) a model."""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

from triage.config import Settings
from triage.cues import load_cue_lexicon
from triage.drafts import DraftContext, EncoderIndex, ReplySuggester
from triage.errors import ModelError
from triage.models.linear import CONFIG_FILE
from triage.pipeline import TriagePipeline
from triage.replies import (
    load_product_lexicon,
    load_situation_keywords,
    load_template_bank,
    load_tone_rules,
)
from triage.taxonomy import load_taxonomy

logger = logging.getLogger("triage")


def ensure_default_model(model_dir: Path) -> None:
    """Train the default model into ``model_dir`` unless one is there already.

    Training writes to a temporary sibling directory that is renamed into place, so a crash or
    a second process starting at the same time never leaves a half-written model behind.
    """
    if (model_dir / CONFIG_FILE).is_file():
        return
    from triage.training.train import TrainArguments, train_linear

    model_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".training-", dir=model_dir.parent))
    try:
        logger.info("no model in %s: training the default model from the seed corpus", model_dir)
        train_linear(TrainArguments(out_dir=staging), log=logger.info)
        if (model_dir / CONFIG_FILE).is_file():  # another process finished first
            return
        if model_dir.exists():
            shutil.rmtree(model_dir)
        staging.rename(model_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def load_pipeline(settings: Settings) -> TriagePipeline:
    """The pipeline the service and the CLI use, built from settings."""
    if not (settings.model_dir / CONFIG_FILE).is_file():
        if not settings.train_if_missing:
            raise ModelError(
                f"{settings.model_dir}: no model found (run `triage train` or set "
                "TRIAGE_TRAIN_IF_MISSING=true)"
            )
        ensure_default_model(settings.model_dir)
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
        settings.model_dir,
        taxonomy=taxonomy,
        lexicon=load_cue_lexicon(taxonomy, settings.cues_path),
        max_text_length=settings.max_text_length,
        suggester=suggester,
    )
