"""Request dependencies as typed aliases: routes declare what they need, tests override them.

They are ``async`` although they never await: FastAPI runs a plain ``def`` dependency in a
worker thread, and two thread hand-offs per request cost more than triaging the message.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from triage.api.errors import ApiError
from triage.config import Settings
from triage.pipeline import TriagePipeline


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_pipeline(request: Request) -> TriagePipeline:
    """The pipeline loaded at startup; 503 while there is none, so the process can stay up."""
    pipeline: TriagePipeline | None = request.app.state.pipeline
    if pipeline is None:
        raise ApiError(503, "model_unavailable", "the model is not loaded; see the server log")
    return pipeline


SettingsDep = Annotated[Settings, Depends(get_settings)]
PipelineDep = Annotated[TriagePipeline, Depends(get_pipeline)]
