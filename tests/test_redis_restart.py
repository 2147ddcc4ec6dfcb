"""The Redis layer across a Redis restart: clear errors during the outage, then
working again by itself (same layer object, no process restart)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from paas_channels.layers.redis import ChannelLayerConnectionError, RedisChannelLayer
from tests.support import RedisServer


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
