"""Connections and raw I/O of the Redis channel layer: the ONLY module touching redis-py internals.

redis-py makes and configures the connections (connect, AUTH, TLS, SELECT,
HELLO); commands then go straight through them: packed by hiredis, several
per shard in one write, replies read from redis-py's own hiredis reader.
redis-py's client, pool and ``read_response()`` layers cost more per command
than a round trip to a local Redis.  That needs a few private names of
redis-py (``_sock``, ``_writer``, ``_parser``, its ``_reader`` and
``read_from_socket()``, the hiredis parser classes and ``NOT_ENOUGH_DATA``):
they are checked when this module is imported, so another redis-py fails at
once with an ImportError saying what is missing, not later mid-request.

Tested with redis-py 8.1 (hiredis 3.x).  The layout used here exists since
redis-py 5.0 (``redis._parsers``); older versions are refused by the check.

Two transports, for threads/gevent and for one event loop, each with the same
few primitives: take and give back a connection, and :meth:`exchange` (write
each connection's commands, then read its replies; a connection that fails is
closed and reported as a value).  Everything else (retries, script re-sends,
reply handling) is in :mod:`.drivers`, shared by both.

The asyncio side has no per-command timer (``asyncio.timeout`` costs about
14 us, more than the work of a command): one :class:`_Watchdog` per transport
closes any connection whose reply is overdue, which fails the wait.
"""

from __future__ import annotations

import asyncio
import selectors
from typing import Any, Sequence

import hiredis
import redis
import redis.asyncio
import redis.asyncio.connection
import redis.connection
from redis.backoff import NoBackoff

from .hosts import RedisHost

try:
    from redis._parsers.hiredis import NOT_ENOUGH_DATA, _AsyncHiredisParser, _HiredisParser
except ImportError as exc:  # pragma: no cover - depends on the installed redis-py
    raise ImportError(
        f"paas_channels' Redis layer needs redis-py 5.0 or later with hiredis "
        f"(tested with 8.1); redis-py {getattr(redis, '__version__', '?')} lacks {exc.name or exc}. "
        "Fix: pip install 'redis[hiredis]>=5.0'"
    ) from None

__all__ = ["AsyncTransport", "CONNECTION_ERRORS", "NOT_ENOUGH_DATA", "SyncTransport", "pack"]

#: What a dead, refused or stalled connection raises (a redis-py error or the OS's).
CONNECTION_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)

TESTED_WITH = "redis-py 8.1, hiredis 3.5"


def _self_check() -> None:
    """Fail at import, naming what is missing, when redis-py no longer has what this module uses."""
    missing = [
        f"{cls.__name__}.{name}"
        for cls, names in ((_HiredisParser, ("read_from_socket", "on_connect")), (_AsyncHiredisParser, ("read_from_socket", "on_connect")))
        for name in names
        if not hasattr(cls, name)
    ]
    sync_conn = redis.connection.Connection(parser_class=_HiredisParser)
    missing += [f"Connection.{name}" for name in ("_sock", "_parser") if not hasattr(sync_conn, name)]
    async_conn = redis.asyncio.connection.Connection(parser_class=_AsyncHiredisParser)
    missing += [f"asyncio Connection.{name}" for name in ("_writer", "_parser", "is_connected") if not hasattr(async_conn, name)]
    if not hasattr(hiredis.Reader(), "has_data"):
        missing.append("hiredis.Reader.has_data (hiredis 2.0 or later)")
    if missing:
        raise ImportError(
            f"paas_channels' Redis layer was tested with {TESTED_WITH}; redis-py "
            f"{redis.__version__} lacks {', '.join(missing)}. Fix: pip install 'redis[hiredis]>=5.0,<9'"
        )


_self_check()


def pack(commands: Sequence[tuple | bytes]) -> bytes:
    """``commands`` packed as one write; a command given as bytes was packed once and is reused."""
    return b"".join([command if type(command) is bytes else hiredis.pack_command(command) for command in commands])


def _retry(module: Any) -> Any:
    # One retry reconnects a pooled connection that went stale (Redis was
    # restarted); more would stretch an outage into minutes of silence.
    return module.Retry(NoBackoff(), 1, supported_errors=(redis.exceptions.ConnectionError,))


def _idle_drain(idle: list[Any]) -> list[Any]:
    """Empty ``idle`` in place and return what it held.

    Emptied in place, never swapped for a new list: a thread putting a
    connection back at that moment would put it in the dropped list, where
    nobody disconnects it and the garbage collector meets an open socket.
    """
    taken = []
    while True:
        try:
            taken.append(idle.pop())
        except IndexError:
            return taken


class _Connections:
    """Idle connections per shard and the redis-py pools that make them (pools only make them here)."""

    def __init__(self, pools: list[Any]) -> None:
        self.pools = pools
        # list.pop/append are atomic: safe for threads and greenlets without a lock.
        self.idle: list[list[Any]] = [[] for _ in pools]

    def acquire(self, shard: int, fresh: bool = False) -> tuple[Any, bool]:
        """A connection and whether it was reused (so may be stale)."""
        if not fresh:
            try:
                return self.idle[shard].pop(), True
            except IndexError:
                pass
        return self.pools[shard].make_connection(), False

    def release(self, shard: int, conn: Any) -> None:
        self.idle[shard].append(conn)

    def take_idle(self, shard: int) -> list[Any]:
        return _idle_drain(self.idle[shard])


class SyncTransport(_Connections):
    """redis-py connections for threads and gevent; waits bounded by the sockets' timeout."""

    def __init__(self, hosts: Sequence[RedisHost], socket_timeout: float) -> None:
        classes = {
            "tcp": redis.connection.Connection,
            "ssl": redis.connection.SSLConnection,
            "unix": redis.connection.UnixDomainSocketConnection,
        }
        super().__init__([
            redis.ConnectionPool(
                connection_class=classes[host.kind],
                parser_class=_HiredisParser,
                **host.pool_kwargs(socket_timeout),
                retry=_retry(redis.retry),
            )
            for host in hosts
        ])

    def exchange(self, batch: Sequence[tuple[int, Any, bytes, int]], spin: Any, timeout: float) -> list[Any]:
        """For each ``(shard, conn, payload, count)``: write ``payload`` (if any), then read ``count`` replies.

        Returns per entry its replies (error replies as values) or the
        exception that broke the connection; a broken connection is closed
        with the shard's idle ones (likely stale too).  Writes all before
        reading any, so shards work at once.  ``timeout`` is the sockets' own.
        """
        outcomes: list[Any] = [None] * len(batch)
        for index, (shard, conn, payload, _) in enumerate(batch):
            if payload:
                try:
                    if conn._sock is None:
                        conn.connect()
                    conn._sock.sendall(payload)
                except CONNECTION_ERRORS as exc:
                    outcomes[index] = self._broken(shard, conn, exc)
        for index, (shard, conn, _, count) in enumerate(batch):
            if outcomes[index] is None:
                try:
                    outcomes[index] = self._read(conn, count, spin)
                except CONNECTION_ERRORS as exc:
                    outcomes[index] = self._broken(shard, conn, exc)
        return outcomes

    @staticmethod
    def _read(conn: Any, count: int, spin: Any) -> list[Any]:
        # A reply not there yet is first polled for with ``spin`` (see :mod:`.spin`).
        parser = conn._parser
        reader = parser._reader
        if reader is None:  # closed by another thread meanwhile
            raise redis.exceptions.ConnectionError("connection closed")
        replies = []
        for _ in range(count):
            reply = reader.gets()
            if reply is NOT_ENOUGH_DATA and spin is not None:
                reply = spin.read(conn._sock, reader)
            while reply is NOT_ENOUGH_DATA:
                parser.read_from_socket()
                reply = reader.gets()
            replies.append(reply)
        return replies

    def _broken(self, shard: int, conn: Any, exc: BaseException) -> BaseException:
        conn.disconnect()
        for idle in self.take_idle(shard):
            idle.disconnect()
        return exc

    @staticmethod
    def readable(conn: Any) -> bool:
        """Whether a reply is buffered or the socket has bytes (or is broken: reading tells why)."""
        reader = conn._parser._reader
        sock = conn._sock
        if reader is None or sock is None or reader.has_data():
            return True
        with selectors.DefaultSelector() as selector:
            selector.register(sock, selectors.EVENT_READ)
            return bool(selector.select(0))

    def wait_readable(self, conns: Sequence[Any], timeout: float) -> None:
        """Return when one of ``conns`` has something to read, or after ``timeout`` seconds."""
        if any(self.readable(conn) for conn in conns):
            return
        with selectors.DefaultSelector() as selector:
            for conn in conns:
                selector.register(conn._sock, selectors.EVENT_READ)
            selector.select(timeout)

    def discard(self, conns: Sequence[Any]) -> None:
        for conn in conns:
            conn.disconnect()

    def close(self) -> None:
        for shard in range(len(self.idle)):
            self.discard(self.take_idle(shard))


class _Watchdog:
    """One timer for all the replies an event loop's transport waits for.

    A stalled Redis (SIGSTOP, a network partition) never answers and never
    closes: without a bound, a waiting coroutine waits forever.  Each read
    notes its deadline here (a dict entry, no timer); one ``call_at`` handle
    fires at the earliest deadline, closes the connections that are overdue
    (their read then fails at once) and re-arms for the next.
    """

    def __init__(self) -> None:
        self.deadlines: dict[Any, float] = {}
        self.expired: set[Any] = set()
        self.handle: asyncio.TimerHandle | None = None

    def watch(self, loop: asyncio.AbstractEventLoop, conn: Any, deadline: float) -> None:
        self.deadlines[conn] = deadline
        if self.handle is None or deadline < self.handle.when():
            if self.handle is not None:
                self.handle.cancel()
            self.handle = loop.call_at(deadline, self._check, loop)

    def done(self, conn: Any) -> bool:
        """Stop watching ``conn``; whether its deadline passed (its connection was closed)."""
        self.deadlines.pop(conn, None)
        if conn in self.expired:
            self.expired.discard(conn)
            return True
        return False

    def _check(self, loop: asyncio.AbstractEventLoop) -> None:
        self.handle = None
        now = loop.time()
        for conn, deadline in list(self.deadlines.items()):
            if deadline <= now:
                del self.deadlines[conn]
                self.expired.add(conn)
                writer = conn._writer
                if writer is not None:
                    writer.transport.abort()  # the waiting read sees the connection end
        if self.deadlines:
            self.handle = loop.call_at(min(self.deadlines.values()), self._check, loop)


class AsyncTransport(_Connections):
    """``redis.asyncio`` connections bound to one event loop; every wait is bounded by the watchdog."""

    def __init__(self, hosts: Sequence[RedisHost], socket_timeout: float) -> None:
        module = redis.asyncio.connection
        classes = {"tcp": module.Connection, "ssl": module.SSLConnection, "unix": module.UnixDomainSocketConnection}
        pools = []
        for host in hosts:
            kwargs = host.pool_kwargs(socket_timeout)
            # No per-command socket timeout: redis.asyncio would wrap every
            # read and write in asyncio.timeout; the watchdog bounds waits instead.
            kwargs["socket_timeout"] = None
            pools.append(redis.asyncio.ConnectionPool(
                connection_class=classes[host.kind], parser_class=_AsyncHiredisParser,
                **kwargs, retry=_retry(redis.asyncio.retry),
            ))
        super().__init__(pools)
        self.watchdog = _Watchdog()

    async def exchange(self, batch: Sequence[tuple[int, Any, bytes, int]], spin: Any, timeout: float) -> list[Any]:
        """:meth:`SyncTransport.exchange` on this loop; each connection's reads end within ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        outcomes: list[Any] = [None] * len(batch)
        for index, (shard, conn, payload, _) in enumerate(batch):
            if payload:
                try:
                    if not conn.is_connected:  # connecting reads replies (HELLO, AUTH): bound it too
                        async with asyncio.timeout_at(deadline):
                            await conn.connect()
                    writer = conn._writer
                    writer.write(payload)
                    if writer.transport.get_write_buffer_size():  # a large write Redis has not taken yet
                        async with asyncio.timeout_at(deadline):
                            await writer.drain()
                except CONNECTION_ERRORS as exc:
                    outcomes[index] = await self._broken(shard, conn, exc, timeout)
        watchdog = self.watchdog
        for index, (shard, conn, _, count) in enumerate(batch):
            if outcomes[index] is not None:
                continue
            # Inlined (not a coroutine per read): this is the hot path of every call.
            watched = False
            try:
                parser = conn._parser
                reader = parser._reader
                if reader is None:
                    raise redis.exceptions.ConnectionError("connection closed")
                replies = []
                for _ in range(count):
                    reply = reader.gets()
                    if reply is NOT_ENOUGH_DATA:
                        if not watched:
                            watchdog.watch(loop, conn, deadline)
                            watched = True
                        while reply is NOT_ENOUGH_DATA:
                            await (parser.read_from_socket() if spin is None else spin.aread(parser.read_from_socket))
                            reply = reader.gets()
                    replies.append(reply)
                outcomes[index] = replies
            except CONNECTION_ERRORS as exc:
                if watched and watchdog.done(conn):  # the watchdog closed it: say why
                    exc = TimeoutError(f"no reply within {timeout:g} s")
                outcomes[index] = await self._broken(shard, conn, exc, timeout)
            else:
                if watched:
                    watchdog.done(conn)
        return outcomes

    async def _broken(self, shard: int, conn: Any, exc: BaseException, timeout: float) -> BaseException:
        if isinstance(exc, TimeoutError) and not str(exc):  # asyncio.timeout's is blank
            exc = TimeoutError(f"no reply within {timeout:g} s")
        await self.discard([conn, *self.take_idle(shard)])
        return exc

    @staticmethod
    def _buffered(conn: Any) -> bool:
        reader = conn._parser._reader
        return reader is None or conn._reader is None or reader.has_data() or bool(conn._reader._buffer) or conn._reader.at_eof()

    async def wait_readable(self, conns: Sequence[Any], timeout: float) -> None:
        """Return when one of ``conns`` has something to read, or after ``timeout`` seconds."""
        if any(self._buffered(conn) for conn in conns):
            return
        # read_from_socket() only feeds the reader: cancelled before bytes come, it loses none.
        reads = [asyncio.ensure_future(conn._parser.read_from_socket()) for conn in conns]
        try:
            await asyncio.wait(reads, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for read in reads:
                read.cancel()
            await asyncio.gather(*reads, return_exceptions=True)

    @staticmethod
    def readable(conn: Any) -> bool:
        return AsyncTransport._buffered(conn)

    async def discard(self, conns: Sequence[Any]) -> None:
        for conn in conns:
            self.watchdog.done(conn)
            await conn.disconnect(nowait=True)

    async def close(self) -> None:
        # Waits until each connection is closed: a TLS connection closes in
        # several loop iterations (close_notify both ways), and this often
        # runs as the loop shuts down, which would leave its socket open.
        for shard in range(len(self.idle)):
            for conn in self.take_idle(shard):
                await conn.disconnect()
