"""What one process does on the Redis layer, another process sees: statistics,
heartbeats, messages; and the async side on many event loops and threads."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import subprocess
import sys
import threading
import uuid

import pytest

from paas_channels.layers import ChannelFull
from paas_channels.layers.redis import RedisChannelLayer
from tests.support import ROOT

READER = """
import json, sys
from paas_channels.layers import ChannelFull
from paas_channels.layers.redis import RedisChannelLayer
layer = RedisChannelLayer(hosts=sys.argv[1].split(","), prefix=sys.argv[2])
print(json.dumps({
    "global": layer.global_statistics(),
    "channel": layer.channel_statistics("status.chan"),
    "inbox": layer.channel_statistics("status.inbox!any"),
    "heartbeats": layer.heartbeats(),
    "message": layer.receive(["status.inbox!"]),
}))
"""

pytestmark = pytest.mark.redis  # every test here runs on a private Redis


@pytest.fixture
def layer(redis_shard_servers):
    layer = RedisChannelLayer(hosts=[s.url for s in redis_shard_servers], prefix="px" + uuid.uuid4().hex[:10], capacity=4)
    yield layer
    layer.flush()
    layer.close()


def test_statistics_and_heartbeats_readable_by_another_process(layer):
    for n in range(4):
        layer.send("status.chan", {"n": n})
    with pytest.raises(ChannelFull):
        layer.send("status.chan", {"n": 4})
    layer.send("status.inbox!c1", {"text": "for the other process"})
    layer.heartbeat("host.7", {"pid": 7, "busy": 1}, ttl=30)
    hosts = ",".join(f"redis://127.0.0.1:{h.kwargs['port']}/0" for h in layer.hosts)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", READER, hosts, layer.prefix], capture_output=True,
                            text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["global"] == {"messages_count": 5, "channel_full_count": 1}  # 4 + the inbox message
    assert seen["channel"]["messages_count"] == 4
    assert seen["channel"]["messages_pending"] == 4
    assert seen["channel"]["channel_full_count"] == 1
    assert 0 <= seen["channel"]["messages_max_age"] < 30
    assert seen["inbox"]["messages_pending"] == 1
    assert seen["heartbeats"] == {"host.7": {"pid": 7, "busy": 1}}
    assert seen["message"] == ["status.inbox!c1", {"text": "for the other process"}]
    assert layer.channel_statistics("status.inbox!c1")["messages_pending"] == 0


def test_async_side_on_many_loops_and_threads(layer):
    errors = []

    def thread_main(index):
        try:
            for round_ in range(5):
                async def scenario():
                    await layer.asend(f"loops.inbox!t{index}", {"round": round_})
                    return await layer.areceive(["loops.inbox!"], block=True)

                channel, message = asyncio.run(scenario())
                assert channel is not None and "round" in message
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=thread_main, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for sent in range(20):  # meanwhile the sync side works from this thread
        layer.send("loops.sync", {"n": sent})
        assert layer.receive(["loops.sync"], block=True)[1] == {"n": sent}
    for thread in threads:
        thread.join(60)
    assert errors == []
    gc.collect()  # any client left open would warn (an error here) now
    assert layer._async == {}  # every loop's client was closed with its loop


def test_aclose_then_use_again_on_the_same_loop(layer):
    async def scenario():
        await layer.asend("reuse", {"n": 1})
        await layer.aclose()
        assert await layer.areceive(["reuse"]) == ("reuse", {"n": 1})
        await layer.aclose()

    asyncio.run(scenario())
