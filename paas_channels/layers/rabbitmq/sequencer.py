"""The history sequencer: the one process that numbers a prefix's history messages.

Offsets are contiguous per group (1, 2, 3, ...: the browser client holds a
message until the one before it came), so across processes they need ONE
numberer.  Every process that uses history is a candidate: it consumes the
request queue ``<prefix>::history`` (:mod:`.history`), declared with
``x-single-active-consumer``, so the broker gives the requests to one
candidate at a time and to the next one when its channel closes.  The
active one, for each batch of requests in queue order:

1. gives each message its group's next offset and epoch
   (:class:`~.histstate.HistoryState`) and appends the entries to the history
   stream ``<prefix>::history-log``, waiting for the broker's confirms;
2. delivers each message, with its position, as a plain group send does (one
   message per member inbox; members as the groups stream says), and a join
   as its membership record, then ONE stored message holding the notice and
   the replay (:mod:`.handout`), between the messages before and after it:
   no gap and no duplicate, whoever sends;
3. answers the senders (on each one's reply queue) and acknowledges the batch.

A candidate that becomes active (its first request) first catches up: it
reads the stream from "now minus the window" (the longest ``ttl`` plus two
checkpoint intervals) up to a marker it appends itself, so it has every
entry the sequencer before it appended, and continues each group's offset
and epoch (a new epoch for a group the stream no longer holds).  A
redelivered request (its sequencer died before acknowledging it) whose
message id the stream already holds is answered, not numbered again, and not
delivered again: delivery stays at-most-once, and the client fills such a
gap from the history.  While active it checkpoints every group's position
into the stream every ``checkpoint_every`` seconds, so positions outlive the
window.  A lost stream (deleted, or the broker lost its data) means new
epochs.  Closing the layer finishes the batch in hand, then closes the
channel: the broker gives the requests not answered to the next candidate.
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import logging
import time
from collections import deque
from typing import Any

import msgpack

from ..base import RejectedMessage
from ..history import message_meta, notice_meta, valid_since
from .connection import ChannelLayerConnectionError
from .handout import now_ms
from .histlink import LINK_ERRORS, Link, NotFound, Returned
from .histstate import HistoryState

__all__ = ["Sequencer"]

logger = logging.getLogger(__name__)

_PREFETCH = 256  # requests the active sequencer holds: its batch size at most
_READ_PREFETCH = 1000
_ACK_EVERY = 200
_SEEN_WAIT = 2.0  # seconds a request waits for its sender's group records to reach the sequencer
_FAILURES = LINK_ERRORS


class _StreamLost(Exception):
    """The history stream is gone (deleted, or the broker lost its data)."""


#: A request is ``[kind, id, deadline ms, reply queue, ...]``, then by kind:
#: ``m`` group, size, ttl ms, data, origin, groups seq (the sender's last group record);
#: ``j`` group, size, ttl ms, channel, since, membership record; ``f`` nothing more.
_SHAPES = {"m": 10, "j": 10, "f": 4}


class _Item:
    """One request: from the queue (``tag``) or from this process (``future``)."""

    __slots__ = ("request", "tag", "future", "message", "joined", "result")

    def __init__(self, request: Any, tag: int | None = None, future: asyncio.Future | None = None) -> None:
        self.request = request
        self.tag = tag
        self.future = future
        self.message: dict | None = None
        self.joined: Any = None
        self.result: tuple[bool, Any] | None = None


class Sequencer:
    """This process's candidacy, and while active the numbering (runs on the layer's loop)."""

    #: Seconds between checkpoints of every group's position (tests make it short).
    checkpoint_every = 60.0

    def __init__(self, client: Any) -> None:
        self.client = client
        self.layer = client.layer
        self.state: HistoryState | None = None
        self._state_for: Any = None  # the channel the state was caught up on
        self.channel: Link | None = None  # where this process's candidate consumer is
        self._active = False
        self._closing = False
        self._inbox: deque[_Item] = deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Future | None = None
        self._task_for: Any = None  # the channel that task sequences for
        self._last_checkpoint = 0.0
        self._markers = itertools.count(1)

    ### Candidacy ###

    async def stand(self, channel: Link) -> None:
        """Be a candidate on ``channel`` (the history client's): the broker picks one candidate at a time."""
        self._drop_inbox(self.layer._broker.error("closed the history channel"))
        self.channel, self._active, self._closing, self.state = channel, False, False, None
        await channel.consume(self.client.queue, lambda body, tag: self._on_request(channel, body, tag), _PREFETCH)

    def is_active(self, channel: Link) -> bool:
        """True while this process numbers the history (then its own requests skip the queue)."""
        return self._active and channel is self.channel and not channel.closed and not self._closing

    def _on_request(self, channel: Link, body: bytes, tag: int) -> None:
        if channel is not self.channel:
            return  # delivered on an older channel: the broker has taken it back
        self._active = True
        try:
            request = msgpack.unpackb(body, raw=False)
        except Exception:  # noqa: BLE001 - answered as unreadable
            request = None
        self._push(_Item(request, tag))

    def local(self, request: list) -> asyncio.Future:
        """Sequence a request of this process (it is the active sequencer): a future of ``(ok, value)``."""
        future = asyncio.get_running_loop().create_future()
        self._push(_Item(request, future=future))
        return future

    def _push(self, item: _Item) -> None:
        self._inbox.append(item)
        if self._task is None or self._task.done() or self._task_for is not self.channel:
            self._wake = asyncio.Event()
            self._task_for = self.channel
            self._task = asyncio.ensure_future(self._run(self.channel))
        else:
            self._wake.set()

    def lost(self, error: BaseException) -> None:
        """The channel closed: requests from the queue go back to it (the broker), ours fail."""
        self._active = False
        self.state = None
        self._drop_inbox(error)
        if self._wake is not None:
            self._wake.set()

    def _drop_inbox(self, error: BaseException) -> None:
        while self._inbox:
            item = self._inbox.popleft()
            if item.future is not None and not item.future.done():
                item.future.set_exception(error)
                item.future.exception()

    async def close(self) -> None:
        """Finish the batch in hand and stop; the caller then closes the channel (requests go to the next)."""
        self._closing = True
        task = self._task
        if task is not None and not task.done():
            self._wake.set()
            try:
                await asyncio.wait_for(asyncio.shield(task), self.layer.timeout)
            except Exception:  # noqa: BLE001 - closing anyway
                pass
        self._drop_inbox(self.layer._broker.error("is being closed by this process's layer"))

    ### The loop ###

    async def _run(self, channel: Link) -> None:
        while channel is self.channel and not channel.closed:
            if self._closing:
                return
            if not self._inbox:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), self.checkpoint_every)
                except asyncio.TimeoutError:
                    pass
                if not self._inbox and not self._closing and self._active:
                    try:
                        await self._checkpoint(channel)
                    except _FAILURES as exc:
                        logger.debug("history checkpoint not written: %s", exc)
                continue
            batch = [self._inbox.popleft() for _ in range(min(len(self._inbox), _PREFETCH))]
            try:
                await self._batch(channel, batch)
            except _FAILURES as exc:
                # The broker keeps the queue's requests unacknowledged: closing the channel
                # gives them to the next sequencer (maybe this process again, caught up anew).
                self.state = None
                error = exc if isinstance(exc, ChannelLayerConnectionError) else self.layer._broker.error(
                    "failed while sequencing history", exc)
                for item in batch:
                    if item.future is not None and not item.future.done():
                        item.future.set_exception(error)
                        item.future.exception()
                logger.warning("history sequencing stopped: %s", error)
                await channel.close()
                return
            except Exception as exc:  # noqa: BLE001 - a bug: answer, drop the batch, rebuild, go on
                logger.exception("history sequencing failed; the batch is answered with an error")
                self.state = None
                for item in batch:
                    item.result = (False, ["failed", f"{type(exc).__name__}: {exc}"[:200]])
                await self._answer(channel, batch)
        if channel is self.channel:
            self._drop_inbox(self.layer._broker.error("closed the history channel"))

    async def _batch(self, channel: Link, batch: list[_Item]) -> None:
        layer = self.layer
        if self.state is None or self._state_for is not channel:
            await self._catch_up(channel)
        await layer._state(layer._groups)  # members as the groups stream says
        work = await self._admit(batch)
        if channel is not self.channel or channel.closed:
            raise layer._broker.error("closed the history channel")
        if work:
            try:
                await self._append(channel, self._plan(work))
            except _StreamLost:
                logger.warning("the history stream %s was lost: every group starts a new epoch", self.client.stream)
                await self.client.declare_stream(channel)
                self.state = self._new_state()
                await self._append(channel, self._plan(work))
            await self._deliver(work)
        await self._answer(channel, batch)
        await self._checkpoint(channel)

    async def _admit(self, batch: list[_Item]) -> list[_Item]:
        """The requests to sequence; the others (unreadable, expired, already sequenced) get their answer."""
        layer, state, now = self.layer, self.state, now_ms()
        work = []
        for item in batch:
            request = item.request
            if not isinstance(request, list) or len(request) < 3 or request[0] not in _SHAPES \
                    or len(request) != _SHAPES[request[0]]:
                item.result = (False, ["failed", "unreadable history request (another paas-channels version?)"])
                continue
            if request[2] < now:
                item.result = (False, ["expired", "it waited longer than the sender's timeout"])
                continue
            if request[0] == "j":
                try:
                    valid_since(request[8])
                except ValueError as exc:
                    item.result = (False, ["refused", str(exc)])
                    continue
            elif request[0] == "m":
                done = state.sequenced(request[1])
                if done is not None:  # a redelivered request: its sequencer appended it already
                    item.result = (True, list(done))
                    continue
                message = layer.deserialize(request[7])
                if isinstance(message, RejectedMessage):
                    item.result = (False, ["refused", "the message failed authentication at the sequencer: every "
                                                      "process must use the same SECRET_KEY (or CONFIG['keys'])"])
                    continue
                item.message = message
                origin, seq = request[8], request[9]
                if item.future is None and seq and not await layer._groups.wait_seen(origin, seq, _SEEN_WAIT):
                    logger.warning("a history send waited %g s for its sender's group records; sent without", _SEEN_WAIT)
            work.append(item)
        return work

    def _plan(self, work: list[_Item]) -> list[list]:
        """Number the batch (step 1): its stream records, in order."""
        state, now = self.state, now_ms()
        records = []
        for item in work:
            request = item.request
            kind = request[0]
            if kind == "m":
                msg_id, (group, size, ttl_ms, data) = request[1], request[4:8]
                epoch, offset, record = state.append(group, size, ttl_ms, msg_id, data, now)
                records.append(record)
                item.result = (True, [epoch, offset])
            elif kind == "j":
                group, size, ttl_ms, _, since = request[4:9]
                item.joined, record = state.join(group, size, ttl_ms, valid_since(since), now)
                if record is not None:
                    records.append(record)
                item.result = (True, item.joined.recovered)
            else:  # "f"
                state.clear()
                records.append(["f", now])
                item.result = (True, None)
        return records

    async def _deliver(self, work: list[_Item]) -> None:
        """Step 2: messages as group sends, in order; a join once everything before it is delivered."""
        layer = self.layer
        pending: list[asyncio.Future] = []
        for item in work:
            request = item.request
            if request[0] == "m" and item.result[0]:
                group = request[4]
                epoch, offset = item.result[1]
                data = layer.serialize({**item.message, "history": message_meta(group, epoch, offset)})
                pending.append(asyncio.ensure_future(layer._send_group(group, data)))
            elif request[0] == "j":
                await _settle(pending)
                pending = []
                await self._join(item)
        await _settle(pending)

    async def _join(self, item: _Item) -> None:
        layer = self.layer
        group, channel, record = item.request[4], item.request[7], item.request[9]
        joined = item.joined
        await layer._groups.write_as(record)  # the membership, at this point of the sequence
        blocks = [layer.serialize({"history": notice_meta(group, joined.epoch, joined.latest, joined.recovered)})]
        for offset, data in joined.replay:
            meta = message_meta(group, joined.epoch, offset, replayed=True)
            blocks.append(layer.serialize({**layer.deserialize(data), "history": meta}))
        now = now_ms()
        name = layer.non_local_name(channel)
        body = msgpack.packb([now + layer._expiry_ms, channel, blocks, group, now], use_bin_type=True)
        layer._count(name, refused=not await layer._queues.publish(name, body, group=True))

    async def _answer(self, channel: Link, batch: list[_Item]) -> None:
        """Step 3: answer every request of the batch; acknowledge the queue's."""
        replies = []
        last_tag = None
        for item in batch:
            result = item.result or (False, ["failed", "not sequenced"])
            if item.future is not None:
                if not item.future.done():
                    item.future.set_result(result)
                continue
            last_tag = item.tag
            request = item.request
            if isinstance(request, list) and len(request) >= 4 and isinstance(request[3], str):
                body = msgpack.packb([request[1], *result], use_bin_type=True)
                replies.append(channel.publish(request[3], body))
        if replies:  # a sender that is gone (its reply queue with it) is no error
            await asyncio.gather(*replies, return_exceptions=True)
        if last_tag is not None:
            channel.ack(last_tag, multiple=True)

    ### The stream ###

    def _new_state(self) -> HistoryState:
        layer = self.layer
        return HistoryState(lambda: layer.random_suffix(8), int(layer.group_expiry * 1000))

    async def _append(self, channel: Link, records: list[list]) -> None:
        """Append ``records`` to the history stream in order; return once the broker has them all."""
        if not records:
            return
        stream = self.client.stream
        publishes = [channel.publish(stream, msgpack.packb(record, use_bin_type=True), persistent=True)
                     for record in records]
        results = await asyncio.gather(*publishes, return_exceptions=True)
        for result in results:
            if isinstance(result, Returned):
                raise _StreamLost()
            if isinstance(result, BaseException):
                raise result
            if result is False:
                raise self.layer._broker.error(f"refused a record for {stream}")

    async def _checkpoint(self, channel: Link) -> None:
        if self.state is None or self._state_for is not channel:
            return
        if time.monotonic() - self._last_checkpoint < self.checkpoint_every:
            return
        self._last_checkpoint = time.monotonic()
        await self._append(channel, self.state.checkpoint(now_ms()))

    async def _catch_up(self, channel: Link) -> None:
        """Read the stream's window up to a marker appended now: then this process knows every entry."""
        for attempt in (0, 1):
            try:
                state = await self._read_window(channel)
                break
            except (NotFound, _StreamLost):
                if attempt:
                    raise
                logger.warning("the history stream %s was missing: every group starts a new epoch", self.client.stream)
                await self.client.declare_stream(channel)
        state.trim_all(now_ms())
        self.state, self._state_for, self._last_checkpoint = state, channel, 0.0  # checkpoint at once

    async def _read_window(self, channel: Link) -> HistoryState:
        layer, state = self.layer, self._new_state()
        marker = f"{self.client.origin}:{next(self._markers)}"
        found = asyncio.get_running_loop().create_future()
        read = [0]
        reader = await channel.reader()

        def on_record(body: bytes, tag: int) -> None:
            try:
                record = msgpack.unpackb(body, raw=False)
            except Exception:  # noqa: BLE001 - skipped, like any unreadable record
                record = None
            if isinstance(record, list) and record[:2] == ["s", marker]:
                if not found.done():
                    found.set_result(None)
            else:
                state.feed(record)
            read[0] += 1
            if read[0] % _ACK_EVERY == 0:  # a stream consumer gets more only once it acknowledged
                reader.ack(tag, multiple=True)

        try:
            start = datetime.datetime.fromtimestamp(time.time() - self.client.window, tz=datetime.timezone.utc)
            await reader.consume(self.client.stream, on_record, _READ_PREFETCH, arguments={"x-stream-offset": start})
            await self._append(channel, [["s", marker]])
            while True:  # as long as it takes while records keep coming
                seen = read[0]
                try:
                    await asyncio.wait_for(asyncio.shield(found), layer.timeout)
                    return state
                except asyncio.TimeoutError:
                    if read[0] == seen:
                        raise layer._broker.error(
                            f"delivered nothing of the history stream for {layer.timeout:g} s while this process "
                            "caught up with it (broker overloaded?)") from None
        finally:
            await reader.close()


async def _settle(pending: list[asyncio.Future]) -> None:
    if not pending:
        return
    results = await asyncio.gather(*pending, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result

