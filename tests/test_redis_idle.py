"""Idle processes on the Redis layer cost (almost) no CPU: blocking receives, no polling.

Two real subprocesses on three shards: a worker blocked on normal channels
(one BLPOP per shard at once) and an interface-style asyncio loop on its inbox.
Their CPU time is read from /proc while they idle, then each is sent a message
to prove its loop was live all along.
"""

from __future__ import annotations

import uuid

import pytest

from paas_channels.layers.redis import RedisChannelLayer
from tests.support import Script, idle_cpu

WORKER = """
import sys
from paas_channels.layers.redis import RedisChannelLayer
layer = RedisChannelLayer(hosts=sys.argv[1].split(","), prefix=sys.argv[2])
print("ready", flush=True)
while True:
    channel, message = layer.receive(["http.request", "websocket.receive", "thumbnail"], block=True)
    if channel is not None:
        print("got", channel, message["n"], flush=True)
        break
"""

INTERFACE = """
import asyncio, sys
from paas_channels.layers.redis import RedisChannelLayer
layer = RedisChannelLayer(hosts=sys.argv[1].split(","), prefix=sys.argv[2])
async def main():
    print("ready", flush=True)
    while True:
        channel, message = await layer.areceive(["daphne.idle!"], block=True)
        if channel is not None:
            print("got", channel, message["n"], flush=True)
            return
asyncio.run(main())
"""

pytestmark = pytest.mark.redis  # every test here runs on a private Redis


@pytest.mark.timeout(60)
def test_idle_worker_and_interface_use_under_one_percent_cpu(redis_shard_servers):
    hosts = ",".join(server.url for server in redis_shard_servers)
    prefix = "idle" + uuid.uuid4().hex[:8]
    procs = [Script(WORKER, hosts, prefix).start(), Script(INTERFACE, hosts, prefix).start()]
    layer = RedisChannelLayer(hosts=hosts.split(","), prefix=prefix)
    try:
        for name, share in zip(("worker", "interface"), idle_cpu(procs, 5.0)):
            assert share < 0.01, f"idle {name} used {share:.1%} CPU"

        # Both loops were live the whole time: each takes its message at once.
        layer.send("thumbnail", {"n": 1})
        layer.send("daphne.idle!conn9", {"n": 2})
        procs[0].wait_for_output("got thumbnail 1", timeout=5)
        procs[1].wait_for_output("got daphne.idle!conn9 2", timeout=5)
        for proc in procs:
            assert proc.wait(10) == 0, proc.output()
    finally:
        layer.flush()
        layer.close()
        for proc in procs:
            proc.close()
