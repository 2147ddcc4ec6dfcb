"""RabbitMQ channel layer: split mode on a RabbitMQ broker (e.g. Heroku's CloudAMQP add-on).

The contract is every layer's (see :mod:`paas_channels.layers.base`); what is
RabbitMQ's own:

* channels are queues whose arguments enforce capacity, expiry and cleanup
  (:mod:`.queues`); a ``!`` inbox is one queue per process with one consumer;
* groups and heartbeats are records in two streams that every reading
  process follows (:mod:`.registry`): a group send reads membership from
  memory and publishes ONE message per member inbox naming its local
  targets, in parallel, with publisher confirms;
* group history (``CONFIG["history"]``) goes through ONE sequencer, chosen
  by the broker among the processes (:mod:`.history`, :mod:`.sequencer`): a
  hop more for history groups only;
* all I/O runs on one connection on the layer's own loop thread
  (:mod:`.connection`), which reconnects after a broker restart; sync callers
  and the interface's event loop hand it coroutines, each with a deadline.

Statistics counts (``messages_count``, ``channel_full_count``) are this
process's; ``messages_pending`` is the broker's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any, Callable, Coroutine, Generator, Iterable, TypeVar

import aiormq.exceptions
import msgpack

from ..base import BaseChannelLayer, ChannelFull, _positive_int, _positive_number, _valid_prefix
from ..history import HistoryRules, valid_since
from .connection import CONNECTION_ERRORS, Broker, ChannelLayerConnectionError, LoopThread
from .handout import Handout, now_ms
from .history import HistoryClient
from .queues import Queues
from .registry import BEATS_WINDOW, STREAM_ARGUMENTS, Registry, State
from .urls import parse_url

__all__ = ["DEFAULT_URL", "RabbitMQChannelLayer"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
_POLL_MIN, _POLL_MAX = 0.005, 0.05  # ``?`` channels are polled while a blocking receive waits


_now_ms = now_ms  # one clock for envelopes and records

class RabbitMQChannelLayer(Handout, BaseChannelLayer):
    """ASGI 1.0 channel layer on a RabbitMQ broker.

    ``url``: ``amqp://``/``amqps://`` broker URL (default the local guest
    account).  ``prefix`` starts every queue, stream and exchange name, so
    several layers can share a vhost.  ``blocking_timeout``: seconds a
    blocking receive waits.  ``heartbeat``: AMQP heartbeat in seconds unless
    the URL sets one (a dead connection is noticed within about twice that).
    ``connect_timeout``/``timeout``: seconds to connect / for any one call.
    ``prefetch``: messages of a normal channel this process's consumer may
    hold before a receive takes them.  ``history``: ``{group glob: {"size": n,
    "ttl": s}}``, the groups that keep their last messages for clients that
    resume (:mod:`paas_channels.layers.history`).
    """

    extensions = [*BaseChannelLayer.extensions, "history"]

    def __init__(
        self,
        url: str | None = None,
        prefix: str = "paas",
        expiry: float = 60,
        group_expiry: float = 86400,
        capacity: int = 100,
        channel_capacity: dict[str, int] | None = None,
        blocking_timeout: float = 1,
        heartbeat: float = 15,
        connect_timeout: float = 5,
        timeout: float = 10,
        prefetch: int = 64,
        history: dict[str, dict] | None = None,
    ) -> None:
        super().__init__(expiry=expiry, group_expiry=group_expiry, capacity=capacity, channel_capacity=channel_capacity)
        _valid_prefix(prefix)
        self.blocking_timeout = _positive_number("blocking_timeout", blocking_timeout)
        self.amqp_heartbeat = _positive_number("heartbeat", heartbeat)  # not .heartbeat: that is the extension
        self.connect_timeout = _positive_number("connect_timeout", connect_timeout)
        self.timeout = _positive_number("timeout", timeout)
        self.prefetch = _positive_int("prefetch", prefetch)
        self.history = HistoryRules(history)
        self.url = parse_url(DEFAULT_URL if url is None else url, heartbeat=heartbeat)
        self.prefix = prefix
        self._expiry_ms = int(self.expiry * 1000)
        self._dead_exchange = f"{prefix}::dead"
        self._expired_queue = f"{prefix}::expired"
        self._loop = LoopThread(f"paas-rabbitmq-{prefix}")
        self._broker = Broker(self.url, self._on_connect, self._on_lost, self.connect_timeout)
        self._queues = Queues(self)
        origin = self.random_suffix(16)
        self._groups = Registry(f"{prefix}::groups", State(origin, self.group_expiry), self.group_expiry,
                                self._queues.publish_raw)
        self._beats = Registry(f"{prefix}::beats", State(origin, self.group_expiry), BEATS_WINDOW,
                               self._queues.publish_raw)
        self._wanted: set[str] = set()  # registries this process reads
        self._history = HistoryClient(self)
        # Stored name -> (expires ms, channel, data) this process took from a group
        # message for several of its channels and has not handed out yet.
        self._local: dict[str, deque[tuple[int, str, bytes]]] = {}
        self._counts: dict[str, list[int]] = {}  # stored name -> [sent, refused]
        self._names_cache: dict[tuple, list[str]] = {}

    def __repr__(self) -> str:
        return (f"<RabbitMQChannelLayer url={self.url.redacted!r} prefix={self.prefix!r} "
                f"expiry={self.expiry} capacity={self.capacity}>")

    ### Running on the layer's loop ###

    def _run(self, coro: Coroutine[Any, Any, T], extra: float = 0) -> T:
        try:
            return self._loop.run(self._guard(coro, extra), self.timeout + extra + 1)
        except asyncio.TimeoutError:
            raise self._broker.error(f"did not answer within {self.timeout:g} s") from None

    async def _arun(self, coro: Coroutine[Any, Any, T], extra: float = 0) -> T:
        return await self._loop.arun(self._guard(coro, extra))

    async def _guard(self, coro: Coroutine[Any, Any, T], extra: float) -> T:
        """Run ``coro`` within the deadline; every broker failure becomes a ``ChannelLayerConnectionError``."""
        try:
            async with asyncio.timeout(self.timeout + extra):  # no extra task per call, unlike wait_for
                return await coro
        except (ChannelLayerConnectionError, ChannelFull, ValueError, TypeError):
            raise
        except asyncio.TimeoutError:
            raise self._broker.error(f"did not answer within {self.timeout + extra:g} s") from None
        except aiormq.exceptions.AMQPChannelError as exc:
            raise self._broker.error("closed the channel", exc) from None
        except (aiormq.exceptions.AMQPError, *CONNECTION_ERRORS) as exc:
            raise self._broker.error("failed", exc) from None

    async def _on_connect(self, ops: Any, consume: Any) -> None:
        await ops.exchange_declare(self._dead_exchange, exchange_type="headers", durable=True)
        for registry, kind in ((self._groups, "groups"), (self._beats, "beats")):
            await ops.queue_declare(registry.stream, durable=True, arguments=STREAM_ARGUMENTS[kind])
        await ops.queue_declare(self._expired_queue, durable=False, arguments={"x-max-length": 10_000})
        await ops.queue_bind(self._expired_queue, self._dead_exchange, arguments={"x-match": "all", "paas-g": "1"})
        for registry in (self._groups, self._beats):
            registry.following = False
            if registry.stream in self._wanted:
                await registry.follow(consume)
        if self._groups.stream in self._wanted:
            await consume.basic_consume(self._expired_queue, self._on_expired, no_ack=True)
        await self._queues.restore()
        self._history.restore()

    def _on_lost(self, error: BaseException) -> None:
        self._queues.lost(error)
        self._history.lost(error)
        self._groups.lost(error)
        self._beats.lost(error)

    async def _on_expired(self, message: Any) -> None:
        """A group message expired unread (dead-lettered): its members are gone; tell every process."""
        try:
            _, targets, _, group, sent_ms = msgpack.unpackb(message.body, raw=False)[:5]
            await self._groups.write(self._groups.record("x", group, targets.split("\n"), sent_ms))
        except Exception as exc:  # noqa: BLE001 - a consumer callback: log, never raise into aiormq
            logger.warning("could not drop the members of an expired group message: %s", exc)

    async def _state(self, registry: Registry) -> State:
        self._wanted.add(registry.stream)

        async def start() -> None:
            channel = await self._broker.consume()
            if not registry.following:
                await registry.follow(channel)
                if registry is self._groups:
                    await channel.basic_consume(self._expired_queue, self._on_expired, no_ack=True)

        return await registry.ready(start, self.timeout)

    # A first read replays the stream: as long as it takes while records keep coming
    # (Registry.ready raises when they stop), not one call's ``timeout``.
    _REPLAY_LIMIT = 3600

    def _caught_up(self, registry: Registry) -> None:
        if not registry.is_ready():
            self._run(self._state(registry), extra=self._REPLAY_LIMIT)

    async def _acaught_up(self, registry: Registry) -> None:
        if not registry.is_ready():
            await self._arun(self._state(registry), extra=self._REPLAY_LIMIT)

    def _take_delivered(self, names: list[str]) -> tuple[str, dict] | None:
        """A message this process holds for ``names`` (group leftovers, consumer deliveries), without I/O.

        Only when every name has a consumer: otherwise an earlier name could
        have a message on the broker, and the order of ``names`` is a priority.
        """
        local = self._take_local(names) if self._local else None
        if local is not None:
            return local
        queues = self._queues
        if not queues.consumed(names):
            return None
        for name in names:
            body = queues.take(name)
            while body is not None:
                result = self._open_delivery(name, body)
                if result is not None:
                    return result
                body = queues.take(name)  # expired: the next one
        return None

    def _held(self, names: list[str]) -> bool:
        """Whether this process holds a message for one of ``names`` (a receive would take it without I/O)."""
        mailboxes, local = self._queues.mailboxes, self._local
        return any(mailboxes.pending(name) or local.get(name) for name in names)

    def _waits(self, names: list[str], clock: Callable[[], float]) -> Generator[float, None, Any]:
        """A blocking receive whose names all have consumers, as steps: each yields the seconds to wait
        for a delivery, the driver waits (:meth:`_wait_delivered` in a thread, :meth:`_await_delivered`
        on a loop); the return value is what was taken, ``(None, None)`` after ``blocking_timeout``, or
        None when a consumer stopped (a reconnect: the receive then goes to the layer's loop, which
        starts it again)."""
        deadline = clock() + self.blocking_timeout
        queues = self._queues
        losses = queues.losses
        while queues.consumed(names):
            held = self._take_delivered(names)
            if held is not None:
                return held
            remaining = deadline - clock()
            if remaining <= 0:
                return None, None
            yield remaining
        queues.check(losses)
        return None

    def _woken(self, names: list[str]) -> Callable[[], bool]:
        queues = self._queues
        return lambda: self._held(names) or not queues.consumed(names)

    def _wait_delivered(self, names: list[str]) -> tuple[str | None, dict | None] | None:
        """:meth:`_waits` in the caller's thread (a sync receive)."""
        steps, woken, wait = self._waits(names, time.monotonic), self._woken(names), self._queues.mailboxes.wait_thread
        try:
            while True:
                wait(next(steps), woken)
        except StopIteration as done:
            return done.value

    async def _await_delivered(self, names: list[str]) -> tuple[str | None, dict | None] | None:
        """:meth:`_waits` on the caller's loop (an async receive)."""
        steps, woken = self._waits(names, asyncio.get_running_loop().time), self._woken(names)
        wait = self._queues.mailboxes.wait
        try:
            while True:
                await wait(next(steps), woken)
        except StopIteration as done:
            return done.value

    def _count(self, name: str, refused: bool) -> None:
        counts = self._counts.get(name)
        if counts is None:
            counts = self._counts[name] = [0, 0]
        counts[1 if refused else 0] += 1

    ### Channel layer API (coroutines on the layer's loop) ###

    async def _send(self, name: str, channel: str, data: bytes) -> None:
        body = msgpack.packb([_now_ms() + self._expiry_ms, channel, data], use_bin_type=True)
        if not await self._queues.publish(name, body):
            self._count(name, refused=True)
            raise ChannelFull(channel)
        self._count(name, refused=False)

    async def _receive(self, names: list[str], block: bool) -> tuple[str | None, dict | None]:
        queues = self._queues
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.blocking_timeout
        poll = _POLL_MIN
        consumed = [name for name in names if "?" not in name]
        losses = queues.losses
        while True:
            queues.check(losses)
            if block and not queues.consumed(consumed):
                # A blocking receive reads from consumers (prefetched, no round trip per
                # message), started before anything is fetched: then the next receives need no I/O.
                for name in consumed:
                    await queues.consume(name)
            local = self._take_local(names)
            if local is not None:
                return local
            for name in names:
                if not queues.consumed([name]):
                    body = await queues.get(name)
                else:
                    body = queues.take(name)
                    if body is None and not block:
                        # Sent (confirmed) but maybe not delivered to our consumer yet: ask the queue,
                        # and after that round trip look again at what the consumer delivered.
                        body = await queues.get(name) or queues.take(name)
                if body is not None:
                    result = self._open_delivery(name, body)
                    if result is not None:
                        return result
                    break  # expired: look again
            else:
                if not block:
                    return None, None
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return None, None
                polled = not queues.consumed(names)
                await queues.wait(min(remaining, poll) if polled else remaining, lambda: self._held(names))
                poll = min(poll * 2, _POLL_MAX)

    async def _group_add(self, group: str, channel: str) -> None:
        await self._groups.write(self._groups.record("a", group, channel, _now_ms()))

    async def _group_discard(self, group: str, channels: list[str]) -> None:
        await self._groups.write(self._groups.record("d", group, channels))

    async def _group_channels(self, group: str) -> list[str]:
        return list((await self._state(self._groups)).members(group))

    async def _send_group(self, group: str, data: bytes) -> None:
        members = (await self._state(self._groups)).members(group)
        if not members:
            return
        by_name: dict[str, list[str]] = {}
        for channel in members:
            by_name.setdefault(self.non_local_name(channel), []).append(channel)
        now = _now_ms()
        names = list(by_name)
        bodies = [
            msgpack.packb([now + self._expiry_ms, "\n".join(by_name[name]), data, group, now], use_bin_type=True)
            for name in names
        ]
        results = await asyncio.gather(
            *(self._queues.publish(name, body, group=True) for name, body in zip(names, bodies)),
            return_exceptions=True,
        )
        for name, result in zip(names, results):
            if isinstance(result, BaseException):
                raise result
            self._count(name, refused=not result)  # over capacity: skipped and counted

    async def _flush(self) -> None:
        self._local.clear()
        self._counts.clear()
        if self.history:
            await self._history.flush()
        await self._queues.delete_known()
        for registry in (self._groups, self._beats):
            await registry.write(registry.record("f"))

    async def _channel_statistics(self, name: str) -> dict[str, Any]:
        declared = await self._queues.declare(name, force=True)
        pending = getattr(declared, "message_count", 0) or 0
        pending += self._queues.mailboxes.pending(name) + len(self._local.get(name) or ())
        sent, refused = self._counts.get(name, (0, 0))
        return {"messages_count": sent, "messages_pending": pending, "messages_max_age": 0.0,
                "channel_full_count": refused}

    async def _heartbeat(self, worker_id: str, info: bytes, ttl: float) -> None:
        await self._beats.write(self._beats.record("h", worker_id, _now_ms() + int(ttl * 1000), info))

    async def _heartbeats(self) -> dict[str, dict]:
        beats = (await self._state(self._beats)).live_beats()
        return {worker: self.deserialize(info) for worker, info in beats.items()}

    async def _close(self) -> None:
        await self._history.close()
        await self._queues.cancel_all()
        await self._broker.close()
        self._on_lost(ChannelLayerConnectionError(f"the channel layer for {self.url.redacted} was closed"))

    ### Validation (in the caller's thread, before any I/O) ###

    def _valid_receive_names(self, channels: Iterable[str]) -> list[str]:
        key = tuple(channels) if isinstance(channels, (list, tuple)) else None
        names = self._names_cache.get(key) if key is not None else None
        if names is None:
            names = self.valid_receive_channels(channels)
            if key is not None and len(self._names_cache) < 1000:
                self._names_cache[key] = names
        return names

    def _send_args(self, channel: str, message: dict) -> tuple[str, str, bytes]:
        self.valid_channel_name(channel)
        return self.non_local_name(channel), channel, self.serialize(message)

    def _group_args(self, group: str, channel: str) -> tuple[str, str]:
        return self.valid_group_name(group), self.valid_channel_name(channel)

    @staticmethod
    def _valid_worker_id(worker_id: Any) -> str:
        if not isinstance(worker_id, str) or not worker_id:
            raise TypeError(f"worker_id must be a non-empty str; got {worker_id!r:.60}")
        return worker_id

    ### Sync API (workers, threads, gevent) ###

    def send(self, channel: str, message: dict) -> None:
        """Put ``message`` on ``channel``; raise ``ChannelFull`` when the broker refuses it at capacity."""
        return self._run(self._send(*self._send_args(channel, message)))

    def receive(self, channels: Iterable[str], block: bool = False) -> tuple[str | None, dict | None]:
        """Take a message from the first of ``channels`` that has one, or ``(None, None)``.

        ``!`` channels are given by prefix and reported by full name.  With
        ``block=True`` waits up to ``blocking_timeout`` seconds.
        """
        names = self._valid_receive_names(channels)
        held = self._take_delivered(names)
        if held is None and block and self._queues.consumed(names):
            held = self._wait_delivered(names)
        if held is not None:
            return held
        return self._run(self._receive(names, block), self.blocking_timeout)

    def new_channel(self, pattern: str) -> str:
        """A new channel name: ``pattern`` (ending ``?`` or ``!``) plus a random suffix."""
        self.valid_new_channel_pattern(pattern)
        return pattern + self.random_suffix()

    def group_add(self, group: str, channel: str) -> None:
        """Add ``channel`` to ``group`` for ``group_expiry`` seconds."""
        return self._run(self._group_add(*self._group_args(group, channel)))

    def group_discard(self, group: str, channel: str) -> None:
        """Remove ``channel`` from ``group``; a no-op if it is not a member."""
        group, channel = self._group_args(group, channel)
        return self._run(self._group_discard(group, [channel]))

    def group_channels(self, group: str) -> list[str]:
        """The channels currently in ``group``."""
        self.valid_group_name(group)
        self._caught_up(self._groups)
        return self._run(self._group_channels(group))

    def send_group(self, group: str, message: dict) -> None:
        """Send ``message`` to every member: one message per member inbox; never ``ChannelFull``.
        A history group's message goes through the sequencer (:mod:`.history`)."""
        self.valid_group_name(group)
        data = self.serialize(message)
        rule = self.history.for_group(group)
        if rule is not None:
            return self._run(self._history.send(group, rule, data), extra=1)
        self._caught_up(self._groups)
        return self._run(self._send_group(group, data))

    def group_join(self, group: str, channel: str, since: tuple[str, int] | None = None) -> bool | None:
        """``group_add`` and, for a history group, the notice and what ``channel`` missed, in the sequence."""
        return self._run(self._join(group, channel, since), extra=1)

    def _join(self, group: str, channel: str, since: Any) -> Coroutine[Any, Any, bool | None]:
        self._group_args(group, channel)
        since, rule = valid_since(since), self.history.for_group(group)
        return self._group_add(group, channel) if rule is None else self._history.join(group, rule, channel, since)

    def flush(self) -> None:
        """Delete the queues this layer used, and every group and heartbeat of its prefix."""
        return self._run(self._flush())

    def global_statistics(self) -> dict[str, int]:
        """``messages_count`` and ``channel_full_count`` of this process's sends."""
        return {
            "messages_count": sum(counts[0] for counts in self._counts.values()),
            "channel_full_count": sum(counts[1] for counts in self._counts.values()),
        }

    def channel_statistics(self, channel: str) -> dict[str, Any]:
        """Counts for one channel (a ``!`` channel by prefix): sends here, pending on the broker."""
        self.valid_channel_name(channel)
        return self._run(self._channel_statistics(self.non_local_name(channel)))

    def heartbeat(self, worker_id: str, info: dict, ttl: float = 30) -> None:
        """Record that worker ``worker_id`` is alive, with ``info``, for ``ttl`` seconds."""
        return self._run(self._heartbeat(self._valid_worker_id(worker_id), self.serialize(info), ttl))

    def heartbeats(self) -> dict[str, dict]:
        """Live workers' latest heartbeat info, by worker id, as any process sees it."""
        self._caught_up(self._beats)
        return self._run(self._heartbeats())

    def close(self) -> None:
        """Close the connection (it reopens if the layer is used again)."""
        if self._loop.started():
            try:
                self._run(self._close())
            finally:
                self._loop.stop()
        self._broker.reopen()

    ### Async API (the interface's event loop) ###

    async def asend(self, channel: str, message: dict) -> None:
        return await self._arun(self._send(*self._send_args(channel, message)))

    async def areceive(self, channels: Iterable[str], block: bool = False) -> tuple[str | None, dict | None]:
        names = self._valid_receive_names(channels)
        held = self._take_delivered(names)
        if held is None and block and self._queues.consumed(names) and not self._loop.in_loop():
            held = await self._await_delivered(names)
        if held is not None:
            return held
        return await self._arun(self._receive(names, block), self.blocking_timeout)

    async def anew_channel(self, pattern: str) -> str:
        return self.new_channel(pattern)

    async def agroup_add(self, group: str, channel: str) -> None:
        return await self._arun(self._group_add(*self._group_args(group, channel)))

    async def agroup_discard(self, group: str, channel: str) -> None:
        group, channel = self._group_args(group, channel)
        return await self._arun(self._group_discard(group, [channel]))

    async def agroup_channels(self, group: str) -> list[str]:
        self.valid_group_name(group)
        await self._acaught_up(self._groups)
        return await self._arun(self._group_channels(group))

    async def asend_group(self, group: str, message: dict) -> None:
        self.valid_group_name(group)
        data = self.serialize(message)
        rule = self.history.for_group(group)
        if rule is not None:
            return await self._arun(self._history.send(group, rule, data), extra=1)
        await self._acaught_up(self._groups)
        return await self._arun(self._send_group(group, data))

    async def agroup_join(self, group: str, channel: str, since: tuple[str, int] | None = None) -> bool | None:
        return await self._arun(self._join(group, channel, since), extra=1)

    async def aflush(self) -> None:
        return await self._arun(self._flush())

    async def aheartbeat(self, worker_id: str, info: dict, ttl: float = 30) -> None:
        return await self._arun(self._heartbeat(self._valid_worker_id(worker_id), self.serialize(info), ttl))

    async def aheartbeats(self) -> dict[str, dict]:
        await self._acaught_up(self._beats)
        return await self._arun(self._heartbeats())

    async def aclose(self) -> None:
        if self._loop.started():
            try:
                await self._arun(self._close())
            finally:
                self._loop.stop()
        self._broker.reopen()

    ### Tests and decommissioning ###

    def destroy(self) -> None:
        """Delete this prefix's streams and exchange from the broker (and flush): nothing of it is left.

        For tests and for retiring a prefix; a running deployment never needs it.
        """
        async def destroy() -> None:
            await self._flush()
            channel = await self._broker.ops()
            for registry in (self._groups, self._beats):
                await channel.queue_delete(registry.stream)
            await channel.queue_delete(self._expired_queue)
            await self._history.delete()
            await channel.exchange_delete(self._dead_exchange)

        self._run(destroy())
        self.close()
