"""Running the HTTP API: in this process, or in several worker processes that share the load.

The supervisor binds one socket and every worker accepts from it, but only while it holds no
more open connections than the least-loaded other worker (each publishes its count in an array
the processes share). Kept-alive clients, such as a desk's connection pool or a load test's 32
clients, so spread evenly over the workers. uvicorn's own supervisor lets whichever worker wakes
first take every connection waiting, and ``SO_REUSEPORT`` spreads them by a hash of the client's
address: both left one worker with more connections, and its queue set the latency tail
(docs/benchmarks.md, section 4).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import multiprocessing
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable
from ssl import SSLContext
from types import FrameType
from typing import Any, Protocol

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors.multiprocess import Multiprocess, Process

from triage.config import Settings
from triage.errors import ConfigError
from triage.service import pin_model

# The supervisor's lines sit among uvicorn's own and look like them.
logger = logging.getLogger("uvicorn.error")

APP = "triage.api.app:app"
# Workers watch the shared socket with the event loop's add_reader, which Windows' loop lacks.
CAN_BALANCE = os.name != "nt"
# How often the supervisor looks for workers that died or stopped answering.
CHECK_INTERVAL_S = 0.5
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# A worker's entry in the shared array while it accepts nothing (starting, stopping, dead).
NOT_ACCEPTING = -1
# How soon a worker that left a waiting connection to a less-loaded one looks again, and how
# many times in a row it does so before it takes the connection itself. A peer that let a
# connection wait that long is passed over until its count moves: a worker that hangs with
# few connections must not hold up new ones.
RETRY_S = 0.001
MAX_PASSES = 50
# How long a worker stops accepting when the system refuses it a connection (out of file
# descriptors or memory): the waiting connections stay queued meanwhile.
PAUSE_S = 1.0
RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class Loads(Protocol):
    """Open connections per worker, shared by the processes (a ``multiprocessing`` array)."""

    def __getitem__(self, index: int) -> int: ...
    def __setitem__(self, index: int, value: int) -> None: ...
    def __len__(self) -> int: ...


def listening_socket(host: str, port: int, backlog: int) -> socket.socket:
    """A TCP socket listening on ``host:port``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    return sock


class ConnectionSet(set[Any]):
    """uvicorn's set of open connections (``server_state.connections``) that calls
    ``on_change`` when one opens or closes, so that the count in the shared array stays true."""

    def __init__(self) -> None:
        super().__init__()
        self.on_change: Callable[[], None] = lambda: None

    def add(self, connection: Any) -> None:
        super().add(connection)
        self.on_change()

    def discard(self, connection: Any) -> None:
        super().discard(connection)
        self.on_change()

    def remove(self, connection: Any) -> None:
        super().remove(connection)
        self.on_change()


def readable(sock: socket.socket) -> bool:
    """Whether a connection waits on the listening socket (without blocking)."""
    poller = select.poll()  # not select(), which fails for descriptors above 1023
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


class LeastConnectionsAcceptor:
    """Accepts connections from a listening socket that several worker processes watch, only
    while this worker (``loads[index]``) holds no more open connections than the least-loaded
    other worker that accepts; otherwise it leaves the connection to that one."""

    def __init__(
        self,
        sock: socket.socket,
        loads: Loads,
        index: int,
        connections: ConnectionSet,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        ssl: SSLContext | None = None,
    ) -> None:
        self.sock, self.loads, self.index = sock, loads, index
        self.connections, self.protocol_factory, self.ssl = connections, protocol_factory, ssl
        self.loop = asyncio.get_running_loop()
        self.passes = 0  # connections left to another worker in a row
        self.passed_over: dict[int, int] = {}  # peer -> its count when it let one wait
        self.retry: asyncio.TimerHandle | None = None
        self.handshakes: set[asyncio.Task[Any]] = set()  # accepted, not yet connections
        self.accepting = False

    def load(self) -> int:
        return len(self.connections) + len(self.handshakes)

    def publish(self) -> None:
        if self.accepting:
            self.loads[self.index] = self.load()

    def start(self) -> None:
        """Watch the socket (already listening)."""
        self.sock.setblocking(False)
        self.accepting = True
        self.connections.on_change = self.publish
        self.publish()
        self.loop.add_reader(self.sock.fileno(), self._on_readable)

    async def close(self) -> None:
        """Accept no more; returns once the connections accepted so far are open, so that a
        graceful shutdown reaches them too."""
        self.accepting = False
        self.loads[self.index] = NOT_ACCEPTING
        self._pause()
        self.sock.close()
        if self.handshakes:
            await asyncio.wait(self.handshakes)

    def _less_loaded_peers(self, mine: int) -> list[int]:
        """The peers that accept, hold fewer connections and have not been passed over."""
        peers = []
        for i in range(len(self.loads)):
            if i == self.index:
                continue
            load = self.loads[i]
            if i in self.passed_over and self.passed_over[i] != load:
                del self.passed_over[i]  # its count moved: it is alive again
            if NOT_ACCEPTING < load < mine and i not in self.passed_over:
                peers.append(i)
        return peers

    def _on_readable(self) -> None:
        mine = self.load()
        self.loads[self.index] = mine
        peers = self._less_loaded_peers(mine)
        if peers and self.passes < MAX_PASSES:
            self.passes += 1
            self._pause()
            self.retry = self.loop.call_later(RETRY_S, self._resume)
            return
        if peers:  # they let the connection wait for MAX_PASSES retries
            self.passed_over.update((i, self.loads[i]) for i in peers)
        try:
            conn, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return  # another worker took it, or the client gave up
        except OSError as exc:
            if exc.errno in RESOURCE_ERRORS:
                logger.warning("cannot accept connections for %.0f s: %s", PAUSE_S, exc)
                self._pause()
                self.retry = self.loop.call_later(PAUSE_S, self._resume)
            else:  # an error of that one connection (accept(2) passes network errors on)
                logger.warning("accepting a connection failed: %s", exc)
            return
        self.passes = 0
        try:
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # the client reset it already
            conn.close()
            return
        handshake = self.loop.create_task(
            self.loop.connect_accepted_socket(self.protocol_factory, conn, ssl=self.ssl)
        )
        self.handshakes.add(handshake)  # also keeps it alive: the loop holds tasks weakly
        handshake.add_done_callback(self._handshake_done)
        self.loads[self.index] = mine + 1

    def _handshake_done(self, handshake: asyncio.Task[Any]) -> None:
        self.handshakes.discard(handshake)
        self.publish()
        if not handshake.cancelled() and handshake.exception() is not None:
            logger.debug("a connection closed before it was served: %s", handshake.exception())

    def _pause(self) -> None:
        if self.retry is not None:
            self.retry.cancel()
            self.retry = None
        self.loop.remove_reader(self.sock.fileno())

    def _resume(self) -> None:
        self.retry = None
        if not readable(self.sock):  # another worker took it: this episode is over
            self.passes = 0
        self.loop.add_reader(self.sock.fileno(), self._on_readable)


class BalancedServer(uvicorn.Server):
    """uvicorn's server in a worker: serves the supervisor's socket through a
    :class:`LeastConnectionsAcceptor` once the app has started."""

    def __init__(self, config: uvicorn.Config, loads: Loads, index: int) -> None:
        super().__init__(config)
        self.loads, self.index = loads, index
        self.connections = ConnectionSet()
        self.server_state.connections = self.connections  # uvicorn's protocols keep it
        self.acceptor: LeastConnectionsAcceptor | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        if not sockets:
            raise ValueError("a worker serves the socket its supervisor bound")
        await self.lifespan.startup()
        if self.lifespan.should_exit:
            sys.exit(STARTUP_FAILURE)
        config, state, app_state = self.config, self.server_state, self.lifespan.state

        def protocol() -> asyncio.Protocol:
            made: asyncio.Protocol = config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=state, app_state=app_state
            )
            return made

        self.servers = []  # nothing for uvicorn's shutdown to close: the acceptor is ours
        self.acceptor = LeastConnectionsAcceptor(
            sockets[0], self.loads, self.index, self.connections, protocol, config.ssl
        )
        self.acceptor.start()
        self.started = True

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self.acceptor is not None:
            await self.acceptor.close()
        await super().shutdown(sockets)


class Worker(Process):
    """uvicorn's worker process (spawned, answers the supervisor's health checks over a pipe),
    running a :class:`BalancedServer` as worker ``index`` of ``loads``."""

    def __init__(
        self, config: uvicorn.Config, sock: socket.socket, loads: Loads, index: int
    ) -> None:
        self.loads, self.index = loads, index
        super().__init__(config, [sock])

    @property
    def server(self) -> uvicorn.Server:
        if self._server is None:
            self._server = BalancedServer(self.config, self.loads, self.index)
        return self._server


class Supervisor:
    """Starts ``workers`` worker processes, replaces one that dies or stops answering its
    health check, and stops them all gracefully on SIGINT or SIGTERM."""

    def __init__(self, config: uvicorn.Config, workers: int) -> None:
        self.config, self.workers = config, workers
        self.processes: list[Worker] = []
        self.signals: list[int] = []
        self.loads: Loads = multiprocessing.get_context("spawn").Array(
            "i", [NOT_ACCEPTING] * workers, lock=False
        )

    def run(self) -> None:
        """Serve until SIGINT or SIGTERM. Raises ConfigError when the address is taken or a
        worker fails before it starts serving (it would fail the same way on every restart)."""
        # Listening for as long as the service runs, so a taken address fails here, at once
        # (connections that arrive while the workers load the model wait in its queue).
        with listening_socket(self.config.host, self.config.port, self.config.backlog) as sock:
            previous = {sig: signal.signal(sig, self._on_signal) for sig in STOP_SIGNALS}
            logger.info(
                "Started parent process [%d]: %d workers on %s:%d, connections to the one"
                " with the fewest",
                os.getpid(),
                self.workers,
                self.config.host,
                self.config.port,
            )
            self.processes = [self._start(sock, index) for index in range(self.workers)]
            try:
                while not self.signals:
                    self._replace_failed_workers(sock)
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

    def _start(self, sock: socket.socket, index: int) -> Worker:
        process = Worker(self.config, sock, self.loads, index)
        process.start()
        return process

    def _replace_failed_workers(self, sock: socket.socket) -> None:
        for index, process in enumerate(self.processes):
            if self.signals:
                return
            if process.is_alive(timeout=self.config.timeout_worker_healthcheck):
                continue
            exited = process.exitcode is not None
            process.kill()
            process.join()
            self.loads[index] = NOT_ACCEPTING  # its connections died with it
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
            self.processes[index] = self._start(sock, index)


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
    if CAN_BALANCE:
        Supervisor(config, workers).run()
        return
    logger.warning(
        "On this system the %d workers share one socket and whichever wakes first accepts,"
        " so one of them may get most connections",
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
