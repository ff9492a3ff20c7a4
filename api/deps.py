"""Request dependencies as typed aliases: routes declare what they need, tests override them.

They are ``async`` although they never await: FastAPI runs a plain ``def`` dependency in a
worker thread, and two thread hand-offs per request cost more than triaging the message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from triage.api.batching import MicroBatcher
from triage.api.errors import ApiError
from triage.api.validation import check_messages, empty_after_markup
from triage.config import Settings
from triage.errors import EmptyTextError
from triage.pipeline import TriagePipeline
from triage.registry import ModelRegistry
from triage.schemas import Message, ModelInfo, TriageResult
from triage.store.service import TicketService


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_pipeline(request: Request) -> TriagePipeline:
    """The pipeline loaded at startup; 503 while there is none, so the process can stay up."""
    pipeline: TriagePipeline | None = request.app.state.pipeline
    if pipeline is None:
        raise ApiError(503, "model_unavailable", "the model is not loaded; see the server log")
    return pipeline


PipelineDep = Annotated[TriagePipeline, Depends(get_pipeline)]


@dataclass(frozen=True)
class SingleTriage:
    """What the one-message routes need, in one dependency: FastAPI spends about as much time
    on each dependency of a request as on masking its text."""

    settings: Settings
    pipeline: TriagePipeline
    batcher: MicroBatcher

    async def __call__(self, message: Message) -> TriageResult:
        """The message's result with reply drafts: checked against the limits, then triaged
        with the messages that arrive with it (see :mod:`triage.api.batching`)."""
        check_messages([message], self.settings, self.pipeline.taxonomy, batch=False)
        try:
            return await self.batcher.triage(self.pipeline, message)
        except EmptyTextError:  # markup or invisible characters only
            raise empty_after_markup() from None


async def get_single_triage(request: Request, pipeline: PipelineDep) -> SingleTriage:
    state = request.app.state
    return SingleTriage(state.settings, pipeline, state.batcher)


async def get_registry(settings: Annotated[Settings, Depends(get_settings)]) -> ModelRegistry:
    """The registry of the settings; cheap to create, read on each request."""
    return ModelRegistry(settings.registry_dir)


async def get_served_model(request: Request) -> ModelInfo | None:
    """The model this process serves, or None while none is loaded."""
    pipeline: TriagePipeline | None = request.app.state.pipeline
    return None if pipeline is None else pipeline.model_info


async def get_tickets(request: Request) -> TicketService:
    """The ticket store opened at startup; 503 while there is none (see the server log)."""
    tickets: TicketService | None = request.app.state.tickets
    if tickets is None:
        raise ApiError(
            503, "store_unavailable", "the ticket store is not available; see the server log"
        )
    return tickets


SettingsDep = Annotated[Settings, Depends(get_settings)]
RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]
ServedModelDep = Annotated[ModelInfo | None, Depends(get_served_model)]
TicketsDep = Annotated[TicketService, Depends(get_tickets)]
SingleTriageDep = Annotated[SingleTriage, Depends(get_single_triage)]
