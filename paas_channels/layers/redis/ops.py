"""Placement on shards and the Redis channel layer's operations, as generators of Redis requests.

Placement follows the Channels 1.x sharding rules:

* a ``!`` channel lives on the shard chosen by hashing its part up to and
  including ``!`` (one process's inbox is one list on one shard), a ``?``
  channel on the shard of its full name (so body chunks stay in order), and a
  group on the shard of its name;
* a normal channel is spread over every shard: sends rotate over the shards,
  each shard holds a share of the channel's capacity, and a receive waits on
  all shards at once (one ``BLPOP`` per shard, no polling).

Every operation is written once, as a generator (sans-IO) that yields a list
of :class:`~.drivers.Call` s or a :class:`~.drivers.BlockingPop` and gets the
replies back; :mod:`.drivers` runs it on threads or an event loop.  Every
send is one round trip: a pipeline that stores, counts and (for ``!``/``?``
names) sets expiry; ``RPUSH`` answers the new length, and a send that went
over capacity takes its message back with a script in a second round trip.
A group send stores ONE message per member inbox naming its local targets
(one script per shard); the inbox's reader hands it out (:mod:`.fanout`).
"""

from __future__ import annotations

import logging
import time
import zlib
from typing import Any, Iterable, NamedTuple

import msgpack

from . import scripts
from .drivers import BlockingPop, Call, ChannelLayerConnectionError, Op, packed, script_call
from ..base import ChannelFull
from ..history import HistoryRule, valid_since

__all__ = ["RedisOperations"]

logger = logging.getLogger(__name__)

# Statistics of a ``!`` inbox are kept this long after its last send; a
# ``?`` channel's (single-use: one per request body) as long as its list.
_STATS_TTL_MS = 86_400_000


def _now_ms() -> int:
    return int(time.time() * 1000)


class _Route(NamedTuple):
    """Where sends to one stored name go; worked out once per name (sends repeat names)."""

    name: str
    keys: tuple[str, str]  # list, list statistics
    home: int | None  # the shard of a ``!``/``?`` name; None: spread over all
    shares: tuple[tuple[int, int], ...]  # (shard, capacity there), by shard
    target: bytes | None  # the envelope target for sends to ``name`` itself (not for ``!``)
    after_push: tuple[bytes, ...]  # the constant commands following a send's RPUSH, packed


def _members_by_stored_name(packed_flat: bytes) -> list[tuple[str, str]]:
    """``(stored name, its member channels joined by newlines)`` from GROUP_MEMBERS."""
    flat = msgpack.unpackb(packed_flat, raw=False)
    return [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]


def _field_pairs(reply: Any) -> Iterable[tuple[bytes, bytes]]:
    """``(field, value)`` pairs of an ``HGETALL`` reply: a dict under RESP3, a flat list under RESP2."""
    if isinstance(reply, dict):
        return reply.items()
    return zip(reply[::2], reply[1::2]) if reply else ()


class RedisOperations:
    """Mixin for :class:`~.layer.RedisChannelLayer`: where names live and what each call asks of Redis."""

    _bad_heartbeats_logged = False

    def _bad_heartbeat(self, worker_id: Any, exc: Exception) -> None:
        """Log the first unreadable heartbeat entry (once per layer: a health check reads them every few seconds)."""
        if not self._bad_heartbeats_logged:
            self._bad_heartbeats_logged = True
            logger.warning(
                "dropping unreadable heartbeat entry %r from %s (expected one written by a worker; got %s: %s); "
                "further ones are dropped silently",
                worker_id[:80], self.keys.heartbeats, type(exc).__name__, str(exc)[:200],
            )

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

    def _route(self, channel: str) -> _Route:
        """Validate ``channel`` and say where its sends go, remembered per stored name.

        A normal channel's capacity is divided over the shards: shard ``i`` holds
        ``capacity // n``, plus one for the first ``capacity % n`` shards, so the
        shares add up to exactly ``capacity``.
        """
        route = self._routes.get(channel)
        if route is not None:
            return route
        self.valid_channel_name(channel)
        name = self.non_local_name(channel)
        route = self._routes.get(name)
        if route is not None:  # another channel of a known ``!`` inbox
            return route
        capacity = self.get_capacity(channel)
        home = self._home_shard(channel)
        if home is not None:
            shares: tuple[tuple[int, int], ...] = ((home, capacity),)
        else:
            count = self._shard_count
            shares = tuple((shard, capacity // count + (1 if shard < capacity % count else 0)) for shard in range(count))
        target = None if "!" in name else scripts.pack_target(name)
        list_key, stats_key = self.keys.channel(name), self.keys.channel_stats(name)
        counters = (packed(("HINCRBY", stats_key, "count", 1)), packed(("HINCRBY", self.keys.stats, "count", 1)))
        if "!" in name or "?" in name:  # names made per process or request: their keys expire
            stats_ttl = self._list_ttl_ms if "?" in name else _STATS_TTL_MS
            expiry = (packed(("PEXPIRE", list_key, self._list_ttl_ms)), packed(("PEXPIRE", stats_key, stats_ttl)))
            after_push = (expiry[0], counters[0], expiry[1], counters[1])
        else:
            after_push = counters
        route = _Route(name, (list_key, stats_key), home, shares, target, after_push)
        # ``?`` names are single-use: remembering them would only evict useful ones.
        if "?" not in name and len(self._routes) < 10_000:
            self._routes[name] = route
        return route

    def _send_targets(self, route: _Route) -> tuple[tuple[int, int], ...]:
        """``(shard, capacity there)`` to try in order: a normal channel starts on
        the next shard in rotation and falls back to the others when that one is full."""
        if route.home is not None or self._shard_count == 1:
            return route.shares
        start = next(self._rotation) % self._shard_count
        return tuple(share for share in route.shares[start:] + route.shares[:start] if share[1] > 0)

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

    def _push(self, shard: int, now: int, items: list[tuple[tuple[str, str], bytes, int, bool, bool]]) -> Call:
        """The PUSH script for ``(route keys, envelope, capacity, count_full, check_dead)`` items."""
        keys: list[str] = [self.keys.stats]
        args: list[Any] = [now, self._list_ttl_ms, _STATS_TTL_MS]
        for route_keys, envelope, capacity, count_full, check_dead in items:
            keys += route_keys
            args += [envelope, capacity, 1 if count_full else 0, 1 if check_dead else 0]
        return script_call(shard, scripts.PUSH, keys, args)

    ### Operations (generators of Redis requests, run by .drivers) ###

    def _op_send(self, channel: str, message: dict) -> Op:
        route = self._route(channel)
        target = route.target if channel == route.name and route.target is not None else scripts.pack_target(channel)
        data = self.serialize(message)
        targets = self._send_targets(route)
        error = None
        last = len(targets) - 1
        for index, (shard, capacity) in enumerate(targets):
            # Expiry from now, at each try: a try that first waited on a stalled
            # shard must not store a message that has already expired.
            now = _now_ms()
            envelope = scripts.pack_packed(now + self._expiry_ms, target, data)
            try:
                replies = yield [Call(shard, ("RPUSH", route.keys[0], envelope))] + [
                    Call(shard, command) for command in route.after_push
                ]
                if replies[0] <= capacity:
                    return None
                keys = (*route.keys, self.keys.stats)
                (status,) = yield [script_call(shard, scripts.TAKE_BACK, keys, (envelope, capacity, now, int(index == last)))]
            except ChannelLayerConnectionError as exc:  # a normal channel has other shards
                error = exc
                continue
            if status == 0:
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
                        if len(keys) == 1:  # a plain LPOP costs less than a script
                            (reply,) = yield [Call(shard, ("LPOP", keys[0]))]
                            if reply:
                                got = (shard, keys[0], reply)
                                break
                            continue
                        (reply,) = yield [script_call(shard, scripts.POP, keys, (now,))]
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
        keys = (self.keys.group(group), self.keys.group_members(group))
        yield [script_call(self._group_shard(group), scripts.GROUP_ADD, keys, args)]

    def _op_group_join(self, group: str, channel: str, since: tuple[str, int] | None) -> Op:
        """``group_add`` and, for a history group, the join's envelope: one script on the group's shard.

        The envelope is stored there too when the channel lives on that shard
        (one server, or a normal channel); otherwise a second round trip
        stores it on the channel's shard.
        """
        rule = self.history.for_group(group)
        if rule is None:
            self.valid_group_name(group)  # as group_add would, before the rule could be asked for
            yield from self._op_group_add(group, channel)
            return None
        self.valid_channel_name(channel)
        since = valid_since(since)
        now = _now_ms()
        group_ms = int(self.group_expiry * 1000)
        shard = self._group_shard(group)
        route = self._route(channel)
        here = route.home is None or route.home == shard
        keys = (
            self.keys.group(group), self.keys.group_members(group), self.keys.history(group),
            self.keys.history_meta(group), route.keys[0],
        )
        args = (
            channel, now + group_ms, group_ms, now, self.random_suffix(8), int(rule.ttl * 1000),
            self._history_meta_ms(rule), since[0] if since else "", since[1] if since else 0,
            int(here), now + self._expiry_ms, self._list_ttl_ms, group, self.serialize({}),
        )
        reply = (yield [script_call(shard, scripts.GROUP_JOIN, keys, args)])[0]
        if not here:
            commands = [("RPUSH", route.keys[0], reply[1]), ("PEXPIRE", route.keys[0], self._list_ttl_ms)]
            yield [Call(route.home, command) for command in commands]
        return {b"1": True, b"0": False}.get(reply[0], True)

    def _history_meta_ms(self, rule: HistoryRule) -> int:
        # A history's epoch and offset outlive its messages: a client that saw
        # nothing for a while still resumes (with nothing to replay).
        return int(max(rule.ttl, self.group_expiry) * 1000)

    def _history_send_call(self, group: str, rule: HistoryRule, data: bytes) -> Call:
        keys = (self.keys.group(group), self.keys.group_members(group), self.keys.history(group), self.keys.history_meta(group))
        args = (
            _now_ms(), int(self.group_expiry * 1000), self.random_suffix(8), rule.size, int(rule.ttl * 1000),
            data, self._history_meta_ms(rule),
        )
        return script_call(self._group_shard(group), scripts.HISTORY_SEND, keys, args)

    def _op_group_discard(self, group: str, channel: str) -> Op:
        self.valid_group_name(group)
        self.valid_channel_name(channel)
        yield self._group_remove(group, [channel])

    def _op_group_channels(self, group: str) -> Op:
        self.valid_group_name(group)
        (packed_flat,) = yield [self._members_call(group)]
        return [member for _, joined in _members_by_stored_name(packed_flat) for member in joined.split("\n")]

    def _members_call(self, group: str) -> Call:
        keys = (self.keys.group(group), self.keys.group_members(group))
        return script_call(self._group_shard(group), scripts.GROUP_MEMBERS, keys, (_now_ms(), int(self.group_expiry * 1000)))

    def _group_remove(self, group: str, channels: list[str]) -> list[Call]:
        """ZREM ``channels`` and drop the group's members cache, in one round trip."""
        shard = self._group_shard(group)
        return [Call(shard, ("ZREM", self.keys.group(group), *channels)), Call(shard, ("DEL", self.keys.group_members(group)))]

    def _op_send_group(self, group: str, message: dict) -> Op:
        self.valid_group_name(group)
        data = self.serialize(message)
        rule = self.history.for_group(group)
        if rule is None:
            (packed_flat,) = yield [self._members_call(group)]
            position = ""
        else:  # the group's next offset, then the same stores as any group send
            ((epoch, offset, packed_flat),) = yield [self._history_send_call(group, rule, data)]
            position = f" {group} {epoch.decode()} {offset}"
        by_name = dict(_members_by_stored_name(packed_flat))
        if not by_name:
            return None
        # Each pending item: stored name, its route, its members (the envelope's
        # target), remaining (shard, capacity) tries.
        pending = []
        for name, joined in by_name.items():
            route = self._route(name)
            pending.append((name, route, joined + position, self._send_targets(route)))
        dead: list[str] = []
        while pending:
            now = _now_ms()  # each round's envelopes expire from when they are sent
            expires = now + self._expiry_ms
            by_shard: dict[int, list[tuple[str, _Route, str, tuple[tuple[int, int], ...]]]] = {}
            for item in pending:
                if item[3]:
                    by_shard.setdefault(item[3][0][0], []).append(item)
            if not by_shard:
                break
            shards = list(by_shard)
            calls = [
                self._push(shard, now, [
                    (route.keys, scripts.pack(expires, joined, data), tries[0][1], len(tries) == 1, True)
                    for _, route, joined, tries in by_shard[shard]
                ])
                for shard in shards
            ]
            replies = yield calls
            pending = []
            for shard, statuses in zip(shards, replies):
                for (name, route, joined, tries), status in zip(by_shard[shard], statuses):
                    if status == 2:
                        dead.append(name)
                    elif status == 1 and len(tries) > 1:
                        pending.append((name, route, joined, tries[1:]))
        if dead:
            # Their oldest message expired unread: nobody reads them any more.
            gone = [member for name in dead for member in by_name[name].split("\n")]
            yield self._group_remove(group, gone)
        return None

    def _op_flush(self) -> Op:
        self._local.clear()
        yield [script_call(shard, scripts.FLUSH, (), (self.keys.pattern,)) for shard in range(self._shard_count)]

    def _op_global_statistics(self) -> Op:
        replies = yield [Call(shard, ("HMGET", self.keys.stats, "count", "full")) for shard in range(self._shard_count)]
        return {
            "messages_count": sum(int(reply[0] or 0) for reply in replies),
            "channel_full_count": sum(int(reply[1] or 0) for reply in replies),
        }

    def _op_channel_statistics(self, channel: str) -> Op:
        route = self._route(channel)
        shards = range(self._shard_count) if route.home is None else [route.home]
        now = _now_ms()
        replies = yield [script_call(shard, scripts.STATS, route.keys, (now,)) for shard in shards]
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
        for worker_id, envelope in _field_pairs(stored):
            try:
                expires, _, data = scripts.unpack(envelope)
                if expires > now:
                    beats[worker_id.decode()] = self.deserialize(data)
                    continue
            except Exception as exc:  # noqa: BLE001 - anything in Redis may be garbage
                # One bad entry (written by hand, or by another program) must
                # not make every health check and boot probe fail: drop it.
                self._bad_heartbeat(worker_id, exc)
            stale.append(worker_id)
        if stale:
            yield [Call(0, ("HDEL", self.keys.heartbeats, *stale))]
        return beats
