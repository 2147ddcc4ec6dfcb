"""In-memory channel layer for one process: combined mode, laptops and tests.

One instance is shared by Daphne's event loop and the worker threads of the
combined mode, so every operation takes one lock and blocking receives sleep on
a condition (threads) or a future (asyncio) until a send wakes them: no polling.
A send wakes ONE receiver waiting on that channel, not every waiter: the
interface's loop is not woken by requests meant for the workers, nor the
worker threads by each other's work, and each wakeup costs the GIL.
Messages are stored encoded, so a message changed after ``send`` is not changed
for its receiver, and bytes/str behave exactly as on Redis.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from typing import Any, Iterable

from .base import BaseChannelLayer, ChannelFull
from .history import HistoryRule, HistoryRules, covers, message_meta, notice_meta, valid_since

__all__ = ["InMemoryChannelLayer"]

# (expires_at, full channel name, encoded message)
_Item = tuple[float, str, bytes]


class InMemoryChannelLayer(BaseChannelLayer):
    """A thread-safe, asyncio-safe channel layer living in this process.

    ``blocking_timeout``: how long ``receive(..., block=True)`` waits for a
    message before it returns ``(None, None)``.
    """

    reach = "process"
    extensions = [*BaseChannelLayer.extensions, "history"]

    def __init__(
        self,
        expiry: float = 60,
        group_expiry: float = 86400,
        capacity: int = 100,
        channel_capacity: dict[str, int] | None = None,
        blocking_timeout: float = 1.0,
        history: dict[str, dict] | None = None,
    ) -> None:
        super().__init__(
            expiry=expiry,
            group_expiry=group_expiry,
            capacity=capacity,
            channel_capacity=channel_capacity,
        )
        self.blocking_timeout = blocking_timeout
        self.history = HistoryRules(history)
        # Group -> its history (groups matching CONFIG["history"] only).
        self._histories: dict[str, _History] = {}
        self._lock = threading.Lock()
        # Stored name -> receivers blocked on it, oldest first.
        self._waiters: dict[str, list[_Waiter]] = {}
        # Stored name (a `!` channel's prefix) -> queue of items, oldest first.
        self._channels: dict[str, deque[_Item]] = {}
        # Group -> {channel: membership expires_at}
        self._groups: dict[str, dict[str, float]] = {}
        # Worker id -> (expires_at, info)
        self._heartbeats: dict[str, tuple[float, dict]] = {}
        self._reset_statistics()

    ### Channel layer API ###

    def send(self, channel: str, message: dict) -> None:
        """Put ``message`` on ``channel``; raise ``ChannelFull`` at capacity."""
        self.valid_channel_name(channel)
        data = self.serialize(message)
        with self._lock:
            self._send_locked(channel, data, raise_full=True)

    def receive(self, channels: Iterable[str], block: bool = False) -> tuple[str | None, dict | None]:
        """Take the oldest message from the first of ``channels`` that has one.

        ``!`` channels are given by prefix and reported by full name. With
        ``block=True`` waits up to ``blocking_timeout`` seconds.
        """
        names = self.valid_receive_channels(channels)
        deadline = time.monotonic() + self.blocking_timeout
        waiter = None
        with self._lock:
            try:
                while True:
                    item = self._pop_locked(names)
                    if item is not None:
                        return item[1], self.deserialize(item[2])
                    remaining = deadline - time.monotonic()
                    if not block or remaining <= 0:
                        return None, None
                    if waiter is None:
                        waiter = _Waiter(names, threading.Condition(self._lock))
                    self._wait_on_locked(waiter)
                    waiter.condition.wait(remaining)
            finally:
                if waiter is not None:
                    self._done_waiting_locked(waiter)

    def new_channel(self, pattern: str) -> str:
        """A new, unused channel name: ``pattern`` (ending ``?`` or ``!``) plus a random suffix."""
        self.valid_new_channel_pattern(pattern)
        with self._lock:
            while True:
                name = pattern + self.random_suffix()
                if self.non_local_name(name) not in self._channels:
                    return name

    ### Groups ###

    def group_add(self, group: str, channel: str) -> None:
        """Add ``channel`` to ``group``; the membership lasts ``group_expiry`` seconds."""
        self.valid_group_name(group)
        self.valid_channel_name(channel)
        with self._lock:
            self._groups.setdefault(group, {})[channel] = time.monotonic() + self.group_expiry

    def group_discard(self, group: str, channel: str) -> None:
        """Remove ``channel`` from ``group``; a no-op if it is not a member."""
        self.valid_group_name(group)
        self.valid_channel_name(channel)
        with self._lock:
            members = self._groups.get(group)
            if members is not None:
                members.pop(channel, None)
                if not members:
                    del self._groups[group]

    def group_channels(self, group: str) -> list[str]:
        """The channels currently in ``group``."""
        self.valid_group_name(group)
        with self._lock:
            self._expire_locked()
            return list(self._groups.get(group, ()))

    def send_group(self, group: str, message: dict) -> None:
        """Send ``message`` to every member of ``group``.

        Members at capacity are skipped and counted in statistics
        (``channel_full_count``); this never raises ``ChannelFull``.
        """
        self.valid_group_name(group)
        data = self.serialize(message)
        rule = self.history.for_group(group)
        with self._lock:
            self._expire_locked()
            if rule is not None:
                # The offset is taken under the lock: members get offsets in order.
                history = self._history_locked(group, rule)
                history.latest += 1
                history.entries.append((time.monotonic(), history.latest, data))
                while len(history.entries) > rule.size:
                    history.entries.popleft()
                data = self.serialize({**message, "history": message_meta(group, history.epoch, history.latest)})
            for channel in list(self._groups.get(group, ())):
                self._send_locked(channel, data, raise_full=False)

    def group_join(self, group: str, channel: str, since: tuple[str, int] | None = None) -> bool | None:
        """``group_add`` plus, for a history group, the notice and replay (see the base class), in one step."""
        self.valid_group_name(group)
        self.valid_channel_name(channel)
        since = valid_since(since)
        rule = self.history.for_group(group)
        if rule is None:
            self.group_add(group, channel)
            return None
        with self._lock:
            self._groups.setdefault(group, {})[channel] = time.monotonic() + self.group_expiry
            history = self._history_locked(group, rule)
            first = history.entries[0][1] if history.entries else history.latest + 1
            recovered = covers(since, history.epoch, history.latest, first)
            notice = {"history": notice_meta(group, history.epoch, history.latest, recovered)}
            # A join's notice and replay are bounded by the history size, not the channel's capacity.
            self._send_locked(channel, self.serialize(notice), raise_full=False, bounded=False)
            if recovered:
                for _, offset, data in history.entries:
                    if offset > since[1]:
                        meta = message_meta(group, history.epoch, offset, replayed=True)
                        replay = self.serialize({**self.deserialize(data), "history": meta})
                        self._send_locked(channel, replay, raise_full=False, bounded=False)
        return recovered is not False

    ### Flush, statistics, close ###

    def flush(self) -> None:
        """Drop every message, group and statistic."""
        with self._lock:
            self._channels.clear()
            self._groups.clear()
            self._histories.clear()  # the next message starts a new epoch
            self._heartbeats.clear()
            self._reset_statistics()

    def global_statistics(self) -> dict[str, int]:
        """``messages_count`` (sent) and ``channel_full_count`` over all channels."""
        with self._lock:
            return {
                "messages_count": self._messages_count,
                "channel_full_count": self._channel_full_count,
            }

    def channel_statistics(self, channel: str) -> dict[str, Any]:
        """Counts for one channel (a ``!`` channel is counted by its prefix)."""
        self.valid_channel_name(channel)
        key = self.non_local_name(channel)
        with self._lock:
            now = time.monotonic()
            self._expire_channel_locked(key, now)
            queue = self._channels.get(key) or ()
            oldest = queue[0][0] - self.expiry if queue else now
            return {
                "messages_count": self._per_channel_count.get(key, 0),
                "messages_pending": len(queue),
                "messages_max_age": max(0.0, now - oldest),
                "channel_full_count": self._per_channel_full.get(key, 0),
            }

    ### Worker heartbeats ###

    def heartbeat(self, worker_id: str, info: dict, ttl: float = 30) -> None:
        """Record that worker ``worker_id`` is alive, with ``info``, for ``ttl`` seconds."""
        self.serialize(info)  # same value rules as messages
        with self._lock:
            self._heartbeats[worker_id] = (time.monotonic() + ttl, dict(info))

    def heartbeats(self) -> dict[str, dict]:
        """Live workers' latest heartbeat info, by worker id."""
        with self._lock:
            now = time.monotonic()
            for worker_id, (expires_at, _) in list(self._heartbeats.items()):
                if expires_at <= now:
                    del self._heartbeats[worker_id]
            return {worker_id: dict(info) for worker_id, (_, info) in self._heartbeats.items()}

    def close(self) -> None:
        """Nothing to release; present so every layer can be closed the same way."""

    ### Async API: same operations for an event loop ###

    async def asend(self, channel: str, message: dict) -> None:
        self.send(channel, message)

    async def areceive(self, channels: Iterable[str], block: bool = False) -> tuple[str | None, dict | None]:
        """Like ``receive``; a blocking wait parks on a future, never the loop's thread."""
        names = self.valid_receive_channels(channels)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.blocking_timeout
        while True:
            with self._lock:
                item = self._pop_locked(names)
                if item is not None:
                    return item[1], self.deserialize(item[2])
                remaining = deadline - loop.time()
                if not block or remaining <= 0:
                    return None, None
                waiter = _Waiter(names, future=loop.create_future(), loop=loop)
                self._wait_on_locked(waiter)
            try:
                await asyncio.wait({waiter.future}, timeout=remaining)
            finally:
                with self._lock:
                    self._done_waiting_locked(waiter)

    async def anew_channel(self, pattern: str) -> str:
        return self.new_channel(pattern)

    async def agroup_add(self, group: str, channel: str) -> None:
        self.group_add(group, channel)

    async def agroup_discard(self, group: str, channel: str) -> None:
        self.group_discard(group, channel)

    async def agroup_channels(self, group: str) -> list[str]:
        return self.group_channels(group)

    async def asend_group(self, group: str, message: dict) -> None:
        self.send_group(group, message)

    async def agroup_join(self, group: str, channel: str, since: tuple[str, int] | None = None) -> bool | None:
        return self.group_join(group, channel, since)

    async def aflush(self) -> None:
        self.flush()

    async def aglobal_statistics(self) -> dict[str, int]:
        return self.global_statistics()

    async def achannel_statistics(self, channel: str) -> dict[str, Any]:
        return self.channel_statistics(channel)

    async def aheartbeat(self, worker_id: str, info: dict, ttl: float = 30) -> None:
        self.heartbeat(worker_id, info, ttl)

    async def aheartbeats(self) -> dict[str, dict]:
        return self.heartbeats()

    async def aclose(self) -> None:
        self.close()

    ### Internals (call with self._lock held) ###

    def _reset_statistics(self) -> None:
        self._messages_count = 0
        self._channel_full_count = 0
        self._per_channel_count: dict[str, int] = {}
        self._per_channel_full: dict[str, int] = {}

    def _history_locked(self, group: str, rule: HistoryRule) -> _History:
        """``group``'s history with entries older than its ttl dropped; a new epoch if it has none."""
        history = self._histories.get(group)
        if history is None:
            history = self._histories[group] = _History(self.random_suffix(8))
        oldest = time.monotonic() - rule.ttl
        while history.entries and history.entries[0][0] <= oldest:
            history.entries.popleft()
        return history

    def _send_locked(self, channel: str, data: bytes, raise_full: bool, bounded: bool = True) -> None:
        key = self.non_local_name(channel)
        now = time.monotonic()
        self._expire_channel_locked(key, now)
        queue = self._channels.get(key)
        if queue is None:
            queue = self._channels[key] = deque()
        if bounded and len(queue) >= self.get_capacity(channel):
            self._channel_full_count += 1
            self._per_channel_full[key] = self._per_channel_full.get(key, 0) + 1
            if raise_full:
                raise ChannelFull(channel)
            return
        queue.append((now + self.expiry, channel, data))
        self._messages_count += 1
        self._per_channel_count[key] = self._per_channel_count.get(key, 0) + 1
        if key in self._waiters:
            self._wake_locked(key)

    def _wait_on_locked(self, waiter: _Waiter) -> None:
        """Register ``waiter`` on its names until a send wakes it."""
        waiter.woken = False
        for name in waiter.names:
            self._waiters.setdefault(name, []).append(waiter)

    def _done_waiting_locked(self, waiter: _Waiter) -> None:
        """``waiter`` stops waiting: unregister it, and pass on a wakeup it did not use.

        A receiver woken for one channel may have taken a message from another
        of its channels, or timed out, leaving the message it was woken for:
        the next receiver waiting there gets the wakeup instead.
        """
        for name in waiter.names:
            waiting = self._waiters.get(name)
            if waiting and waiter in waiting:
                waiting.remove(waiter)
                if not waiting:
                    del self._waiters[name]
        if waiter.woken:
            for name in waiter.names:
                if self._channels.get(name):
                    self._wake_locked(name)

    def _wake_locked(self, name: str) -> None:
        """Wake the longest-waiting receiver on ``name`` that is not already woken."""
        waiting = self._waiters.get(name)
        if not waiting:
            return
        for waiter in waiting:
            if not waiter.woken:
                waiter.woken = True
                if waiter.condition is not None:
                    waiter.condition.notify()
                    return
                try:
                    waiter.loop.call_soon_threadsafe(_resolve, waiter.future)
                except RuntimeError:  # that loop is closed; nobody is waiting there
                    continue
                return

    def _pop_locked(self, names: list[str]) -> _Item | None:
        now = time.monotonic()
        for name in names:
            if name in self._channels:
                self._expire_channel_locked(name, now)
                queue = self._channels.get(name)
                if queue:
                    item = queue.popleft()
                    if not queue:
                        self._forget_locked(name)
                    return item
        return None

    def _expire_channel_locked(self, key: str, now: float) -> None:
        queue = self._channels.get(key)
        if not queue:
            return
        # Every message gets the same expiry, so expired ones are at the front.
        while queue and queue[0][0] <= now:
            _, channel, _ = queue.popleft()
            self._drop_from_groups_locked(channel)
        if not queue:
            self._forget_locked(key)

    def _forget_locked(self, key: str) -> None:
        """Drop an emptied channel; a single-reader ``?`` channel (one per upload, per
        conversation) takes its counters along, or they would grow by one per request forever."""
        del self._channels[key]
        if "?" in key:
            self._per_channel_count.pop(key, None)
            self._per_channel_full.pop(key, None)

    def _expire_locked(self) -> None:
        now = time.monotonic()
        for key in list(self._channels):
            self._expire_channel_locked(key, now)
        for group in list(self._groups):
            members = self._groups[group]
            for channel, expires_at in list(members.items()):
                if expires_at <= now:
                    del members[channel]
            if not members:
                del self._groups[group]

    def _drop_from_groups_locked(self, channel: str) -> None:
        # A message left to expire means nobody reads that channel any more:
        # stop sending it group messages (ASGI 1.0 group semantics).
        for group in list(self._groups):
            members = self._groups[group]
            if members.pop(channel, None) is not None and not members:
                del self._groups[group]


class _History:
    """One group's history: its epoch, last offset and ``(stored at, offset, message)`` entries."""

    __slots__ = ("epoch", "latest", "entries")

    def __init__(self, epoch: str) -> None:
        self.epoch = epoch
        self.latest = 0
        self.entries: deque[tuple[float, int, bytes]] = deque()


class _Waiter:
    """A blocked receive: a thread on its own condition (of the layer's lock) or a coroutine on a future."""

    __slots__ = ("names", "condition", "future", "loop", "woken")

    def __init__(
        self,
        names: list[str],
        condition: threading.Condition | None = None,
        future: asyncio.Future | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.names = names
        self.condition = condition
        self.future = future
        self.loop = loop
        self.woken = False


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)
