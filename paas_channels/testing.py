"""Helpers for tests and benchmarks alike: free ports, waiting on state, private servers.

``tests/`` and ``bench/`` both start real processes; what they share lives
here, in the package, so a benchmark never imports the test suite.
Nothing here is used by a running application.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import Callable, Iterable

__all__ = ["RedisServer", "ResumingClient", "TcpRouter", "cpu_seconds", "free_port", "free_ports", "rss_kib", "stop_process",
           "stop_processes", "wait_for_port", "wait_until"]


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds passed; return its last truth.

    For waiting on observable state (a port, a key, a log line) instead of a
    sleep that guesses how long something takes.
    """
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return bool(predicate())
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_ports(count: int) -> int:
    """The first of ``count`` consecutive free ports (as honcho gives ``$PORT``, ``$PORT + 1``, ...).

    Chosen below the kernel's ephemeral range (32768 and up on Linux), where
    outgoing connections take their local ports, so ``$PORT + 1`` is not
    taken a moment later by some client socket.
    """
    for _ in range(200):
        base = random.randrange(20000, 32000 - count)
        sockets = []
        try:
            for port in range(base, base + count):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
        return base
    raise RuntimeError(f"no {count} consecutive free ports found between 20000 and 32000")


def wait_for_port(port: int, timeout: float = 20.0, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


class RedisServer:
    """A private ``redis-server`` on a free port; never the shared one on 6379."""

    def __init__(self, port: int | None = None) -> None:
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not installed: apt-get install redis-server (.ci/run does)")
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="paas-redis-")
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir, "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        wait_for_port(self.port, process=self.process)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def stop_process(process: subprocess.Popen, timeout: float) -> int:
    """SIGTERM, as a platform stops a process; SIGKILL to its session (started with
    ``start_new_session=True``) if it does not exit within ``timeout`` seconds.  Returns the exit code."""
    return stop_processes([process], timeout)[0]


def stop_processes(processes: Iterable[subprocess.Popen], timeout: float) -> list[int]:
    """:func:`stop_process` for several processes at once, as a platform stops a release: SIGTERM to
    every one first, so they drain side by side (not one drain after the other); each gets ``timeout``."""
    processes = list(processes)
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return [process.returncode for process in processes]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time process ``pid`` has used so far, from ``/proc/<pid>/stat`` (Linux)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    """Resident memory of process ``pid`` in KiB, from ``/proc/<pid>/status`` (``VmRSS``, Linux)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


class ResumingClient:
    """A WebSocket client speaking the resume protocol the way ``client.js`` does (asyncio).

    ``url()`` gives the URL of each connection (a test can move it, as a
    platform's router moves new connections to new processes).  Reconnects
    soon, with jitter, after 1012 and with jittered exponential backoff after
    anything else; ``messages`` holds what was handed out, ``recoveries``
    the ``(group, ok)`` of each resumed join, ``connects`` the connections made.
    A gap that stays ``gap_timeout`` seconds is filled by reconnecting at once
    (the resume replays it), then skipped if it stays again (``gap_resumes``).
    """

    def __init__(self, url: Callable[[], str], gap_timeout: float = 1.5) -> None:
        # Here, not at the top: importing the interface package loads Django's
        # settings machinery, which the other helpers here never need.
        from .interface.resume import ClientState

        self.url = url
        self.state = ClientState()
        self.messages: list[tuple[object, dict]] = []
        self.connects = 0
        self.connected_at: list[float] = []  # time.monotonic() of each connection made
        self.gap_resumes = 0
        self.failures: list[str] = []  # why connections could not be made (exception names)
        self.gap_timeout = gap_timeout
        self.socket = None
        self._resumed_for_gap = False

    @property
    def recoveries(self) -> list[tuple[str, bool]]:
        return self.state.recoveries

    async def run(self, stop: asyncio.Event) -> None:
        # websockets is an extra (test, bench), not a dependency of the package.
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed, InvalidHandshake

        attempt = 0
        while not stop.is_set():
            code = None
            base = self.url()
            watch = None
            try:
                async with connect(f"{base}{'&' if '?' in base else '?'}{self.state.query()}", open_timeout=10,
                                   max_queue=None) as socket:
                    self.socket, self.connects, attempt = socket, self.connects + 1, 0
                    self.connected_at.append(time.monotonic())
                    watch = asyncio.ensure_future(self._watch_gaps(socket))
                    try:
                        async for frame in socket:
                            self.messages += self.state.feed(frame)
                    except ConnectionClosed:
                        pass
                    code = socket.close_code
            except (OSError, InvalidHandshake, asyncio.TimeoutError) as exc:
                self.failures.append(type(exc).__name__)
            finally:
                self.socket = None
                self.state.connection_lost()
                if watch is not None:
                    watch.cancel()
            if stop.is_set():
                return
            if watch is not None and not watch.cancelled() and watch.done():
                continue  # closed to fill a gap: resume at once
            delay = random.uniform(0.05, 1.0) if code == 1012 and attempt == 0 else random.uniform(0, min(5.0, 0.25 * 2 ** attempt))
            attempt += 1
            try:
                await asyncio.wait_for(stop.wait(), delay)
            except asyncio.TimeoutError:
                pass

    async def _watch_gaps(self, socket) -> None:
        """Close ``socket`` (to resume) when a gap stays; skip it when it stays after a resume."""
        loop = asyncio.get_running_loop()
        since = None
        while True:
            await asyncio.sleep(0.25)
            if not self.state.waiting():
                since, self._resumed_for_gap = None, False
                continue
            since = since or loop.time()
            if loop.time() - since < self.gap_timeout:
                continue
            if self._resumed_for_gap:
                self.messages += self.state.skip_gaps()
                since, self._resumed_for_gap = None, False
                continue
            self._resumed_for_gap = True
            self.gap_resumes += 1
            await socket.close()
            return

    async def close(self) -> None:
        if self.socket is not None:
            await self.socket.close()


class TcpRouter:
    """A platform's router in miniature (asyncio): each new TCP connection goes to port ``target``.

    Moving ``target`` is what a deploy does at the router: connections made
    later reach the new process, open ones stay where they are until that
    process closes them.  ``accepted`` counts the connections made.
    """

    def __init__(self, target: int) -> None:
        self.target = target
        self.accepted = 0
        self.port = 0
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> "TcpRouter":
        self._server = await asyncio.start_server(self._route, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _route(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:  # nothing listens there (a process between two deploys)
            writer.close()
            return
        await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:  # one side is done: so is the connection
        writer.close()
