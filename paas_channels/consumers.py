"""Consumers: the code a worker runs for a message.

A *function consumer* is any callable taking a :class:`~paas_channels.message.Message`
(and the keyword arguments its route's filters captured)::

    def ws_echo(message):
        message.reply_channel.send({"text": message["text"]})

A *class consumer* maps channels to methods (``method_mapping``) and is routed
with ``route_class``.  :class:`WebsocketConsumer` handles a whole WebSocket
conversation: accept on connect, ``receive``, ``send``, ``close``, and groups
joined on connect and left on disconnect.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable

from .message import Group, Message
from .sessions import (
    channel_session,
    channel_session_user,
    channel_session_user_from_http,
    enforce_ordering,
)

__all__ = [
    "BaseConsumer",
    "WebsocketConsumer",
    "JsonWebsocketConsumer",
    "accept_connection",
    "ignore_message",
]

logger = logging.getLogger(__name__)


def accept_connection(message: Message, **kwargs: Any) -> None:
    """Default ``websocket.connect`` consumer: accept the connection."""
    message.reply_channel.send({"accept": True})


def ignore_message(message: Message, **kwargs: Any) -> None:
    """Default consumer for events nobody routed: do nothing."""


class BaseConsumer:
    """A class consumer: the worker instantiates it for each message, which runs it.

    ``method_mapping``: ``{channel name: method name}``.  ``channel_session`` /
    ``channel_session_user``: wrap every handler with that decorator.
    """

    method_mapping: dict[str, str] = {}
    channel_session = False
    channel_session_user = False

    def __init__(self, message: Message, **kwargs: Any) -> None:
        self.message = message
        self.kwargs = kwargs
        self.dispatch(message, **kwargs)

    @classmethod
    def channel_names(cls) -> set[str]:
        """The channels this consumer handles (what ``route_class`` routes)."""
        return set(cls.method_mapping)

    def get_handler(self, message: Message, **kwargs: Any) -> Callable[..., Any]:
        """The method for the message's channel, wrapped in the class's decorators."""
        name = self.method_mapping.get(message.channel.name)
        if name is None:
            raise ValueError(
                f"{type(self).__name__} has no method for channel {message.channel.name!r}; "
                f"its method_mapping handles {sorted(self.method_mapping)}"
            )
        handler = getattr(self, name)
        if self.channel_session_user:
            return channel_session_user(handler)
        if self.channel_session:
            return channel_session(handler)
        return handler

    def dispatch(self, message: Message, **kwargs: Any) -> Any:
        return self.get_handler(message, **kwargs)(message, **kwargs)


class WebsocketConsumer(BaseConsumer):
    """One WebSocket conversation, handled across messages and workers.

    ``groups``: group names the connection joins on connect and leaves on
    disconnect (or override ``connection_groups(**kwargs)``); a client that
    resumes gets what it missed in them first, and ``self.recovered`` (in
    ``connect``) says per group whether it could (``False``: it could not).  ``http_user``:
    ``self.message.user`` is the user of the HTTP session cookie, kept in the
    channel session for later messages.  ``strict_ordering``: run messages in
    their ``order`` (slight ordering, connect first, is always on).
    """

    method_mapping = {
        "websocket.connect": "raw_connect",
        "websocket.receive": "raw_receive",
        "websocket.disconnect": "raw_disconnect",
    }
    http_user = False
    strict_ordering = False
    groups: list[str] | tuple[str, ...] | None = None

    def get_handler(self, message: Message, **kwargs: Any) -> Callable[..., Any]:
        handler = BaseConsumer.get_handler(self, message, **kwargs)
        if self.http_user:
            if message.channel.name == "websocket.connect":
                handler = channel_session_user_from_http(handler)
            else:
                handler = channel_session_user(handler)
        if self.strict_ordering:
            return enforce_ordering(handler, slight=False)
        if self.http_user or self.channel_session or self.channel_session_user:
            return enforce_ordering(handler, slight=True)
        return handler

    def connection_groups(self, **kwargs: Any) -> list[str]:
        """Groups this connection belongs to; ``groups`` unless overridden."""
        return list(self.groups or ())

    ### Raw handlers: bookkeeping, then the user-facing methods ###

    def raw_connect(self, message: Message, **kwargs: Any) -> None:
        # {group: False} where a resuming client could not be given what it
        # missed (history too short or lost), True where it was, None: no history.
        self.recovered = {
            group: Group(group, channel_layer=message.channel_layer).add(message.reply_channel)
            for group in self.connection_groups(**kwargs)
        }
        self.connect(message, **kwargs)

    def raw_receive(self, message: Message, **kwargs: Any) -> None:
        if message.get("text") is not None:
            self.receive(text=message["text"], **kwargs)
        else:
            self.receive(bytes=message.get("bytes"), **kwargs)

    def raw_disconnect(self, message: Message, **kwargs: Any) -> None:
        for group in self.connection_groups(**kwargs):
            Group(group, channel_layer=message.channel_layer).discard(message.reply_channel)
        self.disconnect(message, **kwargs)

    ### Override these ###

    def connect(self, message: Message, **kwargs: Any) -> None:
        """Called on ``websocket.connect``; accepts.  Call ``self.close()`` to reject."""
        self.message.reply_channel.send({"accept": True})

    def receive(self, text: str | None = None, bytes: bytes | None = None, **kwargs: Any) -> None:
        """Called with each frame the client sent."""

    def disconnect(self, message: Message, **kwargs: Any) -> None:
        """Called once the client is gone."""

    ### Sending ###

    def send(self, text: str | None = None, bytes: bytes | None = None, close: bool | int = False) -> None:
        """Send a frame to this connection (``close`` closes it after the frame)."""
        self.message.reply_channel.send(_frame(text, bytes, close))

    def close(self, code: bool | int = True) -> None:
        """Close the connection (or reject it, from ``connect``)."""
        self.message.reply_channel.send({"close": code})

    @classmethod
    def group_send(cls, name: str, text: str | None = None, bytes: bytes | None = None, close: bool | int = False) -> None:
        """Send a frame to every connection in group ``name``."""
        Group(name).send(_frame(text, bytes, close))


def _frame(text: str | None, data: bytes | None, close: bool | int) -> dict[str, Any]:
    if text is not None and data is not None:
        raise ValueError("send() takes text or bytes, not both")
    frame: dict[str, Any] = {}
    if text is not None:
        if not isinstance(text, str):
            raise TypeError(f"text must be a str; got {type(text).__name__} (send bytes with bytes=...)")
        frame["text"] = text
    elif data is not None:
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError(f"bytes must be bytes; got {type(data).__name__} (send str with text=...)")
        frame["bytes"] = bytes(data)
    if close:
        frame["close"] = close
    if not frame:
        raise ValueError("send() needs text, bytes or close")
    return frame


class JsonWebsocketConsumer(WebsocketConsumer):
    """A ``WebsocketConsumer`` speaking JSON text frames: ``receive_json`` and ``send_json``."""

    def raw_receive(self, message: Message, **kwargs: Any) -> None:
        text = message.get("text")
        if text is None:
            logger.warning("%s got a binary frame; it expects JSON text frames: ignored", type(self).__name__)
            return
        try:
            content = self.decode_json(text)
        except ValueError as exc:
            logger.warning("%s got a frame that is not JSON (%s): ignored", type(self).__name__, exc)
            return
        self.receive_json(content, **kwargs)

    def receive_json(self, content: Any, **kwargs: Any) -> None:
        """Called with each decoded JSON frame."""

    def send_json(self, content: Any, close: bool | int = False) -> None:
        self.send(text=self.encode_json(content), close=close)

    @classmethod
    def group_send_json(cls, name: str, content: Any, close: bool | int = False) -> None:
        """Send a JSON frame to every connection in group ``name``."""
        Group(name).send(_frame(cls.encode_json(content), None, close))

    @classmethod
    def decode_json(cls, text: str) -> Any:
        return json.loads(text)

    @classmethod
    def encode_json(cls, content: Any) -> str:
        return json.dumps(content)
