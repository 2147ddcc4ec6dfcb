"""Every channel-layer backend the conformance suite runs against.

Each entry makes a fresh, empty layer from keyword arguments (expiry,
capacity, ...). A backend joins the suite by adding itself here; a backend
that needs a service it cannot start here is reported as an error, never
skipped silently.
"""

from __future__ import annotations

import os
import uuid
from typing import Any, Callable

from paas_channels.layers import BaseChannelLayer, InMemoryChannelLayer


def make_memory(request: Any, **config: Any) -> BaseChannelLayer:
    return InMemoryChannelLayer(**config)


def _unique_prefix() -> str:
    return "t" + uuid.uuid4().hex[:12]


def make_redis_1shard(request: Any, **config: Any) -> BaseChannelLayer:
    from paas_channels.layers.redis import RedisChannelLayer

    server = request.getfixturevalue("redis_server")
    return RedisChannelLayer(hosts=[server.url], prefix=_unique_prefix(), **config)


def make_redis_3shard(request: Any, **config: Any) -> BaseChannelLayer:
    from paas_channels.layers.redis import RedisChannelLayer

    servers = request.getfixturevalue("redis_shard_servers")
    return RedisChannelLayer(hosts=[server.url for server in servers], prefix=_unique_prefix(), **config)


def make_ipc(request: Any, **config: Any) -> BaseChannelLayer:
    from paas_channels.layers.ipc import IPCChannelLayer

    directory = request.getfixturevalue("tmp_path_factory").mktemp("ipc")
    return IPCChannelLayer(prefix=_unique_prefix(), directory=directory, **config)
def make_rabbitmq(request: Any, **config: Any) -> BaseChannelLayer:
    """A layer on the shared broker (127.0.0.1:5672) under a prefix of its own, deleted after the session."""
    from paas_channels.layers.rabbitmq import RabbitMQChannelLayer

    layer = RabbitMQChannelLayer(url=request.getfixturevalue("rabbitmq_url"), prefix=_unique_prefix(), **config)
    request.getfixturevalue("rabbitmq_made_layers").append(layer)
    return layer


#: name -> factory(pytest request, **layer config) -> layer
#: The backends that keep group history (CONFIG["history"]): tests/test_layer_history.py runs on them.
HISTORY_BACKENDS = frozenset({"ipc", "memory", "redis-1shard", "redis-3shard", "rabbitmq"})

LAYER_BACKENDS: dict[str, Callable[..., BaseChannelLayer]] = {
    "ipc": make_ipc,
    "memory": make_memory,
    "redis-1shard": make_redis_1shard,
    "redis-3shard": make_redis_3shard,
    "rabbitmq": make_rabbitmq,
}


# The suite's own check: PAAS_CHANNELS_TEST_BACKEND=broken:ClassName runs the
# suite against one deliberately broken layer from tests/broken_layers.py.
_only = os.environ.get("PAAS_CHANNELS_TEST_BACKEND")
if _only and _only.startswith("broken:"):
    from tests import broken_layers

    _broken = getattr(broken_layers, _only.split(":", 1)[1])
    LAYER_BACKENDS = {_only: lambda request, **config: _broken(**config)}
elif _only:
    LAYER_BACKENDS = {_only: LAYER_BACKENDS[_only]}
