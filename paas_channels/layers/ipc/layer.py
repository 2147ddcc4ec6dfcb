"""IPC channel layer: the processes of one machine (one dyno) share channels and groups, no server.

What combined mode with ``WEB_CONCURRENCY`` > 1 runs on, and any set of
processes started on one machine (a Procfile's ``web`` and ``worker`` under
honcho) with the same ``prefix``.  Not for processes on different machines:
each machine would have its own, separate layer (use Redis there).

Storage is one SQLite database in WAL mode per prefix (:mod:`.store`); a
blocked receive sleeps on a wake-up socket that the send which claims it
writes to (:mod:`.wake`), so an idle process costs no CPU.  A process killed
at any moment leaves nothing held: SQLite's locks are released by the
kernel, an unfinished transaction is ignored, and a dead receiver's wake-up
address refuses datagrams, so senders drop it and wake the next one.

Every operation is written once, as a *plan* (a function of a connection
and the time: one statement or one short transaction) plus what it leaves
to do after its commit; :mod:`.steps` runs them with SQLite's own lock wait
(sync) or with none, sleeping on the event loop between tries (async), so
the loop never blocks on another process's lock.

Group history (``CONFIG["history"]``, as on every layer that keeps it) is
:mod:`.history`: a history group's send and a join are one transaction each.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import tempfile
import threading
import time
from collections import deque
from typing import Any, Iterable

from ..base import BaseChannelLayer, _positive_number, _valid_prefix
from ..history import HistoryRules
from . import steps, store
from .history import HistoryPlans
from .plans import Plans
from .steps import LOCK_TIMEOUT, Outcome, Plan, plain
from .wake import WakePool, address_is_live

__all__ = ["IPCChannelLayer", "default_directory"]

logger = logging.getLogger(__name__)

#: Seconds between sweeps of everything expired, done by the next transaction
#: (group sends and statistics sweep every time).
_SWEEP_INTERVAL = 1.0
#: Seconds between checks for registrations of receivers whose process died.
_PROBE_INTERVAL = 30.0

# Bumped in a forked child, whose threads then open connections of their own
# (cheaper to compare on every operation than a getpid() system call).
_forks = [0]
os.register_at_fork(after_in_child=lambda: _forks.__setitem__(0, _forks[0] + 1))


def default_directory() -> str:
    """Where the databases live by default: a directory of this user's under ``/dev/shm`` (memory), else the temp dir."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()
    return os.path.join(base, f"paas-channels-{os.getuid()}")


class IPCChannelLayer(Plans, HistoryPlans, BaseChannelLayer):
    """ASGI 1.0 channel layer shared by every process on this machine that uses the same ``prefix``.

    ``prefix``: names the layer (its database file); processes with the same
    prefix and directory share channels and groups.  ``directory``: where the
    database lives (default :func:`default_directory`, in memory under
    ``/dev/shm``); it is created for this user only.  ``blocking_timeout``:
    seconds a blocking receive waits.  ``expiry``, ``group_expiry``,
    ``capacity``, ``channel_capacity``, ``history``: as for every layer (every
    process of the prefix must have the same ``history``).
    """

    reach = "machine"
    extensions = [*BaseChannelLayer.extensions, "history"]

    def __init__(
        self,
        prefix: str = "paas",
        directory: str | os.PathLike | None = None,
        expiry: float = 60,
        group_expiry: float = 86400,
        capacity: int = 100,
        channel_capacity: dict[str, int] | None = None,
        blocking_timeout: float = 1,
        history: dict[str, dict] | None = None,
    ) -> None:
        super().__init__(expiry=expiry, group_expiry=group_expiry, capacity=capacity, channel_capacity=channel_capacity)
        self.history = HistoryRules(history)
        _valid_prefix(prefix)
        self.prefix = prefix
        self.blocking_timeout = _positive_number("blocking_timeout", blocking_timeout)
        self.directory = _own_directory(default_directory() if directory is None else os.fspath(directory))
        self.path = os.path.join(self.directory, f"{prefix}.sqlite3")
        self._pool = WakePool(f"{os.getuid()}.{prefix}")
        self._local = threading.local()
        self._lock = threading.Lock()
        self._generation = 0  # bumped by close(): every thread then opens new connections
        self._connections_opened: list[tuple[int, sqlite3.Connection]] = []
        # Messages taken from this process's own ``!`` keys in a batch, not yet received: key -> items.
        self._buffered: dict[str, deque[tuple[str, float, bytes]]] = {}
        self._next_sweep = 0.0
        self._next_probe = time.monotonic() + _PROBE_INTERVAL

    ### Channel layer API ###

    def send(self, channel: str, message: dict) -> None:
        """Put ``message`` on ``channel``; raise ``ChannelFull`` at capacity."""
        self._execute(self._plan_send(channel, message))

    def receive(self, channels: Iterable[str], block: bool = False) -> tuple[str | None, dict | None]:
        """Take the oldest message from the first of ``channels`` that has one.

        ``!`` channels are given by prefix and reported by full name.  With
        ``block=True`` sleeps (on a wake-up socket, no polling) up to
        ``blocking_timeout`` seconds.
        """
        keys = self.valid_receive_channels(channels)
        # First without a wake-up socket: what a request/reply waits for is usually there already.
        items = self._from_buffer(keys) or self._execute(self._plan_receive(keys))
        if items or not block:
            return self._delivered(items)
        wake_socket = self._pool.take()
        clean = False
        try:
            deadline = time.monotonic() + self.blocking_timeout
            since, registered = time.time_ns(), False
            while True:
                wake_socket.drain()
                remaining = deadline - time.monotonic()
                items = self._execute(self._plan_receive(keys, wake_socket.address, since, remaining > 0, registered))
                if items or remaining <= 0:
                    clean = True
                    return self._delivered(items)
                registered = True
                wake_socket.wait(remaining)
        finally:
            self._give_back(wake_socket, clean)

    def new_channel(self, pattern: str) -> str:
        """A new, unused channel name: ``pattern`` (ending ``?`` or ``!``) plus a random suffix."""
        self.valid_new_channel_pattern(pattern)
        while True:
            name = pattern + self.random_suffix()
            if pattern.endswith("!") or not self._execute(self._plan_channel_exists(name)):
                return name

    ### Groups ###

    def group_add(self, group: str, channel: str) -> None:
        """Add ``channel`` to ``group``; the membership lasts ``group_expiry`` seconds."""
        self._execute(self._plan_group_add(group, channel))

    def group_discard(self, group: str, channel: str) -> None:
        """Remove ``channel`` from ``group``; a no-op if it is not a member."""
        self._execute(self._plan_group_discard(group, channel))

    def group_channels(self, group: str) -> list[str]:
        """The channels currently in ``group``."""
        return self._execute(self._plan_group_channels(group))

    def send_group(self, group: str, message: dict) -> None:
        """Send ``message`` to every member of ``group``, in one transaction.

        Members at capacity are skipped and counted (``channel_full_count``);
        this never raises ``ChannelFull``.
        """
        self._execute(self._plan_send_group(group, message))

    def group_join(self, group: str, channel: str, since: tuple[str, int] | None = None) -> bool | None:
        """``group_add`` plus, for a history group, the notice and replay (see the base class), in one transaction."""
        return self._execute(self._plan_group_join(group, channel, since))

    ### Flush, statistics, heartbeats, close ###

    def flush(self) -> None:
        """Drop every message, group, heartbeat and statistic of this prefix."""
        self._execute(plain(store.flush))
        self._buffered.clear()

    def global_statistics(self) -> dict[str, int]:
        """``messages_count`` (sent) and ``channel_full_count`` over all channels."""
        return self._execute(plain(store.global_statistics, transaction=False))

    def channel_statistics(self, channel: str) -> dict[str, Any]:
        """Counts for one channel (a ``!`` channel is counted by its prefix)."""
        return self._execute(self._plan_channel_statistics(channel))

    def heartbeat(self, worker_id: str, info: dict, ttl: float = 30) -> None:
        """Record that worker ``worker_id`` is alive, with ``info``, for ``ttl`` seconds."""
        self._execute(self._plan_heartbeat(worker_id, info, ttl))

    def heartbeats(self) -> dict[str, dict]:
        """Live workers' latest heartbeat info, by worker id."""
        return self._decode_heartbeats(self._execute(self._plan_heartbeats()))

    def close(self) -> None:
        """Close this process's connections and wake-up sockets (the layer reopens them if used again)."""
        with self._lock:
            self._generation += 1
            # A forked child never touches (nor lets the collector close) its parent's connections.
            mine = [conn for pid, conn in self._connections_opened if pid == os.getpid()]
            self._connections_opened = [(pid, conn) for pid, conn in self._connections_opened if pid != os.getpid()]
        for conn in mine:
            conn.close()
        self._pool.close()

    ### Async API: the same plans, never blocking the event loop ###

    async def asend(self, channel: str, message: dict) -> None:
        await self._aexecute(self._plan_send(channel, message))

    async def areceive(self, channels: Iterable[str], block: bool = False) -> tuple[str | None, dict | None]:
        """Like ``receive``; a blocking wait is ``loop.add_reader`` on the wake-up socket."""
        keys = self.valid_receive_channels(channels)
        items = self._from_buffer(keys) or await self._aexecute(self._plan_receive(keys))
        if items or not block:
            return self._delivered(items)
        loop = asyncio.get_running_loop()
        wake_socket = self._pool.take()
        clean = False
        try:
            deadline = loop.time() + self.blocking_timeout
            since, registered = time.time_ns(), False
            while True:
                wake_socket.drain()
                remaining = deadline - loop.time()
                items = await self._aexecute(
                    self._plan_receive(keys, wake_socket.address, since, remaining > 0, registered))
                if items or remaining <= 0:
                    clean = True
                    return self._delivered(items)
                registered = True
                woken = loop.create_future()
                loop.add_reader(wake_socket.fileno(), _resolve, woken)
                try:
                    await asyncio.wait({woken}, timeout=remaining)
                finally:
                    loop.remove_reader(wake_socket.fileno())
        finally:
            self._give_back(wake_socket, clean)

    async def anew_channel(self, pattern: str) -> str:
        self.valid_new_channel_pattern(pattern)
        while True:
            name = pattern + self.random_suffix()
            if pattern.endswith("!") or not await self._aexecute(self._plan_channel_exists(name)):
                return name

    async def agroup_add(self, group: str, channel: str) -> None:
        await self._aexecute(self._plan_group_add(group, channel))

    async def agroup_discard(self, group: str, channel: str) -> None:
        await self._aexecute(self._plan_group_discard(group, channel))

    async def agroup_channels(self, group: str) -> list[str]:
        return await self._aexecute(self._plan_group_channels(group))

    async def asend_group(self, group: str, message: dict) -> None:
        await self._aexecute(self._plan_send_group(group, message))

    async def agroup_join(self, group: str, channel: str, since: tuple[str, int] | None = None) -> bool | None:
        return await self._aexecute(self._plan_group_join(group, channel, since))

    async def aflush(self) -> None:
        await self._aexecute(plain(store.flush))
        self._buffered.clear()

    async def aglobal_statistics(self) -> dict[str, int]:
        return await self._aexecute(plain(store.global_statistics, transaction=False))

    async def achannel_statistics(self, channel: str) -> dict[str, Any]:
        return await self._aexecute(self._plan_channel_statistics(channel))

    async def aheartbeat(self, worker_id: str, info: dict, ttl: float = 30) -> None:
        await self._aexecute(self._plan_heartbeat(worker_id, info, ttl))

    async def aheartbeats(self) -> dict[str, dict]:
        return self._decode_heartbeats(await self._aexecute(self._plan_heartbeats()))

    async def aclose(self) -> None:
        self.close()

    ### This process's batch of taken messages ###

    def _delivered(self, items: list[store.Item] | None) -> tuple[str | None, dict | None]:
        """The first of ``items`` decoded; the rest (all of one ``!`` key) kept for the next receives."""
        if not items:
            return None, None
        if len(items) > 1:
            key = self.non_local_name(items[0][0])
            with self._lock:
                self._buffered.setdefault(key, deque()).extend(items[1:])
        return items[0][0], self._decoded(items[0][2])

    def _from_buffer(self, keys: list[str]) -> list[store.Item] | None:
        """The next live message this process already took from one of ``keys`` (``!`` keys only)."""
        if not self._buffered:
            return None
        now = time.time()
        with self._lock:
            for key in keys:
                queue = self._buffered.get(key)
                while queue:
                    item = queue.popleft()
                    if item[1] > now:
                        return [item]
                self._buffered.pop(key, None)
        return None

    def _decode_heartbeats(self, rows: list[tuple[str, bytes]]) -> dict[str, dict]:
        return {worker_id: self.deserialize(info) for worker_id, info in rows}

    ### Drivers (see .steps) ###

    def _execute(self, plan: Plan) -> Any:
        conn = self._connection(async_driver=False)
        try:
            result = steps.run(conn, steps.operation(self._with_sweep(plan)))
        except sqlite3.OperationalError as exc:
            raise self._error(exc) from None
        return self._finish(conn, result)

    async def _aexecute(self, plan: Plan) -> Any:
        conn = self._connection(async_driver=True)
        try:
            result = await steps.arun(conn, steps.operation(self._with_sweep(plan)))
        except sqlite3.OperationalError as exc:
            raise self._error(exc) from None
        return self._finish(conn, result)

    def _with_sweep(self, plan: Plan) -> Plan:
        """``plan``, sweeping what expired first when a sweep is due and ``plan`` takes the write lock anyway.

        (Single-statement steps never wait for a sweep: a receive drops what
        expired on its own keys, a send on a full key.)
        """
        now = time.time()
        if not plan.transaction or now < self._next_sweep:
            return plan
        self._next_sweep = now + _SWEEP_INTERVAL

        def run(conn: sqlite3.Connection, now: float) -> Outcome:
            store.sweep(conn, now)
            store.sweep_histories(conn, now)
            return plan.run(conn, now)

        return Plan(run)

    def _finish(self, conn: sqlite3.Connection, result: Any) -> Any:
        self._probe_if_due(conn)
        if isinstance(result, BaseException):
            raise result
        return result

    def _probe_if_due(self, conn: sqlite3.Connection) -> None:
        """Now and then, drop registrations of receivers whose process is gone (never woken since)."""
        if time.monotonic() < self._next_probe:
            return
        self._next_probe = time.monotonic() + _PROBE_INTERVAL
        try:
            dead = [address for address in store.waiter_addresses(conn) if not address_is_live(address)]
            if dead:
                steps.step(conn, plain(store.forget_waiters, dead))
                logger.debug("dropped %d wait registrations of receivers that are gone", len(dead))
        except sqlite3.OperationalError as exc:  # busy: the next probe will do it
            logger.debug("probing waiters skipped: %s", exc)

    def _connection(self, async_driver: bool) -> sqlite3.Connection:
        """This thread's connection for one driver (the async one never waits for a lock inside SQLite)."""
        local = self._local
        if getattr(local, "key", None) != (_forks[0], self._generation):
            local.key, local.conns = (_forks[0], self._generation), [None, None]
        conn = local.conns[async_driver]
        if conn is None:
            try:
                conn = store.connect(self.path, 0 if async_driver else LOCK_TIMEOUT, LOCK_TIMEOUT)
            except (sqlite3.Error, OSError) as exc:
                raise self._error(exc) from None
            local.conns[async_driver] = conn
            with self._lock:
                self._connections_opened.append((os.getpid(), conn))
        return conn

    def _error(self, exc: BaseException) -> Exception:
        if store.is_busy(exc):
            return RuntimeError(
                f"the IPC channel layer's database {self.path} stayed locked for {LOCK_TIMEOUT:g} s: a process "
                "using it is stopped (SIGSTOP, a debugger) while writing; continue or kill it"
            )
        return RuntimeError(
            f"the IPC channel layer cannot use its database {self.path}: {exc}. Check that CONFIG['directory'] "
            "is a writable local directory (not NFS), or remove the file when no process uses it"
        )

    def _give_back(self, wake_socket: Any, clean: bool) -> None:
        # After an error or cancellation its registrations may remain: a closed
        # socket refuses wakeups, so senders skip it; a pooled one would swallow them.
        if clean:
            self._pool.give(wake_socket)
        else:
            wake_socket.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} prefix={self.prefix!r} path={self.path!r} expiry={self.expiry} capacity={self.capacity}>"


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


def _own_directory(path: str) -> str:
    """Create ``path`` for this user only, and refuse one another user owns (they could read the messages)."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        info = os.stat(path)
    except OSError as exc:
        raise ValueError(
            f"the IPC channel layer cannot create its directory {path!r}: {exc.strerror}; "
            "set CONFIG['directory'] to a writable local directory"
        ) from None
    if info.st_uid != os.getuid():
        raise ValueError(
            f"the IPC channel layer's directory {path!r} belongs to another user (uid {info.st_uid}); "
            "set CONFIG['directory'] to a directory of your own"
        )
    return path
