"""Channel and HTTP sessions and message ordering, on Django's session engine.

In-process on the in-memory layer with the cache session engine (one
process); the cross-process case (two worker processes, a logged-in user in
a WebSocket chat) is in test_worker_django.py.
"""

from __future__ import annotations

from importlib import import_module

import pytest
from django.conf import settings
from django.test import override_settings

from paas_channels.layers import InMemoryChannelLayer
from paas_channels.message import Message
from paas_channels.routing import route
from paas_channels.sessions import channel_session, enforce_ordering, http_session, session_for_reply_channel
from paas_channels.worker import Worker
from tests.worker_client import run_all, ws

pytestmark = pytest.mark.usefixtures("cache_sessions")


@pytest.fixture
def cache_sessions():
    from django.core.cache import cache

    with override_settings(SESSION_ENGINE="django.contrib.sessions.backends.cache"):
        yield
    cache.clear()


@pytest.fixture
def layer():
    return InMemoryChannelLayer(blocking_timeout=0.1)


def test_channel_session_persists_per_reply_channel_and_ends_on_disconnect(layer):
    seen = []

    @channel_session
    def count(message):
        message.channel_session["n"] = message.channel_session.get("n", 0) + 1
        seen.append((message.reply_channel.name, message.channel_session["n"]))

    worker = Worker(layer, [route(name, count) for name in ("websocket.connect", "websocket.receive", "websocket.disconnect")])
    for message in (ws("in!a", 0), ws("in!b", 0), ws("in!a", 1, text="x"), ws("in!a", 2, text="y")):
        layer.send("websocket.connect" if message["order"] == 0 else "websocket.receive", message)
    run_all(worker, layer)
    assert seen == [("in!a", 1), ("in!b", 1), ("in!a", 2), ("in!a", 3)]
    assert session_for_reply_channel("in!a")["n"] == 3
    layer.send("websocket.disconnect", ws("in!a", 3, code=1000))
    run_all(worker, layer)
    assert "n" not in session_for_reply_channel("in!a")  # a new, empty session


def test_channel_session_needs_a_reply_channel(layer):
    consumer = channel_session(lambda message: None)
    with pytest.raises(ValueError, match="needs a message with a reply_channel"):
        consumer(Message({"name": "x"}, "thumbnail", layer))


def test_http_session_comes_from_the_cookie(layer):
    store = import_module(settings.SESSION_ENGINE).SessionStore()
    store["colour"] = "teal"
    store.save()
    got = []

    @http_session
    def consumer(message):
        got.append(message.http_session.get("colour"))

    cookie = f"other=1; {settings.SESSION_COOKIE_NAME}={store.session_key}".encode()
    consumer(Message({"reply_channel": "in!a", "headers": [[b"cookie", cookie]]}, "websocket.connect", layer))
    consumer(Message({"reply_channel": "in!b", "headers": [[b"cookie", b"bad cookie ;;; =="]]}, "websocket.connect", layer))
    consumer(Message({"reply_channel": "in!c", "headers": []}, "websocket.connect", layer))
    assert got == ["teal", None, None]


def test_enforce_ordering_runs_messages_in_order_whatever_order_they_come(layer):
    ran = []

    @enforce_ordering
    def consumer(message):
        ran.append(message["order"])

    worker = Worker(layer, [route(name, consumer) for name in ("websocket.connect", "websocket.receive")])
    for order in (3, 1, 2):
        layer.send("websocket.receive", ws("in!strict", order, text=str(order)))
    run_all(worker, layer)
    assert ran == []  # nothing runs before the connect
    layer.send("websocket.connect", ws("in!strict", 0))
    run_all(worker, layer)
    assert ran == [0, 1, 2, 3]


def test_slight_ordering_only_needs_the_connect_first(layer):
    ran = []

    @enforce_ordering(slight=True)
    def consumer(message):
        ran.append(message["order"])

    worker = Worker(layer, [route(name, consumer) for name in ("websocket.connect", "websocket.receive")])
    layer.send("websocket.receive", ws("in!slight", 2, text="2"))
    run_all(worker, layer)
    assert ran == []
    layer.send("websocket.connect", ws("in!slight", 0))
    run_all(worker, layer)
    layer.send("websocket.receive", ws("in!slight", 5, text="5"))
    run_all(worker, layer)
    assert ran == [0, 2, 5]


def test_enforce_ordering_needs_an_order(layer):
    consumer = enforce_ordering(lambda message: None)
    with pytest.raises(ValueError, match="integer 'order'"):
        consumer(Message({"reply_channel": "in!a"}, "websocket.receive", layer))


def test_early_disconnect_waits_and_keeps_the_session_until_it_runs(layer):
    ran = []

    @enforce_ordering
    def consumer(message):
        message.channel_session["seen"] = message.channel_session.get("seen", 0) + 1
        ran.append((message.channel.name, message["order"], message.channel_session["seen"]))

    names = ("websocket.connect", "websocket.receive", "websocket.disconnect")
    worker = Worker(layer, [route(name, consumer) for name in names])
    layer.send("websocket.connect", ws("in!early", 0))
    run_all(worker, layer)
    layer.send("websocket.disconnect", ws("in!early", 2, code=1000))
    run_all(worker, layer)  # parked: its session must survive
    layer.send("websocket.receive", ws("in!early", 1, text="last words"))
    run_all(worker, layer)
    assert ran == [("websocket.connect", 0, 1), ("websocket.receive", 1, 2), ("websocket.disconnect", 2, 3)]
    assert "seen" not in session_for_reply_channel("in!early")  # deleted once the disconnect ran
