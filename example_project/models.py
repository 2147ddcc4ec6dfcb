"""Models of the example project: what the chat and the thumbnail worker keep.

A PaaS gives each dyno its own disk, gone on restart, and the web and worker
processes share none of it: uploads and thumbnails are stored in the database,
where every process finds them.
"""

from __future__ import annotations

import secrets

from django.conf import settings
from django.db import models


def display_name(user, session=None) -> str:
    """The name shown in the chat: the username, else a guest name kept in the visitor's session.

    Each logged-out visitor gets a name of their own (``guest-3fa9c1``), so two
    of them can tell each other apart; it stays theirs for as long as their
    session cookie does.  Without a session (a script without cookies) it is ``anonymous``.
    """
    if user is not None and user.is_authenticated:
        return user.get_username()
    if session is None:
        return "anonymous"
    if "guest_name" not in session:
        session["guest_name"] = f"guest-{secrets.token_hex(3)}"
    return session["guest_name"]


class ChatMessage(models.Model):
    """One line said in a chat room."""

    room = models.SlugField(max_length=50)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    #: The name shown with the message (kept if the user is deleted; "anonymous" when nobody was logged in).
    name = models.CharField(max_length=150)
    text = models.TextField(max_length=1000)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created", "id"]
        indexes = [models.Index(fields=["room", "-created"])]

    def __str__(self) -> str:
        return f"{self.name} in {self.room}: {self.text[:50]}"

    def as_json(self) -> dict:
        """What the chat consumer sends to the room's WebSockets."""
        return {"user": self.name, "text": self.text, "room": self.room}


class Picture(models.Model):
    """An image posted to a chat room; a worker on the ``thumbnail`` channel fills in ``thumbnail``."""

    room = models.SlugField(max_length=50)
    name = models.CharField(max_length=200)
    uploaded_by = models.CharField(max_length=150)
    #: The upload as it came; only the worker reads it (it is never served back: it could be anything).
    image = models.BinaryField()
    thumbnail = models.BinaryField(null=True, blank=True, editable=False)
    width = models.PositiveIntegerField(null=True, blank=True, editable=False)
    height = models.PositiveIntegerField(null=True, blank=True, editable=False)
    created = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.name} in {self.room}"

    def as_json(self) -> dict:
        """What the thumbnail worker sends to the room's WebSockets once the thumbnail exists."""
        return {
            "id": self.pk, "user": self.uploaded_by, "room": self.room, "picture": self.name,
            "thumbnail": f"/pictures/{self.pk}/thumbnail.png",
            "width": self.width, "height": self.height,
        }
