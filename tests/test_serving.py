"""``triage serve --workers N``: worker processes with a socket each, run for real on loopback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from click.testing import CliRunner

import triage.serving
from triage.cli import main

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

    def worker_pids(self, attempts: int = 60) -> set[int]:
        """The processes that answer ``/healthz`` on ``attempts`` new connections, each of
        which also triages a message (so every worker seen served the model)."""
        pids = set()
        for _ in range(attempts):
            with httpx.Client(base_url=self.base, timeout=10.0) as client:  # one connection
                pid = client.get("/healthz").json()["pid"]
                triaged = client.post("/v1/triage", json=MESSAGE)
                assert triaged.status_code == 200, triaged.text
                assert triaged.json()["topic"]
                pids.add(pid)
        return pids

    def wait_for_workers(self, count: int) -> set[int]:
        """Wait until ``count`` different worker processes answer."""
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()
            try:
                if httpx.get(f"{self.base}/readyz", timeout=2.0).status_code == 200:
                    pids = self.worker_pids()
                    if len(pids) == count:
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
    workers = server.wait_for_workers(2)
    assert server.process.pid not in workers  # the parent only supervises
    killed = min(workers)
    os.kill(killed, signal.SIGKILL)
    replaced = server.wait_for_workers(2)
    assert killed not in replaced and len(replaced & workers) == 1
    assert server.stop() == 0
    assert f"Worker process [{killed}] died" in server.log.read_text()
    assert not any(alive(pid) for pid in replaced)  # the parent waited for its workers


def test_a_taken_port_is_an_error_before_any_worker_starts(small_model_dir: Path) -> None:
    with socket.socket() as taken:  # no SO_REUSEPORT: nobody else may bind this port
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = ["serve", "--workers", "2", "--port", str(port), "--model-dir", str(small_model_dir)]
        result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert f"error: cannot listen on 127.0.0.1:{port}" in result.stderr


def test_without_so_reuseport_uvicorn_supervises_one_shared_socket(
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
    monkeypatch.setattr(triage.serving, "CAN_REUSE_PORT", False)
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
    assert "SO_REUSEPORT is not available" in result.stderr
    # The workers import the app, which reads its settings (the pinned model) from there.
    assert os.environ["TRIAGE_MODEL_DIR"] == str(small_model_dir)
    assert os.environ["TRIAGE_PORT"] == str(port)
