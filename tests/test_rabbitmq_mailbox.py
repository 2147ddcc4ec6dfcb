"""RabbitMQ receives from consumer mailboxes: every message once, nothing lost when a reader stops or dies.

A blocking receive starts a consumer that prefetches into memory and
acknowledges what was taken in batches (``basic.ack(multiple)``); these tests
hold it to what that must not change: a message taken is given once, the
ones prefetched and not taken go back to the queue when the consumer is
closed or its process is killed, and threads and event loops of one
process share the consumer without taking a message twice.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from paas_channels.layers.rabbitmq import RabbitMQChannelLayer
from paas_channels.testing import wait_until
from tests.support import close_layers

pytestmark = pytest.mark.rabbitmq

KEY = "rabbitmq-mailbox-test-key-" + "m" * 30
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def make(rabbitmq_url, rabbitmq_made_layers):
    """``make(prefix)``: a layer ("process") of that prefix on the shared broker."""
    made = []

    def make(prefix, **config):
        config.setdefault("capacity", 5000)
        layer = RabbitMQChannelLayer(url=rabbitmq_url, prefix=prefix, **config)
        layer.use_keys([KEY])
        made.append(layer)
        if len(made) == 1:
            rabbitmq_made_layers.append(layer)  # the prefix is deleted at the end of the session
        return layer

    yield make
    close_layers(made)


def _prefix() -> str:
    return "rmb" + uuid.uuid4().hex[:10]


def _drain(layer, channels: list[str]) -> list[tuple[str, int]]:
    """Every message left on ``channels``: blocking receives until one comes back empty."""
    got = []
    while True:
        channel, message = layer.receive(channels, block=True)
        if channel is None:
            return got
        got.append((channel, message["i"]))


def test_taken_once_and_untaken_back_in_the_queue_after_close(make):
    prefix = _prefix()
    reader = make(prefix, prefetch=16)
    for i in range(40):
        reader.send("mb.a", {"i": i})
    for i in range(10):
        reader.send("mb.b", {"i": i})
    taken = [("mb.a", reader.receive(["mb.a"], block=True)[1]["i"]) for _ in range(5)]
    taken.append(("mb.b", reader.receive(["mb.b"], block=True)[1]["i"]))
    # Both consumers hold prefetched messages not taken, each on its own AMQP channel: an
    # ack(multiple) on mb.a's must not cover mb.b's, and closing returns them all.
    assert reader._queues.mailboxes.pending("mb.a") > 0
    reader.close()

    rest = _drain(make(prefix, blocking_timeout=0.5), ["mb.a", "mb.b"])
    everything = sorted(taken + rest)
    assert everything == sorted([("mb.a", i) for i in range(40)] + [("mb.b", i) for i in range(10)])
    assert sorted(taken) == [("mb.a", i) for i in range(5)] + [("mb.b", 0)]  # in order, none twice


def test_threads_of_one_process_take_each_message_once(make):
    prefix = _prefix()
    layer = make(prefix, prefetch=8, blocking_timeout=0.5)
    count = 300
    for i in range(count):
        layer.send("mb.work", {"i": i})
    got: list[int] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            while True:
                channel, message = layer.receive(["mb.work"], block=True)
                if channel is None:
                    return
                with lock:
                    got.append(message["i"])
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    assert sorted(got) == list(range(count))
    layer.close()
    # Every take was acknowledged before the close: nothing comes back.
    assert make(prefix, blocking_timeout=0.3).receive(["mb.work"], block=True) == (None, None)


def test_a_thread_and_an_event_loop_share_the_consumer(make):
    prefix = _prefix()
    layer = make(prefix, prefetch=8, blocking_timeout=0.5)
    count = 200
    for i in range(count):
        layer.send("mb.mixed", {"i": i})
    got = [layer.receive(["mb.mixed"], block=True)[1]["i"]]  # the consumer runs: both below take from it
    thread_got: list[int] = []

    def in_thread() -> None:
        while (message := layer.receive(["mb.mixed"], block=True)[1]) is not None:
            thread_got.append(message["i"])

    async def in_loop() -> list[int]:
        loop_got = []
        while (message := (await layer.areceive(["mb.mixed"], block=True))[1]) is not None:
            loop_got.append(message["i"])
        return loop_got

    thread = threading.Thread(target=in_thread)
    thread.start()
    loop_got = asyncio.run(in_loop())
    thread.join(60)
    assert sorted(got + thread_got + loop_got) == list(range(count))


def test_a_killed_reader_loses_nothing_it_had_prefetched(make, tmp_path):
    prefix = _prefix()
    sender = make(prefix)
    for i in range(50):
        sender.send("mb.kill", {"i": i})
    script = tmp_path / "reader.py"
    script.write_text(
        "import os, signal, sys\n"
        "from paas_channels.layers.rabbitmq import RabbitMQChannelLayer\n"
        f"layer = RabbitMQChannelLayer(url={sender.url.url!r}, prefix={prefix!r}, capacity=5000, prefetch=32)\n"
        f"layer.use_keys([{KEY!r}])\n"
        "for _ in range(3):\n"
        "    print(layer.receive(['mb.kill'], block=True)[1]['i'], flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    child = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, env=env)
    assert child.returncode == -signal.SIGKILL, child.stderr
    taken = [int(line) for line in child.stdout.split()]
    assert taken == [0, 1, 2]

    rest = [i for _, i in _drain(make(prefix, blocking_timeout=0.5), ["mb.kill"])]
    # The 29 it held untaken came back (a take killed within the ack delay may come back too: at least once).
    assert set(rest) >= set(range(3, 50))
    assert len(rest) == len(set(rest))


def test_a_consumer_the_broker_cancels_is_started_again(make):
    prefix = _prefix()
    reader, other = make(prefix, blocking_timeout=0.5), make(prefix)
    reader.send("mb.gone", {"i": 0})
    assert reader.receive(["mb.gone"], block=True) == ("mb.gone", {"i": 0})  # its consumer runs
    other.receive(["mb.gone"])  # the other process knows the queue: its flush deletes it
    other.flush()  # the broker cancels the reader's consumer
    other.send("mb.gone", {"i": 1})
    assert wait_until(lambda: reader.receive(["mb.gone"], block=True) == ("mb.gone", {"i": 1}), timeout=10)
