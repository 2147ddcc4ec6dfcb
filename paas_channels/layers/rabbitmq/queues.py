"""The layer's AMQP operations, on its loop: queues, publishes with confirms, consumers, mailboxes.

Each channel name maps to one queue ``<prefix>:<stored name>`` (see :meth:`Queues.queue`) (a ``!``
inbox is one queue for the whole process) declared with the layer's rules,
so the broker enforces them itself:

* ``x-max-length`` = capacity with ``x-overflow: reject-publish``: a publish
  over capacity is nacked (publisher confirms), and ``send`` raises
  ``ChannelFull`` — nothing is dropped silently;
* ``x-message-ttl`` = expiry; ``x-expires``: a queue nobody reads or declares
  for two expiries is deleted by the broker (no leaked queues), and a send to
  a deleted queue comes back (``mandatory``) and declares it again;
* ``x-dead-letter-exchange``: group messages that expire unread go to the
  groups stream (see :mod:`.registry`).

A blocking receive starts one consumer per queue for this process, on an
AMQP channel of its own (kept while the layer lives; ``prefetch`` messages
in flight into a :mod:`.mailbox`, acknowledged in batches once receives
took them); a non-blocking one, and ``?`` channels, use ``basic.get`` until
then.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any

import aiormq.exceptions
from pamqp import commands as spec

from .mailbox import Consumer, Mailboxes

__all__ = ["Queues"]


logger = logging.getLogger(__name__)

_GROUP_HEADERS = {"paas-g": "1"}


class Queues:
    """Queue declarations, publishes and consumers of one layer (runs on the layer's loop)."""

    def __init__(self, layer: Any) -> None:
        self.layer = layer
        self.broker = layer._broker
        self._declared: dict[str, int] = {}  # queue -> broker generation
        self._known: set[str] = set()  # every stored name used: flush deletes them
        self._ids = itertools.count()
        self._args_cache: dict[str, dict] = {}
        self.consumers: dict[str, Consumer] = {}  # stored name -> this process's consumer of its queue
        self.mailboxes = Mailboxes()
        self._starting: asyncio.Lock | None = None
        self.losses = 0  # connections lost so far
        self.lost_error: BaseException | None = None

    def queue(self, name: str) -> str:
        """The queue of stored name ``name``: AMQP clients accept no ``!``/``?`` in names, nor do
        channel names have ``:``, so ``inbox!`` is ``<prefix>:inbox:i`` and ``body?x`` ``<prefix>:body:qx``."""
        return f"{self.layer.prefix}:{name.replace('!', ':i').replace('?', ':q')}"

    def _arguments(self, name: str) -> dict:
        args = self._args_cache.get(name)
        if args is None:
            layer = self.layer
            args = {
                "x-max-length": layer.get_capacity(name),
                "x-overflow": "reject-publish",
                "x-message-ttl": layer._expiry_ms,
                "x-expires": 2 * layer._expiry_ms + 1000,
                "x-dead-letter-exchange": layer._dead_exchange,
            }
            if len(self._args_cache) < 10_000 and "?" not in name:
                self._args_cache[name] = args
        return args

    ### Declarations ###

    async def declare(self, name: str, force: bool = False) -> Any:
        """Declare the queue of stored name ``name`` (once per connection unless ``force``)."""
        generation = self.broker.generation
        if not force and self._declared.get(name) == generation:
            return None
        self._known.add(name)
        channel = await self.broker.ops()
        queue = self.queue(name)
        try:
            result = await channel.queue_declare(queue, durable=False, arguments=self._arguments(name))
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            # Declared earlier with other settings (capacity, expiry changed by a deploy).
            # Use it as it is rather than fail every send; say how to apply the new ones.
            logger.warning(
                "queue %s exists with other arguments than this layer's (%s); using it as it is. "
                "Delete it (rabbitmqctl delete_queue) to apply the current capacity/expiry", queue, exc,
            )
            channel = await self.broker.ops()
            result = await channel.queue_declare(queue, passive=True)
        self._declared[name] = self.broker.generation
        return result

    def forget(self, name: str) -> None:
        self._declared.pop(name, None)

    ### Publishing ###

    async def publish(self, name: str, body: bytes, group: bool = False) -> bool:
        """Publish to stored name ``name``'s queue; False when the broker refused it (at capacity)."""
        for attempt in (0, 1):
            await self.declare(name, force=attempt == 1)
            channel = await self.broker.ops()
            properties = spec.Basic.Properties(
                message_id=str(next(self._ids)), delivery_mode=1, headers=_GROUP_HEADERS if group else None
            )
            try:
                confirm = await channel.basic_publish(
                    body, routing_key=self.queue(name), properties=properties, mandatory=True
                )
            except aiormq.exceptions.PublishError:
                # Returned: the broker deleted the queue (x-expires, restart); declare it again.
                self.forget(name)
                continue
            except aiormq.exceptions.DeliveryError:  # nacked: x-overflow reject-publish, at capacity
                return False
            return not isinstance(confirm, (spec.Basic.Nack, spec.Basic.Reject))
        return False

    async def publish_raw(self, queue: str, body: bytes) -> None:
        """A confirmed publish to an already declared queue (the streams)."""
        channel = await self.broker.ops()
        properties = spec.Basic.Properties(message_id=str(next(self._ids)), delivery_mode=2)
        try:
            await channel.basic_publish(body, routing_key=queue, properties=properties, mandatory=True)
        except aiormq.exceptions.DeliveryError as exc:
            raise self.broker.error(f"refused a record for {queue}", exc) from None

    ### Getting ###

    async def get(self, name: str) -> bytes | None:
        """One message from ``name``'s queue with ``basic.get`` (acknowledged on arrival), or None."""
        await self.declare(name)
        channel = await self.broker.ops()
        try:
            message = await channel.basic_get(self.queue(name), no_ack=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            self.forget(name)  # deleted under us (x-expires): empty
            return None
        if message is None or isinstance(message.delivery, spec.Basic.GetEmpty):
            return None
        return message.body

    ### Consumers (deliveries into :mod:`.mailbox`) ###

    def consumed(self, names: list[str]) -> bool:
        """Whether every one of ``names`` has a live consumer here (its receives need no I/O)."""
        consumers = self.consumers
        for name in names:
            consumer = consumers.get(name)
            if consumer is None or not consumer.usable:
                return False
        return True

    async def consume(self, name: str) -> None:
        """Start this process's consumer on ``name``'s queue, unless it has a live one."""
        consumer = self.consumers.get(name)
        if consumer is not None and consumer.usable:
            return
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:  # one consumer per queue, even when a reconnect restores at once
            consumer = self.consumers.get(name)
            if consumer is None or not consumer.usable:
                await self._start_consumer(name)

    async def _start_consumer(self, name: str) -> None:
        await self.declare(name)
        prefetch = min(self.layer.get_capacity(name) if "!" in name else self.layer.prefetch, 65535)
        # A channel per consumer: its delivery tags are its own, so one ack(multiple) covers
        # exactly what was taken from it (mailbox.py).
        channel = await self.broker.channel()
        try:
            await channel.basic_qos(prefetch_count=prefetch)
            consumer = Consumer(name, channel, prefetch)
            ok = await channel.basic_consume(self.queue(name), self.mailboxes.callback(consumer), no_ack=False)
        except BaseException:
            await _close(channel)
            raise
        consumer.tag = ok.consumer_tag
        old = self.consumers.get(name)
        self.consumers[name] = consumer
        if old is not None:  # a reconnect's restore and a receive both started one
            await self._stop(old)

    async def _stop(self, consumer: Consumer) -> None:
        self.mailboxes.stop(consumer)
        if consumer.ack is not None:  # written before the close, on the same channel
            await asyncio.gather(consumer.ack, return_exceptions=True)
        await _close(consumer.channel)

    async def restore(self) -> None:
        """After a reconnect: consumers on closed channels (their deliveries requeued) start again."""
        for name, consumer in list(self.consumers.items()):
            if consumer.channel.is_closed:
                self.mailboxes.stop(consumer)
                await self._start_consumer(name)  # not consume(): a receive may hold its lock, awaiting us

    def lost(self, error: BaseException) -> None:
        self._declared.clear()
        self.losses += 1
        self.lost_error = error
        self.mailboxes.wake()  # waiting receives raise ``error`` (see :meth:`check`)

    def check(self, losses: int) -> None:
        """Raise the connection's error if it was lost since ``losses`` (a receive waiting then fails
        like any call, rather than reconnecting in the middle of a broker's shutdown)."""
        if self.losses != losses and self.lost_error is not None:
            raise self.lost_error

    def take(self, name: str) -> bytes | None:
        """A delivered message of ``name``, or None; from any thread, without I/O (acks are batched)."""
        return self.mailboxes.take(name)

    async def wait(self, timeout: float, ready: Any) -> None:
        """Until a consumer delivers something (``ready()`` then true), or ``timeout`` seconds."""
        await self.mailboxes.wait(timeout, ready)

    async def cancel_all(self) -> None:
        """Stop every consumer: what was taken is acknowledged, what was not goes back to its queue."""
        consumers = list(self.consumers.values())
        self.consumers.clear()
        for consumer in consumers:
            await self._stop(consumer)

    async def delete_known(self) -> None:
        """Delete every queue this layer has used (flush)."""
        await self.cancel_all()
        channel = await self.broker.ops()
        for name in sorted(self._known):
            await channel.queue_delete(self.queue(name))
        self._known.clear()
        self._declared.clear()


async def _close(channel: Any) -> None:
    """Close a consumer's channel (the broker requeues what it delivered and was not acknowledged)."""
    if channel.is_closed:
        return
    try:
        await channel.close()
    except Exception as exc:  # noqa: BLE001 - the connection is going anyway
        logger.debug("close of a consumer's channel failed: %s", exc)
