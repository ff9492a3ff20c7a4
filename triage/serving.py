"""Running the HTTP API: in this process, or in several worker processes that share the load.

uvicorn's own supervisor (``uvicorn.run(..., workers=N)``) hands one listening socket to every
worker and whichever wakes first accepts; under load one worker often took all kept-alive
connections while the other idled (docs/benchmarks.md, section 4). Here every worker listens on
a socket of its own, bound with ``SO_REUSEPORT`` to the same address, and the kernel spreads new
connections over the workers by a hash of the client's address and port.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors.multiprocess import Multiprocess, Process

from triage.config import Settings
from triage.errors import ConfigError
from triage.service import pin_model

# The supervisor's lines sit among uvicorn's own and look like them.
logger = logging.getLogger("uvicorn.error")

APP = "triage.api.app:app"
CAN_REUSE_PORT = hasattr(socket, "SO_REUSEPORT")
# How often the supervisor looks for workers that died or stopped answering.
CHECK_INTERVAL_S = 0.5
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` that other processes of this user can bind too."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    return sock


class Worker(Process):
    """uvicorn's worker process (spawned, answers the supervisor's health checks over a pipe),
    listening on a socket of its own instead of the one its parent bound."""

    def target(self, sockets: list[socket.socket] | None = None) -> None:  # pragma: no cover
        # Runs in the spawned process; the socket listens once the app has started, so the
        # kernel sends no connection to a worker that is still loading the model.
        try:
            sock = reuse_port_socket(self.config.host, self.config.port)
        except ConfigError as exc:
            logger.error("%s", exc)
            sys.exit(STARTUP_FAILURE)
        super().target([sock])


class Supervisor:
    """Starts ``workers`` worker processes, replaces one that dies or stops answering its
    health check, and stops them all gracefully on SIGINT or SIGTERM."""

    def __init__(self, config: uvicorn.Config, workers: int) -> None:
        self.config, self.workers = config, workers
        self.processes: list[Worker] = []
        self.signals: list[int] = []

    def run(self) -> None:
        """Serve until SIGINT or SIGTERM. Raises ConfigError when the address is taken or a
        worker fails before it starts serving (it would fail the same way on every restart)."""
        # Bound (not listening) for as long as the service runs: a taken address fails here,
        # at once, and no program without SO_REUSEPORT can take the port between restarts.
        with reuse_port_socket(self.config.host, self.config.port):
            previous = {sig: signal.signal(sig, self._on_signal) for sig in STOP_SIGNALS}
            logger.info(
                "Started parent process [%d]: %d workers, each with its own socket on %s:%d",
                os.getpid(),
                self.workers,
                self.config.host,
                self.config.port,
            )
            self.processes = [self._start() for _ in range(self.workers)]
            try:
                while not self.signals:
                    self._replace_failed_workers()
                    time.sleep(CHECK_INTERVAL_S)
                stop = signal.Signals(self.signals[0]).name
                logger.info("Received %s, stopping the workers", stop)
            finally:
                for process in self.processes:
                    process.terminate()
                for process in self.processes:
                    process.join()
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
        logger.info("Stopping parent process [%d]", os.getpid())

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        self.signals.append(sig)  # acted on by the loop in run(): no logging in a handler

    def _start(self) -> Worker:
        process = Worker(self.config, [])
        process.start()
        return process

    def _replace_failed_workers(self) -> None:
        for index, process in enumerate(self.processes):
            if self.signals:
                return
            if process.is_alive(timeout=self.config.timeout_worker_healthcheck):
                continue
            exited = process.exitcode is not None
            process.kill()
            process.join()
            if process.exitcode == STARTUP_FAILURE:
                raise ConfigError(
                    f"worker process [{process.pid}] failed to start (exit code "
                    f"{STARTUP_FAILURE}); the log above says why"
                )
            if exited:
                logger.warning(
                    "Worker process [%d] died (exit code %s); starting a new one",
                    process.pid,
                    process.exitcode,
                )
            else:
                logger.warning(
                    "Worker process [%d] did not answer its health check within %d s; "
                    "killed it, starting a new one",
                    process.pid,
                    self.config.timeout_worker_healthcheck,
                )
            self.processes[index] = self._start()


def serve(settings: Settings, workers: int = 1) -> None:
    """Run the HTTP API until interrupted: in this process, or in ``workers`` processes."""
    common: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "access_log": False,  # the app logs each request (method, path, status, time) itself
    }
    if workers == 1:
        from triage.api.app import create_app

        uvicorn.run(create_app(settings), **common)
        return
    _prepare_workers(settings)
    common["timeout_worker_healthcheck"] = settings.worker_healthcheck_timeout
    config = uvicorn.Config(APP, workers=workers, **common)  # also sets up uvicorn's logging
    if CAN_REUSE_PORT:
        Supervisor(config, workers).run()
        return
    logger.warning(
        "SO_REUSEPORT is not available on this system: the %d workers share one socket and"
        " whichever wakes first accepts, so one of them may get most connections",
        workers,
    )
    Multiprocess(config, sockets=[config.bind_socket()]).run()


def _prepare_workers(settings: Settings) -> None:
    """Work that must happen once, before any worker starts: choose (and, on a first start,
    train) the model so that every worker serves the same one, migrate the ticket store, and
    hand both to the workers, which read their settings from the environment."""
    settings = pin_model(settings)
    if settings.database_migrate_on_start:
        from triage.store.database import Database

        database = Database(settings.database_url)
        database.upgrade()
        database.dispose()
    os.environ.update(
        TRIAGE_HOST=settings.host,
        TRIAGE_PORT=str(settings.port),
        TRIAGE_MODEL_DIR=str(settings.model_dir),
    )
