"""Keys and counters that would grow with every connection or upload, checked after churn."""

from __future__ import annotations

import pytest
import redis as redis_py

from paas_channels.layers import InMemoryChannelLayer
from paas_channels.sessions import _wait_channel
from paas_channels.testing import RedisServer


def test_the_memory_layer_forgets_upload_body_channels_after_2000_uploads():
    layer = InMemoryChannelLayer(channel_capacity={"http.request.body?*": 4})
    for index in range(2000):
        body = layer.new_channel("http.request.body?")
        layer.send(body, {"content": b"x" * 100, "more_content": True})
        layer.send(body, {"content": b"y", "more_content": False})
        assert layer.receive([body])[1]["content"] == b"x" * 100
        assert layer.receive([body])[1]["content"] == b"y"
        wait = _wait_channel(f"interface.h.x!conn{index}")  # enforce_ordering's per-conversation channel
        layer.send(wait, {"parked": index})
        layer.receive([wait])
    sizes = {name: len(getattr(layer, name)) for name in ("_channels", "_per_channel_count", "_per_channel_full",
                                                         "_capacity_cache")}
    assert max(sizes.values()) < 10, sizes
    assert layer.global_statistics()["messages_count"] == 6000  # the totals are kept


@pytest.mark.redis
def test_enforce_ordering_wait_channels_leave_no_key_without_ttl():
    from paas_channels.layers.redis import RedisChannelLayer

    server = RedisServer().start()
    try:
        layer = RedisChannelLayer(hosts=[server.url])
        for index in range(50):
            wait = _wait_channel(f"interface.h.x!conn{index}")
            layer.send(wait, {"parked": index})
            layer.receive([wait])
        client = redis_py.Redis.from_url(server.url)
        keys = client.keys("*wait*")
        assert keys, "the wait channels left no key at all: the test does not see what it checks"
        forever = [key for key in keys if client.pttl(key) < 0]
        assert not forever, forever[:5]
        client.close()
        layer.close()
    finally:
        server.close()
