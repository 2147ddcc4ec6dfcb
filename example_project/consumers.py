"""Consumers of the example project: what workers run besides the Django views."""

from __future__ import annotations

import io
import logging

from PIL import Image

from paas_channels import Group
from paas_channels.consumers import JsonWebsocketConsumer
from paas_channels.message import Message

from .models import ChatMessage, Picture, display_name
from .views import LIVE_GROUP

logger = logging.getLogger(__name__)


### Long-poll: /live/ waits until someone POSTs to /live/publish/ ###


def long_poll(message: Message) -> None:
    """Keep the request open: its reply channel joins a group that a later send answers.

    A browser that navigates here (it asks for HTML) is sent to the page that
    explains the long-poll and has the button that answers it, instead of a
    tab that spins until the HTTP timeout.
    """
    accept = dict(message.get("headers") or []).get(b"accept", b"")
    if b"text/html" in accept:
        message.reply_channel.send({"status": 302, "headers": [[b"Location", b"/live/page/"]], "content": b""})
        return
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
    """A chat room: everyone in ``chat-<room>`` sees every message, with the sender's name.

    Each message of the conversation may run on a different worker: what the
    connection needs later (its name) lives in ``message.channel_session``.
    """

    # The user of the HTTP session cookie, carried into the channel session at connect.
    http_user = True
    # A conversation's messages run in the order they were sent, whichever worker takes them.
    strict_ordering = True

    def connection_groups(self, room: str = "lobby", **kwargs) -> list[str]:
        return [f"chat-{room}"]

    def connect(self, message: Message, room: str = "lobby", **kwargs) -> None:
        session = message.http_session
        if session is not None and session.session_key:  # a visitor with a session cookie
            name = display_name(message.user, session)
            if session.modified:
                session.save()  # the guest name just given: the same in their uploads and next visits
        else:  # no cookie (a script): no session to keep a name in
            name = display_name(message.user)
        message.channel_session["name"] = name
        message.reply_channel.send({"accept": True})
        if not message.get("resume"):  # a page coming back after a deploy did not join again
            self.group_send_json(f"chat-{room}", {"system": f"{name} joined {room}"})

    def receive_json(self, content, room: str = "lobby", **kwargs) -> None:
        text = str(content.get("text", "")).strip()[:1000] if isinstance(content, dict) else ""
        if text:
            user = self.message.user if self.message.user.is_authenticated else None
            said = ChatMessage.objects.create(room=room, user=user, name=self._name(), text=text)
            self.group_send_json(f"chat-{room}", said.as_json())

    def disconnect(self, message: Message, room: str = "lobby", **kwargs) -> None:
        if message.get("code") != 1012:  # a server restart (deploy): the page comes straight back
            self.group_send_json(f"chat-{room}", {"system": f"{self._name()} left {room}"})

    def _name(self) -> str:
        # Set at connect; the fallback covers a connection older than this code.
        return self.message.channel_session.get("name") or display_name(self.message.user)


### Background work: the `thumbnail` channel ###

THUMBNAIL_SIZE = (128, 128)


def make_thumbnail(message: Message) -> None:
    """Make the thumbnail of ``Picture`` ``message["picture"]`` and show it in its chat room.

    Runs on a worker, off the HTTP path: the upload view only stored the
    picture and sent this message.
    """
    picture = Picture.objects.filter(pk=message.get("picture")).first()
    if picture is None:
        logger.warning("thumbnail: no picture with id %r (deleted?): skipped", message.get("picture"))
        return
    try:
        with Image.open(io.BytesIO(picture.image)) as image:
            image.thumbnail(THUMBNAIL_SIZE)
            if image.mode not in ("1", "L", "LA", "P", "RGB", "RGBA"):
                image = image.convert("RGBA")  # e.g. CMYK JPEGs: PNG has no such mode
            out = io.BytesIO()
            image.save(out, format="PNG")
            size = image.size
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        logger.warning("thumbnail: picture %s (%s) is not an image Pillow can read: %s", picture.pk, picture.name, exc)
        JsonWebsocketConsumer.group_send_json(
            f"chat-{picture.room}",
            {"system": f"{picture.name} is not an image (PNG, JPEG, GIF or WebP); no thumbnail", "id": picture.pk})
        return
    picture.thumbnail, (picture.width, picture.height) = out.getvalue(), size
    picture.save(update_fields=["thumbnail", "width", "height"])
    logger.info("thumbnail of picture %s (%s) made: %sx%s", picture.pk, picture.name, picture.width, picture.height)
    JsonWebsocketConsumer.group_send_json(f"chat-{picture.room}", picture.as_json())


def reject_connection(message: Message) -> None:
    """A WebSocket to a path nobody serves: refuse it."""
    message.reply_channel.send({"accept": False})
