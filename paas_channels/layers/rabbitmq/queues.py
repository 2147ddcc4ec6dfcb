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

A blocking receive starts one consumer per queue for this process (kept
while the layer lives; ``prefetch`` messages in flight, acknowledged when a
receive hands them out); a non-blocking one, and ``?`` channels, use
``basic.get``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from typing import Any

import aiormq.exceptions
from pamqp import commands as spec

__all__ = ["Queues"]


def _ignore_result(task: asyncio.Future) -> None:
    if not task.cancelled() and task.exception() is not None:  # the channel closed: the message is requeued
        logger.debug("acknowledgement not sent: %s", task.exception())

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
        # queue -> (consumer tag, channel) of this process's consumer
        self.consumers: dict[str, tuple[str, Any]] = {}
        # stored name -> deque of (channel, delivery tag, body) delivered, not handed out
        self.mailboxes: dict[str, deque] = {}
        self._arrival: asyncio.Future | None = None

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

    ### Consumers and mailboxes ###

    async def consume(self, name: str) -> None:
        """Start this process's consumer on ``name``'s queue, unless it has one."""
        if name in self.consumers:
            return
        channel = await self.broker.consume()
        await self._start_consumer(channel, name)

    async def _start_consumer(self, channel: Any, name: str) -> None:
        await self.declare(name)
        prefetch = self.layer.get_capacity(name) if "!" in name else self.layer.prefetch
        await channel.basic_qos(prefetch_count=min(prefetch, 65535))
        self.mailboxes.setdefault(name, deque())

        async def deliver(message: Any) -> None:
            self.mailboxes[name].append((message.channel, message.delivery.delivery_tag, message.body))
            self._wake()

        ok = await channel.basic_consume(self.queue(name), deliver, no_ack=False)
        self.consumers[name] = (ok.consumer_tag, channel)

    async def restore(self, channel: Any) -> None:
        """After a reconnect: the old consumers and their undelivered messages are gone; start again."""
        names = list(self.consumers)
        self.consumers.clear()
        for box in self.mailboxes.values():
            box.clear()
        for name in names:
            await self._start_consumer(channel, name)

    def lost(self, error: BaseException) -> None:
        self._declared.clear()
        arrival, self._arrival = self._arrival, None
        if arrival is not None and not arrival.done():
            arrival.set_exception(error)
            arrival.exception()

    def take(self, name: str) -> bytes | None:
        """A delivered message of ``name``, or None; from any thread (the receive fast path).

        ``deque.popleft`` is atomic, so callers' threads take without a hop to
        the loop; the acknowledgement is handed to the loop, not waited for.
        """
        box = self.mailboxes.get(name)
        while box:
            try:
                channel, tag, body = box.popleft()
            except IndexError:  # another thread took the last one
                return None
            if channel.is_closed:  # the broker gave it back to the queue when that channel closed
                continue
            self.layer._loop.loop.call_soon_threadsafe(self._ack, channel, tag)
            return body
        return None

    def _ack(self, channel: Any, tag: int) -> None:
        if not channel.is_closed:
            task = asyncio.ensure_future(channel.basic_ack(tag))
            task.add_done_callback(_ignore_result)

    def _wake(self) -> None:
        arrival, self._arrival = self._arrival, None
        if arrival is not None and not arrival.done():
            arrival.set_result(None)

    async def wait(self, timeout: float) -> None:
        """Until a consumer delivers something, or ``timeout`` seconds."""
        if self._arrival is None:
            self._arrival = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(asyncio.shield(self._arrival), timeout)
        except asyncio.TimeoutError:
            pass

    async def cancel_all(self) -> None:
        for name, (tag, channel) in list(self.consumers.items()):
            if not channel.is_closed:
                try:
                    await channel.basic_cancel(tag)
                except Exception as exc:  # noqa: BLE001 - the channel is going anyway
                    logger.debug("cancel of consumer on %s failed: %s", name, exc)
        self.consumers.clear()
        for box in self.mailboxes.values():
            box.clear()

    async def delete_known(self) -> None:
        """Delete every queue this layer has used (flush)."""
        await self.cancel_all()
        channel = await self.broker.ops()
        for name in sorted(self._known):
            await channel.queue_delete(self.queue(name))
        self._known.clear()
        self._declared.clear()
