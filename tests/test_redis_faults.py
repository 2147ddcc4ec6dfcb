"""The Redis layer under faults and bad data: RESP2 servers, a Redis that is
loading or frozen, garbage in the heartbeat hash, secrets in reprs."""

from __future__ import annotations

import asyncio
import os
import signal
import shutil
import subprocess
import uuid

import pytest
import redis

from paas_channels.layers.redis import ChannelLayerConnectionError, RedisChannelLayer
from paas_channels.testing import free_port, stop_process, wait_for_port, wait_until

pytestmark = pytest.mark.redis


def _prefix() -> str:
    return "f" + uuid.uuid4().hex[:10]


def test_heartbeats_on_resp2(redis_server):
    # HGETALL answers a flat list under RESP2 (protocol=2, or redis-py 5-7's default).
    layer = RedisChannelLayer(hosts=[redis_server.url], prefix=_prefix(), protocol=2)
    try:
        layer.heartbeat("w1", {"pid": 1})
        layer.heartbeat("w2", {"pid": 2})
        assert layer.heartbeats() == {"w1": {"pid": 1}, "w2": {"pid": 2}}

        async def beats():
            try:
                return await layer.aheartbeats()
            finally:
                await layer.aclose()

        assert asyncio.run(beats()) == {"w1": {"pid": 1}, "w2": {"pid": 2}}
    finally:
        layer.flush()
        layer.close()


def _redis_server(port: int, directory, *extra: str) -> subprocess.Popen:
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
         "--save", "", "--appendonly", "no", "--loglevel", "warning", *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    wait_for_port(port, process=process)
    return process


@pytest.fixture
def loading_redis(tmp_path):
    """A persistent Redis restarting on an RDB it loads for a few seconds (answering -LOADING meanwhile)."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    process = _redis_server(port, tmp_path, "--enable-debug-command", "local")
    client = redis.Redis(port=port)
    client.execute_command("DEBUG", "POPULATE", 30_000)
    client.save()
    client.close()
    stop_process(process, 10)
    # 30,000 keys at 100 us each: about 3 s of loading, clients answered every 1 KB read.
    process = _redis_server(port, tmp_path, "--key-load-delay", "100", "--loading-process-events-interval-bytes", "1024")
    yield port
    stop_process(process, 10)


def _loading(port: int) -> bool:
    client = redis.Redis(port=port)
    try:
        return client.info("persistence")["loading"] == 1
    finally:
        client.close()


def test_a_loading_redis_is_unreachable_then_recovers(loading_redis):
    port = loading_redis
    layer = RedisChannelLayer(hosts=[f"redis://127.0.0.1:{port}/0"], prefix=_prefix())
    try:
        assert _loading(port), "the test needs Redis still loading here"
        with pytest.raises(ChannelLayerConnectionError, match=f"127.0.0.1:{port}.*loading"):
            layer.send("work", {"n": 1})
        with pytest.raises(ChannelLayerConnectionError, match=f"127.0.0.1:{port}"):
            layer.receive(["work"], block=True)

        async def asend():
            try:
                await layer.asend("work", {"n": 1})
            finally:
                await layer.aclose()

        with pytest.raises(ChannelLayerConnectionError, match=f"127.0.0.1:{port}.*loading"):
            asyncio.run(asend())
        with pytest.raises(ChannelLayerConnectionError, match=f"127.0.0.1:{port}"):
            layer.heartbeats()
        assert _loading(port)

        def sent() -> bool:
            try:
                layer.send("work", {"n": 2})
            except ChannelLayerConnectionError:
                return False
            return True

        assert wait_until(sent, timeout=60), "the layer works again once Redis has loaded"
        assert layer.receive(["work"]) == ("work", {"n": 2})
        asyncio.run(asend())
        assert layer.receive(["work"], block=True) == ("work", {"n": 1})
    finally:
        layer.close()


def test_a_loading_shard_is_skipped_like_a_dead_one(loading_redis, redis_server):
    port = loading_redis
    layer = RedisChannelLayer(hosts=[f"redis://127.0.0.1:{port}/0", redis_server.url], prefix=_prefix())
    try:
        assert _loading(port)
        for n in range(4):  # sends rotate over both shards: each falls back to the healthy one
            layer.send("spread", {"n": n})
        assert _loading(port)
        got = [layer.receive(["spread"], block=True)[1]["n"] for _ in range(4)]
        assert sorted(got) == [0, 1, 2, 3]
    finally:
        layer.close()


@pytest.fixture
def frozen(own_redis_servers):
    """A private Redis and ``freeze(True/False)`` to SIGSTOP / SIGCONT it (a stalled server: no reply, no close)."""
    (server,) = own_redis_servers(1)
    pid = server.process.pid

    def freeze(on: bool) -> None:
        os.kill(pid, signal.SIGSTOP if on else signal.SIGCONT)

    try:
        yield server, freeze
    finally:
        freeze(False)


def test_async_calls_to_a_frozen_redis_fail_instead_of_hanging(frozen):
    server, freeze = frozen
    layer = RedisChannelLayer(hosts=[server.url], prefix=_prefix(), command_timeout=0.5, blocking_timeout=0.5)

    async def main():
        await layer.asend("warm", {"n": 0})  # a pooled connection, then the stall
        assert await layer.areceive(["warm"]) == ("warm", {"n": 0})
        freeze(True)
        for call in (layer.asend("work", {"n": 1}), layer.areceive(["work"], block=True), layer.aheartbeats(), layer.areceive(["work"])):
            # wait_for only keeps a regression from hanging the suite: the layer must fail by itself.
            with pytest.raises(ChannelLayerConnectionError, match=f"127.0.0.1:{server.port}.*no reply"):
                await asyncio.wait_for(call, 30)
        freeze(False)
        await layer.asend("work", {"n": 2})
        # The send that timed out may still be stored: Redis read it before it froze.
        got = [await layer.areceive(["work"], block=True), await layer.areceive(["work"])]
        assert [message for _, message in got if message] in ([{"n": 2}], [{"n": 1}, {"n": 2}])
        await layer.aclose()

    asyncio.run(main())


def test_a_call_cancelled_mid_command_leaves_no_connection_behind(frozen):
    server, freeze = frozen
    layer = RedisChannelLayer(hosts=[server.url], prefix=_prefix())

    async def main():
        layer.heartbeat("w1", {"pid": 1})
        assert await layer.aheartbeats() == {"w1": {"pid": 1}}
        freeze(True)
        # The interface bounds calls with wait_for (--http-timeout): the command is in flight.
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(layer.aheartbeats(), 0.3)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(layer.areceive(["work"], block=True), 0.3)
        freeze(False)
        # A connection put back with those replies unread would answer these with them.
        await layer.asend("work", {"n": 1})
        assert await layer.areceive(["work"]) == ("work", {"n": 1})
        assert await layer.aheartbeats() == {"w1": {"pid": 1}}
        await layer.aclose()

    try:
        asyncio.run(main())
    finally:
        layer.flush()
        layer.close()


def test_a_frozen_shard_does_not_hang_a_blocking_receive_on_the_others(frozen, redis_server):
    server, freeze = frozen
    layer = RedisChannelLayer(hosts=[server.url, redis_server.url], prefix=_prefix(), command_timeout=0.5, blocking_timeout=0.5)

    async def main():
        await layer.areceive(["spread"])  # connections to both shards
        freeze(True)
        got = None
        for _ in range(4):  # a send rotating onto the frozen shard falls back to the other
            await asyncio.wait_for(layer.asend("spread", {"n": 1}), 30)
        while got is None:
            try:
                got = await asyncio.wait_for(layer.areceive(["spread"], block=True), 30)
            except ChannelLayerConnectionError:
                continue
        assert got == ("spread", {"n": 1})
        freeze(False)
        await layer.aclose()

    asyncio.run(main())


def test_a_send_that_waited_on_a_stalled_shard_stores_a_live_message(frozen, redis_server):
    # The expiry is set for each try: the try on the healthy shard, after the
    # stalled one timed out, must not store a message already past its expiry.
    server, freeze = frozen
    prefix = _prefix()
    layer = RedisChannelLayer(hosts=[server.url, redis_server.url], prefix=prefix, expiry=1, command_timeout=1.5, blocking_timeout=0.2)
    # Reads the healthy shard only (a normal channel has the same key on every shard).
    reader = RedisChannelLayer(hosts=[redis_server.url], prefix=prefix, expiry=1)
    try:
        layer.receive(["spread"])  # connections to both shards
        freeze(True)
        got = []
        for n in range(2):  # sends rotate: one of them tries the stalled shard first
            layer.send("spread", {"n": n})
            got.append(reader.receive(["spread"])[1])
        assert got == [{"n": 0}, {"n": 1}]
    finally:
        freeze(False)
        layer.close()
        reader.close()


def test_a_garbage_heartbeat_entry_is_dropped_not_fatal(redis_server, caplog):
    layer = RedisChannelLayer(hosts=[redis_server.url], prefix=_prefix())
    client = redis.Redis.from_url(redis_server.url)
    try:
        layer.heartbeat("w1", {"pid": 1})
        client.hset(layer.keys.heartbeats, mapping={"junk": "not a heartbeat", "short": "12", b"\xff": "x" * 40})
        with caplog.at_level("WARNING", logger="paas_channels.layers.redis.ops"):
            assert layer.heartbeats() == {"w1": {"pid": 1}}
            assert layer.heartbeats() == {"w1": {"pid": 1}}
        assert set(client.hkeys(layer.keys.heartbeats)) == {b"w1"}  # the garbage is gone
        warnings = [record for record in caplog.records if "unreadable heartbeat" in record.getMessage()]
        assert len(warnings) == 1  # logged once, not per health check
    finally:
        layer.flush()
        layer.close()
        client.close()


def test_single_use_channel_statistics_expire_with_the_channel(redis_server):
    layer = RedisChannelLayer(hosts=[redis_server.url], prefix=_prefix(), expiry=5)
    client = redis.Redis.from_url(redis_server.url)
    try:
        body = layer.new_channel("http.request.body?")
        layer.send(body, {"content": b"x"})
        layer.group_add("bodies", body)
        layer.send_group("bodies", {"content": b"y"})  # the script path
        list_ttl = 2 * 5000 + 1000
        assert 0 < client.pttl(layer.keys.channel_stats(body)) <= list_ttl
        inbox = layer.new_channel("daphne.response!")
        layer.send(inbox, {"n": 1})
        assert client.pttl(layer.keys.channel_stats(layer.non_local_name(inbox))) > list_ttl  # an inbox's live on
    finally:
        layer.flush()
        layer.close()
        client.close()


def test_no_repr_shows_a_password():
    secret = "s3cr3t-pass"
    layer = RedisChannelLayer(hosts=[f"redis://user:{secret}@127.0.0.1:6399/0", {"address": "redis://127.0.0.1:6398", "password": secret}])
    shown = [repr(layer), str(layer), repr(layer.hosts), str(layer.hosts), repr(layer._sync), repr(getattr(layer._sync, "transport", layer._sync).pools)]
    shown += [repr(host) for host in layer.hosts] + [str(host) for host in layer.hosts]
    assert all(secret not in text for text in shown), [text for text in shown if secret in text]
    assert "127.0.0.1:6399" in repr(layer.hosts[0])


def test_a_full_redis_is_unreachable_naming_the_host(own_redis_servers):
    (server,) = own_redis_servers(1)
    client = redis.Redis.from_url(server.url)
    layer = RedisChannelLayer(hosts=[server.url], prefix=_prefix())
    try:
        client.config_set("maxclients", 1)  # this client is the one
        with pytest.raises(ChannelLayerConnectionError, match=f"127.0.0.1:{server.port}.*max number of clients"):
            layer.send("work", {"n": 1})
        client.config_set("maxclients", 100)
        layer.send("work", {"n": 1})
        assert layer.receive(["work"]) == ("work", {"n": 1})
    finally:
        layer.close()
        client.close()
