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
    base: str, bodies: list[dict[str, Any]], clients: int, total: int, max_seconds: float
) -> dict[str, Any]:
    """``clients`` workers share ``total`` requests; returns latencies (s) and errors."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    issued = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30.0) as client:
        for body in bodies[: 2 * clients]:  # warm-up: open connections, touch every code path
            await client.post("/v1/triage", json=body)
        started = time.perf_counter()
        deadline = started + max_seconds

        async def worker() -> None:
            nonlocal issued
            while issued < total and time.perf_counter() < deadline:
                body = bodies[issued % len(bodies)]
                issued += 1
                sent = time.perf_counter()
                try:
                    response = await client.post("/v1/triage", json=body)
                    key = None if response.status_code == 200 else f"HTTP {response.status_code}"
                except httpx.HTTPError as exc:
                    key = type(exc).__name__
                latencies.append(time.perf_counter() - sent)
                if key is not None:
                    errors[key] = errors.get(key, 0) + 1

        await asyncio.gather(*(worker() for _ in range(clients)))
        seconds = time.perf_counter() - started
    return {"latencies": latencies, "errors": errors, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument(
        "--max-seconds", type=float, default=120.0, help="stop sending after this many seconds"
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
            run = asyncio.run(load(base, bodies, args.clients, args.requests, args.max_seconds))

    ms = np.array(run["latencies"]) * 1000
    n, n_errors = len(ms), sum(run["errors"].values())
    result = {
        "clients": args.clients,
        "requests": n,
        "errors": run["errors"],
        "seconds": round(run["seconds"], 2),
        "requests_per_s": round(n / run["seconds"], 1),
        "latency_ms": {
            p: round(float(np.percentile(ms, q)), 2)
            for p, q in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))
        },
        "server_ready_seconds": round(ready_seconds, 2),
        "server_log_level": args.log_level,
        "target_p99_ms": P99_TARGET_MS,
    }
    lat = result["latency_ms"]
    print(f"\nserver ready after {ready_seconds:.1f} s (start, imports, model load)\n")
    print(
        markdown_table(
            [
                "clients",
                "requests",
                "errors",
                "req/s",
                "p50 ms",
                "p90 ms",
                "p99 ms",
                "max ms",
                "p99 target",
                "status",
            ],
            [
                [
                    args.clients,
                    n,
                    n_errors,
                    result["requests_per_s"],
                    lat["p50"],
                    lat["p90"],
                    lat["p99"],
                    lat["max"],
                    f"≤ {P99_TARGET_MS:g} ms",
                    verdict(lat["p99"], P99_TARGET_MS, higher_is_better=False),
                ]
            ],
        )
    )
    path = write_result("api_latency", result)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
