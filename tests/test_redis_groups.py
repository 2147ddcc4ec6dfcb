"""Group sends on the Redis layer: one stored message per member inbox."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis

from paas_channels.layers.redis import RedisChannelLayer

pytestmark = pytest.mark.redis  # every test here runs on a private Redis


@pytest.fixture
def layer_and_clients(redis_shard_servers):
    urls = [server.url for server in redis_shard_servers]
    layer = RedisChannelLayer(hosts=urls, prefix="gr" + uuid.uuid4().hex[:10])
    clients = [redis.Redis.from_url(url) for url in urls]
    yield layer, clients
    layer.flush()
    layer.close()
    for client in clients:
        client.close()


def command_calls(clients, *names) -> int:
    """Calls of these commands over all servers (a script's own commands count under their names)."""
    total = 0
    for client in clients:
        stats = client.info("commandstats")
        total += sum(stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in names)
    return total


def test_group_send_to_5000_members_of_one_inbox(layer_and_clients):
    layer, clients = layer_and_clients
    members = [f"daphne.big!ws{n}" for n in range(5000)]
    for member in members:
        layer.group_add("everyone", member)
    layer.group_add("everyone", "daphne.small!ws0")

    for inbox in ("daphne.big!", "daphne.small!"):  # the shards have loaded the scripts
        layer.group_add("warm", inbox + "warm")
    layer.send_group("warm", {})
    for inbox in ("daphne.big!", "daphne.small!"):
        assert layer.receive([inbox])[0] == inbox + "warm"
    scripts_before = command_calls(clients, "evalsha", "eval")
    writes_before = command_calls(clients, "rpush")
    layer.send_group("everyone", {"text": "hello all"})
    # One write per member inbox; one script to read the group and one per shard written to.
    assert command_calls(clients, "rpush") - writes_before == 2
    assert command_calls(clients, "evalsha", "eval") - scripts_before <= 3

    inbox_key = f"{layer.prefix}:c:daphne.big!"
    assert sum(client.llen(inbox_key) for client in clients) == 1  # ONE stored message for 5000 members
    got = {}
    for _ in range(5000):
        channel, message = layer.receive(["daphne.big!"])
        assert message == {"text": "hello all"}
        got[channel] = got.get(channel, 0) + 1
    assert got == {member: 1 for member in members}
    assert layer.receive(["daphne.big!"]) == (None, None)
    assert layer.receive(["daphne.small!"]) == ("daphne.small!ws0", {"text": "hello all"})


def test_async_group_send_to_many_members(layer_and_clients):
    layer, _ = layer_and_clients

    async def scenario():
        for n in range(300):
            await layer.agroup_add("async.room", f"iface.a!c{n}")
        await layer.asend_group("async.room", {"n": 1})
        seen = set()
        for _ in range(300):
            channel, message = await layer.areceive(["iface.a!"], block=True)
            assert message == {"n": 1}
            seen.add(channel)
        return seen

    assert asyncio.run(scenario()) == {f"iface.a!c{n}" for n in range(300)}


def test_full_inbox_is_skipped_and_counted(layer_and_clients, redis_shard_servers):
    layer = RedisChannelLayer(hosts=[s.url for s in redis_shard_servers], prefix=layer_and_clients[0].prefix, capacity=2)
    try:
        for n in range(3):
            layer.group_add("busy", f"slow.inbox!c{n}")
        layer.group_add("busy", "fast.inbox!c0")
        layer.send("slow.inbox!other", {"fill": 1})
        layer.send("slow.inbox!other", {"fill": 2})
        layer.send_group("busy", {"g": 1})  # never raises
        assert layer.channel_statistics("slow.inbox!x")["channel_full_count"] == 1
        assert layer.global_statistics()["channel_full_count"] == 1
        assert layer.receive(["fast.inbox!"]) == ("fast.inbox!c0", {"g": 1})
        assert [layer.receive(["slow.inbox!"])[1] for _ in range(3)] == [{"fill": 1}, {"fill": 2}, None]
        # Skipping a full member does not drop it from the group.
        assert len(layer.group_channels("busy")) == 4
    finally:
        layer.close()


def test_group_message_on_inbox_expires_for_members_not_yet_handed_out(layer_and_clients, redis_shard_servers):
    import time

    layer = RedisChannelLayer(hosts=[s.url for s in redis_shard_servers], prefix=layer_and_clients[0].prefix, expiry=1)
    try:
        for n in range(3):
            layer.group_add("late", f"late.inbox!c{n}")
        layer.send_group("late", {"n": 1})
        assert layer.receive(["late.inbox!"])[0] == "late.inbox!c0"
        time.sleep(1.5)
        assert layer.receive(["late.inbox!"]) == (None, None)
    finally:
        layer.close()


@pytest.mark.parametrize(
    "message",
    [
        {"text": "hi", "bytes": b"\x00", "n": 1, "x": 1.5, "ok": True, "none": None},  # copied
        {"text": "hi", "nested": {"list": [1, 2]}, "items": [{"a": 1}]},  # decoded per member
    ],
    ids=["flat", "nested"],
)
def test_members_of_one_inbox_get_independent_messages(layer_and_clients, message):
    layer, _ = layer_and_clients
    for n in range(3):
        layer.group_add("room", f"daphne.one!ws{n}")
    layer.send_group("room", message)
    first_channel, first = layer.receive(["daphne.one!"])
    assert first == message
    first["text"] = "changed"
    first["added"] = 1
    for value in first.values():
        if isinstance(value, dict):
            value["list"].append(3)
        elif isinstance(value, list):
            value[0]["a"] = 2
    rest = [layer.receive(["daphne.one!"]) for _ in range(2)]
    assert sorted([first_channel] + [channel for channel, _ in rest]) == [f"daphne.one!ws{n}" for n in range(3)]
    for _, other in rest:
        assert other == message  # untouched by what the first receiver did
        other["text"] = "again"
    assert [m for _, m in rest][0] is not [m for _, m in rest][1]


def test_receive_takes_any_iterable_while_group_messages_are_held(layer_and_clients):
    layer, _ = layer_and_clients
    layer.group_add("iter", "daphne.it!a")
    layer.group_add("iter", "daphne.it!b")
    layer.send_group("iter", {"n": 1})
    layer.send("plain.it", {"n": 2})
    assert layer.receive(name for name in ["daphne.it!"])[1] == {"n": 1}  # the other one is now held
    # Held messages for another inbox: the generator is still read for Redis.
    assert layer.receive(name for name in ["plain.it"]) == ("plain.it", {"n": 2})
    assert layer.receive(iter(["daphne.it!"]))[1] == {"n": 1}
    assert asyncio.run(layer.areceive(name for name in ["daphne.it!"])) == (None, None)
