"""Group history conformance: offsets, epochs, the join's notice and replay.

Runs on every backend of ``tests/layer_backends.py`` that keeps history
(``HISTORY_BACKENDS`` there; each declares the ``"history"`` extension).  What is promised (``paas_channels.layers.history``): each
message to a history group gets the group's next offset and its epoch; a join
that resumes gets a notice and then exactly the messages after its position,
atomically with the membership; a lost history (flush) is a new epoch.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from tests.layer_backends import HISTORY_BACKENDS, LAYER_BACKENDS

from paas_channels.layers import ConfigError, InMemoryChannelLayer, build_channel_layer

HISTORY = {"chat-*": {"size": 5, "ttl": 300}, "short-*": {"size": 100, "ttl": 1}, "big-*": {"size": 1000, "ttl": 300}}


@pytest.fixture(params=sorted(name for name in LAYER_BACKENDS if name in HISTORY_BACKENDS))
def hlayer(request):
    """A fresh layer with history, of each backend that keeps history (all of them)."""
    layer = LAYER_BACKENDS[request.param](request, history=HISTORY, capacity=1000)
    assert "history" in layer.extensions
    layer.flush()
    yield layer
    layer.flush()
    layer.close()


def drain(layer, channels):
    got = []
    while True:
        channel, message = layer.receive(channels)
        if channel is None:
            return got
        got.append((channel, message))


def test_offsets_and_epochs_per_group(hlayer):
    hlayer.group_add("chat-a", "ho.inbox!one")
    hlayer.group_add("chat-a", "ho.inbox!two")
    hlayer.group_add("chat-b", "ho.inbox!one")
    hlayer.group_add("plain", "ho.inbox!one")
    for n in range(3):
        hlayer.send_group("chat-a", {"text": f"a{n}"})
    hlayer.send_group("chat-b", {"text": "b0"})
    hlayer.send_group("plain", {"text": "p0"})
    got = drain(hlayer, ["ho.inbox!"])
    one = [m for channel, m in got if channel == "ho.inbox!one"]
    two = [m for channel, m in got if channel == "ho.inbox!two"]
    assert [m["history"]["offset"] for m in one if m.get("text", "").startswith("a")] == [1, 2, 3]
    assert [(m["text"], m["history"]["offset"]) for m in two] == [("a0", 1), ("a1", 2), ("a2", 3)]
    assert [m["history"]["offset"] for m in one if m["text"] == "b0"] == [1]
    assert [m for m in one if m["text"] == "p0"] == [{"text": "p0"}]  # no history: unchanged
    epochs_a = {m["history"]["epoch"] for m in one + two if "history" in m and m["history"]["group"] == "chat-a"}
    epoch_b = next(m["history"]["epoch"] for m in one if m["text"] == "b0")
    assert len(epochs_a) == 1 and isinstance(epoch_b, str) and epochs_a != {epoch_b}
    # Every member got its own dict: changing one does not change another.
    two[0]["history"]["offset"] = 99
    assert one[0]["history"]["offset"] == 1


def test_fresh_join_is_told_the_position(hlayer):
    hlayer.send_group("chat-c", {"text": "before anyone"})
    assert hlayer.group_join("chat-c", "hj.inbox!x") is True
    hlayer.send_group("chat-c", {"text": "live"})
    (_, notice), (_, live) = drain(hlayer, ["hj.inbox!"])
    assert notice["history"]["recovered"] is None and notice["history"]["offset"] == 1
    assert live["text"] == "live" and live["history"]["offset"] == 2
    assert live["history"]["epoch"] == notice["history"]["epoch"]
    assert "replayed" not in live["history"]


def test_resume_replays_what_was_missed(hlayer):
    hlayer.group_join("chat-r", "hr.inbox!x")
    for n in range(4):
        hlayer.send_group("chat-r", {"text": f"m{n + 1}"})
    got = drain(hlayer, ["hr.inbox!"])
    epoch = got[0][1]["history"]["epoch"]
    hlayer.group_discard("chat-r", "hr.inbox!x")
    hlayer.send_group("chat-r", {"text": "m5"})  # missed while away
    # Seen up to 2: a new connection resumes and gets 3, 4, 5, then live 6.
    assert hlayer.group_join("chat-r", "hr.inbox!y", since=(epoch, 2)) is True
    hlayer.send_group("chat-r", {"text": "m6"})
    got = drain(hlayer, ["hr.inbox!"])
    notice = got[0][1]["history"]
    assert notice == {"group": "chat-r", "epoch": epoch, "offset": 5, "recovered": True}
    rest = [(m["text"], m["history"]["offset"], m["history"].get("replayed", False)) for _, m in got[1:]]
    assert rest == [("m3", 3, True), ("m4", 4, True), ("m5", 5, True), ("m6", 6, False)]
    assert {channel for channel, _ in got} == {"hr.inbox!y"}


def test_resume_at_the_latest_offset_replays_nothing(hlayer):
    hlayer.send_group("chat-n", {"text": "one"})
    hlayer.group_join("chat-n", "hn.inbox!a")
    epoch = drain(hlayer, ["hn.inbox!"])[0][1]["history"]["epoch"]
    assert hlayer.group_join("chat-n", "hn.inbox!b", since=(epoch, 1)) is True
    assert [m["history"]["recovered"] for _, m in drain(hlayer, ["hn.inbox!"])] == [True]


def test_gap_older_than_the_history_is_not_recovered(hlayer):
    hlayer.group_join("chat-s", "hs.inbox!a")
    epoch = drain(hlayer, ["hs.inbox!"])[0][1]["history"]["epoch"]
    for n in range(8):  # size 5: offsets 1-3 are gone
        hlayer.send_group("chat-s", {"n": n})
    assert hlayer.group_join("chat-s", "hs.inbox!b", since=(epoch, 2)) is False
    got = [m for channel, m in drain(hlayer, ["hs.inbox!"]) if channel == "hs.inbox!b"]
    assert got == [{"history": {"group": "chat-s", "epoch": epoch, "offset": 8, "recovered": False}}]
    # Offset 3 onwards is still held: that gap is covered.
    assert hlayer.group_join("chat-s", "hs.inbox!c", since=(epoch, 3)) is True
    got = [m for channel, m in drain(hlayer, ["hs.inbox!"]) if channel == "hs.inbox!c"]
    assert [m["history"]["offset"] for m in got[1:]] == [4, 5, 6, 7, 8]


def test_other_epoch_or_future_offset_is_not_recovered(hlayer):
    hlayer.send_group("chat-e", {"n": 1})
    assert hlayer.group_join("chat-e", "he.inbox!a", since=("someother", 0)) is False
    epoch = drain(hlayer, ["he.inbox!"])[0][1]["history"]["epoch"]
    assert hlayer.group_join("chat-e", "he.inbox!b", since=(epoch, 7)) is False
    assert hlayer.group_join("chat-e", "he.inbox!c", since=(epoch, 0)) is True


def test_history_expires_after_its_ttl(hlayer):
    hlayer.group_join("short-t", "ht.inbox!a")
    hlayer.send_group("short-t", {"n": 1})
    epoch = drain(hlayer, ["ht.inbox!"])[0][1]["history"]["epoch"]
    time.sleep(1.3)  # the history's ttl is 1 s: time passing is what is tested
    assert hlayer.group_join("short-t", "ht.inbox!b", since=(epoch, 0)) is False
    assert hlayer.group_join("short-t", "ht.inbox!c", since=(epoch, 1)) is True  # nothing missed


def test_flush_starts_a_new_epoch(hlayer):
    hlayer.group_join("chat-f", "hf.inbox!a")
    hlayer.send_group("chat-f", {"n": 1})
    hlayer.send_group("chat-f", {"n": 2})
    old = drain(hlayer, ["hf.inbox!"])[-1][1]["history"]
    hlayer.flush()
    hlayer.group_join("chat-f", "hf.inbox!a")
    hlayer.send_group("chat-f", {"n": 3})
    new = drain(hlayer, ["hf.inbox!"])[-1][1]["history"]
    assert new["offset"] == 1 and new["epoch"] != old["epoch"]
    assert hlayer.group_join("chat-f", "hf.inbox!b", since=(old["epoch"], old["offset"])) is False


def test_join_and_replay_are_one_step_under_concurrent_sends(hlayer):
    """A join resuming mid-stream gets every later offset once: no gap, no duplicate."""
    total = 300
    hlayer.group_join("big-z", "hz.inbox!first")
    epoch = drain(hlayer, ["hz.inbox!"])[0][1]["history"]["epoch"]
    sent = threading.Event()

    def sender():
        for n in range(total):
            hlayer.send_group("big-z", {"n": n})
            if n == 20:
                sent.set()

    thread = threading.Thread(target=sender)
    thread.start()
    assert sent.wait(30)
    # Resume from 18 while sends go on: 19 onwards come once, replayed or live.
    assert hlayer.group_join("big-z", "hz.inbox!late", since=(epoch, 18)) is True
    thread.join(60)
    got = [m for channel, m in drain(hlayer, ["hz.inbox!"]) if channel == "hz.inbox!late"]
    # With several shards a live message may come before the join's notice
    # (the channel's list is on another shard): offsets put them in order.
    (notice,) = [m["history"] for m in got if "recovered" in m["history"]]
    assert notice["recovered"] is True
    messages = [m["history"] for m in got if "recovered" not in m["history"]]
    assert sorted(m["offset"] for m in messages) == list(range(19, total + 1))
    replayed = [m["offset"] for m in messages if m.get("replayed")]
    assert replayed == list(range(19, notice["offset"] + 1))


def test_async_join(hlayer):
    async def main():
        await hlayer.asend_group("chat-y", {"n": 1})
        joined = await hlayer.agroup_join("chat-y", "hy.inbox!a", since=("nope", 0))
        return joined, await hlayer.areceive(["hy.inbox!"])

    joined, (channel, message) = asyncio.run(main())
    assert joined is False and channel == "hy.inbox!a" and message["history"]["recovered"] is False


def test_join_without_history_is_group_add(hlayer):
    assert hlayer.group_join("plain-group", "hp.inbox!a", since=("x", 1)) is None
    assert hlayer.group_channels("plain-group") == ["hp.inbox!a"]
    assert drain(hlayer, ["hp.inbox!"]) == []


def test_bad_since_is_refused(hlayer):
    with pytest.raises(ValueError, match="since must be None or"):
        hlayer.group_join("chat-q", "hq.inbox!a", since=("epoch", -1))


@pytest.mark.parametrize(
    ("history", "error"),
    [
        (["chat-*"], "history must be a dict"),
        ({"chat-*": 100}, r"history\['chat-\*'\] must be a dict"),
        ({"chat-*": {"size": 10}}, "missing: 'ttl'"),
        ({"chat-*": {"size": 10, "ttl": 5, "limit": 3}}, "unknown: 'limit'"),
        ({"chat-*": {"size": 0, "ttl": 5}}, r"\['size'\] must be a whole number"),
        ({"chat-*": {"size": 10, "ttl": "5"}}, r"\['ttl'\] must be a positive number"),
    ],
)
def test_history_config_errors(history, error):
    with pytest.raises((TypeError, ValueError), match=error):
        InMemoryChannelLayer(history=history)
    with pytest.raises(ConfigError, match=error):
        build_channel_layer("paas_channels.layers.RedisChannelLayer", {"history": history})
