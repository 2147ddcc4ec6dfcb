"""A worker loop never dies of a message: poisoned messages are logged and dropped, the loops go on,
and the heartbeat (so health and ``status``) counts the live loops."""

from __future__ import annotations

import logging
import threading

import msgpack
import pytest

from paas_channels.interface.app import consuming_workers
from paas_channels.layers import InMemoryChannelLayer
from paas_channels.routing import route
from paas_channels.testing import wait_until
from paas_channels.tools.status import Snapshot, render
from paas_channels.worker import Worker


class _AnyBytesLayer(InMemoryChannelLayer):
    """Stores what it is given, as a layer reached by a buggy or hostile sender would hold it."""

    def serialize(self, message):
        return msgpack.packb(message, use_bin_type=True)


def _answer(message):
    message.reply_channel.send({"status": 200, "content": b"ok"}, immediately=True)


POISON = [
    ["a", "list"],                               # not a dict
    {"reply_channel": 12345, "path": "/"},       # int reply channel
    {"reply_channel": "no spaces allowed!", "path": "/"},  # invalid name
    {"reply_channel": "x!y", "path": 7},         # path not a str: the router's regex would choke
    17,
]


@pytest.fixture
def worker():
    layer = _AnyBytesLayer(blocking_timeout=0.05)
    worker = Worker(layer, [route("http.request", _answer, path=r"^/")], threads=4, heartbeat_interval=0.1)
    thread = threading.Thread(target=worker.serve, daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(10)


def test_poisoned_messages_leave_every_loop_alive(worker, caplog):
    layer = worker.layer
    with caplog.at_level(logging.WARNING, logger="paas_channels.worker"):
        for poison in POISON * 4:
            layer.send("http.request", poison)
        assert wait_until(lambda: layer.channel_statistics("http.request")["messages_pending"] == 0, 10)
        # Still consuming: a good request after the poison is answered.
        layer.send("http.request", {"reply_channel": "inbox.test!r1", "path": "/"})
        got = []
        assert wait_until(lambda: got.append(layer.receive(["inbox.test!"])) or got[-1][0] is not None, 10)
    assert got[-1][0] == "inbox.test!r1" and got[-1][1]["status"] == 200
    assert worker.live_loops == 4
    assert wait_until(lambda: next(iter(layer.heartbeats().values())).get("loops") == 4, 5)
    dropped = [record for record in caplog.records if "dropped" in record.getMessage()]
    # Logged once per kind, not once per message (20 poisoned messages, 5 kinds at most).
    assert 1 <= len(dropped) <= len(POISON)


def test_health_and_status_count_workers_whose_loops_are_gone():
    beats = {
        "whole": {"threads": 4, "loops": 4, "busy": 0, "done": 1, "channels": ["http.request"]},
        "dead": {"threads": 4, "loops": 0, "busy": 0, "done": 0, "channels": ["http.request"]},
        "starting": {"threads": 2, "busy": 0, "done": 0, "channels": ["http.request"]},
    }
    workers, loops = consuming_workers(beats)
    assert workers == 2 and loops == {"live": 6, "expected": 10, "lost": 4}
    screen = render(Snapshot(at=0.0, layer="L", totals={}, channels={}, groups={}, workers=beats))
    assert "4 receive loop(s) are gone" in screen
