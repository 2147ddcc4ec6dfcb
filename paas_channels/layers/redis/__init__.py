"""The Redis channel layer: what split mode runs on, sharded over one or more Redis servers.

* :mod:`.layer` — :class:`RedisChannelLayer`, the ASGI 1.0 API (sync and ``a``-prefixed async);
* :mod:`.ops` — placement on shards and the operations, as generators of Redis requests (sans-IO);
* :mod:`.fanout` — this process's hand-out of group messages stored once per inbox;
* :mod:`.drivers` — running an operation: retries, script re-sends, replies, over a transport;
* :mod:`.transport` — connections and raw I/O, the ONLY module touching redis-py internals;
* :mod:`.scripts` — keys, Lua scripts and the stored envelope;
* :mod:`.hosts` — host URLs and settings from the environment;
* :mod:`.spin` — polling briefly for a reply before sleeping.
"""

from __future__ import annotations

from .drivers import ChannelLayerConnectionError
from .hosts import redact_url
from .layer import RedisChannelLayer, config_from_env

__all__ = ["ChannelLayerConnectionError", "RedisChannelLayer", "config_from_env", "redact_url"]
