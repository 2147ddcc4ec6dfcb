"""Sharding of the Redis layer over three private Redis servers.

Placement is checked by looking at each server's keys directly; pickup
latency with a generous bound that still proves there is no shard rotation
(the blocking timeout here is 5 s, asgi_redis rotated shards every 5 s).
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import uuid
import zlib

import pytest
import redis

from paas_channels.layers import ChannelFull
from paas_channels.testing import wait_until
from paas_channels.layers.redis import RedisChannelLayer

pytestmark = pytest.mark.redis  # every test here runs on a private Redis


@pytest.fixture
def shards(redis_shard_servers):
    """(layer on 3 shards, raw clients per server, one-shard layers on the same keys)."""
    prefix = "sh" + uuid.uuid4().hex[:10]
    urls = [server.url for server in redis_shard_servers]
    layer = RedisChannelLayer(hosts=urls, prefix=prefix, blocking_timeout=5)
    singles = [RedisChannelLayer(hosts=[url], prefix=prefix) for url in urls]
    clients = [redis.Redis.from_url(url) for url in urls]
    yield layer, clients, singles
    layer.flush()
    for one in [layer, *singles]:
        one.close()
    for client in clients:
        client.close()


def keys_on(client, prefix):
    return sorted(key.decode() for key in client.scan_iter(match=f"{prefix}:c:*"))


def test_inbox_lives_on_one_predictable_shard(shards):
    layer, clients, _ = shards
    for n in range(12):
        layer.send(f"daphne.inbox7!conn{n}", {"n": n})
    home = zlib.crc32(b"daphne.inbox7!") % 3
    for index, client in enumerate(clients):
        expected = [f"{layer.prefix}:c:daphne.inbox7!"] if index == home else []
        assert keys_on(client, layer.prefix) == expected
    assert clients[home].llen(f"{layer.prefix}:c:daphne.inbox7!") == 12
    # One BLPOP-style read on that shard returns them in order.
    got = [layer.receive(["daphne.inbox7!"])[1]["n"] for _ in range(12)]
    assert got == list(range(12))


def test_single_reader_channel_and_group_on_one_shard(shards):
    layer, clients, _ = shards
    body = layer.new_channel("http.request.body?")
    for n in range(9):
        layer.send(body, {"chunk": n})
    holders = [index for index, client in enumerate(clients) if keys_on(client, layer.prefix)]
    assert holders == [zlib.crc32(body.encode()) % 3]
    layer.group_add("room.42", "x.inbox!a")
    group_holders = [i for i, c in enumerate(clients) if c.exists(f"{layer.prefix}:g:room.42")]
    assert group_holders == [zlib.crc32(b"room.42") % 3]
    assert [layer.receive([body])[1]["chunk"] for _ in range(9)] == list(range(9))


def test_normal_channel_spread_evenly_over_all_shards(shards):
    layer, clients, _ = shards
    for n in range(30):
        layer.send("thumbnail", {"n": n})
    assert [client.llen(f"{layer.prefix}:c:thumbnail") for client in clients] == [10, 10, 10]
    got = []
    while True:
        channel, message = layer.receive(["thumbnail"])
        if channel is None:
            break
        got.append(message["n"])
    assert sorted(got) == list(range(30))


def test_capacity_divided_over_shards(shards, redis_shard_servers):
    layer = RedisChannelLayer(hosts=[s.url for s in redis_shard_servers], prefix=shards[0].prefix, capacity=7)
    try:
        for n in range(7):
            layer.send("capped", {"n": n})
        with pytest.raises(ChannelFull):
            layer.send("capped", {"n": 7})
        # 7 over 3 shards: 3 + 2 + 2, the remainder going to the first shards.
        assert [c.llen(f"{layer.prefix}:c:capped") for c in shards[1]] == [3, 2, 2]
        assert layer.channel_statistics("capped")["channel_full_count"] == 1
    finally:
        layer.close()


@pytest.mark.parametrize("side", ["sync", "async"])
def test_idle_worker_picks_up_from_any_shard_at_once(shards, side):
    layer, _, singles = shards
    latencies = []

    clients = shards[1]

    def send_later(single, n):
        # Once the receiver is blocked on every shard (one BLPOP each).
        wait_until(lambda: all(client.info("clients")["blocked_clients"] >= 1 for client in clients), timeout=10)
        single.send("http.request", {"n": n, "at": time.monotonic()})

    for index, single in enumerate(singles):  # each message on a different shard
        sender = threading.Thread(target=send_later, args=(single, index))
        sender.start()
        if side == "sync":
            channel, message = layer.receive(["websocket.receive", "http.request"], block=True)
        else:
            channel, message = asyncio.run(layer.areceive(["websocket.receive", "http.request"], block=True))
        latencies.append(time.monotonic() - message["at"])
        sender.join()
        assert (channel, message["n"]) == ("http.request", index)
    # Well under the 5 s blocking timeout (and asgi_redis's 5 s rotation).
    assert max(latencies) < 1.0, latencies


@pytest.mark.parametrize("side", ["sync", "async"])
def test_blocking_receive_on_several_full_shards_loses_nothing(shards, side):
    layer, clients, singles = shards
    # One message waiting on every shard: a blocking receive pops on all three
    # at once and must put the two it does not return back.
    for round_ in range(3):
        for index, single in enumerate(singles):
            single.send("jobs", {"shard": index, "round": round_})
    got = []
    for _ in range(9):
        if side == "sync":
            got.append(layer.receive(["jobs"], block=True)[1])
        else:
            got.append(asyncio.run(layer.areceive(["jobs"], block=True))[1])
    assert sorted((m["round"], m["shard"]) for m in got) == [(r, s) for r in range(3) for s in range(3)]
    assert [client.llen(f"{layer.prefix}:c:jobs") for client in clients] == [0, 0, 0]
    assert layer.receive(["jobs"]) == (None, None)


def test_statistics_add_up_over_shards(shards):
    layer, _, singles = shards
    for n in range(6):
        layer.send("counted", {"n": n})
    singles[2].send("counted", {"n": 6})
    stats = layer.channel_statistics("counted")
    assert stats["messages_count"] == 7 and stats["messages_pending"] == 7
    assert layer.global_statistics()["messages_count"] == 7


def test_error_reply_in_a_blocking_receive_leaves_no_connection_open(shards):
    # redis-py connections sit in reference cycles: one left open is closed by
    # the garbage collector, which may warn "unclosed socket" in a later test.
    layer, clients, _ = shards
    gc.collect()
    before = [len(client.client_list()) for client in clients]
    for client in clients:
        client.set(layer.keys.channel("wrongtype"), "not a list")
    with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
        layer.receive(["wrongtype"], block=True)
    layer.close()
    assert [len(client.client_list()) for client in clients] == before
