"""Micro-batching: concurrent single-message requests share one model call and get exactly the
results (and drafts) they would get alone."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.test_api import small_settings
from triage.api.app import create_app
from triage.api.batching import MicroBatcher
from triage.config import Settings
from triage.errors import EmptyTextError, ModelError
from triage.pipeline import TriagePipeline
from triage.schemas import Customer, Message
from triage.service import load_pipeline

MESSAGES = [
    Message(id="a", text="订单号DD20241101的快递五天了还没到，我是王女士，请尽快", channel="chat"),
    Message(id="b", text="热水器漏电了!!!孩子差点触电", channel="phone"),
    Message(id="c", text="谢谢客服小姐姐,非常耐心", channel="email"),
    Message(id="d", text="请问发票怎么开", customer=Customer(tier="vip")),
    Message(id="e", text="我的手机13812345678收不到验证码"),
    Message(id="f", text="买的空调不制冷，要求退款", product="格力空调", channel="letter"),
    Message(id="g", text="再不处理我就去12315投诉，已经第三次打电话了"),
]


@pytest.fixture(scope="module")
def pipeline(small_model_dir: Path) -> TriagePipeline:
    """The service's pipeline (with the reply bank) over the small model."""
    return load_pipeline(Settings(model_dir=small_model_dir, train_if_missing=False))


def concurrently(
    batcher: MicroBatcher, pipeline: TriagePipeline, messages: Sequence[Message]
) -> list[Any]:
    """Each message's result (or error), all sent at once on one event loop."""

    async def send_all() -> list[Any]:
        return await asyncio.gather(
            *(batcher.triage(pipeline, m) for m in messages), return_exceptions=True
        )

    return asyncio.run(send_all())


def test_concurrent_messages_share_one_model_call_and_equal_single_results(
    pipeline: TriagePipeline, forward_calls: list[int]
) -> None:
    singles = [pipeline([m], replies=True)[0].model_dump() for m in MESSAGES]
    assert all(single["replies"] for single in singles)
    forward_calls.clear()
    results = concurrently(MicroBatcher(max_items=32), pipeline, MESSAGES)
    assert forward_calls == [len(MESSAGES)]
    assert [r.model_dump() for r in results] == singles


def test_batches_hold_at_most_max_items(pipeline: TriagePipeline, forward_calls: list[int]) -> None:
    results = concurrently(MicroBatcher(max_items=3), pipeline, MESSAGES)
    assert forward_calls == [3, 3, 1]
    assert [r.id for r in results] == [m.id for m in MESSAGES]
    forward_calls.clear()
    concurrently(MicroBatcher(max_items=1), pipeline, MESSAGES[:3])
    assert forward_calls == [1, 1, 1]


def test_an_unusable_message_fails_only_its_own_request(
    pipeline: TriagePipeline, forward_calls: list[int]
) -> None:
    messages = [MESSAGES[0], Message(id="markup", text="<p><br></p>"), MESSAGES[1]]
    results = concurrently(MicroBatcher(max_items=32), pipeline, messages)
    assert isinstance(results[1], EmptyTextError)
    assert forward_calls == [2]
    expected = [pipeline([m], replies=True)[0].model_dump() for m in (MESSAGES[0], MESSAGES[1])]
    assert [results[0].model_dump(), results[2].model_dump()] == expected


def test_a_failing_model_call_fails_every_request_of_its_batch(
    pipeline: TriagePipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(self: TriagePipeline, texts: Any) -> Any:
        raise ModelError("model file unreadable")

    monkeypatch.setattr(TriagePipeline, "_forward", fail)
    results = concurrently(MicroBatcher(max_items=32), pipeline, MESSAGES[:3])
    assert [type(r) for r in results] == [ModelError] * 3


def test_concurrent_api_requests_get_the_bodies_of_sequential_ones(
    small_model_dir: Path, forward_calls: list[int]
) -> None:
    app = create_app(small_settings(small_model_dir))
    bodies = [m.model_dump(exclude_none=True) for m in MESSAGES]

    async def run() -> tuple[list[httpx.Response], list[httpx.Response]]:
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://test"
            ) as client,
        ):
            forward_calls.clear()  # the warm-up at startup
            together = await asyncio.gather(*(client.post("/v1/triage", json=b) for b in bodies))
            calls_together = list(forward_calls)
            one_by_one = [await client.post("/v1/triage", json=b) for b in bodies]
            suggested = await asyncio.gather(
                *(client.post("/v1/replies/suggest", json=b) for b in bodies)
            )
        assert calls_together == [len(bodies)]
        assert all(r.status_code == 200 for r in [*together, *suggested])
        return list(together), one_by_one

    together, one_by_one = asyncio.run(run())
    assert [r.content for r in together] == [r.content for r in one_by_one]
    assert all(json.loads(r.content)["replies"] for r in together)


def test_micro_batch_size_is_a_validated_setting() -> None:
    assert Settings(micro_batch_max_items=8).micro_batch_max_items == 8
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        Settings(micro_batch_max_items=0)
