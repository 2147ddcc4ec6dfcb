"""Sync and asyncio I/O for the Redis channel layer.

The layer writes each operation once, as a generator that yields what it needs
from Redis (a list of :class:`Call` s, or one :class:`BlockingPop`) and
receives the replies.  :class:`SyncIO` (redis-py connections: threads, gevent)
and :class:`AsyncIO` (``redis.asyncio`` connections, one set per event loop)
only run those requests, so the two sides share every script, key and decision.

Connections are redis-py's own (connect, AUTH, TLS, SELECT), but commands go
straight through them: packed by hiredis, several per shard in one write.  The
client and pool layers of redis-py cost more per command than the round trip
to a local Redis, and one round trip per operation is the point of this layer.
A connection that fails is dropped; a reused idle connection that fails (Redis
restarted since) is replaced once, because the old server never saw the command.
A reply is polled for briefly before the driver sleeps until it comes
(:mod:`._redis_spin`).

A blocking pop over several shards sends ``BLPOP`` on one connection per shard
at once; the first reply wins, the other connections are released with
``CLIENT UNBLOCK`` and anything they popped meanwhile is pushed back to the
head of its list: no message is lost, no shard is polled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import selectors
import weakref
from dataclasses import dataclass
from typing import Any, Generator, Iterator, NamedTuple, Sequence

import hiredis
import redis
from redis.exceptions import NoScriptError, ResponseError

from .hosts import RedisHost
from .scripts import Script
from .spin import NOT_ENOUGH_DATA, ReplySpin

try:  # redis-py's hiredis parsers: their readers are read directly (see _read_replies)
    from redis._parsers.hiredis import _AsyncHiredisParser, _HiredisParser
except ImportError:  # another redis-py layout: its public read_response() then
    _HiredisParser = _AsyncHiredisParser = None

__all__ = ["AsyncIO", "BlockingPop", "Call", "ChannelLayerConnectionError", "SyncIO", "packed", "script_call"]

logger = logging.getLogger(__name__)

_CONNECTION_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


class ChannelLayerConnectionError(redis.exceptions.ConnectionError, ConnectionError):
    """Redis cannot be reached (down, restarting, refused).  The operation did not happen.

    The layer reconnects by itself on a later call once Redis is back; the
    caller decides whether to retry, answer 503 or give up.  Catch it as
    ``ConnectionError`` (built-in) or ``redis.exceptions.ConnectionError``.
    """


class Call(NamedTuple):
    """One command on shard ``shard``, as sent; for a script (``script`` set) an ``EVALSHA``.

    A named tuple holding the finished command, not a dataclass building it
    later: one is made per operation, on the hot path.
    """

    shard: int
    command: tuple | bytes  # bytes: already packed (see packed())
    script: Script | None = None

    def with_source(self) -> tuple:
        """The same script call sending the script's source (``EVAL``): Redis lost its cache."""
        assert self.script is not None
        return ("EVAL", self.script.source, *self.command[2:])


def script_call(shard: int, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Call:
    """A :class:`Call` running ``script`` by SHA on ``shard`` with ``keys`` and ``args``."""
    return Call(shard, ("EVALSHA", script.sha, len(keys), *keys, *args), script)


@dataclass(frozen=True)
class BlockingPop:
    """``BLPOP`` on ``(shard, keys)`` pairs at once, for up to ``timeout`` seconds.

    The reply is ``(shard, key, value)`` or ``None`` on timeout.
    """

    plan: Sequence[tuple[int, Sequence[str]]]
    timeout: float


Op = Generator[Any, Any, Any]


def _pack(commands: Sequence[tuple | bytes]) -> list[bytes]:
    # A command given as bytes was packed once and is reused (constant commands of a send).
    return [b"".join([command if type(command) is bytes else hiredis.pack_command(command) for command in commands])]


def packed(command: tuple) -> bytes:
    """``command`` packed once, for a :class:`Call` sent many times."""
    return hiredis.pack_command(command)


def _blpop(keys: Sequence[str], timeout: float) -> tuple:
    # BLPOP's 0 means "forever": never send it.
    return ("BLPOP", *keys, f"{max(0.01, timeout):.3f}")


def _read_replies(conn: Any, count: int, spin: ReplySpin | None) -> list[Any]:
    """``count`` replies from a sync connection; error replies as values, not raised.

    With hiredis, straight from redis-py's own hiredis reader: its
    ``read_response()`` wraps each reply in checks that cost more than the
    reply (a send reads three).  Errors are those of ``read_response()``: a
    dead socket or a timeout raises, and the caller drops the connection.
    A reply not there yet is first polled for with ``spin`` (see :mod:`._redis_spin`).
    """
    parser = conn._parser
    if type(parser) is not _HiredisParser:
        replies = []
        for _ in range(count):
            try:
                replies.append(conn.read_response())
            except ResponseError as exc:
                replies.append(exc)
        return replies
    reader = parser._reader
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


async def _aread_replies(conn: Any, count: int, spin: ReplySpin | None) -> list[Any]:
    """The async twin of :func:`_read_replies` (``redis.asyncio`` connections have no read timeout here)."""
    parser = conn._parser
    if type(parser) is not _AsyncHiredisParser:
        replies = []
        for _ in range(count):
            try:
                replies.append(await conn.read_response())
            except ResponseError as exc:
                replies.append(exc)
        return replies
    reader = parser._reader
    replies = []
    for _ in range(count):
        reply = reader.gets()
        while reply is NOT_ENOUGH_DATA:
            await (parser.read_from_socket() if spin is None else spin.aread(parser))
            reply = reader.gets()
        replies.append(reply)
    return replies


def _by_shard(calls: Sequence[Call]) -> dict[int, list[int]]:
    by_shard: dict[int, list[int]] = {}
    for index, call in enumerate(calls):
        by_shard.setdefault(call.shard, []).append(index)
    return by_shard


def _reply(reply: Any) -> Any:
    if isinstance(reply, Exception):
        raise reply
    return reply


def _popped(shard: int, reply: Any) -> tuple[int, bytes, bytes] | None:
    return (shard, reply[0], reply[1]) if reply else None


def _first_of(replies: list[Any], failures: list[Exception]) -> tuple[tuple[int, bytes, bytes] | None, list[Any]]:
    """The popped message to return and the extra ones to push back; raise if only failures."""
    got = [reply for reply in replies if reply is not None]
    if not got and failures:
        raise failures[0]
    return (got[0] if got else None), got[1:]


def _disconnect_all(idle: list[list[Any]]) -> None:
    for connections in idle:
        while connections:
            connections.pop().disconnect()


class _Shards:
    """What both drivers share: hosts, idle connections, and turning redis-py errors into ours."""

    def __init__(self, hosts: Sequence[RedisHost], pools: list[Any], reply_spin_us: float) -> None:
        self.hosts = list(hosts)
        self.spin = ReplySpin(reply_spin_us)
        # redis-py pools only make and configure connections here.
        self.pools = pools
        # Idle connections per shard: list.pop/append are atomic, for threads and greenlets.
        self.idle: list[list[Any]] = [[] for _ in self.hosts]

    def _acquire(self, shard: int, fresh: bool = False) -> tuple[Any, bool]:
        """A connection and whether it was reused (so may be stale)."""
        if not fresh:
            try:
                return self.idle[shard].pop(), True
            except IndexError:
                pass
        return self.pools[shard].make_connection(), False

    def _take_idle(self, shard: int) -> list[Any]:
        """Empty the shard's idle list: after one failure the others are likely stale too.

        Emptied in place, never swapped for a new list: a thread putting a
        connection back at that moment would put it in the dropped list, where
        nobody disconnects it and the garbage collector meets an open socket.
        """
        idle, taken = self.idle[shard], []
        while True:
            try:
                taken.append(idle.pop())
            except IndexError:
                return taken

    @contextlib.contextmanager
    def errors(self, shard: int) -> Iterator[None]:
        try:
            yield
        except _CONNECTION_ERRORS as exc:
            raise self._connection_error(shard, exc) from None

    def _connection_error(self, shard: int, exc: BaseException) -> ChannelLayerConnectionError:
        if isinstance(exc, ChannelLayerConnectionError):
            return exc
        host = self.hosts[shard]
        reason = str(exc) or type(exc).__name__
        for secret in host.secrets():
            reason = reason.replace(secret, "***")
        reason = reason.rstrip(".")
        error = ChannelLayerConnectionError(
            f"channel layer cannot reach Redis at {host.describe()}: {reason}. "
            "Check that Redis is running and the URL is right; the layer reconnects "
            "by itself once it is back."
        )
        # Without the advice, for a process that gives up at boot (it gives its own, once).
        error.detail = f"cannot reach Redis at {host.describe()}: {reason}"
        return error

    @staticmethod
    def _scripts_to_resend(calls: Sequence[Call], replies: list[Any]) -> list[int]:
        return [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError) and calls[i].script]


class SyncIO(_Shards):
    """Runs layer operations on redis-py connections; safe for threads and gevent."""

    def __init__(self, hosts: Sequence[RedisHost], socket_timeout: float, reply_spin_us: float) -> None:
        super().__init__(hosts, [host.sync_pool(socket_timeout) for host in hosts], reply_spin_us)
        # A layer dropped without close() still closes its sockets, in order
        # (left to the garbage collector, a socket may go before its connection).
        weakref.finalize(self, _disconnect_all, self.idle)

    def run(self, op: Op) -> Any:
        # A connection error is thrown into the operation, which may go on
        # with another shard (a normal channel lives on all of them).
        try:
            request = next(op)
            while True:
                try:
                    if isinstance(request, BlockingPop):
                        reply = self._blocking_pop(request)
                    else:
                        reply = self._calls(request)
                except ChannelLayerConnectionError as exc:
                    request = op.throw(exc)
                    continue
                request = op.send(reply)
        except StopIteration as stop:
            return stop.value
        finally:
            op.close()

    def close(self) -> None:
        """Disconnect idle connections (busy ones are dropped when they come back)."""
        for shard in range(len(self.hosts)):
            self._drop_idle(shard)

    def _drop_idle(self, shard: int) -> None:
        for conn in self._take_idle(shard):
            conn.disconnect()

    def _round_trip(self, shard: int, commands: Sequence[tuple], blocking: bool = False) -> list[Any]:
        """Send ``commands`` in one write, read every reply (errors as values).

        ``blocking``: a blocking pop, whose reply comes when another process
        sends something: never polled for.
        """
        packed = _pack(commands)
        for attempt in (0, 1):
            conn, reused = self._acquire(shard, fresh=attempt > 0)
            try:
                if conn._sock is None:
                    conn.connect()
                # redis-py's send_packed_command() only adds checks made here
                # already, and its own error wrapping, which _connection_error does.
                conn._sock.sendall(packed[0])
                replies = _read_replies(conn, len(commands), None if blocking else self.spin)
            except _CONNECTION_ERRORS as exc:
                conn.disconnect()
                self._drop_idle(shard)
                if reused and attempt == 0:
                    continue
                raise self._connection_error(shard, exc) from None
            except BaseException:
                conn.disconnect()
                raise
            self.idle[shard].append(conn)
            return replies
        raise AssertionError("unreachable")

    def _shard_calls(self, shard: int, calls: Sequence[Call]) -> list[Any]:
        results = self._round_trip(shard, [call.command for call in calls])
        resend = self._scripts_to_resend(calls, results)
        if resend:  # Redis lost its script cache (restart): send the source once
            again = self._round_trip(shard, [calls[i].with_source() for i in resend])
            for i, result in zip(resend, again):
                results[i] = result
        return [_reply(result) for result in results]

    def _calls(self, calls: Sequence[Call]) -> list[Any]:
        shard = calls[0].shard
        if all(call.shard == shard for call in calls):  # the common case: one round trip, replies in order
            return self._shard_calls(shard, calls)
        replies: list[Any] = [None] * len(calls)
        for shard, indexes in _by_shard(calls).items():
            for index, result in zip(indexes, self._shard_calls(shard, [calls[i] for i in indexes])):
                replies[index] = result
        return replies

    def _blocking_pop(self, request: BlockingPop) -> tuple[int, bytes, bytes] | None:
        if len(request.plan) == 1:
            shard, keys = request.plan[0]
            (reply,) = self._round_trip(shard, [_blpop(keys, request.timeout)], blocking=True)
            return _popped(shard, _reply(reply))
        # One BLPOP per shard at once.  A shard that fails does not cost the
        # messages popped on the others: every live connection is read to the end.
        taken: list[tuple[int, Any, int]] = []
        failures: list[Exception] = []
        replies = []
        try:
            for shard, keys in request.plan:
                conn = self._acquire(shard)[0]
                try:
                    with self.errors(shard):
                        conn.send_packed_command(_pack([("CLIENT", "ID"), _blpop(keys, request.timeout)]), check_health=False)
                        taken.append((shard, conn, conn.read_response()))
                except BaseException as exc:
                    self._fail(shard, conn, exc, failures)
            if taken:  # healthy shards still deliver while another is down
                self._wait_readable(taken, request.timeout + 5)
            for shard, conn, client_id in taken:
                if not self._can_read(conn):
                    try:
                        self._round_trip(shard, [("CLIENT", "UNBLOCK", client_id)])
                    except ChannelLayerConnectionError as exc:
                        failures.append(exc)
            while taken:
                shard, conn, _ = taken.pop(0)
                try:
                    with self.errors(shard):
                        replies.append(_popped(shard, conn.read_response()))
                    self.idle[shard].append(conn)
                except BaseException as exc:
                    self._fail(shard, conn, exc, failures)
        finally:
            # Any other error (a Redis error reply, a timeout or Ctrl-C in the
            # middle) leaves connections with a BLPOP in flight: close them here,
            # or their sockets wait for the garbage collector ("unclosed socket").
            for _, conn, _ in taken:
                conn.disconnect()
        first, extras = _first_of(replies, failures)
        for shard, key, value in extras:
            _reply(self._round_trip(shard, [("LPUSH", key, value)])[0])
        return first

    def _fail(self, shard: int, conn: Any, exc: BaseException, failures: list[Exception]) -> None:
        conn.disconnect()
        self._drop_idle(shard)
        if not isinstance(exc, ChannelLayerConnectionError):
            raise exc
        failures.append(exc)

    @staticmethod
    def _can_read(conn: Any) -> bool:
        # A reply may already sit in the parser's buffer, where select() cannot
        # see it; a broken connection counts as readable (reading tells why).
        try:
            return conn.can_read(0)
        except _CONNECTION_ERRORS:
            return True

    def _wait_readable(self, taken: list[tuple[int, Any, int]], timeout: float) -> None:
        if any(self._can_read(conn) for _, conn, _ in taken):
            return
        with selectors.DefaultSelector() as selector:
            for _, conn, _ in taken:
                selector.register(conn._sock, selectors.EVENT_READ)
            selector.select(timeout)


class AsyncIO(_Shards):
    """Runs layer operations on ``redis.asyncio`` connections bound to one event loop."""

    def __init__(self, hosts: Sequence[RedisHost], socket_timeout: float, reply_spin_us: float) -> None:
        super().__init__(hosts, [host.async_pool(socket_timeout) for host in hosts], reply_spin_us)

    async def run(self, op: Op) -> Any:
        try:
            request = next(op)
            while True:
                try:
                    if isinstance(request, BlockingPop):
                        reply = await self._blocking_pop(request)
                    else:
                        reply = await self._calls(request)
                except ChannelLayerConnectionError as exc:
                    request = op.throw(exc)
                    continue
                request = op.send(reply)
        except StopIteration as stop:
            return stop.value
        finally:
            op.close()

    async def close(self) -> None:
        # Waits until each connection is closed: a TLS connection closes in
        # several loop iterations (close_notify both ways), and this often
        # runs as the loop shuts down, which would leave its socket open.
        for shard in range(len(self.hosts)):
            for conn in self._take_idle(shard):
                await conn.disconnect()

    async def _drop_idle(self, shard: int) -> None:
        for conn in self._take_idle(shard):
            await conn.disconnect(nowait=True)

    async def _round_trip(self, shard: int, commands: Sequence[tuple], blocking: bool = False) -> list[Any]:
        packed = _pack(commands)
        for attempt in (0, 1):
            conn, reused = self._acquire(shard, fresh=attempt > 0)
            try:
                if not conn.is_connected:
                    await conn.connect()
                # What redis-py's send_packed_command() does, without its checks
                # (made here already) and error wrapping (_connection_error's job).
                conn._writer.write(packed[0])
                await conn._writer.drain()
                replies = await _aread_replies(conn, len(commands), None if blocking else self.spin)
            except _CONNECTION_ERRORS as exc:
                await conn.disconnect(nowait=True)
                await self._drop_idle(shard)
                if reused and attempt == 0:
                    continue
                raise self._connection_error(shard, exc) from None
            except BaseException:  # cancelled mid-command: the connection's state is unknown
                await conn.disconnect(nowait=True)
                raise
            self.idle[shard].append(conn)
            return replies
        raise AssertionError("unreachable")

    async def _shard_calls(self, shard: int, calls: Sequence[Call]) -> list[Any]:
        results = await self._round_trip(shard, [call.command for call in calls])
        resend = self._scripts_to_resend(calls, results)
        if resend:
            again = await self._round_trip(shard, [calls[i].with_source() for i in resend])
            for i, result in zip(resend, again):
                results[i] = result
        return [_reply(result) for result in results]

    async def _calls(self, calls: Sequence[Call]) -> list[Any]:
        shard = calls[0].shard
        if all(call.shard == shard for call in calls):  # the common case: one round trip, replies in order
            return await self._shard_calls(shard, calls)
        by_shard = _by_shard(calls)
        shard_replies = await asyncio.gather(
            *(self._shard_calls(shard, [calls[i] for i in indexes]) for shard, indexes in by_shard.items())
        )
        replies: list[Any] = [None] * len(calls)
        for indexes, results in zip(by_shard.values(), shard_replies):
            for index, result in zip(indexes, results):
                replies[index] = result
        return replies

    async def _blocking_pop(self, request: BlockingPop) -> tuple[int, bytes, bytes] | None:
        if len(request.plan) == 1:
            shard, keys = request.plan[0]
            (reply,) = await self._round_trip(shard, [_blpop(keys, request.timeout)], blocking=True)
            return _popped(shard, _reply(reply))
        taken: list[tuple[int, Any, int]] = []
        failures: list[Exception] = []
        try:
            for shard, keys in request.plan:
                conn = self._acquire(shard)[0]
                try:
                    with self.errors(shard):
                        await conn.send_packed_command(
                            _pack([("CLIENT", "ID"), _blpop(keys, request.timeout)]), check_health=False
                        )
                        taken.append((shard, conn, await conn.read_response()))
                except BaseException as exc:
                    await self._fail(shard, conn, exc, failures)
        except BaseException:
            # Failed or cancelled while blocking the others: they are mid-BLPOP, unusable.
            for _, conn, _ in taken:
                await conn.disconnect(nowait=True)
            raise
        reads = [asyncio.ensure_future(conn.read_response()) for _, conn, _ in taken]
        settled: set[int] = set()
        try:
            if reads:
                await asyncio.wait(reads, timeout=request.timeout + 5, return_when=asyncio.FIRST_COMPLETED)
            for (shard, _, client_id), read in zip(taken, reads):
                if not read.done():
                    try:
                        await self._round_trip(shard, [("CLIENT", "UNBLOCK", client_id)])
                    except ChannelLayerConnectionError as exc:
                        failures.append(exc)
            replies = []
            for (shard, conn, _), read in zip(taken, reads):
                try:
                    with self.errors(shard):
                        replies.append(_popped(shard, await read))
                    self.idle[shard].append(conn)
                except BaseException as exc:
                    await self._fail(shard, conn, exc, failures)
                finally:
                    settled.add(id(conn))
        finally:
            # Cancelled while waiting: the unread connections are in an unknown state.
            for (_, conn, _), read in zip(taken, reads):
                if id(conn) not in settled:
                    read.cancel()
                    await asyncio.gather(read, return_exceptions=True)
                    await conn.disconnect(nowait=True)
        first, extras = _first_of(replies, failures)
        for shard, key, value in extras:
            _reply((await self._round_trip(shard, [("LPUSH", key, value)]))[0])
        return first

    async def _fail(self, shard: int, conn: Any, exc: BaseException, failures: list[Exception]) -> None:
        await conn.disconnect(nowait=True)
        await self._drop_idle(shard)
        if not isinstance(exc, ChannelLayerConnectionError):
            raise exc
        failures.append(exc)
