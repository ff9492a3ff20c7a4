"""Latency of ``POST /v1/triage`` under concurrent clients, against a local ``triage serve``.

Starts ``triage serve`` on 127.0.0.1 and a free port with the default model (trained into a
temporary directory unless ``--model-dir`` is given), waits for ``/readyz``, sends a short
warm-up, then lets ``--clients`` concurrent httpx clients send ``--requests`` single-message
requests in total (seed texts), stopping early at ``--max-seconds``. The server is stopped at
the end. All traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from common import markdown_table, trained_default_model, verdict, write_result

from triage.pipeline import TriagePipeline
from triage.schemas import Message
from triage.training.corpus import seed_corpus_path

P99_TARGET_MS = 25.0
HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def seed_bodies() -> list[dict[str, Any]]:
    """Request bodies from the seed train and dev messages (text and channel)."""
    records = [
        json.loads(line)
        for split in ("train", "dev")
        for line in seed_corpus_path(split).read_text(encoding="utf-8").splitlines()
        if line
    ]
    return [{"id": r["id"], "text": r["text"], "channel": r["channel"]} for r in records]


@contextmanager
def server(
    model_dir: Path, port: int, log_path: Path, log_level: str, startup_timeout: float
) -> Iterator[str]:
    """Run ``triage serve`` until the block ends; yields its base URL once ``/readyz`` is 200."""
    script = Path(sys.executable).with_name("triage")
    command = [
        str(script) if script.is_file() else shutil.which("triage") or "triage",
        "serve",
        "--host",
        HOST,
        "--port",
        str(port),
        "--model-dir",
        str(model_dir),
    ]
    env = {**os.environ, "TRIAGE_LOG_LEVEL": log_level, "TRIAGE_TRAIN_IF_MISSING": "false"}
    base = f"http://{HOST}:{port}"
    with log_path.open("w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if process.poll() is not None:
                sys.exit(
                    f"error: the server exited with {process.returncode}:\n"
                    f"{log_path.read_text()[-2000:]}"
                )
            try:
                if httpx.get(f"{base}/readyz", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                sys.exit(f"error: /readyz not ready after {startup_timeout} s")
            time.sleep(0.2)
        yield base
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def load(
    base: str, bodies: list[dict[str, Any]] | None, clients: int, total: int, max_seconds: float
) -> dict[str, Any]:
    """``clients`` workers share ``total`` requests: ``POST /v1/triage`` with ``bodies`` in
    turn, or ``GET /healthz`` when ``bodies`` is None. Returns latencies (s) and errors."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    issued = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30.0) as client:

        async def send(index: int) -> httpx.Response:
            if bodies is None:
                return await client.get("/healthz")
            return await client.post("/v1/triage", json=bodies[index % len(bodies)])

        for index in range(2 * clients):  # warm-up: open the connections
            await send(index)
        started = time.perf_counter()
        deadline = started + max_seconds

        async def worker() -> None:
            nonlocal issued
            while issued < total and time.perf_counter() < deadline:
                issued += 1
                sent = time.perf_counter()
                try:
                    response = await send(issued)
                    key = None if response.status_code == 200 else f"HTTP {response.status_code}"
                except httpx.HTTPError as exc:
                    key = type(exc).__name__
                latencies.append(time.perf_counter() - sent)
                if key is not None:
                    errors[key] = errors.get(key, 0) + 1

        await asyncio.gather(*(worker() for _ in range(clients)))
        seconds = time.perf_counter() - started
    return summarize(latencies, errors, seconds)


def summarize(latencies: list[float], errors: dict[str, int], seconds: float) -> dict[str, Any]:
    """Request count, rate and latency percentiles in milliseconds."""
    ms = np.array(latencies) * 1000
    return {
        "requests": len(ms),
        "errors": errors,
        "seconds": round(seconds, 2),
        "requests_per_s": round(len(ms) / seconds, 1),
        "latency_ms": {
            p: round(float(np.percentile(ms, q)), 2)
            for p, q in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))
        },
    }


def in_process(model_dir: Path, bodies: list[dict[str, Any]], n: int) -> dict[str, Any]:
    """``pipeline([message])`` in this process, one message at a time: the model's share."""
    pipeline = TriagePipeline.from_directory(model_dir)
    pipeline.triage_one("预热")
    latencies = []
    started = time.perf_counter()
    for body in bodies[:n]:
        sent = time.perf_counter()
        pipeline([Message(**body)])
        latencies.append(time.perf_counter() - sent)
    return summarize(latencies, {}, time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument(
        "--max-seconds", type=float, default=120.0, help="stop sending after this many seconds"
    )
    parser.add_argument(
        "--reference-requests",
        type=int,
        default=1000,
        help="requests for each reference run (1 client; GET /healthz; in-process)",
    )
    parser.add_argument("--model-dir", type=Path, help="default: train the default model")
    parser.add_argument(
        "--log-level",
        default="info",
        help="the server's TRIAGE_LOG_LEVEL (info logs every request)",
    )
    parser.add_argument("--startup-timeout", type=float, default=120.0)
    args = parser.parse_args()

    bodies = seed_bodies()
    n_ref, cap = args.reference_requests, args.max_seconds
    runs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-api-") as tmp:
        model_dir = args.model_dir
        if model_dir is None:
            model_dir = Path(tmp) / "default"
            print("training the default model ...", flush=True)
            trained_default_model(model_dir)
        port = free_port()
        started = time.perf_counter()
        with server(
            model_dir, port, Path(tmp) / "server.log", args.log_level, args.startup_timeout
        ) as base:
            ready_seconds = time.perf_counter() - started
            target_run = f"POST /v1/triage, {args.clients} clients"
            runs[target_run] = asyncio.run(load(base, bodies, args.clients, args.requests, cap))
            runs["POST /v1/triage, 1 client"] = asyncio.run(load(base, bodies, 1, n_ref, cap))
            runs[f"GET /healthz, {args.clients} clients (HTTP stack + client only)"] = asyncio.run(
                load(base, None, args.clients, n_ref, cap)
            )
        runs["in-process pipeline([message]), no HTTP"] = in_process(model_dir, bodies, n_ref)

    print(f"\nserver ready after {ready_seconds:.1f} s (start, imports, model load)\n")
    rows = []
    for name, run in runs.items():
        lat = run["latency_ms"]
        status = "-"
        if name == target_run:
            status = verdict(lat["p99"], P99_TARGET_MS, higher_is_better=False)
        rows.append(
            [
                name,
                run["requests"],
                sum(run["errors"].values()),
                run["requests_per_s"],
                lat["p50"],
                lat["p90"],
                lat["p99"],
                lat["max"],
                status,
            ]
        )
    print(
        markdown_table(
            [
                "run",
                "requests",
                "errors",
                "req/s",
                "p50 ms",
                "p90 ms",
                "p99 ms",
                "max ms",
                f"p99 ≤ {P99_TARGET_MS:g} ms",
            ],
            rows,
        )
    )
    path = write_result(
        "api_latency",
        {
            "clients": args.clients,
            "target_run": target_run,
            "target_p99_ms": P99_TARGET_MS,
            "server_ready_seconds": round(ready_seconds, 2),
            "server_log_level": args.log_level,
            "runs": runs,
        },
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
