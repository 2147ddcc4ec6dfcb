"""Groups and worker heartbeats, kept in two RabbitMQ streams and rebuilt in every process.

RabbitMQ has no shared key-value store, and its bindings cannot be listed
over AMQP, so membership is a log: ``group_add``/``group_discard``/``flush``
and heartbeats are records appended to a stream (``<prefix>::groups``,
``<prefix>::beats``), and each process that reads groups follows the stream
with one consumer and keeps the resulting state in memory (:class:`State`,
sans-IO).  A process starts reading at "now minus the longest a record can
matter" (``group_expiry``; a heartbeat's window), so a new process replays
only what can still be live, and waits for a marker it wrote itself to come
back before it answers (it has then seen everything written before it).

A process sees its own writes at once (they are applied when the broker
confirms them) and another process's within the time a stream delivery takes
(about a millisecond on one broker).  Records are applied in stream order;
a record of another process for a key on which this process has a write
still on its way through the stream is older than that write and is skipped,
so the local view never steps back.

Group messages that expire unread are dead-lettered (through the
``<prefix>::dead`` headers exchange, group messages only) into the queue
``<prefix>::expired``, which the processes reading groups consume; the one
that gets such a message writes an ``x`` record, and every process then
drops the members it was for (unless added again since), as the Redis layer
drops a member whose message expired unread.  (RabbitMQ 3.10 does not
dead-letter into a stream, hence the queue in between.)
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import logging
import time
from typing import Any, Awaitable, Callable

import msgpack

from .connection import ChannelLayerConnectionError

__all__ = ["Registry", "State", "STREAM_ARGUMENTS"]

logger = logging.getLogger(__name__)

#: Fixed, so that processes with different settings declare the same stream.
#: Retention is per segment, hence the small segments.
STREAM_ARGUMENTS = {
    "groups": {"x-queue-type": "stream", "x-max-age": "7D", "x-stream-max-segment-size-bytes": 4_000_000},
    "beats": {"x-queue-type": "stream", "x-max-age": "1h", "x-stream-max-segment-size-bytes": 1_000_000},
}
# Heartbeats older than this are not replayed by a new process (a worker beats every few seconds).
BEATS_WINDOW = 600
_PREFETCH = 500
_ACK_EVERY = 100
_SWEEP_EVERY = 10_000
_MAX_ORIGINS = 10_000
_RESUME_CHECK = 3.0  # seconds for a marker to come back to a follower resumed after a reconnect


def _now_ms() -> int:
    return int(time.time() * 1000)


class State:
    """Group members and heartbeats built from records; no I/O.

    A record is ``[origin, seq, op, *args]``: ``a`` group channel ms (add),
    ``d`` group [channels] (discard), ``x`` group [channels] sent_ms (their
message expired unread), ``f`` (flush), ``h`` worker expires_ms
    info (heartbeat), ``s`` (a marker).  A dead-lettered group message is
    ``[expires_ms, targets, data, group, sent_ms]`` and drops its targets
    that were not added again since it was sent.
    """

    def __init__(self, origin: str, group_expiry: float) -> None:
        self.origin = origin
        self.group_expiry_ms = int(group_expiry * 1000)
        self.groups: dict[str, dict[str, int]] = {}
        self.beats: dict[str, tuple[int, bytes]] = {}
        self.echoed = 0  # the highest of this process's seqs seen in the stream
        self.seen: dict[str, int] = {}  # origin -> the highest of its seqs seen in the stream
        self.last_local = (0, 0)  # (seq, ms) of this process's latest write
        self._pending: dict[tuple, int] = {}
        self.applied = 0  # records fed: how a long replay shows it makes progress

    ### Writes of this process (applied when the broker confirmed them) ###

    def local(self, record: list) -> None:
        seq = record[1]
        self.last_local = (seq, _now_ms())
        self._apply(record)
        if seq > self.echoed:
            for key in self._keys(record):
                self._pending[key] = max(seq, self._pending.get(key, 0))

    ### Records from the stream ###

    def feed(self, record: Any) -> None:
        if not isinstance(record, list) or len(record) < 3:
            return
        origin, seq = record[0], record[1]
        if seq > self.seen.get(origin, 0):
            if origin not in self.seen and len(self.seen) >= _MAX_ORIGINS:
                del self.seen[next(iter(self.seen))]  # the oldest process seen
            self.seen[origin] = seq
        keys = self._keys(record)
        if origin == self.origin:
            self.echoed = max(self.echoed, seq)
            later = False
            for key in keys:
                pending = self._pending.get(key)
                if pending is not None and pending <= seq:
                    del self._pending[key]
                elif pending is not None:
                    later = True
            if not later:
                self._apply(record)
        elif not any(key in self._pending for key in keys) and ("f",) not in self._pending:
            self._apply(record)
        self.applied += 1
        if self.applied % _SWEEP_EVERY == 0:
            self._sweep()

    @staticmethod
    def _keys(record: list) -> list[tuple]:
        op = record[2]
        if op == "a":
            return [("g", record[3], record[4])]
        if op == "d":
            return [("g", record[3], channel) for channel in record[4]]
        if op == "h":
            return [("h", record[3])]
        if op == "f":
            return [("f",)]
        return []

    def _apply(self, record: list) -> None:
        op = record[2]
        if op == "a":
            self.groups.setdefault(record[3], {})[record[4]] = record[5]
        elif op == "d":
            members = self.groups.get(record[3])
            if members is not None:
                for channel in record[4]:
                    members.pop(channel, None)
                if not members:
                    del self.groups[record[3]]
        elif op == "x":
            self._expired(record[3], record[4], record[5])
        elif op == "h":
            self.beats[record[3]] = (record[4], record[5])
        elif op == "f":
            self.groups.clear()
            self.beats.clear()
            if record[0] == self.origin:
                self._pending = {key: seq for key, seq in self._pending.items() if seq > record[1]}

    def _expired(self, group: str, channels: list[str], sent_ms: int) -> None:
        members = self.groups.get(group)
        if not members:
            return
        for channel in channels:
            added = members.get(channel)
            if added is not None and added <= sent_ms:
                del members[channel]
        if not members:
            del self.groups[group]

    ### Reads ###

    def members(self, group: str) -> dict[str, int]:
        """``{channel: added ms}`` of ``group``'s live members (expired ones are dropped here)."""
        members = self.groups.get(group)
        if not members:
            return {}
        oldest = _now_ms() - self.group_expiry_ms
        dead = [channel for channel, added in members.items() if added <= oldest]
        for channel in dead:
            del members[channel]
        if not members:
            del self.groups[group]
        return members

    def reset(self) -> None:
        """Forget every group and heartbeat (the stream they came from is gone)."""
        self.groups.clear()
        self.beats.clear()
        self._pending.clear()

    def live_beats(self) -> dict[str, bytes]:
        now = _now_ms()
        return {worker: info for worker, (expires, info) in self.beats.items() if expires > now}

    def _sweep(self) -> None:
        for group in list(self.groups):
            self.members(group)
        now = _now_ms()
        for worker in [worker for worker, (expires, _) in self.beats.items() if expires <= now]:
            del self.beats[worker]


class Registry:
    """One stream, followed by this process: writes records, keeps :class:`State`.

    Runs on the layer's loop.  ``publish(ops_channel, record_body)`` is the
    layer's confirmed publish; the consumer is (re)started by :meth:`follow`
    on every connection, from the offset after the last record seen.
    """

    def __init__(self, stream: str, state: State, window: float,
                 publish: Callable[[str, bytes], Awaitable[None]]) -> None:
        self.stream = stream
        self.state = state
        self.window = window
        self._publish = publish
        self._seq = itertools.count(1)
        self._next_offset: int | None = None
        self.following = False
        self._ready: asyncio.Future | None = None
        self._marker = 0
        self._waiters: list[tuple[str, int, asyncio.Future]] = []  # (origin, seq): until it is seen
        self._unacked = 0
        self._consumer: tuple[Any, str] | None = None
        self._resumed = False  # following from an offset of an earlier connection

    def record(self, op: str, *args: Any) -> list:
        return [self.state.origin, next(self._seq), op, *args]

    async def write(self, record: list) -> None:
        """Append ``record`` and apply it here once the broker has it."""
        await self._publish(self.stream, msgpack.packb(record, use_bin_type=True))
        self.state.local(record)

    async def write_as(self, record: list) -> None:
        """Append a ``record`` made by another process (the history sequencer writes a join's
        membership for its joiner) and apply it here at once; the joiner applies it as its own."""
        if record[0] == self.state.origin:
            return await self.write(record)
        await self._publish(self.stream, msgpack.packb(record, use_bin_type=True))
        self.state.feed(record)

    async def follow(self, channel: Any) -> None:
        """Start (or restart, after a reconnect) the consumer of the stream on ``channel``."""
        if self._next_offset is None:
            start: Any = datetime.datetime.fromtimestamp(time.time() - self.window - 1, tz=datetime.timezone.utc)
        else:
            start = self._next_offset
        self._unacked = 0
        await channel.basic_qos(prefetch_count=_PREFETCH)
        ok = await channel.basic_consume(self.stream, self._on_record, no_ack=False,
                                         arguments={"x-stream-offset": start})
        self._consumer = (channel, ok.consumer_tag)
        self._resumed = self._next_offset is not None
        self.following = True

    async def _read_again(self) -> None:
        """The stream gave nothing from the offset this process resumed at: it was made again (a
        broker that lost its data).  What it said is gone: read the new one as a new process would."""
        logger.warning("the stream %s has nothing after offset %s since the reconnect: it was made again (the "
                       "broker lost its data?); its groups and heartbeats are gone, reading it anew",
                       self.stream, self._next_offset)
        channel, tag = self._consumer
        await channel.basic_cancel(tag)
        self._next_offset = None
        self.state.reset()
        await self.follow(channel)

    def lost(self, error: BaseException) -> None:
        self.following = False
        for _, _, waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(error)
        self._waiters.clear()
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(error)
            self._ready.exception()  # seen: nobody may be waiting
        self._ready = None

    def is_ready(self) -> bool:
        ready = self._ready
        return ready is not None and ready.done() and not ready.cancelled() and ready.exception() is None

    async def ready(self, start: Callable[[], Awaitable[None]], timeout: float) -> State:
        """The state, once this process has caught up with the stream (first call: replay)."""
        if self.is_ready():
            return self.state
        if self._ready is None:
            self._ready = asyncio.get_running_loop().create_future()
            asyncio.ensure_future(self._catch_up(start, self._ready))
        ready = self._ready
        while True:  # a long replay is fine while it makes progress; a stalled one is an error
            seen = self.state.applied
            try:
                await asyncio.wait_for(asyncio.shield(ready), timeout)
                return self.state
            except asyncio.TimeoutError:
                if self.state.applied == seen:
                    raise ChannelLayerConnectionError(
                        f"the stream {self.stream!r} delivered nothing for {timeout:g} s while this process "
                        "caught up with it (broker overloaded?)"
                    ) from None

    async def _catch_up(self, start: Callable[[], Awaitable[None]], ready: asyncio.Future) -> None:
        try:
            if not self.following:
                await start()
            while True:
                marker = self.record("s")
                waiter = asyncio.get_running_loop().create_future()
                entry = (marker[0], marker[1], waiter)
                self._waiters.append(entry)
                applied = self.state.applied
                await self._publish(self.stream, msgpack.packb(marker, use_bin_type=True))
                if not self._resumed:
                    await waiter
                    break
                try:  # resumed at an offset: the marker comes back at once, unless the stream is new
                    await asyncio.wait_for(asyncio.shield(waiter), _RESUME_CHECK)
                    break
                except asyncio.TimeoutError:
                    if self.state.applied != applied:
                        self._resumed = False  # it is reading: slow, not new
                        await waiter
                        break
                    self._waiters.remove(entry)
                    await self._read_again()
        except BaseException as exc:  # noqa: BLE001 - handed to the waiters
            if not ready.done():
                ready.set_exception(exc)
                ready.exception()
            if self._ready is ready:
                self._ready = None
            return
        if not ready.done():
            ready.set_result(None)

    async def _on_record(self, message: Any) -> None:
        headers = message.header.properties.headers or {}
        offset = headers.get("x-stream-offset")
        if isinstance(offset, int):
            self._next_offset = offset + 1
        try:
            self.state.feed(msgpack.unpackb(message.body, raw=False))
        except Exception as exc:  # noqa: BLE001 - one bad record must not stop the follower
            logger.warning("skipped an unreadable record in stream %s: %s", self.stream, exc)
        self._unacked += 1
        if self._unacked >= _ACK_EVERY:  # well under the prefetch: the stream never waits for credit
            self._unacked = 0
            await message.channel.basic_ack(message.delivery.delivery_tag, multiple=True)
        if self._waiters:
            seen = self.state.seen
            still = []
            for origin, seq, waiter in self._waiters:
                if seq <= seen.get(origin, 0):
                    if not waiter.done():
                        waiter.set_result(None)
                else:
                    still.append((origin, seq, waiter))
            self._waiters = still

    async def wait_seen(self, origin: str, seq: int, timeout: float) -> bool:
        """Until this process has read record ``seq`` of ``origin`` (True), or ``timeout`` seconds (False).

        The history sequencer's read-your-writes: a sender's ``group_add``
        confirmed before its history send is in the members that send reaches.
        """
        if seq <= self.state.seen.get(origin, 0):
            return True
        waiter = asyncio.get_running_loop().create_future()
        entry = (origin, seq, waiter)
        self._waiters.append(entry)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout)
            return True
        except asyncio.TimeoutError:
            return False
        finally:
            if entry in self._waiters:
                self._waiters.remove(entry)
