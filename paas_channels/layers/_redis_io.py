"""Sync and asyncio I/O for the Redis channel layer.

The layer writes each operation once, as a generator that yields what it needs
from Redis (a list of :class:`Call` s, or one :class:`BlockingPop`) and
receives the replies.  :class:`SyncIO` (redis-py, thread-safe, gevent-friendly)
and :class:`AsyncIO` (``redis.asyncio``, one per event loop) only run those
requests, so the two sides share every script, key and decision.

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
from dataclasses import dataclass
from typing import Any, Generator, Iterator, Sequence

import redis
import redis.asyncio
from redis.exceptions import NoScriptError

from ._redis_hosts import RedisHost
from ._redis_scripts import Script

__all__ = ["AsyncIO", "BlockingPop", "Call", "ChannelLayerConnectionError", "SyncIO"]

logger = logging.getLogger(__name__)


class ChannelLayerConnectionError(redis.exceptions.ConnectionError, ConnectionError):
    """Redis cannot be reached (down, restarting, refused).  The operation did not happen.

    The layer reconnects by itself on a later call once Redis is back; the
    caller decides whether to retry, answer 503 or give up.  Catch it as
    ``ConnectionError`` (built-in) or ``redis.exceptions.ConnectionError``.
    """


@dataclass(frozen=True)
class Call:
    """One command (``script`` is None) or one script run on shard ``shard``."""

    shard: int
    args: tuple
    script: Script | None = None
    keys: tuple = ()


@dataclass(frozen=True)
class BlockingPop:
    """``BLPOP`` on ``(shard, keys)`` pairs at once, for up to ``timeout`` seconds.

    The reply is ``(shard, key, value)`` or ``None`` on timeout.
    """

    plan: Sequence[tuple[int, Sequence[str]]]
    timeout: float


Op = Generator[Any, Any, Any]


def _script_args(call: Call, by_sha: bool) -> tuple:
    head = ("EVALSHA", call.script.sha) if by_sha else ("EVAL", call.script.source)
    return (*head, len(call.keys), *call.keys, *call.args)


def _blpop_timeout(timeout: float) -> float:
    # BLPOP's 0 means "forever": never send it.
    return max(0.01, round(timeout, 3))


class _Shards:
    """What both drivers share: hosts, and turning redis-py errors into ours."""

    def __init__(self, hosts: Sequence[RedisHost]) -> None:
        self.hosts = list(hosts)

    @contextlib.contextmanager
    def errors(self, shard: int) -> Iterator[None]:
        try:
            yield
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
            if isinstance(exc, ChannelLayerConnectionError):
                raise
            host = self.hosts[shard]
            reason = str(exc) or type(exc).__name__
            for secret in host.secrets():
                reason = reason.replace(secret, "***")
            raise ChannelLayerConnectionError(
                f"channel layer cannot reach Redis at {host.describe()}: {reason}. "
                "Check that Redis is running and the URL is right; the layer reconnects "
                "by itself once it is back."
            ) from None


class SyncIO(_Shards):
    """Runs layer operations on redis-py clients (one thread-safe pool per shard)."""

    def __init__(self, hosts: Sequence[RedisHost], socket_timeout: float) -> None:
        super().__init__(hosts)
        self.pools = [host.sync_pool(socket_timeout) for host in self.hosts]
        self.clients = [redis.Redis(connection_pool=pool) for pool in self.pools]

    def run(self, op: Op) -> Any:
        try:
            request = next(op)
            while True:
                if isinstance(request, BlockingPop):
                    reply = self._blocking_pop(request)
                else:
                    reply = self._calls(request)
                request = op.send(reply)
        except StopIteration as stop:
            return stop.value
        finally:
            op.close()

    def close(self) -> None:
        for pool in self.pools:
            pool.disconnect()

    def _call(self, call: Call) -> Any:
        client = self.clients[call.shard]
        with self.errors(call.shard):
            if call.script is None:
                return client.execute_command(*call.args)
            try:
                return client.execute_command(*_script_args(call, by_sha=True))
            except NoScriptError:
                return client.execute_command(*_script_args(call, by_sha=False))

    def _calls(self, calls: Sequence[Call]) -> list[Any]:
        if len(calls) == 1:
            return [self._call(calls[0])]
        replies: list[Any] = [None] * len(calls)
        by_shard: dict[int, list[int]] = {}
        for index, call in enumerate(calls):
            by_shard.setdefault(call.shard, []).append(index)
        for shard, indexes in by_shard.items():
            with self.errors(shard):
                pipe = self.clients[shard].pipeline(transaction=False)
                for index in indexes:
                    call = calls[index]
                    pipe.execute_command(*(_script_args(call, True) if call.script else call.args))
                results = pipe.execute(raise_on_error=False)
            for index, result in zip(indexes, results):
                if isinstance(result, NoScriptError):
                    result = self._call(calls[index])
                elif isinstance(result, Exception):
                    raise result
                replies[index] = result
        return replies

    def _blocking_pop(self, request: BlockingPop) -> tuple[int, bytes, bytes] | None:
        timeout = _blpop_timeout(request.timeout)
        if len(request.plan) == 1:
            shard, keys = request.plan[0]
            with self.errors(shard):
                reply = self.clients[shard].execute_command("BLPOP", *keys, timeout)
            return (shard, reply[0], reply[1]) if reply else None
        taken: list[tuple[int, Any]] = []
        healthy = False
        try:
            ids = []
            for shard, keys in request.plan:
                with self.errors(shard):
                    conn = self.pools[shard].get_connection()
                    taken.append((shard, conn))
                    conn.send_packed_command(conn.pack_commands([("CLIENT", "ID"), ("BLPOP", *keys, timeout)]))
                    ids.append(conn.read_response())
            replies = self._first_replies(taken, ids, timeout)
            healthy = True
        finally:
            for shard, conn in taken:
                if not healthy:
                    conn.disconnect()
                self.pools[shard].release(conn)
        return self._keep_first(replies)

    def _first_replies(self, taken: list[tuple[int, Any]], ids: list[int], timeout: float) -> list[Any]:
        ready = self._readable(taken)
        if not ready:
            with selectors.DefaultSelector() as selector:
                for index, (_, conn) in enumerate(taken):
                    selector.register(conn._sock, selectors.EVENT_READ, index)
                selector.select(timeout + 5)
            ready = self._readable(taken)
        replies: list[Any] = [None] * len(taken)
        for index, (shard, conn) in enumerate(taken):
            if index not in ready:
                with self.errors(shard):
                    self.clients[shard].execute_command("CLIENT", "UNBLOCK", ids[index])
        for index, (shard, conn) in enumerate(taken):
            with self.errors(shard):
                reply = conn.read_response()
            replies[index] = (shard, reply[0], reply[1]) if reply else None
        return replies

    def _readable(self, taken: list[tuple[int, Any]]) -> list[int]:
        # A reply may already sit in the parser's buffer, where select() cannot see it.
        ready = []
        for index, (shard, conn) in enumerate(taken):
            with self.errors(shard):
                if conn.can_read(0):
                    ready.append(index)
        return ready

    def _keep_first(self, replies: list[Any]) -> tuple[int, bytes, bytes] | None:
        got = [reply for reply in replies if reply is not None]
        for shard, key, value in got[1:]:
            with self.errors(shard):
                self.clients[shard].execute_command("LPUSH", key, value)
        return got[0] if got else None


class AsyncIO(_Shards):
    """Runs layer operations on ``redis.asyncio`` clients bound to one event loop."""

    def __init__(self, hosts: Sequence[RedisHost], socket_timeout: float) -> None:
        super().__init__(hosts)
        self.pools = [host.async_pool(socket_timeout) for host in self.hosts]
        self.clients = [redis.asyncio.Redis(connection_pool=pool) for pool in self.pools]

    async def run(self, op: Op) -> Any:
        try:
            request = next(op)
            while True:
                if isinstance(request, BlockingPop):
                    reply = await self._blocking_pop(request)
                else:
                    reply = await self._calls(request)
                request = op.send(reply)
        except StopIteration as stop:
            return stop.value
        finally:
            op.close()

    async def close(self) -> None:
        for pool in self.pools:
            await pool.disconnect()

    async def _call(self, call: Call) -> Any:
        client = self.clients[call.shard]
        with self.errors(call.shard):
            if call.script is None:
                return await client.execute_command(*call.args)
            try:
                return await client.execute_command(*_script_args(call, by_sha=True))
            except NoScriptError:
                return await client.execute_command(*_script_args(call, by_sha=False))

    async def _shard_calls(self, shard: int, calls: list[Call]) -> list[Any]:
        with self.errors(shard):
            pipe = self.clients[shard].pipeline(transaction=False)
            for call in calls:
                pipe.execute_command(*(_script_args(call, True) if call.script else call.args))
            results = await pipe.execute(raise_on_error=False)
        replies = []
        for call, result in zip(calls, results):
            if isinstance(result, NoScriptError):
                result = await self._call(call)
            elif isinstance(result, Exception):
                raise result
            replies.append(result)
        return replies

    async def _calls(self, calls: Sequence[Call]) -> list[Any]:
        if len(calls) == 1:
            return [await self._call(calls[0])]
        by_shard: dict[int, list[int]] = {}
        for index, call in enumerate(calls):
            by_shard.setdefault(call.shard, []).append(index)
        shard_replies = await asyncio.gather(
            *(self._shard_calls(shard, [calls[i] for i in indexes]) for shard, indexes in by_shard.items())
        )
        replies: list[Any] = [None] * len(calls)
        for indexes, results in zip(by_shard.values(), shard_replies):
            for index, result in zip(indexes, results):
                replies[index] = result
        return replies

    async def _blocking_pop(self, request: BlockingPop) -> tuple[int, bytes, bytes] | None:
        timeout = _blpop_timeout(request.timeout)
        if len(request.plan) == 1:
            shard, keys = request.plan[0]
            with self.errors(shard):
                reply = await self.clients[shard].execute_command("BLPOP", *keys, timeout)
            return (shard, reply[0], reply[1]) if reply else None
        taken: list[tuple[int, Any]] = []
        healthy = False
        try:
            ids = []
            for shard, keys in request.plan:
                with self.errors(shard):
                    conn = await self.pools[shard].get_connection()
                    taken.append((shard, conn))
                    await conn.send_packed_command(conn.pack_commands([("CLIENT", "ID"), ("BLPOP", *keys, timeout)]))
                    ids.append(await conn.read_response())
            replies = await self._first_replies(taken, ids, timeout)
            healthy = True
        finally:
            for shard, conn in taken:
                if not healthy:
                    await conn.disconnect()
                await self.pools[shard].release(conn)
        got = [reply for reply in replies if reply is not None]
        for shard, key, value in got[1:]:
            with self.errors(shard):
                await self.clients[shard].execute_command("LPUSH", key, value)
        return got[0] if got else None

    async def _first_replies(self, taken: list[tuple[int, Any]], ids: list[int], timeout: float) -> list[Any]:
        reads = [asyncio.ensure_future(conn.read_response()) for _, conn in taken]
        try:
            await asyncio.wait(reads, timeout=timeout + 5, return_when=asyncio.FIRST_COMPLETED)
            for index, (shard, _) in enumerate(taken):
                if not reads[index].done():
                    with self.errors(shard):
                        await self.clients[shard].execute_command("CLIENT", "UNBLOCK", ids[index])
            replies = []
            for index, (shard, _) in enumerate(taken):
                with self.errors(shard):
                    reply = await reads[index]
                replies.append((shard, reply[0], reply[1]) if reply else None)
            return replies
        finally:
            for read in reads:
                if not read.done():
                    read.cancel()
