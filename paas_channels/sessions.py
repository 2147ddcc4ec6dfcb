"""Sessions and users for consumers, on Django's session engine.

A WebSocket conversation is handled by many workers, one message at a time,
so its state must live outside any worker: ``channel_session`` keeps a Django
session keyed by the message's reply channel (``message.channel_session``),
``http_session`` loads the session of the HTTP cookie that came with an
``http.request`` or ``websocket.connect`` (``message.http_session``).  The
``*_user`` variants set ``message.user`` through ``django.contrib.auth``.
``enforce_ordering`` makes a conversation's messages run in their ``order``,
whatever worker takes them.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from http.cookies import SimpleCookie
from importlib import import_module
from types import SimpleNamespace
from typing import Any, Callable

from django.conf import settings
from django.contrib.sessions.backends.base import CreateError, SessionBase

from .message import Message, after_sends, send_with_retry

__all__ = [
    "channel_session",
    "http_session",
    "channel_session_user",
    "http_session_user",
    "channel_session_user_from_http",
    "enforce_ordering",
    "session_for_reply_channel",
    "transfer_user",
]

logger = logging.getLogger(__name__)

_NEXT_ORDER = "__channels_next_order"
_AUTH_KEYS = ("_auth_user_id", "_auth_user_backend", "_auth_user_hash")


def _session_store() -> type[SessionBase]:
    return import_module(settings.SESSION_ENGINE).SessionStore


def session_for_reply_channel(reply_channel: str) -> SessionBase:
    """The channel session of ``reply_channel``, created if it does not exist yet.

    Its key is derived from the reply channel's name, so every worker finds
    the same session without being told its key.
    """
    key = "chn" + hashlib.sha1(reply_channel.encode("utf-8")).hexdigest()[:29]
    session = _session_store()(session_key=key)
    if not session.exists(key):
        try:
            # Create before any read: reading a missing key makes Django pick a new key.
            session.save(must_create=True)
        except CreateError:
            pass  # another worker created it at the same moment: use theirs
    return session


def _message_arg(args: tuple) -> tuple[Message, int]:
    """The Message among a consumer's arguments (first, or second for a method)."""
    for index, arg in enumerate(args[:2]):
        if isinstance(arg, Message):
            return arg, index
    raise TypeError(
        "session decorators wrap consumers that take a Message (function consumers, or "
        f"methods of a consumer class); got arguments {[type(arg).__name__ for arg in args[:2]]}"
    )


def channel_session(func: Callable) -> Callable:
    """Give the consumer ``message.channel_session``, saved after it returns.

    The session is deleted after a ``websocket.disconnect`` consumer: the
    conversation is over.
    """

    @functools.wraps(func)
    def inner(*args: Any, **kwargs: Any) -> Any:
        message, _ = _message_arg(args)
        if getattr(message, "channel_session", None) is not None:
            return func(*args, **kwargs)
        if message.reply_channel is None:
            raise ValueError(
                f"channel_session needs a message with a reply_channel; the message on "
                f"{message.channel.name!r} has none (use it on http/websocket consumers only)"
            )
        session = session_for_reply_channel(message.reply_channel.name)
        message.channel_session = session
        try:
            return func(*args, **kwargs)
        finally:
            if message.channel.name == "websocket.disconnect" and not getattr(message, "parked", False):
                session.delete()
            elif session.modified:
                session.save()

    return inner


def _cookie_session_key(message: Message) -> str | None:
    cookies = SimpleCookie()
    for name, value in message.content.get("headers") or ():
        if _text(name).lower() == "cookie":
            try:
                cookies.load(_text(value))
            except Exception:  # a malformed cookie header: treat as no session
                logger.debug("unparseable Cookie header ignored")
    morsel = cookies.get(settings.SESSION_COOKIE_NAME)
    return morsel.value if morsel is not None else None


def _text(value: Any) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else str(value)


def http_session(func: Callable) -> Callable:
    """Give the consumer ``message.http_session``: the session of the request's cookie.

    Works on messages that carry headers (``http.request``, ``websocket.connect``);
    an unknown or missing cookie gives a new, empty session.  Saved if modified.
    """

    @functools.wraps(func)
    def inner(*args: Any, **kwargs: Any) -> Any:
        message, _ = _message_arg(args)
        if getattr(message, "http_session", None) is not None:
            return func(*args, **kwargs)
        session = _session_store()(session_key=_cookie_session_key(message))
        message.http_session = session
        try:
            return func(*args, **kwargs)
        finally:
            if session.modified and not session.is_empty():
                session.save()

    return inner


def _user_from(session: SessionBase) -> Any:
    from django.contrib.auth import get_user

    return get_user(SimpleNamespace(session=session))


def transfer_user(from_session: SessionBase, to_session: SessionBase) -> None:
    """Copy the logged-in user of one session into another (HTTP session -> channel session)."""
    for key in _AUTH_KEYS:
        if key in from_session:
            to_session[key] = from_session[key]
        elif key in to_session:
            del to_session[key]


def http_session_user(func: Callable) -> Callable:
    """``http_session`` plus ``message.user`` (``AnonymousUser`` when not logged in)."""

    @http_session
    @functools.wraps(func)
    def inner(*args: Any, **kwargs: Any) -> Any:
        message, _ = _message_arg(args)
        message.user = _user_from(message.http_session)
        return func(*args, **kwargs)

    return inner


def channel_session_user(func: Callable) -> Callable:
    """``channel_session`` plus ``message.user`` from it (see ``channel_session_user_from_http``)."""

    @channel_session
    @functools.wraps(func)
    def inner(*args: Any, **kwargs: Any) -> Any:
        message, _ = _message_arg(args)
        message.user = _user_from(message.channel_session)
        return func(*args, **kwargs)

    return inner


def channel_session_user_from_http(func: Callable) -> Callable:
    """For ``websocket.connect``: take the user from the HTTP cookie session and keep it
    in the channel session, where later messages' ``channel_session_user`` find it."""

    @http_session_user
    @channel_session
    @functools.wraps(func)
    def inner(*args: Any, **kwargs: Any) -> Any:
        message, _ = _message_arg(args)
        transfer_user(message.http_session, message.channel_session)
        return func(*args, **kwargs)

    return inner


def _wait_channel(reply_channel: str) -> str:
    # A single-reader "?" name: layers expire what they keep per such channel (its statistics),
    # as they do for every name made per conversation; a normal name's stats key would stay forever.
    return "paas_channels.wait?" + hashlib.sha1(reply_channel.encode("utf-8")).hexdigest()[:24]


def enforce_ordering(func: Callable | None = None, *, slight: bool = False) -> Callable:
    """Run a conversation's messages in their ``order`` (0 = connect, 1, 2, ...).

    A message that arrives early is parked on a wait channel and sent back to
    its channel once the one before it has run.  With ``slight=True`` only
    connect-before-the-rest is enforced.  Needs ``channel_session`` (applied
    for you) and messages with an ``order`` key, as WebSocket messages have.
    """
    if func is None:
        return functools.partial(enforce_ordering, slight=slight)

    @channel_session
    @functools.wraps(func)
    def inner(*args: Any, **kwargs: Any) -> Any:
        message, _ = _message_arg(args)
        order = message.content.get("order")
        if not isinstance(order, int):
            raise ValueError(
                f"enforce_ordering needs messages with an integer 'order' (WebSocket messages have one); "
                f"the message on {message.channel.name!r} has order={order!r}"
            )
        session = message.channel_session
        expected = session.get(_NEXT_ORDER, 0)
        runnable = (order == 0 or expected > 0) if slight else order == expected
        if not runnable:
            _park(message)
            return None
        try:
            result = func(*args, **kwargs)
        except BaseException:
            # A failed message still counts as handled, or the conversation would stall;
            # it sent nothing, so the next one may run at once.
            _advance(message, order)
            raise
        # The next message may run only once this one's replies are out.
        after_sends(lambda: _advance(message, order))
        return result

    return inner


def _advance(message: Message, order: int) -> None:
    """Record that ``order`` ran and send the messages parked behind it back to their channels."""
    if message.channel.name == "websocket.disconnect":
        return  # the conversation is over and its channel session deleted
    session = session_for_reply_channel(message.reply_channel.name)
    session[_NEXT_ORDER] = max(session.get(_NEXT_ORDER, 0), order + 1)
    session.save()
    _requeue(message)


def _park(message: Message) -> None:
    # Marked, so that channel_session keeps the session of a parked disconnect.
    message.parked = True
    layer = message.channel_layer
    wait = _wait_channel(message.reply_channel.name)
    layer.send(wait, {"channel": message.channel.name, "content": message.content})
    logger.debug("message order %s on %s parked until its predecessor runs", message.content["order"], message.channel.name)
    # The predecessor may have finished while we parked: look again so the
    # parked message is not left waiting for a next message that never comes.
    fresh = session_for_reply_channel(message.reply_channel.name)
    if fresh.get(_NEXT_ORDER, 0) > message.channel_session.get(_NEXT_ORDER, 0):
        _requeue(message)


def _requeue(message: Message) -> None:
    layer = message.channel_layer
    wait = _wait_channel(message.reply_channel.name)
    while True:
        _, parked = layer.receive([wait])
        if parked is None:
            return
        send_with_retry(layer, parked["channel"], parked["content"])
