"""``triage serve --workers N``: worker processes that share one socket, connections going to
the one with the fewest; run for real on loopback, and the acceptor in this process."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from click.testing import CliRunner

import triage.serving
from triage.cli import main
from triage.serving import (
    MAX_PASSES,
    NOT_ACCEPTING,
    PAUSE_S,
    RETRY_S,
    ConnectionSet,
    LeastConnectionsAcceptor,
)

STARTUP_TIMEOUT_S = 120.0  # two workers import everything and load the model; slow when busy
MESSAGE = {"text": "快递丢了半个月还不处理，我要投诉！", "channel": "chat"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    base: str
    log: Path

    def worker_pids(self, connections: int) -> list[int]:
        """The process that answers ``/healthz`` on each of ``connections`` connections held
        open together, opened one after another; each also triages a message (so every
        worker seen served the model)."""
        pids = []
        with ExitStack() as held:
            for _ in range(connections):
                client = held.enter_context(httpx.Client(base_url=self.base, timeout=10.0))
                pids.append(client.get("/healthz").json()["pid"])
                triaged = client.post("/v1/triage", json=MESSAGE)
                assert triaged.status_code == 200, triaged.text
                assert triaged.json()["topic"]
        return pids

    def wait_for_workers(self, count: int) -> list[int]:
        """Wait until ``count`` different worker processes answer on ``2 * count`` kept-open
        connections; the pid of each connection."""
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()
            try:
                if httpx.get(f"{self.base}/readyz", timeout=2.0).status_code == 200:
                    pids = self.worker_pids(2 * count)
                    if len(set(pids)) == count:
                        return pids
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"{count} workers never answered:\n{self.log.read_text()}")

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)


@pytest.fixture
def server(tmp_path: Path, small_model_dir: Path) -> Iterator[Server]:
    """``triage serve --workers 2`` with the small model, stopped (killed if need be) at the end."""
    port = free_port()
    log = tmp_path / "serve.log"
    env = {**os.environ, "TRIAGE_TRAIN_IF_MISSING": "false", "TRIAGE_LOG_LEVEL": "warning"}
    command = [str(Path(sys.executable).with_name("triage")), "serve", "--workers", "2"]
    command += ["--port", str(port), "--model-dir", str(small_model_dir)]
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    served = Server(process, f"http://127.0.0.1:{port}", log)
    try:
        yield served
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_workers_share_connections_replace_a_dead_one_and_stop_on_sigterm(
    server: Server,
) -> None:
    # One test, so that the workers start (imports, model) once.
    workers = set(server.wait_for_workers(2))
    assert server.process.pid not in workers  # the parent only supervises
    # With both serving, kept-open connections alternate: each goes to the worker with fewer.
    pids = server.worker_pids(4)
    assert sorted(pids.count(pid) for pid in workers) == [2, 2]
    killed = min(workers)
    os.kill(killed, signal.SIGKILL)
    replaced = set(server.wait_for_workers(2))
    assert killed not in replaced and len(replaced & workers) == 1
    assert server.stop() == 0
    assert f"Worker process [{killed}] died" in server.log.read_text()
    assert not any(alive(pid) for pid in replaced)  # the parent waited for its workers


def test_a_taken_port_is_an_error_before_any_worker_starts(small_model_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = ["serve", "--workers", "2", "--port", str(port), "--model-dir", str(small_model_dir)]
        result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert f"error: cannot listen on 127.0.0.1:{port}" in result.stderr


def test_where_workers_cannot_balance_uvicorn_supervises_one_shared_socket(
    monkeypatch: pytest.MonkeyPatch, small_model_dir: Path
) -> None:
    supervised: list[SharedSocketSupervisor] = []

    class SharedSocketSupervisor:
        """Stands in for uvicorn's supervisor, which would also take over this process's
        signal handlers."""

        def __init__(self, config: uvicorn.Config, sockets: list[socket.socket]) -> None:
            self.config, self.sockets = config, sockets

        def run(self) -> None:
            supervised.append(self)

    monkeypatch.setattr(triage.serving, "Multiprocess", SharedSocketSupervisor)
    monkeypatch.setattr(triage.serving, "CAN_BALANCE", False)
    # serve() hands the pinned settings to the workers through the environment: a copy here.
    monkeypatch.setattr(os, "environ", dict(os.environ))
    for name in ("TRIAGE_MODEL_DIR", "TRIAGE_PORT", "TRIAGE_HOST"):
        os.environ.pop(name, None)
    port = free_port()
    args = ["serve", "--workers", "3", "--port", str(port), "--model-dir", str(small_model_dir)]
    result = CliRunner().invoke(main, args, env={"TRIAGE_WORKER_HEALTHCHECK_TIMEOUT": "90"})
    assert result.exit_code == 0, result.output
    (supervisor,) = supervised
    (shared,) = supervisor.sockets
    address = shared.getsockname()
    shared.close()
    assert address == ("127.0.0.1", port)
    assert supervisor.config.workers == 3
    assert supervisor.config.timeout_worker_healthcheck == 90
    assert "whichever wakes first accepts" in result.stderr
    # The workers import the app, which reads its settings (the pinned model) from there.
    assert os.environ["TRIAGE_MODEL_DIR"] == str(small_model_dir)
    assert os.environ["TRIAGE_PORT"] == str(port)


def loopback_listener(kind: type[socket.socket] = socket.socket) -> socket.socket:
    """A socket of ``kind`` listening on a free loopback port."""
    listener = kind()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    return listener


class Connection(asyncio.Protocol):
    """Stands in for uvicorn's HTTP protocol: in ``open`` from connection to loss."""

    def __init__(self, open_connections: ConnectionSet) -> None:
        self.open = open_connections

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.open.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.open.discard(self)


def test_connections_go_to_the_acceptor_with_the_fewest_and_none_waits_on_a_stopped_one() -> None:
    async def scenario() -> None:
        listener = loopback_listener()
        address = listener.getsockname()
        loads = [NOT_ACCEPTING] * 2  # stands in for the array the processes share
        served = [ConnectionSet(), ConnectionSet()]
        acceptors = [
            LeastConnectionsAcceptor(
                listener.dup(), loads, i, served[i], partial(Connection, served[i])
            )
            for i in range(2)
        ]
        for acceptor in acceptors:
            acceptor.start()
        listener.close()
        clients = []

        async def connect() -> None:
            before = sum(map(len, served))
            clients.append(await asyncio.open_connection(*address))
            while sum(map(len, served)) == before or any(a.handshakes for a in acceptors):
                await asyncio.sleep(0.001)

        for _ in range(6):
            await connect()
        assert [len(s) for s in served] == [3, 3]
        assert loads == [3, 3]
        clients[0][1].close()  # whichever worker served it now has fewer
        while sum(map(len, served)) == 6:
            await asyncio.sleep(0.001)
        fewer = [len(s) for s in served].index(2)
        await connect()
        assert [len(s) for s in served] == [3, 3] and fewer in (0, 1)
        await acceptors[fewer].close()  # stopping: the other takes every new connection
        assert loads[fewer] == NOT_ACCEPTING
        for _ in range(2):
            await connect()
        assert len(served[1 - fewer]) == 5
        await acceptors[1 - fewer].close()
        for _, writer in clients:
            writer.close()

    asyncio.run(scenario())


def test_a_peer_that_never_accepts_is_passed_over_until_its_count_moves() -> None:
    async def scenario() -> None:
        listener = loopback_listener()
        address = listener.getsockname()
        busy = ConnectionSet()
        busy.add(Connection(busy))  # already holds one connection
        loads = [NOT_ACCEPTING, 0]  # worker 1 has none but hangs: it never accepts
        acceptor = LeastConnectionsAcceptor(listener, loads, 0, busy, partial(Connection, busy))
        acceptor.start()

        async def connect() -> float:
            """Seconds until the acceptor has taken one more connection."""
            before, started = len(busy), time.monotonic()
            clients.append(await asyncio.open_connection(*address))
            while len(busy) == before or acceptor.handshakes:
                await asyncio.sleep(0.001)
            return time.monotonic() - started

        clients: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        assert await connect() >= MAX_PASSES * RETRY_S  # left to worker 1 first
        assert loads[0] == 2
        assert await connect() < MAX_PASSES * RETRY_S  # worker 1 is passed over now
        loads[1] = 1  # worker 1 took a connection: it is alive, and has fewer again
        assert await connect() >= MAX_PASSES * RETRY_S
        for _, writer in clients:
            writer.close()
        await acceptor.close()

    asyncio.run(scenario())


class OutOfDescriptors(socket.socket):
    """A listening socket whose every accept fails as when the process has no descriptor left."""

    def accept(self) -> tuple[socket.socket, Any]:
        raise OSError(errno.EMFILE, "Too many open files")


def test_an_acceptor_out_of_descriptors_pauses_instead_of_spinning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        listener = loopback_listener(OutOfDescriptors)
        served = ConnectionSet()
        acceptor = LeastConnectionsAcceptor(
            listener, [NOT_ACCEPTING], 0, served, partial(Connection, served)
        )
        acceptor.start()
        _, writer = await asyncio.open_connection(*listener.getsockname())
        await asyncio.sleep(PAUSE_S / 5)  # within the pause: the connection waits in the queue
        assert acceptor.retry is not None  # paused, to look again later
        writer.close()
        await acceptor.close()

    with caplog.at_level(logging.WARNING, logger="uvicorn.error"):
        asyncio.run(scenario())
    refusals = [r for r in caplog.records if "cannot accept connections" in r.getMessage()]
    assert len(refusals) == 1
