"""Messages, channels and groups as consumers see them (the Channels 1.x API).

``Channel(name).send(content)`` and ``Group(name).send(content)`` work from
anywhere: a view, a consumer, a shell.  Inside a consumer the sends are
*deferred*: they are collected and delivered only when the consumer returns
successfully, so a consumer that raises half way sends nothing (no reply to a
client whose request then also gets an error page, no chat message for a
transaction that rolled back).  ``send(..., immediately=True)`` bypasses the
buffer, e.g. to stream progress while a consumer still runs.

A reply channel of one interface process is shared by all of its connections,
so a reply may find it full: :func:`send_with_retry` retries with a short
backoff before it gives up and logs, and never drops a message silently.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import time
from typing import Any, Callable, Iterator

from .layers import DEFAULT_CHANNEL_LAYER, BaseChannelLayer, ChannelFull, get_channel_layer

__all__ = [
    "Channel",
    "Group",
    "Message",
    "after_sends",
    "deferred_sends",
    "send_with_retry",
]

logger = logging.getLogger(__name__)

#: How long a send keeps retrying a full channel before it gives up.
SEND_RETRY_SECONDS = 5.0

# The sends a running consumer made, delivered when it returns.  A context
# variable is per thread and per greenlet, so concurrent consumers never mix.
# An entry is (kind, layer, name, content), or ("call", None, "", fn) for after_sends().
_Entry = tuple[str, Any, str, Any]
_pending: contextvars.ContextVar[list[_Entry] | None] = contextvars.ContextVar(
    "paas_channels_pending_sends", default=None
)


def _layer_for(alias: str, channel_layer: BaseChannelLayer | None) -> BaseChannelLayer:
    return channel_layer if channel_layer is not None else get_channel_layer(alias)


def send_with_retry(layer: BaseChannelLayer, channel: str, content: dict, timeout: float = SEND_RETRY_SECONDS) -> bool:
    """Send ``content`` to ``channel``; on ``ChannelFull`` retry with backoff for ``timeout`` seconds.

    Returns False (after logging an error) when the channel stayed full.
    """
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        try:
            layer.send(channel, content)
            return True
        except ChannelFull:
            if time.monotonic() >= deadline:
                logger.error(
                    "channel %s stayed full for %.1f s: message dropped (raise the layer's "
                    "capacity or add interface/worker processes)", channel, timeout,
                )
                return False
            time.sleep(delay)
            delay = min(delay * 2, 0.25)


@contextlib.contextmanager
def deferred_sends() -> Iterator[None]:
    """Collect ``Channel``/``Group`` sends made inside; deliver them only on success.

    Nested uses share the outermost buffer, so a consumer called by another
    consumer is delivered with it.
    """
    if _pending.get() is not None:
        yield
        return
    buffer: list[_Entry] = []
    token = _pending.set(buffer)
    try:
        yield
    except BaseException:
        if buffer:
            logger.debug("consumer failed: %d deferred send(s) discarded", len(buffer))
        raise
    finally:
        _pending.reset(token)
    _deliver(buffer)


def _deliver(buffer: list[_Entry]) -> None:
    for kind, layer, name, content in buffer:
        if kind == "call":
            content()
        elif kind == "group":
            layer.send_group(name, content)
        else:
            send_with_retry(layer, name, content)


def after_sends(callback: Callable[[], Any]) -> None:
    """Run ``callback`` once the running consumer's sends so far are delivered
    (at once outside a consumer); dropped with them if the consumer fails.

    ``enforce_ordering`` uses it to let the next message of a conversation run
    only after this one's replies are out.
    """
    buffer = _pending.get()
    if buffer is None:
        callback()
    else:
        buffer.append(("call", None, "", callback))


def _send(kind: str, layer: BaseChannelLayer, name: str, content: dict, immediately: bool) -> None:
    if not isinstance(content, dict):
        raise TypeError(f"{kind} send takes a dict message; got {type(content).__name__} {content!r:.60}")
    buffer = _pending.get()
    if buffer is None or immediately:
        _deliver([(kind, layer, name, content)])
    else:
        # Serialize now so a bad value fails inside the consumer, where its
        # traceback points at the send, not later at delivery.
        layer.serialize(content)
        buffer.append((kind, layer, name, dict(content)))


class Channel:
    """A named channel on a layer: ``Channel("thumbnail").send({"id": 3})``."""

    def __init__(self, name: str, alias: str = DEFAULT_CHANNEL_LAYER, channel_layer: BaseChannelLayer | None = None) -> None:
        self.name = BaseChannelLayer.valid_channel_name(name)
        self.alias = alias
        self._layer = channel_layer
        #: ``{group: [epoch, offset]}`` on the reply channel of a connect from a
        #: resuming client: what ``Group.add`` resumes from (None: a plain add).
        self.resume: dict | None = None

    @property
    def channel_layer(self) -> BaseChannelLayer:
        return _layer_for(self.alias, self._layer)

    def send(self, content: dict, immediately: bool = False) -> None:
        """Send ``content``; inside a consumer it goes out when the consumer returns,
        unless ``immediately`` is true."""
        _send("channel", self.channel_layer, self.name, content, immediately)

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"<Channel {self.name}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Channel) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)


class Group:
    """A named group of channels: add/discard members and send to all of them."""

    def __init__(self, name: str, alias: str = DEFAULT_CHANNEL_LAYER, channel_layer: BaseChannelLayer | None = None) -> None:
        self.name = BaseChannelLayer.valid_group_name(name)
        self.alias = alias
        self._layer = channel_layer

    @property
    def channel_layer(self) -> BaseChannelLayer:
        return _layer_for(self.alias, self._layer)

    def add(self, channel: Channel | str) -> bool | None:
        """Add a channel (a ``Channel`` or its name); takes effect at once.

        The reply channel of a ``websocket.connect`` from a client that resumes
        (``client.js``) joins with its last position: for a group with history
        it first gets what it missed.  Returns ``False`` when the history no
        longer covers the gap (the client is told ``recovered: false``),
        ``True`` when nothing was lost, ``None`` for a plain add.
        """
        resume = getattr(channel, "resume", None)
        if resume is None:
            self.channel_layer.group_add(self.name, _channel_name(channel))
            return None
        position = resume.get(self.name)
        since = (position[0], position[1]) if position else None
        return self.channel_layer.group_join(self.name, _channel_name(channel), since=since)

    def discard(self, channel: Channel | str) -> None:
        """Remove a channel from the group; a no-op if it is not a member."""
        self.channel_layer.group_discard(self.name, _channel_name(channel))

    def send(self, content: dict, immediately: bool = False) -> None:
        """Send ``content`` to every member; deferred inside a consumer unless ``immediately``."""
        _send("group", self.channel_layer, self.name, content, immediately)

    def __repr__(self) -> str:
        return f"<Group {self.name}>"


def _channel_name(channel: Channel | str) -> str:
    if isinstance(channel, Channel):
        return channel.name
    if isinstance(channel, str):
        return channel
    raise TypeError(f"expected a Channel or a channel name (str); got {type(channel).__name__}")


class Message:
    """One message a consumer handles.

    ``content``: the message dict; ``channel``: the ``Channel`` it came on;
    ``reply_channel``: a ``Channel`` for ``content["reply_channel"]`` (or None);
    ``channel_layer``: the layer it came from.  Session decorators add
    ``channel_session``, ``http_session`` and ``user``.
    """

    def __init__(self, content: dict, channel_name: str, channel_layer: BaseChannelLayer) -> None:
        self.content = content
        self.channel_layer = channel_layer
        alias = getattr(channel_layer, "alias", DEFAULT_CHANNEL_LAYER)
        self.channel = Channel(channel_name, alias=alias, channel_layer=channel_layer)
        reply = content.get("reply_channel")
        self.reply_channel = Channel(reply, alias=alias, channel_layer=channel_layer) if reply else None
        resume = content.get("resume")
        if self.reply_channel is not None and isinstance(resume, dict) and channel_name == "websocket.connect":
            # {group: [epoch, offset]} from the interface: Group.add resumes with it.
            self.reply_channel.resume = resume

    def __getitem__(self, key: str) -> Any:
        return self.content[key]

    def __contains__(self, key: str) -> bool:
        return key in self.content

    def get(self, key: str, default: Any = None) -> Any:
        return self.content.get(key, default)

    def keys(self) -> Any:
        return self.content.keys()

    def copy(self) -> "Message":
        """A new ``Message`` over a copy of the content (same channel and layer)."""
        return type(self)(dict(self.content), self.channel.name, self.channel_layer)

    def __repr__(self) -> str:
        return f"<Message on {self.channel.name} reply_channel={self.content.get('reply_channel')}>"
