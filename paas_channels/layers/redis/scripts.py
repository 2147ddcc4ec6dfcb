"""Lua scripts, key scheme and stored-message envelope of the Redis channel layer.

Shared by the sync and async sides: only the I/O differs between them.

Keys (``P`` is the layer's prefix; every key of a layer starts with ``P:``):

* ``P:c:<name>``   list of envelopes for a normal or ``?`` channel, or for a
  whole ``!`` inbox (``<name>`` is then the part up to and including ``!``);
* ``P:g:<group>``  sorted set: member channel -> membership expiry (ms);
* ``P:gm:<group>`` the group's members grouped by stored name (a cache, see
  :data:`GROUP_MEMBERS`);
* ``P:s``          hash of this shard's global counters (``count``, ``full``);
* ``P:s:<name>``   hash of one stored channel's counters on this shard;
* ``P:hb``         hash of worker id -> envelope of heartbeat info (first shard);
* ``P:h:<group>``  list: a history group's last messages, oldest first, each
  ``13 digits of the time it was stored (ms)`` + the encoded message; their
  offsets are consecutive, the last one's is ``latest`` (see :data:`HISTORY_SEND`);
* ``P:hm:<group>`` hash: the history's ``epoch`` and ``latest`` offset.

An envelope is ``13 ASCII digits of expiry (ms since the epoch)`` + ``8 hex
digits: length of T`` + ``T`` (msgpack str: the full channel name, or for a
group send to an inbox its member channels joined by newlines, which no name
contains) + the msgpack message.  Lua
reads only the first 13 bytes, so scripts stay cheap whatever the message.

A message to a history group carries its position after the target, space
separated (no name contains a space): ``members group epoch offset``.  A
join's envelope (:data:`GROUP_JOIN`) names one channel and ends with the
outcome, ``channel group epoch latest R`` (R: ``1`` recovered, ``0`` not,
``-`` not asked); its message part is blocks of ``8 hex digits of length`` +
encoded message: the notice, then the replayed messages, whose offsets end at
``latest``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import msgpack

__all__ = [
    "Script", "pack_target", "pack_packed", "PUSH", "TAKE_BACK", "POP", "STATS", "GROUP_ADD", "GROUP_MEMBERS",
    "GROUP_JOIN", "HISTORY_SEND", "FLUSH", "Keys", "pack", "unpack", "blocks",
]

_HEADER = 21  # 13 digits of expiry + 8 hex digits of target length


def pack(expires_ms: int, target: str, data: bytes) -> bytes:
    """An envelope: expiry, target channel(s), encoded message."""
    return pack_packed(expires_ms, pack_target(target), data)


def pack_target(target: str) -> bytes:
    """The envelope's target part, for :func:`pack_packed`: sends to one channel reuse it."""
    return msgpack.packb(target, use_bin_type=True)


def pack_packed(expires_ms: int, packed_target: bytes, data: bytes) -> bytes:
    return b"%013d%08x" % (expires_ms, len(packed_target)) + packed_target + data


def unpack(envelope: bytes) -> tuple[int, str, bytes]:
    """``(expires_ms, target(s), encoded message)`` from an envelope."""
    length = int(envelope[13:_HEADER], 16)
    target = msgpack.unpackb(envelope[_HEADER : _HEADER + length], raw=False)
    return int(envelope[:13]), target, envelope[_HEADER + length :]


def blocks(data: bytes) -> list[bytes]:
    """The encoded messages of a join envelope's message part (see :data:`GROUP_JOIN`)."""
    out, pos, end = [], 0, len(data)
    while pos < end:
        length = int(data[pos : pos + 8], 16)
        out.append(data[pos + 8 : pos + 8 + length])
        pos += 8 + length
    return out


def expires_of(envelope: bytes) -> int:
    return int(envelope[:13])


@dataclass(frozen=True)
class Script:
    """A Lua script run by SHA (``EVALSHA``), re-sent with ``EVAL`` when Redis lost it."""

    name: str
    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())


class Keys:
    """The key scheme of one layer prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.stats = f"{prefix}:s"
        self.heartbeats = f"{prefix}:hb"
        self.pattern = f"{prefix}:*"

    def channel(self, name: str) -> str:
        return f"{self.prefix}:c:{name}"

    def channel_stats(self, name: str) -> str:
        return f"{self.prefix}:s:{name}"

    def group(self, name: str) -> str:
        return f"{self.prefix}:g:{name}"

    def group_members(self, name: str) -> str:
        return f"{self.prefix}:gm:{name}"

    def history(self, name: str) -> str:
        return f"{self.prefix}:h:{name}"

    def history_meta(self, name: str) -> str:
        return f"{self.prefix}:hm:{name}"


# Expired messages sit at the head (all messages of a layer share one expiry),
# so trimming the head is enough to free their capacity.
_TRIM = """
local function expired_head(key, now)
  local head = redis.call('LINDEX', key, 0)
  return head and tonumber(string.sub(head, 1, 13)) <= now
end
local function trim(key, n, now)
  while n > 0 and expired_head(key, now) do
    redis.call('LPOP', key)
    n = n - 1
  end
  return n
end
"""

#: Store envelopes on this shard, one per list key, checking capacity: the
#: group send, which stores one envelope per member inbox.
#: KEYS: global stats, then (list, list stats) per envelope.
#: ARGV: now ms, list ttl ms, stats ttl ms, then (envelope, capacity,
#: count_full 0/1, check_dead 0/1) per envelope.
#: Returns one status per envelope: 0 stored, 1 full, 2 dead (its oldest
#: message expired unread: nobody reads it; nothing stored).
#: Pushes first and takes the message back when that went over capacity
#: (nothing runs between the two): the common case costs no LLEN.
#: Only ``!``/``?`` keys expire (see :data:`TAKE_BACK`); a ``?`` channel's
#: statistics with its list (list ttl), a ``!`` inbox's after the stats ttl.
PUSH = Script("push", _TRIM + """
local now = tonumber(ARGV[1])
local statuses = {}
for i = 2, #KEYS, 2 do
  local key, stats = KEYS[i], KEYS[i + 1]
  local a = (i - 2) * 2 + 4
  local volatile = string.find(key, '[!?]')
  local single = string.find(key, '?', 1, true)  -- a ? channel's stats live as long as its list
  local status = 0
  local n = ARGV[a + 3] == '1' and redis.call('LLEN', key) or 0
  if n > 0 and expired_head(key, now) then  -- LLEN first: a live inbox is empty
    trim(key, n, now)
    status = 2
  else
    local capacity = tonumber(ARGV[a + 1])
    n = redis.call('RPUSH', key, ARGV[a])
    if n > capacity then
      redis.call('RPOP', key)
      if trim(key, n - 1, now) < capacity then
        redis.call('RPUSH', key, ARGV[a])
      else
        status = 1
      end
    end
    if status == 1 then
      if ARGV[a + 2] == '1' then
        redis.call('HINCRBY', stats, 'full', 1)
        if volatile then redis.call('PEXPIRE', stats, single and ARGV[2] or ARGV[3]) end
        redis.call('HINCRBY', KEYS[1], 'full', 1)
      end
    else
      if volatile then redis.call('PEXPIRE', key, ARGV[2]) end
      redis.call('HINCRBY', stats, 'count', 1)
      if volatile then redis.call('PEXPIRE', stats, single and ARGV[2] or ARGV[3]) end
      redis.call('HINCRBY', KEYS[1], 'count', 1)
    end
  end
  statuses[#statuses + 1] = status
end
return statuses
""")

#: A plain send is a pipeline, not a script (a script costs more than the
#: commands it runs): ``RPUSH``, counters, and for ``!``/``?`` keys their
#: expiry.  ``RPUSH`` answers the new length; when that is over capacity the
#: sender takes its message back with this script, in a second round trip.
#: Normal channels' lists and counters never expire: their names are few
#: (the routed channels), their messages carry their own expiry and at most
#: ``capacity`` of them are kept.
#: KEYS: list, list stats, global stats.  ARGV: envelope, capacity, now ms,
#: count_full 0/1.  Returns 0 stored after all (a receiver took it first, or
#: expired messages made room), 1 full (taken back, counted).
TAKE_BACK = Script("take_back", _TRIM + """
local key, stats = KEYS[1], KEYS[2]
if redis.call('LREM', key, -1, ARGV[1]) == 0 then return 0 end
if trim(key, redis.call('LLEN', key), tonumber(ARGV[3])) < tonumber(ARGV[2]) then
  redis.call('RPUSH', key, ARGV[1])
  return 0
end
redis.call('HINCRBY', stats, 'count', -1)
redis.call('HINCRBY', KEYS[3], 'count', -1)
if ARGV[4] == '1' then
  redis.call('HINCRBY', stats, 'full', 1)
  redis.call('HINCRBY', KEYS[3], 'full', 1)
end
return 1
""")

#: Pop the oldest unexpired envelope from the first of KEYS that has one.
#: ARGV: now ms.  Returns {key index (1-based), envelope} or nil.
POP = Script("pop", """
local now = tonumber(ARGV[1])
for i = 1, #KEYS do
  while true do
    local item = redis.call('LPOP', KEYS[i])
    if not item then break end
    if tonumber(string.sub(item, 1, 13)) > now then return {i, item} end
  end
end
return nil
""")

#: Counters of one stored channel on this shard.  KEYS: list, list stats.
#: ARGV: now ms.  Returns {count, full, pending, oldest expiry ms or -1}.
STATS = Script("stats", _TRIM + """
local now = tonumber(ARGV[1])
local n = trim(KEYS[1], redis.call('LLEN', KEYS[1]), now)
local oldest = -1
if n > 0 then oldest = tonumber(string.sub(redis.call('LINDEX', KEYS[1], 0), 1, 13)) end
local counts = redis.call('HMGET', KEYS[2], 'count', 'full')
return {tonumber(counts[1]) or 0, tonumber(counts[2]) or 0, n, oldest}
""")

#: KEYS: group, its members cache.  ARGV: member, membership expiry ms, key ttl ms.
#: A new member drops the cache; a renewed one leaves it.
GROUP_ADD = Script("group_add", """
if redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1]) == 1 then redis.call('DEL', KEYS[2]) end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
""")

#: KEYS: group, its members cache.  ARGV: now ms, cache ttl ms.  Drops expired
#: memberships and returns the rest grouped by stored name, as one msgpack
#: array: {name, members joined by newlines, ...}.
#: Grouping here costs a fraction of what it costs in Python for thousands
#: of members, and the reply is two strings per inbox, not one per member.
#: The grouping is kept (``P:gm:<group>``) until the membership changes:
#: every group add, discard or expiry drops it, so a broadcast to a large,
#: steady group does not group its members again.
_MEMBERS = """
local function group_members(group, cache, now, cache_ttl)
local removed = redis.call('ZREMRANGEBYSCORE', group, '-inf', now)
if removed == 0 then
  local cached = redis.call('GET', cache)
  if cached then return cached end
end
local order, groups = {}, {}
for _, member in ipairs(redis.call('ZRANGE', group, 0, -1)) do
  local bang = string.find(member, '!', 1, true)
  local name = member
  if bang then name = string.sub(member, 1, bang) end
  local same = groups[name]
  if not same then
    same = {}
    groups[name] = same
    order[#order + 1] = name
  end
  same[#same + 1] = member
end
local out = {}
for _, name in ipairs(order) do
  out[#out + 1] = name
  out[#out + 1] = table.concat(groups[name], '\\n')
end
local packed = cmsgpack.pack(out)
if #out > 0 then redis.call('SET', cache, packed, 'PX', cache_ttl) else redis.call('DEL', cache) end
return packed
end
"""
GROUP_MEMBERS = Script("group_members", _MEMBERS + """
return group_members(KEYS[1], KEYS[2], ARGV[1], ARGV[2])
""")

# A history's entries older than its ttl are at the head (stored in time order).
_HISTORY = """
local function trim_history(key, oldest)
  while true do
    local head = redis.call('LINDEX', key, 0)
    if not head or tonumber(string.sub(head, 1, 13)) > oldest then return end
    redis.call('LPOP', key)
  end
end
local function history_meta(meta, epoch, meta_ttl)
  redis.call('HSETNX', meta, 'epoch', epoch)
  redis.call('PEXPIRE', meta, meta_ttl)
  return redis.call('HGET', meta, 'epoch')
end
"""

#: A send to a history group, first round trip (on the group's shard): take the
#: group's next offset, keep the message in its history, and read the members
#: as :data:`GROUP_MEMBERS` does; the envelopes are then stored by :data:`PUSH`.
#: KEYS: group, members cache, history, history meta.  ARGV: now ms, cache ttl
#: ms, epoch if the history has none, size, ttl ms, encoded message, meta ttl ms.
#: Returns {epoch, offset, members as GROUP_MEMBERS returns them}.
HISTORY_SEND = Script("history_send", _MEMBERS + _HISTORY + """
local now = tonumber(ARGV[1])
local epoch = history_meta(KEYS[4], ARGV[3], ARGV[7])
local offset = redis.call('HINCRBY', KEYS[4], 'latest', 1)
redis.call('RPUSH', KEYS[3], string.format('%013d', now) .. ARGV[6])
redis.call('LTRIM', KEYS[3], -tonumber(ARGV[4]), -1)
trim_history(KEYS[3], now - tonumber(ARGV[5]))
redis.call('PEXPIRE', KEYS[3], ARGV[5])
return {epoch, offset, group_members(KEYS[1], KEYS[2], ARGV[1], ARGV[2])}
""")

#: Join a history group and, in the same step, make the join's envelope: the
#: notice, then (when ``since`` is covered) every message after it.  When the
#: joining channel's list is on this shard the envelope is stored here, so
#: nothing sent to the group can come between the replay and the live
#: messages; otherwise it is returned for the caller to store.
#: KEYS: group, members cache, history, history meta, the channel's list.
#: ARGV: member, membership expiry ms, group ttl ms, now ms, epoch if none,
#: history ttl ms, meta ttl ms, since epoch ('' to not resume), since offset,
#: store here 0/1, envelope expiry ms, list ttl ms, group name, encoded notice.
#: Returns {R} (stored) or {R, envelope}; R is '1', '0' or '-'.
GROUP_JOIN = Script("group_join", _HISTORY + """
if redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1]) == 1 then redis.call('DEL', KEYS[2]) end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
local now = tonumber(ARGV[4])
local epoch = history_meta(KEYS[4], ARGV[5], ARGV[7])
local latest = tonumber(redis.call('HGET', KEYS[4], 'latest') or '0')
trim_history(KEYS[3], now - tonumber(ARGV[6]))
local first = latest - redis.call('LLEN', KEYS[3]) + 1
local blocks = {string.format('%08x', #ARGV[14]), ARGV[14]}
local recovered = '-'
if ARGV[8] ~= '' then
  local since = tonumber(ARGV[9])
  if ARGV[8] == epoch and since <= latest and since + 1 >= first then
    recovered = '1'
    for _, entry in ipairs(redis.call('LRANGE', KEYS[3], since + 1 - first, -1)) do
      blocks[#blocks + 1] = string.format('%08x', #entry - 13)
      blocks[#blocks + 1] = string.sub(entry, 14)
    end
  else
    recovered = '0'
  end
end
local target = cmsgpack.pack(ARGV[1] .. ' ' .. ARGV[13] .. ' ' .. epoch .. ' ' .. string.format('%d', latest) .. ' ' .. recovered)
local envelope = string.format('%013d%08x', tonumber(ARGV[11]), #target) .. target .. table.concat(blocks)
if ARGV[10] == '1' then
  redis.call('RPUSH', KEYS[5], envelope)
  if string.find(KEYS[5], '[!?]') then redis.call('PEXPIRE', KEYS[5], ARGV[12]) end
  return {recovered}
end
return {recovered, envelope}
""")

#: ARGV: key pattern.  Unlinks every key of the layer on this shard.
FLUSH = Script("flush", """
local cursor = '0'
local n = 0
repeat
  local reply = redis.call('SCAN', cursor, 'MATCH', ARGV[1], 'COUNT', 1000)
  cursor = reply[1]
  for _, key in ipairs(reply[2]) do
    redis.call('UNLINK', key)
    n = n + 1
  end
until cursor == '0'
return n
""")
