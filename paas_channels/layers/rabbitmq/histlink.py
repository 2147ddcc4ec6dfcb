"""The AMQP calls of group history, in one place: channels of their own on the layer's connection.

History (:mod:`.history`, :mod:`.sequencer`) needs a handful of AMQP
operations: declare and delete a queue, a confirmed publish by routing key
(plain properties, nothing but the body carries meaning), a consumer with a
prefetch and arguments, acknowledgements, a second channel for reading a
stream.  They are here, behind :class:`Link`, so nothing else of history
touches the AMQP client's API.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any, Awaitable, Callable

import aiormq.exceptions
from pamqp import commands as spec

from .connection import CONNECTION_ERRORS, ChannelLayerConnectionError

__all__ = ["LINK_ERRORS", "Link", "NotFound", "Precondition", "Returned"]

#: What a history operation raises when the broker or the connection failed it.
LINK_ERRORS: tuple[type[BaseException], ...] = (aiormq.exceptions.AMQPError, *CONNECTION_ERRORS,
                                                ChannelLayerConnectionError)


class Returned(Exception):
    """A mandatory publish came back: no queue by that name (deleted, or the broker lost it)."""


class NotFound(Exception):
    """The queue does not exist (the broker closed the channel for asking)."""


class Precondition(Exception):
    """The queue exists with other arguments (the broker closed the channel for asking)."""


class Link:
    """One AMQP channel of the layer's connection, with publisher confirms unless ``confirms=False``."""

    def __init__(self, channel: Any) -> None:
        self._channel = channel
        self._ids = itertools.count(1)

    @classmethod
    async def open(cls, connection: Any, confirms: bool = True) -> "Link":
        """A new channel on ``connection`` (what :meth:`connection_of` gives)."""
        return cls(await connection.channel(publisher_confirms=confirms, on_return_raises=True))

    @staticmethod
    def connection_of(ops_channel: Any) -> Any:
        """The connection under one of the layer's channels."""
        return ops_channel.connection

    async def reader(self) -> "Link":
        """Another channel on the same connection, without confirms (reading a stream)."""
        return await Link.open(self._channel.connection, confirms=False)

    @property
    def closed(self) -> bool:
        return self._channel.is_closed

    def on_close(self, callback: Callable[[BaseException | None], None]) -> None:
        """``callback(error or None)`` once, when the channel closes (either side)."""
        def closed(future: asyncio.Future) -> None:
            error = future.exception() if not future.cancelled() else None
            callback(error if isinstance(error, Exception) else None)

        self._channel.closing.add_done_callback(closed)

    async def declare(self, queue: str, durable: bool = False, arguments: dict | None = None,
                      passive: bool = False) -> None:
        try:
            await self._channel.queue_declare(queue, durable=durable, arguments=arguments, passive=passive)
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            raise Precondition(str(exc)) from None
        except aiormq.exceptions.ChannelNotFoundEntity as exc:
            raise NotFound(str(exc)) from None

    async def delete(self, queue: str) -> None:
        await self._channel.queue_delete(queue)

    async def publish(self, routing_key: str, body: bytes, persistent: bool = False) -> bool:
        """A mandatory publish; ``True`` once confirmed, ``False`` when refused; :class:`Returned` if no queue."""
        properties = spec.Basic.Properties(message_id=str(next(self._ids)), delivery_mode=2 if persistent else 1)
        try:
            confirm = await self._channel.basic_publish(body, routing_key=routing_key, properties=properties,
                                                        mandatory=True)
        except aiormq.exceptions.PublishError:
            raise Returned(routing_key) from None
        except aiormq.exceptions.DeliveryError:
            return False
        return not isinstance(confirm, (spec.Basic.Nack, spec.Basic.Reject))

    async def consume(self, queue: str, callback: Callable[[bytes, int], Awaitable[None] | None], prefetch: int,
                      arguments: dict | None = None, no_ack: bool = False) -> str:
        """A consumer: ``callback(body, delivery tag)``, in delivery order; acknowledged by :meth:`ack`
        unless ``no_ack``."""
        async def deliver(message: Any) -> None:
            result = callback(message.body, message.delivery.delivery_tag)
            if result is not None:
                await result

        await self._channel.basic_qos(prefetch_count=prefetch)
        try:
            ok = await self._channel.basic_consume(queue, deliver, no_ack=no_ack, arguments=arguments)
        except aiormq.exceptions.ChannelNotFoundEntity as exc:
            raise NotFound(str(exc)) from None
        return ok.consumer_tag

    def ack(self, tag: int, multiple: bool = True) -> None:
        """Acknowledge delivery ``tag`` (and, ``multiple``, every earlier one of this channel); no wait."""
        if not self._channel.is_closed:
            task = asyncio.ensure_future(self._channel.basic_ack(tag, multiple=multiple))
            task.add_done_callback(_seen)

    async def close(self) -> None:
        if not self._channel.is_closed:
            try:
                await self._channel.close()
            except Exception:  # noqa: BLE001 - it is being thrown away
                pass


def _seen(task: asyncio.Future) -> None:
    if not task.cancelled():
        task.exception()  # a closed channel: the broker gives the deliveries back anyway
