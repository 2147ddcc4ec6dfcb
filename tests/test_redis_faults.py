"""The Redis layer under faults and bad data: RESP2 servers, a Redis that is
loading or frozen, garbage in the heartbeat hash, secrets in reprs."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis

from paas_channels.layers.redis import RedisChannelLayer

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
