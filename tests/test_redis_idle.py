"""Idle processes on the Redis layer cost (almost) no CPU: blocking receives, no polling.

The scenario of ``tests/idle_support.py`` on three shards: the worker blocks
with one BLPOP per shard at once, the interface loop on its inbox.
"""

from __future__ import annotations

import uuid

import pytest

from paas_channels.layers.redis import RedisChannelLayer
from tests.idle_support import check_idle_then_live, idle_scripts

pytestmark = pytest.mark.redis  # every test here runs on a private Redis

MAKE_LAYER = """
from paas_channels.layers.redis import RedisChannelLayer
layer = RedisChannelLayer(hosts=sys.argv[1].split(","), prefix=sys.argv[2])
"""


@pytest.mark.timeout(60)
def test_idle_worker_and_interface_use_under_one_percent_cpu(redis_shard_servers):
    hosts = ",".join(server.url for server in redis_shard_servers)
    prefix = "idle" + uuid.uuid4().hex[:8]
    scripts = idle_scripts(MAKE_LAYER, hosts, prefix)
    layer = RedisChannelLayer(hosts=hosts.split(","), prefix=prefix)
    try:
        check_idle_then_live(scripts, layer, seconds=5.0)
    finally:
        layer.flush()
        layer.close()
        for script in scripts:
            script.close()
