"""The Redis layer across a Redis restart: clear errors during the outage, then
working again by itself (same layer object, no process restart)."""

from __future__ import annotations

import asyncio
import threading
import time
import zlib

import pytest

from paas_channels.layers.redis import ChannelLayerConnectionError, RedisChannelLayer
from tests.support import RedisServer

pytestmark = pytest.mark.redis  # every test here runs on a private Redis


@pytest.fixture
def server():
    server = RedisServer().start()
    yield server
    server.close()


def test_layer_survives_redis_restart(server):
    layer = RedisChannelLayer(hosts=[server.url], prefix="restart", blocking_timeout=3)
    loop = asyncio.new_event_loop()
    restarted = []
    try:
        layer.send("before", {"n": 1})
        assert layer.receive(["before"]) == ("before", {"n": 1})
        loop.run_until_complete(layer.asend("before", {"n": 2}))
        assert loop.run_until_complete(layer.areceive(["before"])) == ("before", {"n": 2})

        # A worker blocked in receive when Redis goes away gets an error, not a hang.
        outcome = {}

        def blocked_worker():
            try:
                outcome["result"] = layer.receive(["idle.channel"], block=True)
            except Exception as exc:  # noqa: BLE001 - the test inspects it
                outcome["error"] = exc

        worker = threading.Thread(target=blocked_worker)
        worker.start()
        time.sleep(0.3)
        server.stop()
        worker.join(10)
        assert not worker.is_alive()
        assert isinstance(outcome.get("error"), ChannelLayerConnectionError), outcome

        for operation in (
            lambda: layer.send("during", {"n": 3}),
            lambda: layer.receive(["during"], block=True),
            lambda: layer.send_group("g", {"n": 1}),
            lambda: layer.global_statistics(),
            lambda: loop.run_until_complete(layer.asend("during", {"n": 4})),
            lambda: loop.run_until_complete(layer.areceive(["during"], block=True)),
        ):
            with pytest.raises(ConnectionError) as caught:
                operation()
            assert f"127.0.0.1:{server.port}" in str(caught.value)
            assert "reconnects by itself" in str(caught.value)

        restarted.append(RedisServer(port=server.port).start())  # same port, no data kept
        layer.send("after", {"n": 5})
        assert layer.receive(["after"], block=True) == ("after", {"n": 5})
        loop.run_until_complete(layer.asend("after", {"n": 6}))
        assert loop.run_until_complete(layer.areceive(["after"], block=True)) == ("after", {"n": 6})
        assert asyncio.run(layer.areceive(["nothing"])) == (None, None)
    finally:
        try:
            loop.run_until_complete(layer.aclose())
        finally:
            loop.close()
            layer.close()
            for again in restarted:
                again.close()


@pytest.fixture
def three_servers(own_redis_servers):
    return own_redis_servers(3)


@pytest.mark.parametrize("side", ["sync", "async"])
def test_one_shard_down_the_others_still_work(three_servers, side):
    urls = [server.url for server in three_servers]
    layer = RedisChannelLayer(hosts=urls, prefix="shardout", blocking_timeout=2)
    first = RedisChannelLayer(hosts=urls[:1], prefix="shardout")  # writes to shard 0 only
    restarted = []

    def receive(channels):
        if side == "sync":
            return layer.receive(channels, block=True)
        return asyncio.run(layer.areceive(channels, block=True))

    try:
        layer.send("work", {"n": 0})
        assert receive(["work"]) == ("work", {"n": 0})

        # Blocked on all three shards when shard 1 dies: an error, at once.
        outcome = {}

        def blocked():
            started = time.monotonic()
            try:
                receive(["work"])
            except ConnectionError as exc:
                outcome["error"] = exc
            outcome["took"] = time.monotonic() - started

        waiter = threading.Thread(target=blocked)
        waiter.start()
        time.sleep(0.3)
        three_servers[1].stop()
        waiter.join(10)
        assert f"127.0.0.1:{three_servers[1].port}" in str(outcome.get("error")), outcome
        assert outcome["took"] < 1.5  # not the 2 s blocking timeout

        # Meanwhile messages on live shards are sent and received.
        for n in range(1, 5):
            layer.send("work", {"n": n})  # skips the dead shard
        first.send("work", {"n": 5})
        got = {receive(["work"])[1]["n"] for _ in range(5)}
        assert got == {1, 2, 3, 4, 5}
        with pytest.raises(ConnectionError, match=f"127.0.0.1:{three_servers[1].port}"):
            receive(["work"])  # nothing left, and one shard is unreachable: say so
        # A `!` channel whose home is the dead shard fails clearly.
        dead_inbox = next(f"inbox{n}!" for n in range(100) if zlib.crc32(f"inbox{n}!".encode()) % 3 == 1)
        with pytest.raises(ConnectionError):
            layer.send(dead_inbox + "c", {"n": 6})

        restarted.append(RedisServer(port=three_servers[1].port).start())
        layer.send(dead_inbox + "c", {"n": 7})
        assert receive([dead_inbox]) == (dead_inbox + "c", {"n": 7})
        for n in range(8, 14):
            layer.send("work", {"n": n})
        assert {receive(["work"])[1]["n"] for _ in range(6)} == set(range(8, 14))
    finally:
        layer.flush()
        layer.close()
        first.close()
        for server in restarted:
            server.close()
