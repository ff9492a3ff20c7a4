"""Latency of ``POST /v1/triage`` under concurrent clients, against a local ``triage serve``.

Starts ``triage serve`` on 127.0.0.1 and a free port with the default model (trained into a
temporary directory unless ``--model-dir`` is given), waits for ``/readyz``, sends a short
warm-up, then lets ``--clients`` concurrent clients send ``--requests`` single-message requests
in total (seed texts), stopping early at ``--max-seconds``; the server is stopped at the end.
All traffic stays on 127.0.0.1.

The target is judged with a minimal asyncio HTTP/1.1 client (one kept-alive connection per
client), because client and server share this machine's cores and httpx spends more CPU per
request than the server does; the same load through ``httpx.AsyncClient`` is reported beside
it. Reference runs: one client; ``GET /healthz`` (the HTTP stack without the model); the
pipeline in-process without HTTP. Server and client CPU per request come from ``/proc``. For
the raw client the table gives the lowest and highest mean latency of one connection: with
several server processes (``--server-workers``) each kept-alive connection stays with the
process that accepted it, and an uneven split shows as a wide range; each server process's
share of the server CPU during the run shows the split directly. The resident memory of the
server and of each worker is read after the runs.
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


def process_stats() -> dict[int, tuple[int, int]]:
    """Every process's parent and user + system CPU ticks so far (Linux /proc)."""
    stats = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the process ended meanwhile
        stats[int(stat.parent.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    return stats


def process_tree(root: int, stats: dict[int, tuple[int, int]]) -> list[int]:
    """A process and its live descendants, the root first."""
    tree, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, (parent, _) in stats.items() if parent in frontier]
        tree += [pid for pid in frontier if pid not in tree]
    return tree


def cpu_ticks(root: int) -> dict[int, int]:
    """User + system CPU ticks so far of a process and of each live descendant."""
    stats = process_stats()
    return {pid: stats[pid][1] for pid in process_tree(root, stats) if pid in stats}


def cpu_split(before: dict[int, int], after: dict[int, int]) -> list[int]:
    """Each server process's share of the server CPU between two readings, in percent,
    largest first: with several workers, how evenly the kernel spread the connections."""
    used = [after[pid] - before.get(pid, 0) for pid in after]
    shares = [round(100 * u / (sum(used) or 1)) for u in used]
    return sorted((share for share in shares if share > 0), reverse=True)  # not the supervisor


def resident_mib(root: int) -> dict[str, float]:
    """Resident memory (VmRSS, MiB) of a process and of each live descendant, named by role:
    ``serve`` (the root), ``worker-PID`` (spawned server workers), else ``NAME-PID``."""
    sizes = {}
    for pid in process_tree(root, process_stats()):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            command = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue  # the process ended meanwhile
        if pid == root:
            role = "serve"
        elif "spawn_main" in command:
            role = f"worker-{pid}"
        else:
            role = f"{status.splitlines()[0].split()[1]}-{pid}"  # "Name:\t..."
        kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))
        sizes[role] = round(kib / 1024, 1)
    return sizes


def load_average() -> str:
    """The 1-, 5- and 15-minute load averages: how busy the shared machine was."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


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
    model_dir: Path,
    port: int,
    workers: int,
    log_path: Path,
    log_level: str,
    startup_timeout: float,
) -> Iterator[int]:
    """Run ``triage serve`` until the block ends; yields its process id once ``/readyz``
    answers 200 and every worker has answered."""
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
        "--workers",
        str(workers),
    ]
    env = {**os.environ, "TRIAGE_LOG_LEVEL": log_level, "TRIAGE_TRAIN_IF_MISSING": "false"}
    base = f"http://{HOST}:{port}"
    with log_path.open("w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + startup_timeout
        ready_in_a_row = 0  # with several workers, each new connection may reach another one
        # Every worker must be listening before the clients connect: a kept-alive connection
        # stays with the worker that accepted it (`/healthz` names the process that answered).
        answered: set[int] = set()
        while ready_in_a_row < 10 * workers or len(answered) < workers:
            if process.poll() is not None:
                sys.exit(
                    f"error: the server exited with {process.returncode}:\n"
                    f"{log_path.read_text()[-2000:]}"
                )
            try:
                ready = httpx.get(f"{base}/readyz", timeout=1.0).status_code == 200
                answered.add(httpx.get(f"{base}/healthz", timeout=1.0).json()["pid"])
            except httpx.TransportError:
                ready = False
            ready_in_a_row = ready_in_a_row + 1 if ready else 0
            if time.monotonic() > deadline:
                sys.exit(f"error: /readyz not ready after {startup_timeout} s")
            if not ready or len(answered) < workers:
                time.sleep(0.2)
        yield process.pid
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Load:
    """Bookkeeping shared by the client tasks: which request is next, latencies and errors."""

    def __init__(self, total: int, max_seconds: float):
        self.total, self.max_seconds = total, max_seconds
        self.issued = 0
        self.latencies: list[float] = []
        # Per connection of the raw client: with several server processes each connection
        # stays with the process that accepted it, so an uneven split shows here.
        self.by_connection: dict[int, list[float]] = {}
        self.errors: dict[str, int] = {}
        self.started = self.deadline = 0.0

    def start(self) -> None:
        self.started = time.perf_counter()
        self.deadline = self.started + self.max_seconds

    def next_index(self) -> int | None:
        """The next request's index, or None when the count or the time cap is reached."""
        if self.issued >= self.total or time.perf_counter() >= self.deadline:
            return None
        self.issued += 1
        return self.issued

    def record(self, sent: float, error: str | None, connection: int | None = None) -> None:
        latency = time.perf_counter() - sent
        self.latencies.append(latency)
        if connection is not None:
            self.by_connection.setdefault(connection, []).append(latency)
        if error is not None:
            self.errors[error] = self.errors.get(error, 0) + 1


def raw_requests(port: int, bodies: list[dict[str, Any]] | None) -> list[bytes]:
    """Encoded HTTP/1.1 keep-alive requests: POST /v1/triage per body, or GET /healthz."""
    host = f"Host: {HOST}:{port}\r\n"
    if bodies is None:
        return [f"GET /healthz HTTP/1.1\r\n{host}\r\n".encode()]
    out = []
    for body in bodies:
        data = json.dumps(body, ensure_ascii=False).encode()
        head = (
            f"POST /v1/triage HTTP/1.1\r\n{host}Content-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n"
        )
        out.append(head.encode() + data)
    return out


async def exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> int:
    """Send one request on a kept-alive connection and read the whole response; its status."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
        elif name.strip().lower() == b"transfer-encoding":
            raise ValueError("chunked responses are not supported by this client")
    await reader.readexactly(length)
    return int(head.split(b" ", 2)[1])


async def run_raw(load: Load, port: int, requests: list[bytes], clients: int) -> None:
    """One asyncio stream connection per client: a load generator that costs little CPU."""
    connections = [await asyncio.open_connection(HOST, port) for _ in range(clients)]
    for index, (reader, writer) in enumerate(connections):  # warm-up
        await exchange(reader, writer, requests[index % len(requests)])

    async def client(
        connection: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while (index := load.next_index()) is not None:
            sent = time.perf_counter()
            try:
                status = await exchange(reader, writer, requests[index % len(requests)])
            except (OSError, ValueError, asyncio.IncompleteReadError) as exc:
                load.record(sent, type(exc).__name__, connection)
                return
            load.record(sent, None if status == 200 else f"HTTP {status}", connection)

    load.start()
    await asyncio.gather(*(client(i, r, w) for i, (r, w) in enumerate(connections)))
    for _, writer in connections:
        writer.close()


async def run_httpx(
    load: Load, port: int, bodies: list[dict[str, Any]] | None, clients: int
) -> None:
    """``clients`` tasks sharing one ``httpx.AsyncClient`` with ``clients`` connections."""
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    base = f"http://{HOST}:{port}"
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30.0) as http:

        async def send(index: int) -> httpx.Response:
            if bodies is None:
                return await http.get("/healthz")
            return await http.post("/v1/triage", json=bodies[index % len(bodies)])

        await asyncio.gather(*(send(i) for i in range(clients)))  # warm-up

        async def client() -> None:
            while (index := load.next_index()) is not None:
                sent = time.perf_counter()
                try:
                    response = await send(index)
                    error = None if response.status_code == 200 else f"HTTP {response.status_code}"
                except httpx.HTTPError as exc:
                    error = type(exc).__name__
                load.record(sent, error)

        load.start()
        await asyncio.gather(*(client() for _ in range(clients)))


def measure(
    kind: str,
    port: int,
    bodies: list[dict[str, Any]] | None,
    clients: int,
    total: int,
    max_seconds: float,
) -> dict[str, Any]:
    """One load run with the chosen client; latencies summarised."""
    load = Load(total, max_seconds)
    if kind == "raw":
        asyncio.run(run_raw(load, port, raw_requests(port, bodies), clients))
    else:
        asyncio.run(run_httpx(load, port, bodies, clients))
    run = summarize(load.latencies, load.errors, time.perf_counter() - load.started)
    if load.by_connection:
        means = [1000 * float(np.mean(v)) for v in load.by_connection.values()]
        run["connection_mean_ms"] = {"min": round(min(means), 2), "max": round(max(means), 2)}
    return run


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
    parser.add_argument(
        "--server-workers", type=int, default=1, help="passed to `triage serve --workers`"
    )
    parser.add_argument("--startup-timeout", type=float, default=120.0)
    parser.add_argument(
        "--target-only",
        action="store_true",
        help="only the target run (32 clients, raw client): no reference runs",
    )
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
            model_dir,
            port,
            args.server_workers,
            Path(tmp) / "server.log",
            args.log_level,
            args.startup_timeout,
        ) as pid:
            ready_seconds = time.perf_counter() - started
            target_run = f"POST /v1/triage, {args.clients} clients, raw client"
            plan = {
                target_run: ("raw", bodies, args.clients, args.requests),
                f"POST /v1/triage, {args.clients} clients, httpx client": (
                    "httpx",
                    bodies,
                    args.clients,
                    args.requests,
                ),
                "POST /v1/triage, 1 client, raw client": ("raw", bodies, 1, n_ref),
                f"GET /healthz, {args.clients} clients, raw client": (
                    "raw",
                    None,
                    args.clients,
                    n_ref,
                ),
            }
            if args.target_only:
                plan = {target_run: plan[target_run]}
            for name, (kind, payloads, clients, total) in plan.items():
                server_cpu, client_cpu = cpu_ticks(pid), time.process_time()
                run = measure(kind, port, payloads, clients, total, cap)
                server_cpu_after = cpu_ticks(pid)
                used = sum(server_cpu_after.values()) - sum(server_cpu.values())
                run["server_cpu_ms_per_request"] = round(
                    1000 * used / os.sysconf("SC_CLK_TCK") / run["requests"], 2
                )
                run["server_cpu_split_percent"] = cpu_split(server_cpu, server_cpu_after)
                run["client_cpu_ms_per_request"] = round(
                    1000 * (time.process_time() - client_cpu) / run["requests"], 2
                )
                runs[name] = run
            server_rss = resident_mib(pid)
        if not args.target_only:
            runs["in-process pipeline([message]), no HTTP"] = in_process(model_dir, bodies, n_ref)

    print(
        f"\ntriage serve with {args.server_workers} worker process(es), log level "
        f"{args.log_level}; ready after {ready_seconds:.1f} s (start, imports, model load); "
        f"resident memory after the runs, MiB: "
        f"{', '.join(f'{role} {mib:g}' for role, mib in server_rss.items())}; "
        f"load average {load_average()}\n"
    )
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
                run.get("server_cpu_ms_per_request", "-"),
                run.get("client_cpu_ms_per_request", "-"),
                "/".join(map(str, run.get("server_cpu_split_percent", []))) or "-",
                "{min:g}–{max:g}".format(**run["connection_mean_ms"])
                if "connection_mean_ms" in run
                else "-",
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
                "server CPU ms/req",
                "client CPU ms/req",
                "server CPU split %",
                "mean ms per connection (min–max)",
                f"p99 ≤ {P99_TARGET_MS:g} ms",
            ],
            rows,
        )
    )
    path = write_result(
        "api_latency" if args.server_workers == 1 else f"api_latency_workers{args.server_workers}",
        {
            "clients": args.clients,
            "target_run": target_run,
            "target_p99_ms": P99_TARGET_MS,
            "server_ready_seconds": round(ready_seconds, 2),
            "server_log_level": args.log_level,
            "server_workers": args.server_workers,
            "server_rss_mib": server_rss,
            "load_average": load_average(),
            "runs": runs,
        },
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
