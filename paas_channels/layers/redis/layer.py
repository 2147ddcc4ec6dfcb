"""The Redis channel layer's public API: :class:`RedisChannelLayer`, sync and ``a``-prefixed async.

What split mode runs on: cross-process, sharded over one or more Redis
servers.  The class puts together what the other modules of this package do:
validation and settings here, placement and operations (:mod:`.ops`), the
hand-out of group messages (:mod:`.fanout`), and running an operation on
threads (:class:`~.drivers.SyncIO`, shared by every thread) or on an event
loop (:class:`~.drivers.AsyncIO`, one per loop: :mod:`.aio`).  Statistics,
groups and worker heartbeats live in Redis so any process can read them.
"""

from __future__ import annotations

import inspect
import itertools
import logging
import os
from typing import Any, Iterable, Mapping

import redis.connection

from . import scripts
from .aio import AsyncLayerAPI
from .drivers import ChannelLayerConnectionError, SyncIO
from .fanout import LocalFanout
from .hosts import RedisHost, hosts_from_env, parse_hosts, redact_url
from .ops import RedisOperations, _Route
from ..base import BaseChannelLayer, _positive_number, _valid_prefix
from ..history import HistoryRules

__all__ = ["ChannelLayerConnectionError", "RedisChannelLayer", "config_from_env", "redact_url"]

logger = logging.getLogger(__name__)



def _connection_keywords() -> frozenset[str]:
    names: set[str] = set()
    for cls in (
        redis.connection.AbstractConnection,
        redis.connection.Connection,
        redis.connection.SSLConnection,
        redis.connection.UnixDomainSocketConnection,
    ):
        names.update(inspect.signature(cls.__init__).parameters)
    return frozenset(names - {"self", "args", "kwargs", "retry", "decode_responses", "parser_class"})


def config_from_env(environ: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """The layer's ``CONFIG`` (``{"hosts": [...]}``) from ``REDIS_TLS_URL`` / ``REDIS_URL``.

    ``REDIS_TLS_URL`` is preferred; comma-separated URLs are shards; ``None``
    when neither is set.  On Heroku (``DYNO`` set) ``rediss://`` URLs get
    ``ssl_cert_reqs=None`` because Heroku Redis uses self-signed certificates;
    elsewhere certificates are verified unless the URL says ``?ssl_cert_reqs=none``.
    """
    return hosts_from_env(os.environ if environ is None else environ)


class RedisChannelLayer(AsyncLayerAPI, RedisOperations, LocalFanout, BaseChannelLayer):
    """ASGI 1.0 channel layer on one or more Redis servers (shards).

    ``hosts``: list of ``redis://``/``rediss://``/``unix://`` URLs, ``(host, port)``
    tuples or dicts of connection keywords (``{"address": url, "ssl_cert_reqs": None}``);
    ``None`` means ``redis://127.0.0.1:6379/0``.  ``prefix`` starts every key, so
    several layers can share a Redis.  ``blocking_timeout``: seconds a blocking
    receive waits.  ``history``: ``{group glob: {"size": n, "ttl": s}}``, the
    groups that keep their last messages for clients that resume
    (:mod:`paas_channels.layers.history`).  ``reply_spin_us``: microseconds to poll for a reply before
    sleeping until it comes (``0``: off; see :mod:`.spin`).
    ``command_timeout``: seconds a call may wait for Redis before the shard
    counts as unreachable (:class:`ChannelLayerConnectionError`); a blocking
    receive waits ``blocking_timeout`` longer.  Other keywords are connection
    keywords for every host (e.g. ``socket_connect_timeout=2``).
    """

    extensions = [*BaseChannelLayer.extensions, "history"]

    def __init__(
        self,
        hosts: Any = None,
        prefix: str = "paas",
        expiry: float = 60,
        group_expiry: float = 86400,
        capacity: int = 100,
        channel_capacity: dict[str, int] | None = None,
        blocking_timeout: float = 1,
        reply_spin_us: float = 100,
        command_timeout: float = 5,
        history: dict[str, dict] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(expiry=expiry, group_expiry=group_expiry, capacity=capacity, channel_capacity=channel_capacity)
        _valid_prefix(prefix)
        _positive_number("blocking_timeout", blocking_timeout)
        _positive_number("command_timeout", command_timeout)
        if isinstance(reply_spin_us, bool) or not isinstance(reply_spin_us, (int, float)) or not 0 <= reply_spin_us <= 10_000:
            raise ValueError(
                f"reply_spin_us must be a number of microseconds from 0 (off) to 10000; got {reply_spin_us!r}"
            )
        unknown = set(kwargs) - _connection_keywords()
        if unknown:
            raise TypeError(
                f"RedisChannelLayer got unexpected keyword(s) {', '.join(sorted(unknown))}; "
                "it takes hosts, prefix, expiry, group_expiry, capacity, channel_capacity, "
                "blocking_timeout, reply_spin_us, command_timeout, history and redis-py connection keywords"
            )
        self.hosts: list[RedisHost] = [
            RedisHost(host.kind, {**kwargs, **host.kwargs}) if kwargs else host for host in parse_hosts(hosts)
        ]
        self.prefix = prefix
        self.history = HistoryRules(history)
        self.blocking_timeout = blocking_timeout
        self.reply_spin_us = reply_spin_us
        self.command_timeout = command_timeout
        self.keys = scripts.Keys(prefix)
        self._shard_count = len(self.hosts)
        self._expiry_ms = int(self.expiry * 1000)
        # A list outlives its newest message by one expiry, so that an
        # expired, unread message can still be seen (and its members dropped).
        self._list_ttl_ms = 2 * self._expiry_ms + 1000
        self._sync = SyncIO(self.hosts, reply_spin_us, command_timeout, blocking_timeout)
        self._init_async()
        self._init_fanout()
        self._rotation = itertools.count()
        self._names_cache: dict[tuple, list[str]] = {}
        self._routes: dict[str, _Route] = {}

    def __repr__(self) -> str:
        shards = ", ".join(host.describe() for host in self.hosts)
        return f"<RedisChannelLayer prefix={self.prefix!r} shards=[{shards}] expiry={self.expiry} capacity={self.capacity}>"

    ### Channel layer API ###

    def send(self, channel: str, message: dict) -> None:
        """Put ``message`` on ``channel`` (one round trip); raise ``ChannelFull`` at capacity."""
        return self._sync.run(self._op_send(channel, message))

    def receive(self, channels: Iterable[str], block: bool = False) -> tuple[str | None, dict | None]:
        """Take a message from the first of ``channels`` that has one, or ``(None, None)``.

        ``!`` channels are given by prefix and reported by full name.  With
        ``block=True`` waits up to ``blocking_timeout`` seconds on every shard at once.
        """
        if self._local:  # group messages already here: no Redis round trip
            channels, local = self._from_local(channels)
            if local is not None:
                return local
        return self._sync.run(self._op_receive(channels, block))

    async def areceive(self, channels: Iterable[str], block: bool = False) -> tuple[str | None, dict | None]:
        """``receive`` for an event loop (the interface reads its inbox with it)."""
        if self._local:  # as in receive(), before making a coroutine and an operation
            channels, local = self._from_local(channels)
            if local is not None:
                return local
        return await (await self._async_io()).run(self._op_receive(channels, block))

    def new_channel(self, pattern: str) -> str:
        """A new channel name: ``pattern`` (ending ``?`` or ``!``) plus a random suffix."""
        self.valid_new_channel_pattern(pattern)
        return pattern + self.random_suffix()

    ### Groups ###

    def group_add(self, group: str, channel: str) -> None:
        """Add ``channel`` to ``group`` for ``group_expiry`` seconds."""
        return self._sync.run(self._op_group_add(group, channel))

    def group_join(self, group: str, channel: str, since: tuple[str, int] | None = None) -> bool | None:
        """``group_add`` and, for a history group, the notice and what ``channel`` missed, in one step."""
        return self._sync.run(self._op_group_join(group, channel, since))

    def group_discard(self, group: str, channel: str) -> None:
        """Remove ``channel`` from ``group``; a no-op if it is not a member."""
        return self._sync.run(self._op_group_discard(group, channel))

    def group_channels(self, group: str) -> list[str]:
        """The channels currently in ``group``."""
        return self._sync.run(self._op_group_channels(group))

    def send_group(self, group: str, message: dict) -> None:
        """Send ``message`` to every member: one stored message per member inbox.

        Members at capacity are skipped and counted (``channel_full_count``);
        a member whose oldest message expired unread is dropped from the group.
        """
        return self._sync.run(self._op_send_group(group, message))

    ### Flush, statistics, heartbeats, close ###

    def flush(self) -> None:
        """Delete every key of this layer's prefix on every shard."""
        return self._sync.run(self._op_flush())

    def global_statistics(self) -> dict[str, int]:
        """``messages_count`` (sent) and ``channel_full_count`` over all channels and shards."""
        return self._sync.run(self._op_global_statistics())

    def channel_statistics(self, channel: str) -> dict[str, Any]:
        """Counts for one channel, over its shards (a ``!`` channel is counted by prefix)."""
        return self._sync.run(self._op_channel_statistics(channel))

    def heartbeat(self, worker_id: str, info: dict, ttl: float = 30) -> None:
        """Record that worker ``worker_id`` is alive, with ``info``, for ``ttl`` seconds."""
        return self._sync.run(self._op_heartbeat(worker_id, info, ttl))

    def heartbeats(self) -> dict[str, dict]:
        """Live workers' latest heartbeat info, by worker id, as any process sees it."""
        return self._sync.run(self._op_heartbeats())

    def close(self) -> None:
        """Close the sync connection pools (they reopen if the layer is used again)."""
        self._sync.close()
