"""Request dependencies as typed aliases: routes declare what they need, tests override them."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from triage.api.errors import ApiError
from triage.config import Settings
from triage.pipeline import TriagePipeline
from triage.store.service import TicketService


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_pipeline(request: Request) -> TriagePipeline:
    """The pipeline loaded at startup; 503 while there is none, so the process can stay up."""
    pipeline: TriagePipeline | None = request.app.state.pipeline
    if pipeline is None:
        raise ApiError(503, "model_unavailable", "the model is not loaded; see the server log")
    return pipeline


def get_tickets(request: Request) -> TicketService:
    """The ticket store opened at startup; 503 while there is none (see the server log)."""
    tickets: TicketService | None = request.app.state.tickets
    if tickets is None:
        raise ApiError(
            503, "store_unavailable", "the ticket store is not available; see the server log"
        )
    return tickets


SettingsDep = Annotated[Settings, Depends(get_settings)]
PipelineDep = Annotated[TriagePipeline, Depends(get_pipeline)]
TicketsDep = Annotated[TicketService, Depends(get_tickets)]
