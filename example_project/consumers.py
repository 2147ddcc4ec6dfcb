"""Consumers of the example project: what workers run besides the Django views."""

from __future__ import annotations

import hashlib
import logging
import time

from paas_channels import Channel, Group
from paas_channels.consumers import JsonWebsocketConsumer
from paas_channels.message import Message

from .views import LIVE_GROUP

logger = logging.getLogger(__name__)


### Long-poll: /live/ waits until someone POSTs to /live/publish/ ###


def long_poll(message: Message) -> None:
    """Keep the request open: its reply channel joins a group that a later send answers."""
    Group(LIVE_GROUP).add(message.reply_channel)


def long_poll_disconnect(message: Message) -> None:
    """The client gave up waiting: stop sending it the group's answer."""
    Group(LIVE_GROUP).discard(message.reply_channel)


### WebSocket echo (included under /ws/echo) ###


def echo_connect(message: Message) -> None:
    message.reply_channel.send({"accept": True})


def echo(message: Message) -> None:
    """Send each frame back; the text ``raise`` makes this consumer fail on purpose."""
    if message.get("text") == "raise":
        raise RuntimeError("echo consumer asked to fail")
    if message.get("text") is not None:
        message.reply_channel.send({"text": message["text"]})
    else:
        message.reply_channel.send({"bytes": message["bytes"]})


### Chat: /ws/chat/<room>/ ###


class ChatConsumer(JsonWebsocketConsumer):
    """A chat room: everyone in ``chat-<room>`` sees every message, with the sender's name."""

    http_user = True
    # A conversation's messages run in the order they were sent, whichever worker takes them.
    strict_ordering = True

    def connection_groups(self, room: str = "lobby", **kwargs) -> list[str]:
        return [f"chat-{room}"]

    def connect(self, message: Message, room: str = "lobby", **kwargs) -> None:
        message.reply_channel.send({"accept": True})
        self.group_send_json(f"chat-{room}", {"system": f"{_name(message)} joined {room}"})

    def receive_json(self, content, room: str = "lobby", **kwargs) -> None:
        text = str(content.get("text", ""))[:1000] if isinstance(content, dict) else ""
        if text:
            self.group_send_json(f"chat-{room}", {"user": _name(self.message), "text": text, "room": room})

    def disconnect(self, message: Message, room: str = "lobby", **kwargs) -> None:
        self.group_send_json(f"chat-{room}", {"system": f"{_name(message)} left {room}"})


def _name(message: Message) -> str:
    user = getattr(message, "user", None)
    return user.get_username() if user is not None and user.is_authenticated else "anonymous"


### Background work: the `thumbnail` channel ###


def make_thumbnail(message: Message) -> None:
    """Pretend to render a thumbnail; tell the ``thumbnails`` group (and ``reply_to``) when done."""
    started = time.monotonic()
    name = str(message.get("name", "picture.png"))
    size = int(message.get("size", 64))
    digest = hashlib.sha256(f"{name}:{size}".encode()).hexdigest()[:16]
    time.sleep(min(float(message.get("seconds", 0.05)), 10.0))
    result = {"name": name, "size": size, "thumbnail": f"{digest}.png", "took": round(time.monotonic() - started, 3)}
    logger.info("thumbnail %s made", result["thumbnail"])
    if message.get("reply_to"):
        Channel(message["reply_to"]).send(result)
    JsonWebsocketConsumer.group_send_json("thumbnails", result)


def reject_connection(message: Message) -> None:
    """A WebSocket to a path nobody serves: refuse it."""
    message.reply_channel.send({"accept": False})
