"""RabbitMQ layer faults, on a private node: restart, long consumers, dead connections, secrets; no leaks.

The Channels 1.x RabbitMQ layer needed a process restart after a broker
restart, lost its connection to "Too many missed heartbeats" under long
consumers, hung ``runworker`` when its connection thread died, and never
deleted its queues and exchanges.  Each test here is one of those faults.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest

from paas_channels.layers.rabbitmq import ChannelLayerConnectionError, RabbitMQChannelLayer
from paas_channels.testing import wait_until
from tests.support import close_layers

pytestmark = [pytest.mark.rabbitmq, pytest.mark.slow]  # a private node takes ~10 s to start

PASSWORD = "s3cret-Pa55word"


@pytest.fixture(scope="module")
def node(rabbitmq_node):
    """The session's private node (tests/conftest.py), with a user that has a password for this module."""
    node = rabbitmq_node.running()
    node.ctl("add_user", "paas", PASSWORD)
    try:
        node.ctl("set_permissions", "-p", "/", "paas", ".*", ".*", ".*")
        yield node
    finally:
        node.running().ctl("delete_user", "paas")


@pytest.fixture
def make(node, request):
    made = []

    def make(**config):
        config.setdefault("url", node.url("paas", PASSWORD))
        config.setdefault("prefix", f"f{len(made)}{request.node.name[5:25]}")
        layer = RabbitMQChannelLayer(**config)
        made.append(layer)
        return layer

    yield make
    close_layers(made, broker_may_be_down=True)


def _works(layer) -> bool:
    try:
        layer.send("probe", {"ok": True})
        return layer.receive(["probe"]) == ("probe", {"ok": True})
    except ChannelLayerConnectionError:
        return False


# The node stopping under a connect in flight: aiormq's socket warning (below), not the layer's.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_broker_restart_is_survived_by_the_same_layer(node, make):
    layer = make(timeout=5, connect_timeout=2)
    inbox = layer.new_channel("restart.inbox!")
    layer.group_add("room", inbox)
    assert layer.receive(["restart.inbox!"], block=True) == (None, None)  # its consumer is running
    blocked: list = []
    reader = threading.Thread(target=lambda: blocked.append(_receive_error(layer, ["restart.inbox!"])))
    reader.start()
    time.sleep(0.2)  # let the reader block (it must be woken by the loss, not by its timeout only)

    node.stop()
    reader.join(10)
    assert not reader.is_alive(), "a blocked receive hung after the broker went away"
    started = time.monotonic()
    with pytest.raises(ChannelLayerConnectionError) as caught:
        layer.send("restart.chan", {"n": 1})
    assert time.monotonic() - started < 8
    message = str(caught.value)
    assert f"127.0.0.1:{node.port}" in message and "is running" in message
    assert PASSWORD not in message and PASSWORD not in repr(caught.value)
    with pytest.raises(ChannelLayerConnectionError):
        asyncio.run(layer.asend("restart.chan", {"n": 1}))

    node.start()
    assert wait_until(lambda: _works(layer), timeout=30), "the layer did not reconnect after the restart"
    # Groups (a durable stream) and the inbox consumer came back with the connection.
    assert layer.group_channels("room") == [inbox]
    layer.send_group("room", {"after": "restart"})
    assert layer.receive(["restart.inbox!"], block=True) == (inbox, {"after": "restart"})


def _receive_error(layer, channels):
    try:
        return layer.receive(channels, block=True)
    except ChannelLayerConnectionError as exc:
        return exc


def test_long_running_consumer_keeps_the_connection(node, make):
    """A worker thread busy for many heartbeat intervals (holding the GIL) does not lose the connection."""
    layer = make(heartbeat=1)
    layer.send("busy.chan", {"n": 1})
    assert layer.receive(["busy.chan"], block=True) == ("busy.chan", {"n": 1})
    generation = layer._broker.generation
    connections_before = node.ctl("list_connections", "name", "--no-table-headers").split()

    def consumer():  # pure-Python work, never calling the layer: 6 heartbeat intervals
        deadline = time.monotonic() + 6
        total = 0
        while time.monotonic() < deadline:
            total += sum(range(1000))

    thread = threading.Thread(target=consumer)
    thread.start()
    thread.join()
    assert layer._broker.generation == generation, "the connection was lost and remade"
    assert node.ctl("list_connections", "name", "--no-table-headers").split() == connections_before
    layer.send("busy.chan", {"n": 2})
    assert layer.receive(["busy.chan"]) == ("busy.chan", {"n": 2})


# aiormq leaves the socket of a connect cancelled mid-handshake (a silent or frozen broker) to the
# garbage collector, which closes it with a ResourceWarning; the layer's own objects are closed.
_AIORMQ_CANCELLED_CONNECT = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@_AIORMQ_CANCELLED_CONNECT
def test_silent_broker_never_hangs_a_caller(make):
    """A listener that accepts and never answers: every call ends with a connection error, in time."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        port = server.getsockname()[1]
        layer = make(url=f"amqp://paas:{PASSWORD}@127.0.0.1:{port}/%2F", connect_timeout=1, timeout=3)
        for call in (lambda: layer.send("x", {}), lambda: layer.receive(["x"], block=True),
                     lambda: asyncio.run(layer.areceive(["x!"], block=True)), layer.heartbeats):
            started = time.monotonic()
            with pytest.raises(ChannelLayerConnectionError) as caught:
                call()
            assert time.monotonic() - started < 6
            assert PASSWORD not in str(caught.value)


@_AIORMQ_CANCELLED_CONNECT
def test_frozen_broker_mid_connection_ends_in_an_error_then_recovers(node, make):
    layer = make(heartbeat=1, timeout=2, connect_timeout=2)
    assert _works(layer)
    node.freeze()
    try:
        started = time.monotonic()
        with pytest.raises(ChannelLayerConnectionError):
            layer.send("frozen.chan", {"n": 1})
        assert time.monotonic() - started < 6
    finally:
        node.thaw()
    assert wait_until(lambda: _works(layer), timeout=30)


def test_password_never_in_repr_or_errors(node, make):
    layer = make()
    assert PASSWORD not in repr(layer) and "***" in repr(layer)
    assert PASSWORD not in repr(layer.url)
    wrong = make(url=node.url("paas", PASSWORD + "-wrong"), connect_timeout=3)
    with pytest.raises(ChannelLayerConnectionError) as caught:
        wrong.send("x", {"a": 1})
    assert PASSWORD not in str(caught.value)
    with pytest.raises(ValueError) as bad_scheme:
        RabbitMQChannelLayer(url=f"http://paas:{PASSWORD}@127.0.0.1/")
    assert PASSWORD not in str(bad_scheme.value) and "amqp://" in str(bad_scheme.value)


def test_no_queues_or_exchanges_left_after_connections_come_and_go(node, make):
    """1,000 connections join groups and leave; 10 interface processes come and go: counts return."""
    layer = make(expiry=1)
    layer.group_channels("room")  # the prefix's fixed objects exist from here on
    queues, exchanges = node.names("queues"), node.names("exchanges")
    inbox = "leak.inbox!"
    for n in range(1000):
        channel = layer.new_channel(inbox)
        layer.group_add("room", channel)
        layer.group_add(f"room-{n % 10}", channel)
        if n % 100 == 0:
            layer.send_group("room", {"n": n})
        layer.group_discard("room", channel)
        layer.group_discard(f"room-{n % 10}", channel)
    assert layer.group_channels("room") == []
    for n in range(10):  # interface processes: an inbox with a consumer, a body channel, then gone
        process = make(expiry=1, prefix=layer.prefix, blocking_timeout=0.1)
        name = process.new_channel("iface.inbox!")
        process.group_add("room", name)
        process.send(process.new_channel("body?"), {"chunk": b"x"})
        assert process.receive([name[: name.index("!") + 1]], block=True) == (None, None)
        process.group_discard("room", name)
        process.close()
    layer.close()
    assert wait_until(lambda: node.names("queues") == queues and node.names("exchanges") == exchanges, timeout=30), (
        sorted(set(node.names("queues")) ^ set(queues))
    )
