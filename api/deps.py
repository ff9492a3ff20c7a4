"""Request dependencies as typed aliases: routes declare what they need, tests override them.

They are ``async`` although they never await: FastAPI runs a plain ``def`` dependency in a
worker thread, and two thread hand-offs per request cost more than triaging the message.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from triage.api.batching import MicroBatcher
from triage.api.errors import ApiError
from triage.config import Settings
from triage.pipeline import TriagePipeline
from triage.registry import ModelRegistry
from triage.schemas import ModelInfo
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


async def get_batcher(request: Request) -> MicroBatcher:
    """The micro-batcher of single-message triage requests (see :mod:`triage.api.batching`)."""
    batcher: MicroBatcher = request.app.state.batcher
    return batcher


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
PipelineDep = Annotated[TriagePipeline, Depends(get_pipeline)]
BatcherDep = Annotated[MicroBatcher, Depends(get_batcher)]
RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]
ServedModelDep = Annotated[ModelInfo | None, Depends(get_served_model)]
TicketsDep = Annotated[TicketService, Depends(get_tickets)]
