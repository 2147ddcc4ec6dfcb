"""Redis channel layer: cross-process, sharded over several Redis servers.

What split mode runs on.  Placement follows the Channels 1.x sharding rules:

* a ``!`` channel lives on the shard chosen by hashing its part up to and
  including ``!`` (one process's inbox is one list on one shard), a ``?``
  channel on the shard of its full name (so body chunks stay in order), and a
  group on the shard of its name;
* a normal channel is spread over every shard: sends rotate over the shards,
  each shard holds a share of the channel's capacity, and a receive waits on
  all shards at once (one ``BLPOP`` per shard, no polling).

Every send is one round trip (a Lua script checks capacity, stores, sets
expiry and counts).  A group send stores ONE message per member inbox naming
its local targets; the inbox's reader hands it to each of them.  Statistics,
groups and worker heartbeats live in Redis so any process can read them.

Operations are written once, as generators of Redis requests
(``_op_*``); :mod:`._redis_io` runs them on redis-py (sync: workers, threads,
gevent) or ``redis.asyncio`` (one client per event loop: the interface).
"""

from __future__ import annotations

import inspect
import itertools
import logging
import os
import re
import time
import zlib
from collections import deque
from typing import Any, Iterable, Mapping

import redis.connection

from . import _redis_scripts as scripts
from ._redis_hosts import RedisHost, hosts_from_env, parse_hosts, redact_url
from ._redis_async import AsyncLayerAPI
from ._redis_io import BlockingPop, Call, ChannelLayerConnectionError, Op, SyncIO
from .base import BaseChannelLayer, ChannelFull

__all__ = ["ChannelLayerConnectionError", "RedisChannelLayer", "config_from_env", "redact_url"]

logger = logging.getLogger(__name__)

_PREFIX = re.compile(r"^[a-zA-Z\d_.\-]{1,40}$")
# Statistics of a channel are kept this long after its last send.
_STATS_TTL_MS = 86_400_000


def _connection_keywords() -> frozenset[str]:
    names: set[str] = set()
    for cls in (
        redis.connection.AbstractConnection,
        redis.connection.Connection,
        redis.connection.SSLConnection,
        redis.connection.UnixDomainSocketConnection,
    ):
        names.update(inspect.signature(cls.__init__).parameters)
    return frozenset(names - {"self", "args", "kwargs", "retry", "decode_responses"})


def config_from_env(environ: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """The layer's ``CONFIG`` (``{"hosts": [...]}``) from ``REDIS_TLS_URL`` / ``REDIS_URL``.

    ``REDIS_TLS_URL`` is preferred; comma-separated URLs are shards; ``None``
    when neither is set.  On Heroku (``DYNO`` set) ``rediss://`` URLs get
    ``ssl_cert_reqs=None`` because Heroku Redis uses self-signed certificates;
    elsewhere certificates are verified unless the URL says ``?ssl_cert_reqs=none``.
    """
    return hosts_from_env(os.environ if environ is None else environ)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _members_by_stored_name(flat: list[bytes]) -> list[tuple[str, str]]:
    """``(stored name, its member channels joined by newlines)`` from GROUP_MEMBERS."""
    return [(flat[i].decode(), flat[i + 1].decode()) for i in range(0, len(flat), 2)]


class RedisChannelLayer(AsyncLayerAPI, BaseChannelLayer):
    """ASGI 1.0 channel layer on one or more Redis servers (shards).

    ``hosts``: list of ``redis://``/``rediss://``/``unix://`` URLs, ``(host, port)``
    tuples or dicts of connection keywords (``{"address": url, "ssl_cert_reqs": None}``);
    ``None`` means ``redis://127.0.0.1:6379/0``.  ``prefix`` starts every key, so
    several layers can share a Redis.  ``blocking_timeout``: seconds a blocking
    receive waits.  Other keywords are connection keywords for every host
    (e.g. ``socket_connect_timeout=2``).
    """

    def __init__(
        self,
        hosts: Any = None,
        prefix: str = "paas",
        expiry: float = 60,
        group_expiry: float = 86400,
        capacity: int = 100,
        channel_capacity: dict[str, int] | None = None,
        blocking_timeout: float = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(expiry=expiry, group_expiry=group_expiry, capacity=capacity, channel_capacity=channel_capacity)
        if not isinstance(prefix, str) or not _PREFIX.match(prefix):
            raise ValueError(
                f"prefix must be 1-40 ASCII letters, digits, '_', '.' or '-'; got {prefix!r:.60}"
            )
        if isinstance(blocking_timeout, bool) or not isinstance(blocking_timeout, (int, float)) or blocking_timeout <= 0:
            raise ValueError(f"blocking_timeout must be a positive number of seconds; got {blocking_timeout!r}")
        unknown = set(kwargs) - _connection_keywords()
        if unknown:
            raise TypeError(
                f"RedisChannelLayer got unexpected keyword(s) {', '.join(sorted(unknown))}; "
                "it takes hosts, prefix, expiry, group_expiry, capacity, channel_capacity, "
                "blocking_timeout and redis-py connection keywords"
            )
        self.hosts: list[RedisHost] = [
            RedisHost(host.kind, {**kwargs, **host.kwargs}) if kwargs else host for host in parse_hosts(hosts)
        ]
        self.prefix = prefix
        self.blocking_timeout = blocking_timeout
        self.keys = scripts.Keys(prefix)
        self._shard_count = len(self.hosts)
        self._socket_timeout = blocking_timeout + 10
        self._expiry_ms = int(self.expiry * 1000)
        # A list outlives its newest message by one expiry, so that an
        # expired, unread message can still be seen (and its members dropped).
        self._list_ttl_ms = 2 * self._expiry_ms + 1000
        self._sync = SyncIO(self.hosts, self._socket_timeout)
        self._init_async()
        self._rotation = itertools.count()
        # Inbox prefix -> (expires ms, channel, encoded message) this process
        # took from a group envelope and has not handed out yet.
        self._local: dict[str, deque[tuple[int, str, bytes]]] = {}
        self._names_cache: dict[tuple, list[str]] = {}
        self._key_cache: dict[str, tuple[str, str]] = {}

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
            local = self._take_local(self._valid_receive_names(channels))
            if local is not None:
                return local
        return self._sync.run(self._op_receive(channels, block))

    def new_channel(self, pattern: str) -> str:
        """A new channel name: ``pattern`` (ending ``?`` or ``!``) plus a random suffix."""
        self.valid_new_channel_pattern(pattern)
        return pattern + self.random_suffix()

    ### Groups ###

    def group_add(self, group: str, channel: str) -> None:
        """Add ``channel`` to ``group`` for ``group_expiry`` seconds."""
        return self._sync.run(self._op_group_add(group, channel))

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

    ### Placement ###

    def _home_shard(self, name: str) -> int | None:
        """Shard of a ``!``/``?`` channel (by its stored name); None for a normal channel."""
        if self._shard_count == 1:
            return 0
        if "!" in name or "?" in name:
            return zlib.crc32(self.non_local_name(name).encode()) % self._shard_count
        return None

    def _group_shard(self, group: str) -> int:
        return zlib.crc32(group.encode()) % self._shard_count

    def _send_targets(self, channel: str) -> list[tuple[int, int]]:
        """``(shard, capacity there)`` to try in order for a send to ``channel``.

        A normal channel's capacity is divided over the shards: shard ``i`` holds
        ``capacity // n``, plus one for the first ``capacity % n`` shards, so the
        shares add up to exactly ``capacity``.  Sends start on the next shard in
        rotation and fall back to the others when that one is full.
        """
        capacity = self.get_capacity(channel)
        home = self._home_shard(channel)
        if home is not None:
            return [(home, capacity)]
        count = self._shard_count
        start = next(self._rotation) % count
        order = [(start + step) % count for step in range(count)]
        shares = [(shard, capacity // count + (1 if shard < capacity % count else 0)) for shard in order]
        return [(shard, share) for shard, share in shares if share > 0]

    def _receive_plan(self, names: list[str]) -> list[tuple[int, list[str]]]:
        """``(shard, list keys in priority order)`` for a receive on ``names``."""
        count = self._shard_count
        start = next(self._rotation) % count
        plan = []
        for shard in ((start + step) % count for step in range(count)):
            keys = [self.keys.channel(name) for name in names if self._home_shard(name) in (None, shard)]
            if keys:
                plan.append((shard, keys))
        return plan

    def _push(self, shard: int, items: list[tuple[str, bytes, int, bool, bool]]) -> Call:
        """The PUSH script for ``(stored name, envelope, capacity, count_full, check_dead)`` items."""
        keys: list[str] = [self.keys.stats]
        args: list[Any] = [_now_ms(), self._list_ttl_ms, _STATS_TTL_MS]
        for name, envelope, capacity, count_full, check_dead in items:
            keys += self._push_keys(name)
            args += [envelope, capacity, int(count_full), int(check_dead)]
        return Call(shard, tuple(args), scripts.PUSH, tuple(keys))

    def _push_keys(self, name: str) -> tuple[str, str]:
        """List and statistics keys of a stored name, remembered: sends repeat names."""
        keys = self._key_cache.get(name)
        if keys is None:
            keys = (self.keys.channel(name), self.keys.channel_stats(name))
            if len(self._key_cache) < 10_000:
                self._key_cache[name] = keys
        return keys

    ### Operations (generators of Redis requests; see _redis_io) ###

    def _op_send(self, channel: str, message: dict) -> Op:
        self.valid_channel_name(channel)
        envelope = scripts.pack(_now_ms() + self._expiry_ms, channel, self.serialize(message))
        name = self.non_local_name(channel)
        targets = self._send_targets(channel)
        error = None
        for index, (shard, capacity) in enumerate(targets):
            last = index == len(targets) - 1
            try:
                (statuses,) = yield [self._push(shard, [(name, envelope, capacity, last, False)])]
            except ChannelLayerConnectionError as exc:  # a normal channel has other shards
                error = exc
                continue
            if statuses[0] == 0:
                return None
        if error is not None:
            raise error
        raise ChannelFull(channel)

    def _valid_receive_names(self, channels: Iterable[str]) -> list[str]:
        """``valid_receive_channels``, remembered: a receive loop asks for the same list each time."""
        key = tuple(channels) if isinstance(channels, (list, tuple)) else None
        names = self._names_cache.get(key) if key is not None else None
        if names is None:
            names = self.valid_receive_channels(channels)
            if key is not None and len(self._names_cache) < 1000:
                self._names_cache[key] = names
        return names

    def _op_receive(self, channels: Iterable[str], block: bool) -> Op:
        names = self._valid_receive_names(channels)
        local = self._take_local(names)
        if local is not None:
            return local
        plan = self._receive_plan(names)
        deadline = time.monotonic() + self.blocking_timeout
        while True:
            got = None
            if block:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None, None
                got = yield BlockingPop(plan, remaining)
            else:
                now = _now_ms()
                error = None
                for shard, keys in plan:
                    try:
                        (reply,) = yield [Call(shard, (now,), scripts.POP, tuple(keys))]
                    except ChannelLayerConnectionError as exc:  # the other shards may have one
                        error = exc
                        continue
                    if reply:
                        got = (shard, keys[int(reply[0]) - 1], reply[1])
                        break
                if got is None:
                    if error is not None:
                        raise error
                    return None, None
            if got is not None:
                result = self._open_envelope(got[1], got[2])
                if result is not None:
                    return result

    def _op_group_add(self, group: str, channel: str) -> Op:
        self.valid_group_name(group)
        self.valid_channel_name(channel)
        group_ms = int(self.group_expiry * 1000)
        args = (channel, _now_ms() + group_ms, group_ms)
        yield [Call(self._group_shard(group), args, scripts.GROUP_ADD, (self.keys.group(group),))]

    def _op_group_discard(self, group: str, channel: str) -> Op:
        self.valid_group_name(group)
        self.valid_channel_name(channel)
        yield [Call(self._group_shard(group), ("ZREM", self.keys.group(group), channel))]

    def _op_group_channels(self, group: str) -> Op:
        self.valid_group_name(group)
        (flat,) = yield [self._members_call(group)]
        return [member for _, joined in _members_by_stored_name(flat) for member in joined.split("\n")]

    def _members_call(self, group: str) -> Call:
        return Call(self._group_shard(group), (_now_ms(),), scripts.GROUP_MEMBERS, (self.keys.group(group),))

    def _op_send_group(self, group: str, message: dict) -> Op:
        self.valid_group_name(group)
        data = self.serialize(message)
        (flat,) = yield [self._members_call(group)]
        if not flat:
            return None
        by_name = dict(_members_by_stored_name(flat))
        expires = _now_ms() + self._expiry_ms
        # Each pending item: stored name, envelope, remaining (shard, capacity) tries.
        pending = [
            (name, scripts.pack(expires, joined, data), self._send_targets(name)) for name, joined in by_name.items()
        ]
        dead: list[str] = []
        while pending:
            by_shard: dict[int, list[tuple[str, bytes, list[tuple[int, int]]]]] = {}
            for name, envelope, tries in pending:
                if tries:
                    by_shard.setdefault(tries[0][0], []).append((name, envelope, tries))
            if not by_shard:
                break
            shards = list(by_shard)
            calls = [
                self._push(shard, [(name, env, tries[0][1], len(tries) == 1, True) for name, env, tries in by_shard[shard]])
                for shard in shards
            ]
            replies = yield calls
            pending = []
            for shard, statuses in zip(shards, replies):
                for (name, envelope, tries), status in zip(by_shard[shard], statuses):
                    if status == 2:
                        dead.append(name)
                    elif status == 1 and len(tries) > 1:
                        pending.append((name, envelope, tries[1:]))
        if dead:
            # Their oldest message expired unread: nobody reads them any more.
            gone = [member for name in dead for member in by_name[name].split("\n")]
            yield [Call(self._group_shard(group), ("ZREM", self.keys.group(group), *gone))]
        return None

    def _op_flush(self) -> Op:
        self._local.clear()
        yield [Call(shard, (self.keys.pattern,), scripts.FLUSH) for shard in range(self._shard_count)]

    def _op_global_statistics(self) -> Op:
        replies = yield [Call(shard, ("HMGET", self.keys.stats, "count", "full")) for shard in range(self._shard_count)]
        return {
            "messages_count": sum(int(reply[0] or 0) for reply in replies),
            "channel_full_count": sum(int(reply[1] or 0) for reply in replies),
        }

    def _op_channel_statistics(self, channel: str) -> Op:
        self.valid_channel_name(channel)
        name = self.non_local_name(channel)
        home = self._home_shard(channel)
        shards = range(self._shard_count) if home is None else [home]
        now = _now_ms()
        keys = (self.keys.channel(name), self.keys.channel_stats(name))
        replies = yield [Call(shard, (now,), scripts.STATS, keys) for shard in shards]
        oldest = [reply[3] for reply in replies if reply[3] >= 0]
        max_age = 0.0
        if oldest:
            max_age = max(0.0, (now - (min(oldest) - self.expiry * 1000)) / 1000)
        return {
            "messages_count": sum(reply[0] for reply in replies),
            "messages_pending": sum(reply[2] for reply in replies),
            "messages_max_age": max_age,
            "channel_full_count": sum(reply[1] for reply in replies),
        }

    def _op_heartbeat(self, worker_id: str, info: dict, ttl: float) -> Op:
        if not isinstance(worker_id, str) or not worker_id:
            raise TypeError(f"worker_id must be a non-empty str; got {worker_id!r:.60}")
        envelope = scripts.pack(_now_ms() + int(ttl * 1000), worker_id, self.serialize(info))
        yield [Call(0, ("HSET", self.keys.heartbeats, worker_id, envelope))]

    def _op_heartbeats(self) -> Op:
        (stored,) = yield [Call(0, ("HGETALL", self.keys.heartbeats))]
        now = _now_ms()
        beats, stale = {}, []
        for worker_id, envelope in (stored or {}).items():
            expires, _, data = scripts.unpack(envelope)
            if expires <= now:
                stale.append(worker_id)
            else:
                beats[worker_id.decode()] = self.deserialize(data)
        if stale:
            yield [Call(0, ("HDEL", self.keys.heartbeats, *stale))]
        return beats

    ### Local hand-out of group envelopes ###

    def _open_envelope(self, key: bytes, envelope: bytes) -> tuple[str, dict] | None:
        """``(channel, message)`` from a popped envelope; ``None`` if it expired.

        A group envelope for an inbox names several channels: the first gets
        the message now, the others are kept for this process's next receives.
        """
        expires, target, data = scripts.unpack(envelope)
        if expires <= _now_ms():
            return None
        if "\n" in target:
            first, rest = target.split("\n", 1)
            queue = self._local.setdefault(self.non_local_name(first), deque())
            queue.extend((expires, channel, data) for channel in rest.split("\n"))
            return first, self.deserialize(data)
        return target, self.deserialize(data)

    def _take_local(self, names: list[str]) -> tuple[str, dict] | None:
        # deque.popleft and dict.get are atomic: no lock on this hot path.
        # An emptied queue stays (one per inbox this process reads).
        now = time.time() * 1000
        local = self._local
        for name in names:
            queue = local.get(name)
            while queue:
                try:
                    expires, channel, data = queue.popleft()
                except IndexError:  # another thread took the last one
                    break
                if expires > now:
                    return channel, self.deserialize(data)
        return None
