"""Spin, then block, while a Redis reply is on its way.

A thread that sleeps in ``recv()`` until Redis answers pays for being woken up
as well as for the round trip: on a 2-core VM, unpipelined ``PING`` on
loopback does about 14,000 round trips/s when the client blocks and about
40,000/s when it polls the socket without sleeping.  The wake-up, not Redis,
is most of the time.  So when the layer has asked for something, it first
polls for the reply for at most ``reply_spin_us`` microseconds (100 by
default, ``0`` turns it off) and only then sleeps as before:

* sync side (workers): non-blocking reads of the socket, feeding redis-py's
  own hiredis reader;
* async side (interface): the event loop is kept polling (``select`` with a
  zero timeout) rather than sleeping; other tasks run as usual meanwhile.

It costs CPU only while a reply is due, so idle processes stay idle; a
blocking pop (waiting for messages other processes will send) never spins.
It is not done where it does not pay:

* when the machine already has as many other runnable tasks as CPUs
  (``/proc/loadavg``, read every 10 ms): the spin would take CPU from Redis or
  the rest of the application.  Without this check, the HTTP benchmark's split
  mode lost 6-8% of its requests/s at full load on 2 cores;
* when Redis is far away (a PaaS add-on a network hop off): after 16 replies
  in a row that did not come within the window, spinning pauses, and is tried
  again once a second;
* with one CPU (Redis needs it to answer);
* on TLS or gevent sockets on the sync side (bytes on a TLS socket are not yet
  the reply; a spinning greenlet would stall the hub);
* in two threads of one layer at once.
"""

from __future__ import annotations

import _socket
import asyncio
import os
import ssl
import time
from typing import Any, Awaitable, Callable

from .transport import NOT_ENOUGH_DATA

__all__ = ["ReplySpin"]

# Replies in a row that missed the window before spinning pauses, and for how long.
_MISSES_TO_PAUSE = 16
_PAUSE_SECONDS = 1.0
_READ_SIZE = 65536
# How often the machine's runnable tasks are counted.
_LOAD_EVERY_SECONDS = 0.01
_loadavg_fd: int | None = None


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _runnable_tasks() -> int | None:
    """Runnable tasks on the machine now, this one included (``/proc/loadavg``); None where unknown."""
    global _loadavg_fd
    try:
        if _loadavg_fd is None:
            _loadavg_fd = os.open("/proc/loadavg", os.O_RDONLY)
        # "0.52 0.58 0.59 2/135 4242": the fourth field is running/total.
        return int(os.pread(_loadavg_fd, 128, 0).split()[3].split(b"/")[0])
    except (OSError, ValueError, IndexError):
        return None


class ReplySpin:
    """When and how long to poll for a reply; one per layer driver (thread-safe enough: races only cost a spin)."""

    def __init__(self, budget_us: float) -> None:
        self.cpus = _cpus()
        self.budget = budget_us / 1e6 if self.cpus > 1 else 0.0
        self.load_checked = 0.0
        self.cpu_to_spare = True
        self.busy = False
        self.misses = 0
        self.paused_until = 0.0
        # Spins begun, and those the reply ended within the window (for tests and tuning).
        self.tries = 0
        self.hits = 0

    def _may_spin(self) -> bool:
        if self.busy or not self.budget:
            return False
        now = time.monotonic()
        if now >= self.load_checked + _LOAD_EVERY_SECONDS:
            self.load_checked = now
            runnable = _runnable_tasks()
            # Others than this thread: fewer than the CPUs leaves one idle for Redis.
            self.cpu_to_spare = runnable is None or runnable - 1 < self.cpus
        if not self.cpu_to_spare:
            return False
        if self.misses >= _MISSES_TO_PAUSE:
            if now < self.paused_until:
                return False
            # One try; another miss pauses again at once.
            self.paused_until = now + _PAUSE_SECONDS
            self.misses = _MISSES_TO_PAUSE - 1
        self.tries += 1
        return True

    def _settle(self, hit: bool) -> None:
        if hit:
            self.hits += 1
            self.misses = 0
            return
        self.misses += 1
        if self.misses >= _MISSES_TO_PAUSE:
            self.paused_until = time.monotonic() + _PAUSE_SECONDS

    def read(self, sock: Any, reader: Any) -> Any:
        """The next reply from ``reader``, fed from ``sock`` without sleeping, within the budget.

        ``NOT_ENOUGH_DATA`` when it did not come in time, or when this socket
        is not one to spin on: the caller then reads as usual (blocking, with
        redis-py's timeout and errors).  The reply may be an error object,
        as the reader gives it.
        """
        # A socket with a timeout is non-blocking underneath (CPython emulates
        # the timeout with poll), so os.read never sleeps on it.
        if (
            isinstance(sock, ssl.SSLSocket)
            or not isinstance(sock, _socket.socket)
            or sock.gettimeout() is None
            or not self._may_spin()
        ):
            return NOT_ENOUGH_DATA
        fd = sock.fileno()
        self.busy = True
        try:
            deadline = time.perf_counter() + self.budget
            while True:
                try:
                    data = os.read(fd, _READ_SIZE)
                except BlockingIOError:
                    if time.perf_counter() > deadline:
                        self._settle(False)
                        return NOT_ENOUGH_DATA
                    continue
                if not data:  # closed: the blocking read says so, in redis-py's words
                    return NOT_ENOUGH_DATA
                reader.feed(data)
                reply = reader.gets()
                if reply is not NOT_ENOUGH_DATA:
                    self._settle(True)
                    return reply
        finally:
            self.busy = False

    async def aread(self, read: Callable[[], Awaitable[Any]]) -> None:
        """``await read()`` (the transport's read of more bytes), the loop polling rather than sleeping for at most the budget."""
        if not self._may_spin():
            await read()
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.budget
        handle: asyncio.Handle | None = None

        def poll() -> None:
            # A ready callback makes the loop's select() return at once.
            nonlocal handle
            handle = loop.call_soon(poll) if loop.time() < deadline else None

        self.busy = True
        handle = loop.call_soon(poll)
        try:
            await read()
        finally:
            self.busy = False
            hit = handle is not None
            if handle is not None:
                handle.cancel()
        self._settle(hit)
