"""Consumers, Message/Channel/Group and the Worker class, in-process on the in-memory layer.

This is how combined mode runs a worker: ``Worker(layer, routing).serve()`` in
a thread and ``stop()`` from another.  The test plays the interface: it puts
messages on the layer and reads replies from a ``!`` inbox.
"""

from __future__ import annotations

import logging
import threading
import time

import pytest

from paas_channels.testing import wait_until
from paas_channels import Channel, Group
from paas_channels.consumers import JsonWebsocketConsumer, WebsocketConsumer
from paas_channels.layers import InMemoryChannelLayer, _layers
from paas_channels.message import Message, send_with_retry
from paas_channels.routing import default_routing, route, route_class
from paas_channels.worker import Worker
from tests.worker_client import ws


@pytest.fixture
def layer():
    layer = InMemoryChannelLayer(blocking_timeout=0.1)
    yield layer
    layer.flush()


def drain(layer, prefix="in!"):
    got = []
    while True:
        channel, message = layer.receive([prefix])
        if channel is None:
            return got
        got.append((channel, message))


@pytest.fixture
def serving():
    """Start ``Worker.serve()`` in a thread; stopped and joined after the test."""
    started = []

    def start(worker):
        result = {}
        thread = threading.Thread(target=lambda: result.setdefault("cut", worker.serve()), daemon=True)
        thread.start()
        started.append((worker, thread))
        return thread, result

    yield start
    for worker, thread in started:
        worker.stop(force=True)
        thread.join(10)


### Deferred sends ###


def test_failed_consumer_sends_nothing_but_immediate_sends_go(layer, caplog):
    def consumer(message):
        message.reply_channel.send({"deferred": True})
        Group("watchers", channel_layer=layer).send({"group": True})
        message.reply_channel.send({"now": True}, immediately=True)
        raise RuntimeError("half way")

    layer.group_add("watchers", "in!watcher")
    worker = Worker(layer, [route("work", consumer)])
    with caplog.at_level(logging.ERROR, logger="paas_channels.worker"):
        worker.run_consumer("work", {"reply_channel": "in!a"})
    assert drain(layer) == [("in!a", {"now": True})]
    assert "consumer test_failed_consumer_sends_nothing_but_immediate_sends_go.<locals>.consumer failed" in caplog.text
    assert "RuntimeError: half way" in caplog.text


def test_sends_are_delivered_when_the_consumer_returns(layer, serving):
    release, sent = threading.Event(), threading.Event()

    def consumer(message):
        message.reply_channel.send({"n": 1})
        Channel("other", channel_layer=layer).send({"n": 2})
        sent.set()
        release.wait(5)

    worker = Worker(layer, [route("work", consumer)])
    serving(worker)
    layer.send("work", {"reply_channel": "in!a"})
    assert sent.wait(5)  # the consumer has "sent" both, and is still running
    assert drain(layer) == [] and layer.receive(["other"]) == (None, None)
    release.set()
    deadline = time.monotonic() + 5
    got = []
    while not got and time.monotonic() < deadline:
        got = drain(layer)
    assert got == [("in!a", {"n": 1})]
    other = (None, None)
    while other == (None, None) and time.monotonic() < deadline:
        other = layer.receive(["other"], block=True)
    assert other == ("other", {"n": 2})


def test_sends_outside_a_consumer_go_at_once(layer):
    Channel("in!x", channel_layer=layer).send({"a": 1})
    group = Group("g", channel_layer=layer)
    group.add("in!y")
    group.send({"b": 2})
    assert drain(layer) == [("in!x", {"a": 1}), ("in!y", {"b": 2})]
    group.discard(Channel("in!y", channel_layer=layer))
    assert layer.group_channels("g") == []


def test_bad_send_fails_inside_the_consumer(layer):
    message = Message({"reply_channel": "in!a"}, "work", layer)
    with pytest.raises(TypeError, match="dict message"):
        message.reply_channel.send("text")
    with pytest.raises(ValueError, match="invalid channel name"):
        Channel("bad name", channel_layer=layer)
    with pytest.raises(ValueError, match="invalid group name"):
        Group("bad!group", channel_layer=layer)


def test_reply_to_a_full_inbox_is_retried_then_given_up_loudly(layer, caplog):
    small = InMemoryChannelLayer(capacity=1, blocking_timeout=0.1)
    small.send("in!a", {"fill": 1})
    threading.Timer(0.3, lambda: small.receive(["in!"])).start()
    assert send_with_retry(small, "in!b", {"reply": 2}, timeout=5) is True
    assert small.receive(["in!"]) == ("in!b", {"reply": 2})
    small.send("in!a", {"fill": 1})
    with caplog.at_level(logging.ERROR, logger="paas_channels.message"):
        assert send_with_retry(small, "in!c", {"reply": 3}, timeout=0.2) is False
    assert "channel in!c stayed full for 0.2 s: message dropped" in caplog.text


### The Worker class (combined mode uses it in-process) ###


def test_no_prefetch_one_thread_takes_one_message_at_a_time(layer, serving):
    release = threading.Event()
    worker = Worker(layer, [route("work", lambda message: release.wait(5))], threads=1)
    serving(worker)
    for n in range(3):
        layer.send("work", {"n": n})
    assert wait_until(lambda: worker.busy == 1)
    assert layer.channel_statistics("work")["messages_pending"] == 2
    release.set()


def test_stop_drains_in_flight_consumers(layer, serving):
    def slow(message):
        time.sleep(0.8)
        message.reply_channel.send({"done": True})

    worker = Worker(layer, [route("work", slow)], threads=2, graceful_timeout=10)
    thread, result = serving(worker)
    layer.send("work", {"reply_channel": "in!a"})
    layer.send("work", {"reply_channel": "in!b"})
    assert wait_until(lambda: worker.busy == 2)  # both taken and running
    worker.stop()
    layer.send("work", {"reply_channel": "in!late"})
    thread.join(10)
    assert result["cut"] == 0
    assert sorted(channel for channel, _ in drain(layer)) == ["in!a", "in!b"]
    assert layer.channel_statistics("work")["messages_pending"] == 1


def test_worker_needs_some_channel_and_positive_threads(layer):
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        Worker(layer, [route("work", print)], threads=0)
    with pytest.raises(Exception, match="would consume no channel"):
        Worker(layer, [route("work", print)], only_channels=["other"])


def test_unrouted_message_is_logged_and_dropped(layer, caplog):
    worker = Worker(layer, [route("work", print, path=r"^/only/")])
    with caplog.at_level(logging.WARNING, logger="paas_channels.worker"):
        worker.run_consumer("work", {"path": "/else/"})
    assert "no route for a message on work (path '/else/')" in caplog.text


### Generic consumers ###


class Room(WebsocketConsumer):
    def connection_groups(self, room, **kwargs):
        return [f"room-{room}"]

    def receive(self, text=None, bytes=None, room=None, **kwargs):
        if text == "bye":
            self.close(4000)
        elif text is not None:
            self.group_send(f"room-{room}", text=f"{room}: {text}")
        else:
            self.send(bytes=bytes[::-1])


def test_websocket_consumer_groups_send_close(layer, monkeypatch):
    # group_send is a classmethod on the "default" layer: make ours the default.
    monkeypatch.setitem(_layers, "default", layer)
    worker = Worker(layer, [route_class(Room, path=r"^/room/(?P<room>\w+)/$")])
    worker.run_consumer("websocket.connect", ws("in!a", 0, "/room/red/"))
    worker.run_consumer("websocket.connect", ws("in!b", 0, "/room/red/"))
    assert drain(layer) == [("in!a", {"accept": True}), ("in!b", {"accept": True})]
    assert sorted(layer.group_channels("room-red")) == ["in!a", "in!b"]

    worker.run_consumer("websocket.receive", ws("in!a", 1, "/room/red/", text="hello"))
    assert sorted(drain(layer)) == [("in!a", {"text": "red: hello"}), ("in!b", {"text": "red: hello"})]
    worker.run_consumer("websocket.receive", ws("in!a", 2, "/room/red/", bytes=b"abc"))
    worker.run_consumer("websocket.receive", ws("in!b", 1, "/room/red/", text="bye"))
    assert drain(layer) == [("in!a", {"bytes": b"cba"}), ("in!b", {"close": 4000})]
    worker.run_consumer("websocket.disconnect", ws("in!b", 2, "/room/red/", code=4000))
    assert layer.group_channels("room-red") == ["in!a"]


class Calculator(JsonWebsocketConsumer):
    def receive_json(self, content, **kwargs):
        self.send_json({"sum": sum(content["numbers"])})


def test_json_websocket_consumer(layer, caplog):
    worker = Worker(layer, [route_class(Calculator)])
    worker.run_consumer("websocket.connect", ws("in!a", 0))
    worker.run_consumer("websocket.receive", ws("in!a", 1, text='{"numbers": [1, 2, 3.5]}'))
    with caplog.at_level(logging.WARNING, logger="paas_channels.consumers"):
        worker.run_consumer("websocket.receive", ws("in!a", 2, text="not json"))
    assert drain(layer) == [("in!a", {"accept": True}), ("in!a", {"text": '{"sum": 6.5}'})]
    assert "Calculator got a frame that is not JSON" in caplog.text


def test_default_routing_accepts_websockets_and_ignores_their_events(layer):
    worker = Worker(layer, default_routing())
    assert set(worker.channels) == {
        "http.request", "http.disconnect", "websocket.connect", "websocket.receive", "websocket.disconnect",
    }
    worker.run_consumer("websocket.connect", ws("in!a", 0))
    worker.run_consumer("websocket.receive", ws("in!a", 1, text="x"))
    worker.run_consumer("websocket.disconnect", ws("in!a", 2, code=1000))
    assert drain(layer) == [("in!a", {"accept": True})]


def test_consumer_send_arguments_are_checked(layer):
    consumer = WebsocketConsumer.__new__(WebsocketConsumer)
    consumer.message = Message({"reply_channel": "in!a"}, "websocket.receive", layer)
    with pytest.raises(ValueError, match="text or bytes, not both"):
        consumer.send(text="a", bytes=b"b")
    with pytest.raises(TypeError, match="text must be a str"):
        consumer.send(text=b"a")
    with pytest.raises(ValueError, match="needs text, bytes or close"):
        consumer.send()


def test_import_paas_channels_stays_light_until_channel_or_group_is_used():
    import subprocess
    import sys

    code = (
        "import sys, paas_channels\n"
        "assert 'paas_channels.message' not in sys.modules and 'django.db' not in sys.modules, 'heavy import'\n"
        "import django; from django.conf import settings; settings.configure(); django.setup()\n"
        "from paas_channels import Channel, Group\n"
        "assert Channel.__module__ == Group.__module__ == 'paas_channels.message'\n"
        "try:\n    paas_channels.Nope\nexcept AttributeError as exc:\n    print(exc)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "has no attribute 'Nope'" in result.stdout
