"""What this process's consumers delivered and no receive has taken yet: one mailbox per channel.

A blocking receive starts a consumer on each queue it reads (:mod:`.queues`),
each on an AMQP channel of its own; the deliveries land here, and a receive
in any thread or event loop takes from here without I/O.  Acknowledgements:

* a delivered message stays unacknowledged while it waits here, so if the
  process dies, or its consumer is cancelled (its AMQP channel is closed),
  the broker gives it to another reader: nothing is lost;
* taking it acknowledges it, batched: a consumer has its AMQP channel to
  itself, so its deliveries arrive and are taken in tag order (under
  :attr:`Mailboxes.lock`), and one ``basic.ack(multiple=True)`` of the
  highest tag taken covers exactly the taken ones.  The ack is written once
  half the prefetch was taken, at the latest :data:`ACK_DELAY` seconds after
  the first take it covers, and before the consumer is cancelled, so a
  message taken is never given twice on the same connection;
* a message whose channel closed before it was taken is skipped: the broker
  has put it back in its queue already.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from typing import Any, Callable

__all__ = ["ACK_DELAY", "Consumer", "Mailboxes"]

logger = logging.getLogger(__name__)

#: Seconds after a take by which its acknowledgement is written.
ACK_DELAY = 0.005


def _ignore_result(task: asyncio.Future) -> None:
    if not task.cancelled() and task.exception() is not None:  # the channel closed: the broker requeued
        logger.debug("acknowledgement not sent: %s", task.exception())


class Consumer:
    """This process's consumer of one queue, on an AMQP channel of its own (made on the layer's loop)."""

    __slots__ = ("name", "channel", "tag", "loop", "thread", "batch", "highest", "acked", "scheduled", "urgent",
                 "live", "ack")

    def __init__(self, name: str, channel: Any, prefetch: int) -> None:
        self.name, self.channel = name, channel
        self.loop = asyncio.get_running_loop()
        self.thread = threading.get_ident()
        self.batch = max(1, prefetch // 2)
        self.tag = ""
        self.highest = self.acked = 0
        self.scheduled = self.urgent = False  # a delayed flush / an immediate one is on its way
        self.live = True
        self.ack: asyncio.Task | None = None  # the last acknowledgement written

    @property
    def usable(self) -> bool:
        """Live, on an open channel, and not cancelled by the broker (its queue deleted: aiormq drops its tag)."""
        return self.live and not self.channel.is_closed and (not self.tag or self.tag in self.channel.consumers)

    def taken(self, tag: int) -> None:
        """Note that ``tag`` was taken (under the mailboxes' lock, so tags come in order); from any thread."""
        self.highest = tag
        here = threading.get_ident() == self.thread
        try:
            if tag - self.acked >= self.batch:
                if here:
                    self.flush()
                elif not self.urgent:
                    self.urgent = True
                    self.loop.call_soon_threadsafe(self.flush)
            elif not self.scheduled:
                self.scheduled = True
                if here:
                    self.loop.call_later(ACK_DELAY, self._delayed)
                else:
                    self.loop.call_soon_threadsafe(self.loop.call_later, ACK_DELAY, self._delayed)
        except RuntimeError:  # its loop is closed: so is the connection, and the broker requeued
            pass

    def _delayed(self) -> None:
        self.scheduled = False
        self.flush()

    def flush(self) -> None:
        """Write the acknowledgement of every tag taken so far (on the layer's loop)."""
        self.urgent = False
        highest = self.highest
        if highest > self.acked and not self.channel.is_closed:
            self.acked = highest
            self.ack = self.loop.create_task(self.channel.basic_ack(highest, multiple=True, wait=False))
            self.ack.add_done_callback(_ignore_result)


class Mailboxes:
    """Deliveries of every consumer of the layer, by stored channel name; waiters in any thread or loop."""

    def __init__(self) -> None:
        self.boxes: dict[str, deque[tuple[Consumer, int, bytes]]] = {}
        self.lock = threading.Lock()
        # (loop, future) of a waiting coroutine, or (None, threading.Event) of a waiting thread
        self._waiters: list[tuple[Any, Any]] = []
        self._waking = False  # a wake is scheduled on the layer's loop

    ### Consumers (on the layer's loop) ###

    def callback(self, consumer: Consumer) -> Callable[[Any], Any]:
        """aiormq's delivery callback for ``consumer``: each delivery into its mailbox."""
        box = self.boxes.setdefault(consumer.name, deque())
        append, waiters, loop = box.append, self._waiters, consumer.loop

        async def deliver(message: Any) -> None:
            if not consumer.live:  # stopped: never handed out, never acknowledged; its channel requeues it
                return
            append((consumer, message.delivery.delivery_tag, message.body))
            if waiters and not self._waking:
                # After the deliveries already read from the socket (their tasks run first):
                # a waiter in another thread wakes once for all of them, not once per message.
                self._waking = True
                loop.call_soon(self._wake_soon)

        return deliver

    def stop(self, consumer: Consumer) -> None:
        """No more takes from ``consumer``; the ones taken are acknowledged first (then close its channel)."""
        with self.lock:
            consumer.live = False
        consumer.flush()
        box = self.boxes.get(consumer.name)
        if box:
            with self.lock:
                kept = [entry for entry in box if entry[0] is not consumer]
                box.clear()
                box.extend(kept)
        self.wake()  # a waiter re-checks: its names may need a new consumer

    ### Taking (any thread) ###

    def take(self, name: str) -> bytes | None:
        """The oldest message delivered for ``name`` and not taken yet, or None; noted for the ack."""
        box = self.boxes.get(name)
        while box:
            with self.lock:
                if not box:
                    return None
                consumer, tag, body = box.popleft()
                if not consumer.usable:
                    continue  # its channel closed (the broker put it back in the queue) or it was stopped
                consumer.taken(tag)
            return body
        return None

    def pending(self, name: str) -> int:
        return len(self.boxes.get(name) or ())

    ### Waiting ###

    def _wake_soon(self) -> None:
        self._waking = False
        self.wake()

    def wake(self) -> None:
        waiters, self._waiters[:] = list(self._waiters), []
        for loop, future in waiters:
            if loop is None:
                future.set()
                continue
            try:
                loop.call_soon_threadsafe(_resolve, future)
            except RuntimeError:  # that loop is closed: nobody waits there any more
                pass

    async def wait(self, timeout: float, ready: Callable[[], bool]) -> None:
        """In a coroutine, on any loop: until a delivery (or a consumer's stop) or ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        entry = (loop, loop.create_future())
        self._waiters.append(entry)
        try:
            if ready():  # delivered between the caller's look and this registration
                return
            await asyncio.wait_for(entry[1], timeout)
        except asyncio.TimeoutError:
            pass
        finally:
            self._forget(entry)

    def wait_thread(self, timeout: float, ready: Callable[[], bool]) -> None:
        """:meth:`wait` for a plain thread (a sync receive whose names all have consumers)."""
        entry = (None, threading.Event())
        self._waiters.append(entry)
        try:
            if not ready():
                entry[1].wait(timeout)
        finally:
            self._forget(entry)

    def _forget(self, entry: tuple[Any, Any]) -> None:
        try:
            self._waiters.remove(entry)
        except ValueError:
            pass


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)
