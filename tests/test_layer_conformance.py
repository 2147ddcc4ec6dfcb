"""Channel-layer conformance, from the ASGI 1.0 channel-layer rules.

Every backend in ``tests/layer_backends.py`` runs every test here.  Normal
channels may be spread over shards, so ordering is only asserted where the
spec promises it for every layer: within one process-specific (``!``) or
single-reader (``?``) channel.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from paas_channels.layers import ChannelFull, MessageTooLarge

# Expiry tests wait this long past a 1-second expiry.
EXPIRY = 1
PAST_EXPIRY = 1.6


def drain(layer, channels, limit=10_000):
    """Every message waiting on ``channels``, as (channel, message) pairs."""
    got = []
    for _ in range(limit):
        channel, message = layer.receive(channels)
        if channel is None:
            return got
        got.append((channel, message))
    raise AssertionError("channel never ran dry")


### Send and receive ###


def test_send_receive(layer):
    layer.send("sr_test", {"value": "blue"})
    assert layer.receive(["sr_test"]) == ("sr_test", {"value": "blue"})
    assert layer.receive(["sr_test"]) == (None, None)


def test_receive_empty_returns_none(layer):
    assert layer.receive(["nothing.here"]) == (None, None)
    assert layer.receive(["nothing.here", "prefix!"]) == (None, None)


def test_receive_from_several_channels(layer):
    layer.send("multi.a", {"n": 1})
    layer.send("multi.b", {"n": 2})
    got = drain(layer, ["multi.a", "multi.b", "multi.c"])
    assert sorted(got, key=lambda pair: pair[0]) == [("multi.a", {"n": 1}), ("multi.b", {"n": 2})]


def test_every_message_delivered_once(layer):
    for n in range(50):
        layer.send("once", {"n": n})
    got = drain(layer, ["once"])
    assert sorted(message["n"] for _, message in got) == list(range(50))


def test_process_specific_channels_received_by_prefix(layer):
    layer.send("inbox.one!conn1", {"to": "conn1"})
    layer.send("inbox.one!conn2", {"to": "conn2"})
    layer.send("inbox.two!conn3", {"to": "conn3"})
    # Received by prefix, reported under the full name, in send order.
    assert layer.receive(["inbox.one!"]) == ("inbox.one!conn1", {"to": "conn1"})
    assert layer.receive(["inbox.one!"]) == ("inbox.one!conn2", {"to": "conn2"})
    assert layer.receive(["inbox.one!"]) == (None, None)
    assert layer.receive(["inbox.two!"]) == ("inbox.two!conn3", {"to": "conn3"})


def test_process_specific_channel_is_fifo(layer):
    for n in range(30):
        layer.send("fifo.inbox!c", {"n": n})
    got = drain(layer, ["fifo.inbox!"])
    assert [message["n"] for _, message in got] == list(range(30))


def test_receive_on_full_process_specific_name_rejected(layer):
    with pytest.raises(ValueError, match="prefix 'inbox!'"):
        layer.receive(["inbox!conn1"])


def test_new_channel_single_reader(layer):
    first = layer.new_channel("body?")
    second = layer.new_channel("body?")
    assert first.startswith("body?") and len(first) > len("body?")
    assert first != second
    for n in range(5):
        layer.send(first, {"n": n})
    assert [m["n"] for _, m in drain(layer, [first])] == list(range(5))
    assert layer.receive([second]) == (None, None)


def test_new_channel_process_specific(layer):
    name = layer.new_channel("daphne.inbox!")
    assert name.startswith("daphne.inbox!") and len(name) > len("daphne.inbox!")
    layer.send(name, {"ok": True})
    assert layer.receive(["daphne.inbox!"]) == (name, {"ok": True})


@pytest.mark.parametrize("pattern", ["plain", "two?marks?", "mid?dle", "bad name?", "", "ü?"])
def test_new_channel_bad_pattern_rejected(layer, pattern):
    with pytest.raises(ValueError):
        layer.new_channel(pattern)


def test_new_channel_non_str_rejected(layer):
    with pytest.raises(TypeError):
        layer.new_channel(42)


def test_byte_and_unicode_round_trip(layer):
    message = {
        "bytes": b"\x00\xff binary \x80",
        "text": "unicode ✓ ünïcødé 漢字",
        "empty_bytes": b"",
        "empty_text": "",
        "int": -(2**62),
        "float": 3.25,
        "true": True,
        "none": None,
        "list": [b"a", "a", 1, [2, {"deep": b"x"}]],
        "dict": {"k": {"nested": "v"}},
    }
    layer.send("round.trip", message)
    channel, received = layer.receive(["round.trip"])
    assert received == message
    assert isinstance(received["bytes"], bytes)
    assert isinstance(received["text"], str)
    assert isinstance(received["list"][0], bytes) and isinstance(received["list"][1], str)
    assert received["true"] is True and received["none"] is None


def test_message_changed_after_send_is_not_changed_for_receiver(layer):
    message = {"items": [1, 2], "inner": {"a": "b"}}
    layer.send("mutate", message)
    message["items"].append(3)
    message["inner"]["a"] = "changed"
    message["new"] = True
    assert layer.receive(["mutate"]) == ("mutate", {"items": [1, 2], "inner": {"a": "b"}})


### Bad input ###


@pytest.mark.parametrize(
    "name",
    ["", "has space", "slash/name", "ünicode", "a" * 100, "two!bangs!", "mixed?and!", "!leading"],
)
def test_invalid_channel_names_rejected(layer, name):
    with pytest.raises(ValueError, match="invalid channel name"):
        layer.send(name, {"a": 1})


def test_non_str_channel_name_rejected(layer):
    with pytest.raises(TypeError, match="channel name must be a str"):
        layer.send(b"bytes-name", {"a": 1})
    with pytest.raises(TypeError, match="list of channel names"):
        layer.receive("just-a-string")


@pytest.mark.parametrize("name", ["", "has space", "with!bang", "with?q", "g" * 100])
def test_invalid_group_names_rejected(layer, name):
    with pytest.raises(ValueError, match="invalid group name"):
        layer.group_add(name, "chan")


@pytest.mark.parametrize("message", [None, "text", b"bytes", [1, 2], 42])
def test_non_dict_message_rejected(layer, message):
    with pytest.raises(TypeError, match="message must be a dict"):
        layer.send("chan", message)


@pytest.mark.parametrize("value", [{1, 2}, object(), 1j, frozenset()])
def test_unsupported_value_types_rejected(layer, value):
    with pytest.raises(TypeError, match="message values must be"):
        layer.send("chan", {"value": value})
    assert layer.receive(["chan"]) == (None, None)


@pytest.mark.parametrize("message, key", [
    ({1: "x"}, "1"),
    ({"outer": {2: "y"}}, "2"),
    ({"list": [{"ok": 1}, {b"k": "v"}]}, "b'k'"),
    ({"deep": [[{None: 1}]]}, "None"),
])
def test_non_str_keys_rejected_naming_the_key(layer, message, key):
    # ASGI 1.0: message keys are unicode strings.  msgpack would store others as they are.
    with pytest.raises(TypeError, match=f"key {key}") as raised:
        layer.send("chan", message)
    assert "must be str" in str(raised.value)
    with pytest.raises(TypeError, match="must be str"):
        layer.send_group("g", message)
    assert layer.receive(["chan"]) == (None, None)


def test_layer_exposes_the_asgi_exceptions(make_layer):
    # ASGI 1.0: `layer.ChannelFull` and `layer.MessageTooLarge`, so callers need no backend import.
    layer = make_layer(capacity=1)
    assert layer.ChannelFull is ChannelFull and layer.MessageTooLarge is MessageTooLarge
    layer.send("one", {"n": 1})
    with pytest.raises(layer.ChannelFull):
        layer.send("one", {"n": 2})
    with pytest.raises(layer.MessageTooLarge):
        layer.send("two", {"body": b"x" * (1024 * 1024)})


def test_oversized_message_rejected(layer):
    with pytest.raises(MessageTooLarge, match="limit is 1,048,576"):
        layer.send("big", {"body": b"x" * (1024 * 1024)})
    assert layer.receive(["big"]) == (None, None)
    # Just under the limit still goes through.
    layer.send("big", {"body": b"x" * (1024 * 1024 - 100)})
    assert len(layer.receive(["big"])[1]["body"]) == 1024 * 1024 - 100


### Groups ###


def test_group_send(layer):
    layer.group_add("gr_test", "gr_one")
    layer.group_add("gr_test", "gr_two")
    layer.group_add("gr_test", "gr_three")
    layer.group_discard("gr_test", "gr_two")
    layer.send_group("gr_test", {"value": "orange"})
    assert layer.receive(["gr_one"]) == ("gr_one", {"value": "orange"})
    assert layer.receive(["gr_two"]) == (None, None)
    assert layer.receive(["gr_three"]) == ("gr_three", {"value": "orange"})


def test_group_send_follows_membership_changes(make_layer):
    """Each send reaches the members of that moment (a layer may cache the membership)."""
    layer = make_layer(group_expiry=EXPIRY)
    layer.group_add("moving", "mv.inbox!a")
    layer.group_add("moving", "mv.inbox!b")
    layer.send_group("moving", {"n": 1})
    layer.group_add("moving", "mv.inbox!c")
    layer.send_group("moving", {"n": 2})
    layer.group_discard("moving", "mv.inbox!a")
    layer.send_group("moving", {"n": 3})
    got = sorted((message["n"], channel) for channel, message in drain(layer, ["mv.inbox!"]))
    assert got == [(1, "mv.inbox!a"), (1, "mv.inbox!b"), (2, "mv.inbox!a"), (2, "mv.inbox!b"), (2, "mv.inbox!c"),
                   (3, "mv.inbox!b"), (3, "mv.inbox!c")]
    time.sleep(0.7)
    layer.group_add("moving", "mv.inbox!b")  # renewed: outlives the others
    time.sleep(0.7)
    layer.send_group("moving", {"n": 4})
    assert drain(layer, ["mv.inbox!"]) == [("mv.inbox!b", {"n": 4})]


def test_group_membership(layer):
    assert layer.group_channels("members") == []
    layer.group_add("members", "m.one")
    layer.group_add("members", "m.two")
    layer.group_add("members", "m.two")  # adding twice is one membership
    layer.group_add("members", "inbox!x")
    assert sorted(layer.group_channels("members")) == ["inbox!x", "m.one", "m.two"]
    layer.group_discard("members", "m.one")
    layer.group_discard("members", "never.added")
    assert sorted(layer.group_channels("members")) == ["inbox!x", "m.two"]


def test_group_send_to_process_specific_members(layer):
    for n in range(10):
        layer.group_add("room", f"gs.inbox!c{n}")
    layer.group_add("room", "gs.other!c0")
    layer.send_group("room", {"text": "hi"})
    got = drain(layer, ["gs.inbox!"])
    assert sorted(channel for channel, _ in got) == sorted(f"gs.inbox!c{n}" for n in range(10))
    assert all(message == {"text": "hi"} for _, message in got)
    assert layer.receive(["gs.other!"]) == ("gs.other!c0", {"text": "hi"})


def test_send_group_to_empty_group_is_noop(layer):
    layer.send_group("nobody", {"a": 1})


def test_send_group_never_raises_channel_full(make_layer):
    layer = make_layer(capacity=1)
    layer.group_add("full", "full.one")
    layer.group_add("full", "full.two")
    layer.send("full.one", {"first": True})
    layer.send_group("full", {"group": True})  # full.one is at capacity
    assert layer.receive(["full.one"]) == ("full.one", {"first": True})
    assert layer.receive(["full.one"]) == (None, None)
    assert layer.receive(["full.two"]) == ("full.two", {"group": True})
    assert layer.channel_statistics("full.one")["channel_full_count"] == 1
    assert layer.global_statistics()["channel_full_count"] >= 1


### Flush ###


def test_flush_clears_channels_and_groups(layer):
    layer.send("fl.one", {"a": 1})
    layer.send("fl.inbox!x", {"a": 2})
    layer.group_add("fl.group", "fl.one")
    layer.flush()
    assert layer.receive(["fl.one", "fl.inbox!"]) == (None, None)
    assert layer.group_channels("fl.group") == []
    layer.send_group("fl.group", {"a": 3})
    assert layer.receive(["fl.one"]) == (None, None)


### Expiry ###


def test_message_expiry(make_layer):
    layer = make_layer(expiry=EXPIRY)
    layer.send("exp.normal", {"a": 1})
    layer.send("exp.inbox!x", {"a": 2})
    layer.send("exp.kept", {"a": 3})
    assert layer.receive(["exp.kept"]) == ("exp.kept", {"a": 3})
    time.sleep(PAST_EXPIRY)
    assert layer.receive(["exp.normal", "exp.inbox!"]) == (None, None)
    # An expired message frees its capacity.
    layer.send("exp.normal", {"a": 4})
    assert layer.receive(["exp.normal"]) == ("exp.normal", {"a": 4})


def test_group_expiry(make_layer):
    layer = make_layer(group_expiry=EXPIRY)
    layer.group_add("gexp", "gexp.one")
    time.sleep(PAST_EXPIRY)
    layer.group_add("gexp", "gexp.two")
    assert layer.group_channels("gexp") == ["gexp.two"]
    layer.send_group("gexp", {"a": 1})
    assert layer.receive(["gexp.one"]) == (None, None)
    assert layer.receive(["gexp.two"]) == ("gexp.two", {"a": 1})


def test_group_add_refreshes_membership(make_layer):
    layer = make_layer(group_expiry=EXPIRY)
    layer.group_add("refresh", "refresh.one")
    time.sleep(0.7)
    layer.group_add("refresh", "refresh.one")
    time.sleep(0.7)
    assert layer.group_channels("refresh") == ["refresh.one"]


def test_channel_dropped_from_groups_when_its_message_expires(make_layer):
    layer = make_layer(expiry=EXPIRY)
    layer.group_add("drop", "drop.dead!conn")  # nobody reads this inbox
    layer.group_add("drop", "drop.alive!conn")
    layer.send_group("drop", {"n": 1})
    assert layer.receive(["drop.alive!"]) == ("drop.alive!conn", {"n": 1})
    time.sleep(PAST_EXPIRY)
    layer.send_group("drop", {"n": 2})
    assert layer.group_channels("drop") == ["drop.alive!conn"]
    assert layer.receive(["drop.dead!"]) == (None, None)
    assert layer.receive(["drop.alive!"]) == ("drop.alive!conn", {"n": 2})


### Capacity ###


def test_capacity_on_normal_channel(make_layer):
    layer = make_layer(capacity=6)
    for n in range(6):
        layer.send("cap", {"n": n})
    with pytest.raises(ChannelFull):
        layer.send("cap", {"n": 6})
    assert layer.channel_statistics("cap")["channel_full_count"] == 1
    layer.receive(["cap"])
    layer.send("cap", {"n": 7})  # room again after one receive
    assert len(drain(layer, ["cap"])) == 6


def test_channel_capacity_globs(make_layer):
    layer = make_layer(capacity=100, channel_capacity={"http.request": 6, "websocket.send*": 3})
    assert layer.get_capacity("http.request") == 6
    assert layer.get_capacity("websocket.send!abc") == 3
    assert layer.get_capacity("other") == 100
    for n in range(3):
        layer.send("websocket.send!c1", {"n": n})
    with pytest.raises(ChannelFull):
        layer.send("websocket.send!c2", {"n": 3})
    for n in range(6):
        layer.send("http.request", {"n": n})
    with pytest.raises(ChannelFull):
        layer.send("http.request", {"n": 6})
    for n in range(20):
        layer.send("other", {"n": n})


def test_capacity_shared_by_all_channels_of_one_prefix(make_layer):
    layer = make_layer(capacity=3)
    layer.send("shared.inbox!a", {"n": 1})
    layer.send("shared.inbox!b", {"n": 2})
    layer.send("shared.inbox!c", {"n": 3})
    with pytest.raises(ChannelFull):
        layer.send("shared.inbox!d", {"n": 4})
    layer.send("other.inbox!a", {"n": 5})  # another prefix has its own capacity


def test_bad_capacity_config_rejected(make_layer):
    with pytest.raises(ValueError, match="capacity must be a positive integer"):
        make_layer(capacity=0)
    with pytest.raises(ValueError, match="expiry must be a positive number"):
        make_layer(expiry=-1)
    with pytest.raises(TypeError, match="channel_capacity must be a dict"):
        make_layer(channel_capacity=[("a", 1)])


### Statistics ###


def test_statistics(layer):
    base = layer.global_statistics()["messages_count"]
    for n in range(3):
        layer.send("stats.chan", {"n": n})
    stats = layer.channel_statistics("stats.chan")
    assert stats["messages_count"] == 3
    assert stats["messages_pending"] == 3
    assert stats["channel_full_count"] == 0
    assert stats["messages_max_age"] >= 0
    layer.receive(["stats.chan"])
    assert layer.channel_statistics("stats.chan")["messages_pending"] == 2
    assert layer.global_statistics()["messages_count"] == base + 3


def test_extensions(layer):
    assert {"groups", "flush", "statistics"} <= set(layer.extensions)


### Blocking receive and concurrency ###


def test_blocking_receive_wakes_on_send(make_layer):
    layer = make_layer()
    threading.Timer(0.2, layer.send, args=("block.chan", {"late": True})).start()
    started = time.monotonic()
    assert layer.receive(["block.chan"], block=True) == ("block.chan", {"late": True})
    assert time.monotonic() - started >= 0.15


def test_blocking_receive_returns_none_when_nothing_comes(layer):
    assert layer.receive(["quiet.chan"], block=True) == (None, None)


def test_concurrent_threads_deliver_each_message_once(make_layer):
    layer = make_layer(capacity=10_000)
    senders, per_sender = 4, 100
    received, lock = [], threading.Lock()
    done = threading.Event()

    def send(index):
        for n in range(per_sender):
            layer.send("conc", {"id": f"{index}-{n}"})

    def receive():
        while not done.is_set():
            channel, message = layer.receive(["conc"], block=True)
            if channel is not None:
                with lock:
                    received.append(message["id"])

    receivers = [threading.Thread(target=receive) for _ in range(3)]
    for thread in receivers:
        thread.start()
    send_threads = [threading.Thread(target=send, args=(i,)) for i in range(senders)]
    for thread in send_threads:
        thread.start()
    for thread in send_threads:
        thread.join()
    deadline = time.monotonic() + 30
    while len(received) < senders * per_sender and time.monotonic() < deadline:
        time.sleep(0.05)
    done.set()
    for thread in receivers:
        thread.join()
    assert sorted(received) == sorted(f"{i}-{n}" for i in range(senders) for n in range(per_sender))


### Async API ###


def test_async_methods_do_the_same_as_sync(layer):
    async def scenario():
        await layer.asend("async.chan", {"bytes": b"\x01", "text": "t"})
        assert await layer.areceive(["async.chan"]) == ("async.chan", {"bytes": b"\x01", "text": "t"})
        assert await layer.areceive(["async.chan"]) == (None, None)

        name = await layer.anew_channel("async.inbox!")
        await layer.agroup_add("async.group", name)
        await layer.agroup_add("async.group", "async.other")
        await layer.agroup_discard("async.group", "async.other")
        await layer.asend_group("async.group", {"g": 1})
        assert await layer.areceive(["async.inbox!"]) == (name, {"g": 1})
        assert await layer.areceive(["async.other"]) == (None, None)

        await layer.asend("async.flushed", {"a": 1})
        await layer.aflush()
        assert await layer.areceive(["async.flushed"]) == (None, None)

        with pytest.raises(TypeError):
            await layer.asend("async.chan", "not a dict")
        with pytest.raises(ValueError):
            await layer.areceive(["async.inbox!full"])

    asyncio.run(scenario())
    # The sync side sees what the async side did.
    asyncio.run(layer.asend("cross", {"from": "async"}))
    assert layer.receive(["cross"]) == ("cross", {"from": "async"})


def test_async_capacity_raises_channel_full(make_layer):
    layer = make_layer(capacity=1)

    async def scenario():
        await layer.asend("acap", {"n": 1})
        with pytest.raises(ChannelFull):
            await layer.asend("acap", {"n": 2})

    asyncio.run(scenario())


def test_async_blocking_receive_woken_by_thread_send(layer):
    async def scenario():
        threading.Timer(0.2, layer.send, args=("athread.chan", {"from": "thread"})).start()
        return await layer.areceive(["athread.chan"], block=True)

    assert asyncio.run(scenario()) == ("athread.chan", {"from": "thread"})


def test_async_blocking_receive_does_not_block_the_loop(layer):
    async def scenario():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        result = await layer.areceive(["never.sent"], block=True)
        task.cancel()
        return result, ticks

    result, ticks = asyncio.run(scenario())
    assert result == (None, None)
    assert ticks >= 10


### Worker heartbeats (paas-channels extension) ###


def test_heartbeats_visible_until_ttl(layer):
    assert layer.heartbeats() == {}
    layer.heartbeat("host-1.42", {"pid": 42, "channels": ["http.request"], "busy": 0, "done": 7}, ttl=1)
    layer.heartbeat("host-1.43", {"pid": 43, "channels": [], "busy": 1, "done": 0}, ttl=30)
    beats = layer.heartbeats()
    assert beats["host-1.42"] == {"pid": 42, "channels": ["http.request"], "busy": 0, "done": 7}
    assert set(beats) == {"host-1.42", "host-1.43"}
    layer.heartbeat("host-1.43", {"pid": 43, "channels": [], "busy": 0, "done": 1}, ttl=30)
    time.sleep(PAST_EXPIRY)
    assert layer.heartbeats() == {"host-1.43": {"pid": 43, "channels": [], "busy": 0, "done": 1}}
    assert asyncio.run(layer.aheartbeats()) == layer.heartbeats()
