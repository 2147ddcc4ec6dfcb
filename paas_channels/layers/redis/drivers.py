"""Running the Redis channel layer's operations: one implementation for sync and asyncio.

The layer writes each operation once, as a generator that yields what it needs
from Redis (a list of :class:`Call` s, or one :class:`BlockingPop`) and
receives the replies (:mod:`.ops`).  Running one is written once too, here, as
a generator of transport primitives (sans-IO): :meth:`_Driver._drive` sends
the calls, re-sends a script Redis lost (``NOSCRIPT``), replaces a reused
connection that went stale (Redis restarted since: the old server never saw
the command), turns a failure into :class:`ChannelLayerConnectionError`
naming the host, and gives it to the operation, which may try another shard.
:class:`SyncIO` and :class:`AsyncIO` are the thin loops that carry out its
primitives on :mod:`.transport` (threads/gevent, or one event loop).

Error replies that mean "this server cannot serve now" (``-LOADING`` while a
persistent Redis loads its data, ``max number of clients reached``,
``-MASTERDOWN``) count as a failure to reach that shard, like a refused
connection: the connection stays (it is healthy), the call fails with the host
named, and a normal channel's send falls back to another shard.

A blocking pop over several shards sends ``BLPOP`` on one connection per shard
at once; the first reply wins, the other connections are released with
``CLIENT UNBLOCK`` and anything they popped meanwhile is pushed back to the
head of its list: no message is lost, no shard is polled.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Generator, NamedTuple, Sequence

import hiredis
import redis
from redis.exceptions import NoScriptError

from .hosts import RedisHost
from .scripts import Script
from .spin import ReplySpin
from .transport import AsyncTransport, SyncTransport, pack

__all__ = ["AsyncIO", "BlockingPop", "Call", "ChannelLayerConnectionError", "SyncIO", "packed", "script_call"]


class ChannelLayerConnectionError(redis.exceptions.ConnectionError, ConnectionError):
    """Redis cannot be reached (down, restarting, loading, refused).  The operation did not happen.

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


def packed(command: tuple) -> bytes:
    """``command`` packed once, for a :class:`Call` sent many times."""
    return hiredis.pack_command(command)


@dataclass(frozen=True)
class BlockingPop:
    """``BLPOP`` on ``(shard, keys)`` pairs at once, for up to ``timeout`` seconds.

    The reply is ``(shard, key, value)`` or ``None`` on timeout.
    """

    plan: Sequence[tuple[int, Sequence[str]]]
    timeout: float


Op = Generator[Any, Any, Any]

# The driver's primitives: what it asks the transport to do.
_EXCHANGE, _WAIT, _DISCARD = 0, 1, 2
# Error replies that mean the server cannot serve now (redis-py's ConnectionError
# kinds: BusyLoadingError for -LOADING, "max number of clients reached"), or by prefix.
_UNAVAILABLE_PREFIXES = ("MASTERDOWN", "TRYAGAIN")
# A stalled server may still run a command it did not answer in time: never re-sent.
_TIMEOUTS = (TimeoutError, redis.exceptions.TimeoutError)


def _blpop(keys: Sequence[str], timeout: float) -> tuple:
    # BLPOP's 0 means "forever": never send it.
    return ("BLPOP", *keys, f"{max(0.01, timeout):.3f}")


def _unavailable(reply: Exception) -> bool:
    return isinstance(reply, redis.exceptions.ConnectionError) or str(reply).startswith(_UNAVAILABLE_PREFIXES)


class _Driver:
    """What both drivers share: the hosts, error mapping and :meth:`_drive`, the generator they run."""

    transport: Any

    def __init__(self, hosts: Sequence[RedisHost], reply_spin_us: float, command_timeout: float) -> None:
        self.hosts = list(hosts)
        self.spin = ReplySpin(reply_spin_us)
        self.command_timeout = command_timeout

    @property
    def idle(self) -> list[list[Any]]:
        return self.transport.idle

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

    def _drive(self, op: Op, held: list[Any]) -> Generator[tuple, Any, Any]:
        """Run ``op``, yielding transport primitives; ``held``: connections taken and not yet given back.

        A connection error is thrown into the operation, which may go on
        with another shard (a normal channel lives on all of them).
        """
        transport, spin, timeout = self.transport, self.spin, self.command_timeout
        try:
            request = next(op)
            while True:
                try:
                    if type(request) is not list:
                        reply = yield from self._blocking_pop(request, held)
                    else:
                        # The hot path, inlined (a generator per level costs more
                        # than the rest): one shard, a pooled connection, no error.
                        shard = request[0].shard
                        for call in request:
                            if call.shard != shard:
                                reply = yield from self._calls(request, held)
                                break
                        else:
                            conn, reused = transport.acquire(shard)
                            held.append(conn)
                            payload = pack([call.command for call in request])
                            (reply,) = yield (_EXCHANGE, [(shard, conn, payload, len(request))], spin, timeout)
                            held.remove(conn)
                            if type(reply) is not list:  # the connection failed
                                if not reused or isinstance(reply, _TIMEOUTS):
                                    raise self._connection_error(shard, reply)
                                reply = yield from self._calls(request, held)  # stale: once more, on a new one
                            else:
                                transport.release(shard, conn)
                                for item in reply:
                                    if isinstance(item, Exception):  # rare: a script to re-send, or a failure
                                        yield from self._settle([(shard, request)], [reply], held)
                                        break
                except ChannelLayerConnectionError as exc:
                    request = op.throw(exc)
                    continue
                request = op.send(reply)
        except StopIteration as stop:
            return stop.value
        finally:
            op.close()

    def _round_trips(self, work: Sequence[tuple[int, Sequence[tuple | bytes]]], held: list[Any], blocking: float | None = None) -> Generator[tuple, Any, list[list[Any]]]:
        """Each ``(shard, commands)`` in one write per shard, all shards at once; replies by entry.

        A reused connection that fails is replaced once.  ``blocking``: the
        seconds a blocking pop may wait (never polled for: its reply comes
        when another process sends something).
        """
        spin = self.spin if blocking is None else None
        timeout = self.command_timeout + (blocking or 0)
        transport = self.transport
        payloads = [(shard, pack(commands), len(commands)) for shard, commands in work]
        results: list[Any] = [None] * len(payloads)
        todo: Sequence[int] = range(len(payloads))
        for attempt in (0, 1):
            batch, reused = [], []
            for index in todo:
                shard, payload, count = payloads[index]
                conn, was_reused = transport.acquire(shard, fresh=attempt > 0)
                held.append(conn)
                batch.append((shard, conn, payload, count))
                reused.append(was_reused)
            outcomes = yield (_EXCHANGE, batch, spin, timeout)
            retry, failure = [], None
            for index, (shard, conn, _, _), was_reused, outcome in zip(todo, batch, reused, outcomes):
                held.remove(conn)
                if type(outcome) is list:
                    transport.release(shard, conn)
                    results[index] = outcome
                elif was_reused and attempt == 0 and not isinstance(outcome, _TIMEOUTS):
                    retry.append(index)  # stale (Redis restarted since): it never saw the command
                elif failure is None:
                    failure = self._connection_error(shard, outcome)
            if failure is not None:
                raise failure
            if not retry:
                return results
            todo = retry
        raise AssertionError("unreachable")

    def _calls(self, calls: list[Call], held: list[Any]) -> Generator[tuple, Any, list[Any]]:
        """Replies to ``calls`` in order, one round trip per shard; an error reply raises."""
        shard = calls[0].shard
        for call in calls:
            if call.shard != shard:
                break
        else:  # the common case: one shard, replies in order
            results = yield from self._round_trips([(shard, [call.command for call in calls])], held)
            for reply in results[0]:
                if isinstance(reply, Exception):  # rare: a script to re-send, or a failure
                    yield from self._settle([(shard, calls)], results, held)
                    break
            return results[0]
        by_shard: dict[int, list[int]] = {}
        for index, call in enumerate(calls):
            by_shard.setdefault(call.shard, []).append(index)
        groups = [(shard, [calls[i] for i in indexes]) for shard, indexes in by_shard.items()]
        results = yield from self._round_trips([(shard, [call.command for call in group]) for shard, group in groups], held)
        if any(isinstance(reply, Exception) for shard_replies in results for reply in shard_replies):
            yield from self._settle(groups, results, held)
        replies: list[Any] = [None] * len(calls)
        for indexes, shard_replies in zip(by_shard.values(), results):
            for index, reply in zip(indexes, shard_replies):
                replies[index] = reply
        return replies

    def _settle(self, groups: list[tuple[int, list[Call]]], results: list[list[Any]], held: list[Any]) -> Generator[tuple, Any, None]:
        """Re-send the scripts Redis lost (``NOSCRIPT``: restarted) in ``results``, then raise any error reply."""
        resend: dict[int, list[int]] = {}
        for entry, replies in enumerate(results):
            for i, reply in enumerate(replies):
                if isinstance(reply, NoScriptError) and groups[entry][1][i].script:
                    resend.setdefault(entry, []).append(i)
        if resend:
            again = yield from self._round_trips(
                [(groups[entry][0], [groups[entry][1][i].with_source() for i in indexes]) for entry, indexes in resend.items()], held
            )
            for (entry, indexes), replies in zip(resend.items(), again):
                for i, reply in zip(indexes, replies):
                    results[entry][i] = reply
        for (shard, _), replies in zip(groups, results):
            for reply in replies:
                if isinstance(reply, Exception):
                    raise self._connection_error(shard, reply) if _unavailable(reply) else reply

    def _blocking_pop(self, request: BlockingPop, held: list[Any]) -> Generator[tuple, Any, Any]:
        if len(request.plan) == 1:
            shard, keys = request.plan[0]
            ((reply,),) = yield from self._round_trips([(shard, [_blpop(keys, request.timeout)])], held, request.timeout)
            return self._popped(shard, reply)
        # One BLPOP per shard at once.  A shard that fails does not cost the
        # messages popped on the others: every live connection is read to the end.
        failures: list[ChannelLayerConnectionError] = []
        batch = []
        for shard, keys in request.plan:
            conn = self.transport.acquire(shard)[0]
            held.append(conn)
            batch.append((shard, conn, pack([("CLIENT", "ID"), _blpop(keys, request.timeout)]), 1))
        outcomes = yield (_EXCHANGE, batch, self.spin, self.command_timeout)
        taken = []  # (shard, conn, client id) of each BLPOP in flight
        for (shard, conn, _, _), outcome in zip(batch, outcomes):
            if type(outcome) is list and not isinstance(outcome[0], Exception):
                taken.append((shard, conn, outcome[0]))
                continue
            held.remove(conn)
            failures.append(self._failure(shard, outcome))
            if type(outcome) is list:  # an error reply: the connection may hold the BLPOP's too
                yield (_DISCARD, [conn])
        if taken:  # healthy shards still deliver while another is down
            yield (_WAIT, [conn for _, conn, _ in taken], request.timeout + self.command_timeout)
        unblock = [(shard, [("CLIENT", "UNBLOCK", client_id)]) for shard, conn, client_id in taken if not self.transport.readable(conn)]
        if unblock:
            try:
                yield from self._round_trips(unblock, held)
            except ChannelLayerConnectionError as exc:
                failures.append(exc)
        replies = []
        if taken:
            outcomes = yield (_EXCHANGE, [(shard, conn, b"", 1) for shard, conn, _ in taken], None, self.command_timeout)
            for (shard, conn, _), outcome in zip(taken, outcomes):
                held.remove(conn)
                if type(outcome) is list and not isinstance(outcome[0], Exception):
                    self.transport.release(shard, conn)
                    replies.append(self._popped(shard, outcome[0]))
                else:
                    failures.append(self._failure(shard, outcome))
                    if type(outcome) is list:
                        yield (_DISCARD, [conn])
        got = [reply for reply in replies if reply is not None]
        errors = [failure for failure in failures if not isinstance(failure, ChannelLayerConnectionError)]
        if errors or (failures and not got):
            keep = None  # an error reply (WRONGTYPE...) raises: every popped message goes back
        else:
            keep, got = (got[0] if got else None), got[1:]
        for shard, key, value in got:
            yield from self._calls([Call(shard, ("LPUSH", key, value))], held)
        if keep is None and failures:
            raise (errors or failures)[0]
        return keep

    def _failure(self, shard: int, outcome: Any) -> Exception:
        """What a failed exchange or error reply raises: ours for the unreachable kind, Redis's otherwise."""
        if type(outcome) is list:
            outcome = outcome[0]
            if not _unavailable(outcome):
                return outcome
        return self._connection_error(shard, outcome)

    def _popped(self, shard: int, reply: Any) -> tuple[int, bytes, bytes] | None:
        if isinstance(reply, Exception):
            raise self._connection_error(shard, reply) if _unavailable(reply) else reply
        return (shard, reply[0], reply[1]) if reply else None


class SyncIO(_Driver):
    """Runs layer operations on redis-py connections; safe for threads and gevent."""

    def __init__(self, hosts: Sequence[RedisHost], reply_spin_us: float, command_timeout: float, blocking_timeout: float) -> None:
        super().__init__(hosts, reply_spin_us, command_timeout)
        # A blocking pop's socket waits blocking_timeout plus the command timeout.
        self.transport = SyncTransport(hosts, blocking_timeout + command_timeout)
        # A layer dropped without close() still closes its sockets, in order
        # (left to the garbage collector, a socket may go before its connection).
        weakref.finalize(self, _disconnect_all, self.transport.idle)

    def run(self, op: Op) -> Any:
        held: list[Any] = []
        drive = self._drive(op, held)
        transport = self.transport
        try:
            step = next(drive)
            while True:
                kind = step[0]
                if kind == _EXCHANGE:
                    step = drive.send(transport.exchange(step[1], step[2], step[3]))
                elif kind == _WAIT:
                    step = drive.send(transport.wait_readable(step[1], step[2]))
                else:
                    step = drive.send(transport.discard(step[1]))
        except StopIteration as stop:
            return stop.value
        finally:
            # Anything else (an error reply, Ctrl-C mid-command) leaves the
            # connections in flight in an unknown state: close them.
            if held:
                transport.discard(held)
            drive.close()

    def close(self) -> None:
        """Disconnect idle connections (busy ones are dropped when they come back)."""
        self.transport.close()


def _disconnect_all(idle: list[list[Any]]) -> None:
    for connections in idle:
        while connections:
            connections.pop().disconnect()


class AsyncIO(_Driver):
    """Runs layer operations on ``redis.asyncio`` connections bound to one event loop.

    Every wait has a deadline (``command_timeout``, plus ``blocking_timeout``
    for a blocking pop): a frozen Redis fails the call, it never hangs it.  A
    call cancelled midway (``asyncio.wait_for``) closes the connections it had
    in flight, so none goes back to the pool in an unknown state.
    """

    def __init__(self, hosts: Sequence[RedisHost], reply_spin_us: float, command_timeout: float, blocking_timeout: float) -> None:
        super().__init__(hosts, reply_spin_us, command_timeout)
        self.transport = AsyncTransport(hosts, blocking_timeout + command_timeout)

    async def run(self, op: Op) -> Any:
        held: list[Any] = []
        drive = self._drive(op, held)
        transport = self.transport
        try:
            step = next(drive)
            while True:
                kind = step[0]
                if kind == _EXCHANGE:
                    step = drive.send(await transport.exchange(step[1], step[2], step[3]))
                elif kind == _WAIT:
                    step = drive.send(await transport.wait_readable(step[1], step[2]))
                else:
                    step = drive.send(await transport.discard(step[1]))
        except StopIteration as stop:
            return stop.value
        finally:
            if held:
                await transport.discard(held)
            drive.close()

    async def close(self) -> None:
        await self.transport.close()

