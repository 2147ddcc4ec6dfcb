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

Every operation is one short transaction, written once as a *plan* (a
function of a connection and the time) that the sync driver runs with
SQLite's own lock wait and the async driver runs with no lock wait,
sleeping on the event loop between tries, so the loop never blocks on a lock.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import sqlite3
import tempfile
import threading
import time
from typing import Any, Callable, Iterable

from ..base import BaseChannelLayer, ChannelFull, _positive_number
from . import store
from .store import Wake
from .wake import WakePool, address_is_live, wake

__all__ = ["IPCChannelLayer", "default_directory"]

logger = logging.getLogger(__name__)

_PREFIX = re.compile(r"^[a-zA-Z\d_.\-]{1,40}$")
#: Seconds between sweeps of everything expired (group sends and statistics sweep every time).
_SWEEP_INTERVAL = 1.0
#: Seconds between checks for registrations of receivers whose process died.
_PROBE_INTERVAL = 30.0
#: Seconds a sync call waits for SQLite's write lock before it gives up with an error.
_LOCK_TIMEOUT = 10.0
# The async driver's sleeps between tries while another process holds the lock.
_ASYNC_RETRY_FIRST, _ASYNC_RETRY_MAX = 0.0002, 0.01

# A plan: run inside one transaction, returns (result, waiters to wake after commit).
_Plan = Callable[[sqlite3.Connection, float], "tuple[Any, list[Wake]]"]


def default_directory() -> str:
    """Where the databases live by default: a directory of this user's under ``/dev/shm`` (memory), else the temp dir."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()
    return os.path.join(base, f"paas-channels-{os.getuid()}")


class IPCChannelLayer(BaseChannelLayer):
    """ASGI 1.0 channel layer shared by every process on this machine that uses the same ``prefix``.

    ``prefix``: names the layer (its database file); processes with the same
    prefix and directory share channels and groups.  ``directory``: where the
    database lives (default :func:`default_directory`, in memory under
    ``/dev/shm``); it is created for this user only.  ``blocking_timeout``:
    seconds a blocking receive waits.  ``expiry``, ``group_expiry``,
    ``capacity``, ``channel_capacity``: as for every layer.
    """

    reach = "machine"

    def __init__(
        self,
        prefix: str = "paas",
        directory: str | os.PathLike | None = None,
        expiry: float = 60,
        group_expiry: float = 86400,
        capacity: int = 100,
        channel_capacity: dict[str, int] | None = None,
        blocking_timeout: float = 1,
    ) -> None:
        super().__init__(expiry=expiry, group_expiry=group_expiry, capacity=capacity, channel_capacity=channel_capacity)
        if not isinstance(prefix, str) or not _PREFIX.match(prefix):
            raise ValueError(f"prefix must be 1-40 ASCII letters, digits, '_', '.' or '-'; got {prefix!r:.60}")
        self.prefix = prefix
        self.blocking_timeout = _positive_number("blocking_timeout", blocking_timeout)
        self.directory = _own_directory(default_directory() if directory is None else os.fspath(directory))
        self.path = os.path.join(self.directory, f"{prefix}.sqlite3")
        self._pool = WakePool(f"{os.getuid()}.{prefix}")
        self._local = threading.local()
        self._lock = threading.Lock()
        self._generation = 0  # bumped by close(): every thread then opens new connections
        self._open: list[tuple[int, sqlite3.Connection]] = []
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
        if not block:
            return self._delivered(self._execute(self._plan_receive(keys, None, 0, False)))
        wake_socket = self._pool.take()
        clean = False
        try:
            deadline = time.monotonic() + self.blocking_timeout
            since = time.time_ns()
            while True:
                wake_socket.drain()
                remaining = deadline - time.monotonic()
                item = self._execute(self._plan_receive(keys, wake_socket.address, since, remaining > 0))
                if item is not None or remaining <= 0:
                    clean = True
                    return self._delivered(item)
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

    ### Flush, statistics, heartbeats, close ###

    def flush(self) -> None:
        """Drop every message, group, heartbeat and statistic of this prefix."""
        self._execute(_plain(store.flush))

    def global_statistics(self) -> dict[str, int]:
        """``messages_count`` (sent) and ``channel_full_count`` over all channels."""
        return self._execute(_plain(store.global_statistics))

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
            mine = [conn for pid, conn in self._open if pid == os.getpid()]
            self._open = [(pid, conn) for pid, conn in self._open if pid != os.getpid()]
        for conn in mine:
            conn.close()
        self._pool.close()

    ### Async API: the same plans, never blocking the event loop ###

    async def asend(self, channel: str, message: dict) -> None:
        await self._aexecute(self._plan_send(channel, message))

    async def areceive(self, channels: Iterable[str], block: bool = False) -> tuple[str | None, dict | None]:
        """Like ``receive``; a blocking wait is ``loop.add_reader`` on the wake-up socket."""
        keys = self.valid_receive_channels(channels)
        if not block:
            return self._delivered(await self._aexecute(self._plan_receive(keys, None, 0, False)))
        loop = asyncio.get_running_loop()
        wake_socket = self._pool.take()
        clean = False
        try:
            deadline = loop.time() + self.blocking_timeout
            since = time.time_ns()
            while True:
                wake_socket.drain()
                remaining = deadline - loop.time()
                item = await self._aexecute(self._plan_receive(keys, wake_socket.address, since, remaining > 0))
                if item is not None or remaining <= 0:
                    clean = True
                    return self._delivered(item)
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

    async def aflush(self) -> None:
        await self._aexecute(_plain(store.flush))

    async def aglobal_statistics(self) -> dict[str, int]:
        return await self._aexecute(_plain(store.global_statistics))

    async def achannel_statistics(self, channel: str) -> dict[str, Any]:
        return await self._aexecute(self._plan_channel_statistics(channel))

    async def aheartbeat(self, worker_id: str, info: dict, ttl: float = 30) -> None:
        await self._aexecute(self._plan_heartbeat(worker_id, info, ttl))

    async def aheartbeats(self) -> dict[str, dict]:
        return self._decode_heartbeats(await self._aexecute(self._plan_heartbeats()))

    async def aclose(self) -> None:
        self.close()

    ### Plans: each operation once, for both drivers ###

    def _plan_send(self, channel: str, message: dict) -> _Plan:
        self.valid_channel_name(channel)
        data = self.serialize(message)
        key = self.non_local_name(channel)
        capacity = self.get_capacity(channel)
        expiry = self.expiry

        def plan(conn: sqlite3.Connection, now: float) -> tuple[Any, list[Wake]]:
            sent = store.send(conn, now, key, channel, data, now + expiry, capacity)
            if not sent.stored:
                return ChannelFull(channel), []
            return None, [sent.wake] if sent.wake else []

        return plan

    @staticmethod
    def _plan_receive(keys: list[str], address: bytes | None, since: int, wait: bool) -> _Plan:
        def plan(conn: sqlite3.Connection, now: float) -> tuple[Any, list[Wake]]:
            item, next_waiter = store.receive(conn, now, keys, address, since, wait)
            return item, [next_waiter] if next_waiter else []

        return plan

    def _plan_channel_exists(self, name: str) -> _Plan:
        return _plain(store.channel_exists, self.non_local_name(name))

    def _plan_group_add(self, group: str, channel: str) -> _Plan:
        self.valid_group_name(group)
        self.valid_channel_name(channel)
        group_expiry = self.group_expiry
        return lambda conn, now: (store.group_add(conn, group, channel, now + group_expiry), [])

    def _plan_group_discard(self, group: str, channel: str) -> _Plan:
        self.valid_group_name(group)
        self.valid_channel_name(channel)
        return _plain(store.group_discard, group, channel)

    def _plan_group_channels(self, group: str) -> _Plan:
        self.valid_group_name(group)

        def plan(conn: sqlite3.Connection, now: float) -> tuple[Any, list[Wake]]:
            store.sweep(conn, now)
            return store.group_channels(conn, now, group), []

        return plan

    def _plan_send_group(self, group: str, message: dict) -> _Plan:
        self.valid_group_name(group)
        data = self.serialize(message)
        expiry = self.expiry

        def plan(conn: sqlite3.Connection, now: float) -> tuple[Any, list[Wake]]:
            store.sweep(conn, now)
            wakes = []
            for channel in store.group_channels(conn, now, group):
                key = self.non_local_name(channel)
                sent = store.send(conn, now, key, channel, data, now + expiry, self.get_capacity(channel))
                if sent.wake:
                    wakes.append(sent.wake)
            return None, wakes

        return plan

    def _plan_channel_statistics(self, channel: str) -> _Plan:
        self.valid_channel_name(channel)
        key, expiry = self.non_local_name(channel), self.expiry
        return lambda conn, now: (store.channel_statistics(conn, now, key, expiry), [])

    def _plan_heartbeat(self, worker_id: str, info: dict, ttl: float) -> _Plan:
        if not isinstance(worker_id, str) or not worker_id:
            raise TypeError(f"worker_id must be a non-empty str; got {worker_id!r:.60}")
        _positive_number("ttl", ttl)
        data = self.serialize(info)
        return lambda conn, now: (store.heartbeat(conn, worker_id, now + ttl, data), [])

    @staticmethod
    def _plan_heartbeats() -> _Plan:
        return lambda conn, now: (store.heartbeats(conn, now), [])

    def _delivered(self, item: tuple[str, bytes] | None) -> tuple[str | None, dict | None]:
        if item is None:
            return None, None
        return item[0], self.deserialize(item[1])

    def _decode_heartbeats(self, rows: list[tuple[str, bytes]]) -> dict[str, dict]:
        return {worker_id: self.deserialize(info) for worker_id, info in rows}

    ### Drivers ###

    def _execute(self, plan: _Plan) -> Any:
        """Run ``plan`` in one transaction (waiting for the lock as SQLite does), then wake whom it claimed."""
        conn = self._connection(async_driver=False)
        try:
            result, wakes = self._transact(conn, plan)
            while wakes:
                wakes = [self._transact(conn, _plain(store.claim, dead.key))[0] for dead in _unwoken(wakes)]
                wakes = [w for w in wakes if w]
        except sqlite3.OperationalError as exc:
            raise self._error(exc) from None
        self._probe_if_due(conn)
        if isinstance(result, BaseException):
            raise result
        return result

    async def _aexecute(self, plan: _Plan) -> Any:
        """Like ``_execute``; while another process holds the lock, sleeps on the loop and tries again."""
        conn = self._connection(async_driver=True)
        result, wakes = await self._atransact(conn, plan)
        while wakes:
            wakes = [(await self._atransact(conn, _plain(store.claim, dead.key)))[0] for dead in _unwoken(wakes)]
            wakes = [w for w in wakes if w]
        self._probe_if_due(conn)
        if isinstance(result, BaseException):
            raise result
        return result

    def _transact(self, conn: sqlite3.Connection, plan: _Plan) -> tuple[Any, list[Wake]]:
        now = time.time()
        with store.transaction(conn):
            if now >= self._next_sweep:
                store.sweep(conn, now)
                self._next_sweep = now + _SWEEP_INTERVAL
            return plan(conn, now)

    async def _atransact(self, conn: sqlite3.Connection, plan: _Plan) -> tuple[Any, list[Wake]]:
        delay, waited = _ASYNC_RETRY_FIRST, 0.0
        while True:
            try:
                return self._transact(conn, plan)
            except sqlite3.OperationalError as exc:
                if not store.is_busy(exc) or waited >= _LOCK_TIMEOUT:
                    raise self._error(exc) from None
            await asyncio.sleep(delay)
            waited += delay
            delay = min(delay * 2, _ASYNC_RETRY_MAX)

    def _probe_if_due(self, conn: sqlite3.Connection) -> None:
        """Now and then, drop registrations of receivers whose process is gone (never woken since)."""
        if time.monotonic() < self._next_probe:
            return
        self._next_probe = time.monotonic() + _PROBE_INTERVAL
        try:
            dead = [address for address in store.waiter_addresses(conn) if not address_is_live(address)]
            if dead:
                self._transact(conn, _plain(store.forget_waiters, dead))
                logger.debug("dropped %d wait registrations of receivers that are gone", len(dead))
        except sqlite3.OperationalError as exc:  # busy: the next probe will do it
            logger.debug("probing waiters skipped: %s", exc)

    def _connection(self, async_driver: bool) -> sqlite3.Connection:
        """This thread's connection for one driver (the async one never waits for a lock inside SQLite)."""
        local = self._local
        if getattr(local, "key", None) != (os.getpid(), self._generation):
            local.key, local.conns = (os.getpid(), self._generation), [None, None]
        conn = local.conns[async_driver]
        if conn is None:
            try:
                conn = store.connect(self.path, 0 if async_driver else _LOCK_TIMEOUT)
            except (sqlite3.Error, OSError) as exc:
                raise self._error(exc) from None
            local.conns[async_driver] = conn
            with self._lock:
                self._open.append((os.getpid(), conn))
        return conn

    def _error(self, exc: BaseException) -> Exception:
        if store.is_busy(exc):
            return RuntimeError(
                f"the IPC channel layer's database {self.path} stayed locked for {_LOCK_TIMEOUT:g} s: a process "
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


def _plain(function: Callable[..., Any], *args: Any) -> _Plan:
    """A plan for a store function that needs only the connection (and ``args``) and wakes nobody."""
    return lambda conn, now: (function(conn, *args), [])


def _unwoken(wakes: list[Wake]) -> list[Wake]:
    """Wake each claimed waiter; those whose process is gone are returned, to claim the next waiter instead."""
    return [claimed for claimed in wakes if not wake(claimed.address)]


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
