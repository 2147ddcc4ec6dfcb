"""Group histories as the RabbitMQ sequencer keeps them: sans-IO, rebuilt from the history stream.

The sequencer (:mod:`.sequencer`) is the one process that numbers history
messages.  What it knows lives here, in memory: per group the epoch, the last
offset, when it last changed, and the last ``size`` messages of the last
``ttl`` seconds.  Every change it makes is also a record in the history
stream, so that the process that takes over after it rebuilds exactly this
state by feeding the stream's records in order (:meth:`HistoryState.feed`):

* ``["e", group, epoch, offset, ms, msg_id, size, ttl_ms, data]`` — a message
  (``data`` as the sender encoded it, without its position);
* ``["c", ms, [[group, epoch, latest, last_ms, size, ttl_ms], ...]]`` — a
  checkpoint: the position of groups, so that a group whose messages are
  older than the stream's window keeps its epoch and offset (a client that
  missed nothing still resumes) for ``max(ttl, group_expiry)`` like Redis;
* ``["f", ms]`` — a flush: every history is forgotten (new epochs);
* ``["s", marker]`` — a marker a catching-up process waits to read back.

The sender's rule (``size``, ``ttl``) travels with each message, so a
sequencer whose own settings differ (mid-deploy) keeps each group as its
senders asked.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, NamedTuple

from ..history import covers

__all__ = ["GroupLog", "HistoryState", "Joined"]

# Message ids kept for telling a redelivered request from a new one.
_MAX_IDS = 100_000
# Groups per checkpoint record (a record stays well under a megabyte).
_CHECKPOINT_CHUNK = 2_000


class GroupLog:
    """One group's history: epoch, last offset, and ``(offset, ms, data)`` entries, oldest first."""

    __slots__ = ("epoch", "latest", "last_ms", "size", "ttl_ms", "entries")

    def __init__(self, epoch: str, latest: int, last_ms: int, size: int, ttl_ms: int) -> None:
        self.epoch = epoch
        self.latest = latest
        self.last_ms = last_ms
        self.size = size
        self.ttl_ms = ttl_ms
        self.entries: deque[tuple[int, int, bytes]] = deque()

    def trim(self, now_ms: int) -> None:
        entries = self.entries
        while len(entries) > self.size:
            entries.popleft()
        oldest = now_ms - self.ttl_ms
        while entries and entries[0][1] <= oldest:
            entries.popleft()

    def first(self) -> int:
        """The oldest offset still held (``latest + 1`` when none is)."""
        return self.entries[0][0] if self.entries else self.latest + 1

    def add(self, offset: int, ms: int, data: bytes) -> None:
        if offset != self.latest + 1:  # not contiguous with what is held: a replay must not skip
            self.entries.clear()
        self.entries.append((offset, ms, data))
        self.latest = offset
        self.last_ms = ms


class Joined(NamedTuple):
    """What a join is given: the group's position, whether the gap is covered, and the replay."""

    epoch: str
    latest: int
    recovered: bool | None
    replay: list[tuple[int, bytes]]


class HistoryState:
    """Every group's history, changed by sequencing (:meth:`append`, :meth:`join`) or by records (:meth:`feed`).

    ``new_epoch()`` makes an epoch name; ``meta_ms`` is how long a group's
    position outlives its last message at least (the layer's
    ``group_expiry``; a group's own ``ttl`` when longer).
    """

    def __init__(self, new_epoch: Callable[[], str], meta_ms: int) -> None:
        self._new_epoch = new_epoch
        self.meta_ms = meta_ms
        self.groups: dict[str, GroupLog] = {}
        # msg id -> (epoch, offset) of recently sequenced messages, oldest first
        self.ids: dict[str, tuple[str, int]] = {}

    ### Sequencing (the active sequencer) ###

    def log(self, group: str, size: int, ttl_ms: int, now_ms: int) -> GroupLog:
        """``group``'s history, trimmed; a new epoch when it has none (or its position expired)."""
        log = self.groups.get(group)
        if log is not None and now_ms - log.last_ms > max(log.ttl_ms, self.meta_ms):
            log = None
        if log is None:
            log = self.groups[group] = GroupLog(self._new_epoch(), 0, now_ms, size, ttl_ms)
        log.size, log.ttl_ms = size, ttl_ms
        log.trim(now_ms)
        return log

    def append(self, group: str, size: int, ttl_ms: int, msg_id: str, data: bytes, now_ms: int) -> tuple[str, int, list]:
        """Give a message the group's next offset: ``(epoch, offset, stream record)``."""
        log = self.log(group, size, ttl_ms, now_ms)
        offset = log.latest + 1
        log.add(offset, now_ms, data)
        log.trim(now_ms)
        self._remember(msg_id, log.epoch, offset)
        return log.epoch, offset, ["e", group, log.epoch, offset, now_ms, msg_id, size, ttl_ms, data]

    def join(self, group: str, size: int, ttl_ms: int, since: tuple[str, int] | None, now_ms: int) -> tuple[Joined, list | None]:
        """The join's notice position and replay at this point of the sequence.

        Also the record to append when the join made the group's epoch (so
        that a later sequencer keeps it), else ``None``.
        """
        before = self.groups.get(group)
        log = self.log(group, size, ttl_ms, now_ms)
        recovered = covers(since, log.epoch, log.latest, log.first())
        replay = [(offset, data) for offset, _, data in log.entries if offset > since[1]] if recovered else []
        record = ["c", now_ms, [self._meta(group, log)]] if log is not before else None
        return Joined(log.epoch, log.latest, recovered, replay), record

    def sequenced(self, msg_id: str) -> tuple[str, int] | None:
        """``(epoch, offset)`` of a message already sequenced (a redelivered request), else ``None``."""
        return self.ids.get(msg_id)

    def clear(self) -> None:
        self.groups.clear()

    def checkpoint(self, now_ms: int) -> list[list]:
        """Records holding every live group's position; groups whose position expired are dropped."""
        for group in [group for group, log in self.groups.items()
                      if now_ms - log.last_ms > max(log.ttl_ms, self.meta_ms)]:
            del self.groups[group]
        metas = [self._meta(group, log) for group, log in self.groups.items()]
        return [["c", now_ms, metas[i:i + _CHECKPOINT_CHUNK]] for i in range(0, len(metas), _CHECKPOINT_CHUNK)]

    @staticmethod
    def _meta(group: str, log: GroupLog) -> list:
        return [group, log.epoch, log.latest, log.last_ms, log.size, log.ttl_ms]

    def _remember(self, msg_id: str, epoch: str, offset: int) -> None:
        ids = self.ids
        ids[msg_id] = (epoch, offset)
        if len(ids) > _MAX_IDS:  # dicts keep insertion order: drop the oldest tenth
            for old in list(ids)[: _MAX_IDS // 10]:
                del ids[old]

    ### Catching up (a process about to sequence) ###

    def feed(self, record: Any) -> None:
        """Apply one record of the history stream, in stream order; anything unreadable is skipped."""
        if not isinstance(record, list) or not record:
            return
        kind = record[0]
        if kind == "e" and len(record) >= 9:
            _, group, epoch, offset, ms, msg_id, size, ttl_ms, data = record[:9]
            log = self.groups.get(group)
            if log is None or log.epoch != epoch or offset <= log.latest:
                if log is not None and log.epoch == epoch:
                    return  # already had it
                log = self.groups[group] = GroupLog(epoch, offset - 1, ms, size, ttl_ms)
            log.size, log.ttl_ms = size, ttl_ms
            log.add(offset, ms, data)
            log.trim(ms)
            self._remember(msg_id, epoch, offset)
        elif kind == "c" and len(record) >= 3 and isinstance(record[2], list):
            for meta in record[2]:
                self._feed_meta(meta)
        elif kind == "f":
            self.groups.clear()

    def _feed_meta(self, meta: Any) -> None:
        if not isinstance(meta, list) or len(meta) < 6:
            return
        group, epoch, latest, last_ms, size, ttl_ms = meta[:6]
        log = self.groups.get(group)
        if log is not None and log.epoch == epoch and log.latest >= latest:
            return  # what the stream already told (a checkpoint says nothing newer than the entries before it)
        if log is None or log.epoch != epoch:
            log = self.groups[group] = GroupLog(epoch, latest, last_ms, size, ttl_ms)
        else:  # entries were missed: keep the position, not a replay with a hole
            log.entries.clear()
            log.latest, log.last_ms = latest, last_ms

    def trim_all(self, now_ms: int) -> None:
        for log in self.groups.values():
            log.trim(now_ms)
