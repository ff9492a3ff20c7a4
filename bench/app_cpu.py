"""CPU time per ``POST /v1/triage`` request of the ASGI app in this process, without uvicorn.

The app is called directly (lifespan included, so the micro-batcher and the request log line
work as when served), ``--concurrency`` requests at a time with seed messages, after
``--warmup`` requests; each of ``--rounds`` rounds of ``--requests`` requests is timed with
``time.process_time`` and the fastest counts. No sockets and no HTTP parsing: this is the
app's share of a served request (FastAPI, the log line, the pipeline, serialisation).
``--ready-results`` answers every message after its first request from a cache of results:
what the app costs around the pipeline.

On a shared machine CPU times vary with the other jobs; instruction counts do not. Run it
twice under ``valgrind --tool=cachegrind --cache-sim=no`` with one round of 16 and of 1,616
requests and divide the difference of the two "I refs" by 1,600 (start-up and warm-up cancel
out): instructions per request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from api_latency import load_average, seed_bodies
from common import model_dir_or_default, write_result

from triage.api.app import create_app
from triage.api.batching import MicroBatcher
from triage.config import Settings
from triage.pipeline import TriagePipeline
from triage.schemas import Message, TriageResult


def scope(body: bytes) -> dict[str, Any]:
    """The ASGI scope uvicorn gives a ``POST /v1/triage`` with this body."""
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 50000),
        "scheme": "http",
        "method": "POST",
        "root_path": "",
        "path": "/v1/triage",
        "raw_path": b"/v1/triage",
        "query_string": b"",
        "headers": [
            (b"host", b"127.0.0.1:8000"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "state": {},
    }


async def request(app: Any, body: bytes) -> int:
    """One request through the app; its status."""
    received = False
    status = []

    async def receive() -> dict[str, Any]:
        nonlocal received
        if received:  # the app asks again only to watch for a disconnect
            await asyncio.Event().wait()
        received = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])

    await app(scope(body), receive, send)
    return status[0]


def answer_from_cache() -> None:
    """Make the micro-batcher answer a message it has seen from a cache of its results."""
    triage = MicroBatcher.triage
    cache: dict[str, TriageResult] = {}

    async def cached(self: MicroBatcher, pipeline: TriagePipeline, message: Message) -> Any:
        if message.text not in cache:
            cache[message.text] = await triage(self, pipeline, message)
        return cache[message.text]

    MicroBatcher.triage = cached  # type: ignore[method-assign]


async def run(app: Any, bodies: list[bytes], args: argparse.Namespace) -> list[float]:
    """µs of CPU per request of each round."""

    async def requests(start: int, count: int) -> None:
        for first in range(start, start + count, args.concurrency):
            batch = range(first, min(first + args.concurrency, start + count))
            codes = await asyncio.gather(*(request(app, bodies[i % len(bodies)]) for i in batch))
            if set(codes) != {200}:
                raise SystemExit(f"error: statuses {sorted(set(codes))}")

    rounds = []
    async with app.router.lifespan_context(app):
        await requests(0, args.warmup)
        for _ in range(args.rounds):
            started = time.process_time()
            await requests(args.warmup, args.requests)
            rounds.append(1e6 * (time.process_time() - started) / args.requests)
    return rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, help="default: train the default model")
    parser.add_argument("--requests", type=int, default=3200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=320)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--ready-results", action="store_true")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args()

    if args.ready_results:
        answer_from_cache()
    bodies = [json.dumps(body, ensure_ascii=False).encode() for body in seed_bodies()]
    with (
        model_dir_or_default(args.model_dir) as model_dir,
        tempfile.TemporaryDirectory(prefix="bench-app-") as scratch,
    ):
        settings = Settings(
            model_dir=model_dir,
            train_if_missing=False,
            log_level=args.log_level,
            database_url=f"sqlite:///{scratch}/tickets.db",
        )
        rounds = asyncio.run(run(create_app(settings), bodies, args))
    print(
        f"\nCPU µs per request (best of {args.rounds}): {min(rounds):.0f}; every round: "
        f"{' / '.join(f'{r:.0f}' for r in rounds)}; load average {load_average()}"
    )
    path = write_result(
        "app_cpu",
        {
            "model_dir": str(args.model_dir or "default model, trained"),
            **{k: v for k, v in vars(args).items() if k != "model_dir"},
            "us_per_request": [round(r, 1) for r in rounds],
            "load_average": load_average(),
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
