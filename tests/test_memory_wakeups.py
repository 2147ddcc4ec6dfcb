"""The in-memory layer wakes one receiver per message, and never loses a wakeup.

Each blocked receive here has a 30 s ``blocking_timeout``: a lost wakeup would
leave a thread asleep until then, so every thread must be done well before.
"""

from __future__ import annotations

import threading
import time

from paas_channels.layers.memory import InMemoryChannelLayer

STUCK = 10  # seconds: far below the 30 s timeout, far above any wakeup


def _receivers(layer, channel_lists):
    got = [None] * len(channel_lists)

    def run(index, channels):
        got[index] = layer.receive(channels, block=True)

    threads = []
    for index, channels in enumerate(channel_lists):
        thread = threading.Thread(target=run, args=(index, channels), daemon=True)
        thread.start()
        threads.append(thread)
        _wait_until(lambda: sum(len(w) for w in layer._waiters.values()) >= sum(len(c) for c in channel_lists[: index + 1]))
    return threads, got


def _wait_until(condition):
    deadline = time.monotonic() + STUCK
    while not condition():
        assert time.monotonic() < deadline, "receivers never blocked"
        time.sleep(0.01)


def _join(threads):
    for thread in threads:
        thread.join(STUCK)
    assert not any(thread.is_alive() for thread in threads), "a receiver missed its wakeup"


def test_each_message_wakes_a_receiver():
    layer = InMemoryChannelLayer(blocking_timeout=30)
    threads, got = _receivers(layer, [["w.a"], ["w.a"], ["w.a"]])
    for n in range(3):
        layer.send("w.a", {"n": n})
    _join(threads)
    assert sorted(message["n"] for _, message in got) == [0, 1, 2]


def test_a_wakeup_not_used_is_passed_on():
    layer = InMemoryChannelLayer(blocking_timeout=30)
    # The first receiver is woken by the send to w.a, but takes w.b (its first
    # channel) instead: the second receiver must be woken for w.a's message.
    threads, got = _receivers(layer, [["w.b", "w.a"], ["w.a"]])
    with layer._lock:  # both sends before either receiver runs
        layer._send_locked("w.a", layer.serialize({"on": "a"}), raise_full=True)
        layer._send_locked("w.b", layer.serialize({"on": "b"}), raise_full=True)
    _join(threads)
    assert got == [("w.b", {"on": "b"}), ("w.a", {"on": "a"})]


def test_receivers_on_other_channels_are_not_woken():
    layer = InMemoryChannelLayer(blocking_timeout=30)
    threads, got = _receivers(layer, [["w.other"]])
    layer.send("w.mine", {"n": 1})
    waiter = layer._waiters["w.other"][0]
    assert waiter.woken is False
    layer.send("w.other", {"n": 2})
    _join(threads)
    assert got == [("w.other", {"n": 2})]
    assert layer.receive(["w.mine"]) == ("w.mine", {"n": 1})
