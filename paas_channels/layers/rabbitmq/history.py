"""Group history on RabbitMQ: what a process sends to the sequencer, and its candidacy.

Every message to a history group, every join of one and a flush go to the
prefix's ONE sequencer (:mod:`.sequencer`) as requests on the queue
``<prefix>::history`` (``x-single-active-consumer``); the answer comes back
on this process's reply queue ``<prefix>::reply.<origin>`` (gone 10 s after
the process), after the sequencer numbered it, appended it to the history
stream ``<prefix>::history-log`` and delivered it.  So a history
send costs a hop more than a plain group send (measured in
``bench/rabbitmq_history.py``), and only history groups pay it.  The process
that is the active sequencer skips the queue for its own requests.

A history group's objects are per prefix, never per group: one queue, one
stream (retention: the window, ``x-max-age``), and per process a reply
queue and a channel (:class:`~.histlink.Link`, the only AMQP calls of history).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
from typing import Any

import msgpack

from ..history import HistoryRule
from .connection import ChannelLayerConnectionError
from .handout import now_ms
from .histlink import Link, Precondition, Returned
from .sequencer import Sequencer

__all__ = ["HistoryClient"]

logger = logging.getLogger(__name__)

#: The request queue: one active consumer at a time; gone when unused for a day.
_QUEUE_ARGUMENTS = {"x-single-active-consumer": True, "x-expires": 86_400_000}
_REPLY_ARGUMENTS = {"x-expires": 10_000}  # a process's answers: gone soon after the process
_REPLY_PREFETCH = 1000
_SEGMENT_BYTES = 2_000_000  # retention is per segment: small ones let old entries go


class HistoryClient:
    """This process's side of the history: requests, answers, and its sequencer (runs on the layer's loop)."""

    def __init__(self, layer: Any) -> None:
        self.layer = layer
        self.queue = f"{layer.prefix}::history"
        self.stream = f"{layer.prefix}::history-log"
        self.origin = layer._groups.state.origin
        self.replies = f"{layer.prefix}::reply.{self.origin}"
        self.sequencer = Sequencer(self)
        self._channel: Link | None = None
        self._lock: asyncio.Lock | None = None
        self._waiting: dict[str, asyncio.Future] = {}
        self._ids = itertools.count(1)
        self.used = False

    @property
    def window(self) -> float:
        """Seconds of stream a new sequencer reads: the longest ttl, plus two checkpoints, plus a margin."""
        longest = max((rule.ttl for rule in self.layer.history.rules.values()), default=0)
        every = self.sequencer.checkpoint_every
        return longest + 2 * every + min(30.0, every)

    def next_id(self) -> str:
        return f"{self.origin}.{next(self._ids)}"

    ### The channel ###

    async def channel(self) -> Link:
        """This process's history channel: its answers come to it, its candidate consumer is on it."""
        channel = self._channel
        if channel is not None and not channel.closed:
            return channel
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            channel = self._channel
            if channel is None or channel.closed:
                channel = await self._open(Link.connection_of(await self.layer._broker.ops()))
            return channel

    async def _open(self, connection: Any) -> Link:
        channel = await Link.open(connection)
        channel = await self._declare(connection, channel, self.queue, False, _QUEUE_ARGUMENTS)
        channel = await self._declare(connection, channel, self.stream, True, self._stream_arguments())
        channel = await self._declare(connection, channel, self.replies, False, _REPLY_ARGUMENTS)
        await channel.consume(self.replies, self._on_reply, _REPLY_PREFETCH, no_ack=True)
        await self.sequencer.stand(channel)
        channel.on_close(lambda error: self._closed(channel, error))
        self._channel, self.used = channel, True
        return channel

    def _stream_arguments(self) -> dict:
        return {"x-queue-type": "stream", "x-max-age": f"{math.ceil(self.window)}s",
                "x-stream-max-segment-size-bytes": _SEGMENT_BYTES}

    async def _declare(self, connection: Any, channel: Link, name: str, durable: bool, arguments: dict) -> Link:
        try:
            await channel.declare(name, durable=durable, arguments=arguments)
        except Precondition as exc:
            # Declared by a process with other history settings (a longer ttl): use it as it is.
            logger.warning("%s exists with other arguments than this layer's (%s); using it as it is. "
                           "Every process of a prefix should have the same CONFIG['history']", name, exc)
            channel = await Link.open(connection)
            await channel.declare(name, passive=True)
        return channel

    async def declare_stream(self, channel: Link) -> None:
        """Declare the history stream again (it was deleted, or the broker lost it)."""
        await channel.declare(self.stream, durable=True, arguments=self._stream_arguments())

    def _closed(self, channel: Link, error: BaseException | None) -> None:
        if channel is not self._channel:
            return
        self._channel = None
        self.lost(self.layer._broker.error("closed the history channel", error))

    def lost(self, error: BaseException) -> None:
        """The connection or the channel is gone: every request waiting for an answer fails."""
        waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(error)
                future.exception()
        self.sequencer.lost(error)

    def restore(self) -> None:
        """After a reconnect: stand again as a candidate (and listen for answers) if this process used history."""
        if self.used:
            asyncio.ensure_future(self._reopen())

    async def _reopen(self) -> None:
        try:
            await self.channel()
        except Exception as exc:  # noqa: BLE001 - the next history call opens it, or says why not
            logger.debug("history channel not reopened after the reconnect: %s", exc)

    ### Requests ###

    async def send(self, group: str, rule: HistoryRule, data: bytes) -> None:
        """A message to a history group: numbered, kept and delivered by the sequencer."""
        seq, written_ms = self.layer._groups.state.last_local
        if now_ms() - written_ms > self.layer.group_expiry * 500:
            seq = 0  # the sequencer need not wait for records older than it may have read
        await self._call(self._header("m") + [group, rule.size, int(rule.ttl * 1000), data, self.origin, seq])

    async def join(self, group: str, rule: HistoryRule, channel: str, since: tuple[str, int] | None) -> bool:
        """Join with notice and replay, in the sequence; ``False`` when the gap is not covered."""
        groups = self.layer._groups
        record = groups.record("a", group, channel, now_ms())
        request = self._header("j") + [group, rule.size, int(rule.ttl * 1000), channel,
                                       list(since) if since is not None else None, record]
        recovered, remote = await self._call(request)
        if remote:  # the sequencer wrote the membership for this process: its own record from now on
            groups.state.local(record)
        return recovered is not False

    async def flush(self) -> None:
        """Forget every group's history: the next messages start new epochs."""
        await self._call(self._header("f"))

    def _header(self, kind: str) -> list:
        """Every request starts ``[kind, id, deadline ms, reply queue]`` (see :mod:`.sequencer`)."""
        return [kind, self.next_id(), now_ms() + int(self.layer.timeout * 1000), self.replies]

    async def _call(self, request: list) -> Any:
        """Have the sequencer handle ``request``; its answer (and whether it went through the queue)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.layer.timeout
        channel = await self.channel()
        if self.sequencer.is_active(channel):
            future, remote = self.sequencer.local(request), False
        else:
            future, remote = loop.create_future(), True
            self._waiting[request[1]] = future
        try:
            if remote:
                await self._publish(channel, request)
            ok, value = await asyncio.wait_for(asyncio.shield(future), max(0.0, deadline - loop.time()))
        except asyncio.TimeoutError:
            raise self.layer._broker.error(
                f"did not answer a history request within {self.layer.timeout:g} s: the history sequencer (one "
                "of the processes, chosen by the broker) is busy, catching up or gone; the message may still be "
                "delivered") from None
        finally:
            self._waiting.pop(request[1], None)
        if ok:
            return (value, remote) if request[0] == "j" else value
        kind, reason = value if isinstance(value, list) and len(value) == 2 else ("failed", str(value))
        if kind == "expired":
            raise self.layer._broker.error(f"did not sequence a history request in time ({reason})")
        raise RuntimeError(f"the history sequencer refused the request: {reason}")

    async def _publish(self, channel: Link, request: list) -> None:
        body = msgpack.packb(request, use_bin_type=True)
        for attempt in (0, 1):
            try:
                if not await channel.publish(self.queue, body):
                    raise self.layer._broker.error(f"refused a history request for {self.queue}")
                return
            except Returned:  # the queue is gone (unused for a day, or the broker lost it): again
                await channel.declare(self.queue, arguments=_QUEUE_ARGUMENTS)
        raise self.layer._broker.error(f"returned every history request sent to {self.queue}")

    def _on_reply(self, body: bytes, tag: int) -> None:
        try:
            msg_id, ok, value = msgpack.unpackb(body, raw=False)
        except Exception as exc:  # noqa: BLE001 - a consumer callback: log, never raise into the client
            logger.warning("skipped an unreadable history answer: %s", exc)
            return
        future = self._waiting.get(msg_id)
        if future is not None and not future.done():
            future.set_result((ok, value))

    ### Closing, decommissioning ###

    async def close(self) -> None:
        """Finish the batch in hand if this process sequences, then close the channel."""
        channel = self._channel
        if channel is None:
            return
        await self.sequencer.close()
        self._channel = None
        self.lost(ChannelLayerConnectionError(f"the channel layer for {self.layer.url.redacted} was closed"))
        await channel.close()

    async def delete(self) -> None:
        """Delete the queue, the stream and this process's reply queue (``destroy``)."""
        channel = await Link.open(Link.connection_of(await self.layer._broker.ops()))
        try:
            for name in (self.queue, self.stream, self.replies):
                await channel.delete(name)
        finally:
            await channel.close()
