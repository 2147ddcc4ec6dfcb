"""The Redis layer under faults and bad data: RESP2 servers, a Redis that is
loading or frozen, garbage in the heartbeat hash, secrets in reprs."""

from __future__ import annotations

import asyncio
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
