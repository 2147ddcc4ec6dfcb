"""One AMQP connection per layer object, on the layer's own event loop thread.

Every AMQP frame of a layer goes through one asyncio loop running in a daemon
thread (:class:`LoopThread`).  Sync callers (workers, threads, gevent) and the
interface's event loop both hand it coroutines, so:

* there is ONE connection per process (per layer object), with one consumer
  per queue it reads, whatever the number of threads;
* the AMQP heartbeat is answered by that loop, never by a worker thread, so a
  consumer that runs for minutes cannot starve it (the Channels 1.x
  "Too many missed heartbeats" fault);
* every call has a deadline: a dead connection ends in
  :class:`ChannelLayerConnectionError`, never a hang.

:class:`Broker` connects on demand, and again after the connection is lost
(a broker restart): the first call after the broker is back reconnects and
restores the consumers (``on_connect``).  While it is down each call fails at
once with an error naming the broker (password redacted); attempts are spaced
by ``retry_interval`` so a busy process does not hammer a dead broker.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
import time
from typing import Any, Awaitable, Callable, Coroutine, TypeVar

try:
    import aiormq
    import aiormq.exceptions
except ImportError as exc:  # the extra is not installed
    raise ImportError(
        f"RabbitMQChannelLayer needs the AMQP client aiormq ({exc}): pip install 'paas-channels[rabbitmq]'"
    ) from None

from .urls import AMQPUrl

__all__ = ["Broker", "ChannelLayerConnectionError", "LoopThread"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: What aiormq and the socket raise when the connection or a channel is gone.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelInvalidStateError,
    ConnectionError,
    OSError,
    asyncio.TimeoutError,
)


class ChannelLayerConnectionError(ConnectionError):
    """RabbitMQ cannot be reached (down, restarting, refused, not answering).

    The operation did not happen (or, for a send, may not have).  The layer
    reconnects by itself on a later call once the broker is back; the caller
    decides whether to retry, answer 503 or give up.  The message names the
    broker with its password redacted.
    """


class LoopThread:
    """An asyncio loop in a daemon thread, made on first use and again after ``fork``."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pid = 0

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is not None and self._pid == os.getpid():
            return loop
        with self._lock:
            if self._loop is None or self._pid != os.getpid():
                ready = threading.Event()
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=self._run, args=(loop, ready), name=self._name, daemon=True)
                thread.start()
                ready.wait()
                self._loop, self._pid = loop, os.getpid()
            return self._loop

    @staticmethod
    def _run(loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(ready.set)
        try:
            loop.run_forever()
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            if tasks:
                loop.run_until_complete(asyncio.wait(tasks, timeout=2))
        finally:
            loop.close()

    def started(self) -> bool:
        return self._loop is not None and self._pid == os.getpid()

    def in_loop(self) -> bool:
        """True when called from this thread's loop (then await directly)."""
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run ``coro`` on the loop and wait for it from a plain thread, at most ``timeout`` seconds."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise asyncio.TimeoutError() from None

    async def arun(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop from another event loop (the interface's)."""
        if self.in_loop():
            return await coro
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    def stop(self) -> None:
        with self._lock:
            loop, self._loop = self._loop, None
        if loop is not None and self._pid == os.getpid():
            loop.call_soon_threadsafe(loop.stop)


class Broker:
    """The connection and its two channels (operations with publisher confirms; consumers).

    Lives on the :class:`LoopThread`'s loop: every method is called there.
    ``generation`` counts connections made, so that callers can tell their
    cached state (declared queues, consumer tags) belongs to an old one.
    """

    def __init__(
        self,
        url: AMQPUrl,
        on_connect: Callable[[Any, Any], Awaitable[None]],
        on_lost: Callable[[BaseException], None],
        connect_timeout: float,
        retry_interval: float = 0.5,
    ) -> None:
        self.url = url
        self._on_connect = on_connect
        self._on_lost = on_lost
        self.connect_timeout = connect_timeout
        self.retry_interval = retry_interval
        self.generation = 0
        self._connection: Any = None
        self._ops: Any = None
        self._consume: Any = None
        self._lock: asyncio.Lock | None = None
        self._failed_at = 0.0
        self._failure: str = ""
        self._closed = False

    def error(self, what: str, exc: BaseException | None = None) -> ChannelLayerConnectionError:
        """A connection error naming the broker, with the client's reason and no password."""
        reason = ""
        if exc is not None:
            detail = self.url.scrub(str(exc))[:200]
            reason = f": {type(exc).__name__}{f' ({detail})' if detail else ''}"
        return ChannelLayerConnectionError(
            f"RabbitMQ at {self.url.redacted} {what}{reason}. Check CLOUDAMQP_URL/RABBITMQ_URL "
            "(CONFIG['url']) and that the broker is running; the layer reconnects by itself once it is back"
        )

    @property
    def connected(self) -> bool:
        return self._connection is not None and not self._connection.is_closed

    async def ops(self) -> Any:
        """The operations channel (publisher confirms, returns raise), connecting if needed."""
        if not self.connected or self._ops is None or self._ops.is_closed:
            await self._ensure()
        return self._ops

    async def consume(self) -> Any:
        """The consumers' channel, connecting if needed."""
        if not self.connected or self._consume is None or self._consume.is_closed:
            await self._ensure()
        return self._consume

    async def channel(self) -> Any:
        """A new AMQP channel of its own (a consumer's), connecting if needed."""
        if not self.connected:
            await self._ensure()
        return await self._connection.channel()

    async def _ensure(self) -> None:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._closed:
                raise ChannelLayerConnectionError(f"the channel layer for {self.url.redacted} was closed")
            if self.connected:
                # Only a channel was closed (a broker-side channel error): reopen it.
                try:
                    if self._ops is None or self._ops.is_closed:
                        self._ops = await self._open_ops()
                    if self._consume is None or self._consume.is_closed:
                        self._consume = await self._connection.channel()
                        await self._on_connect(self._ops, self._consume)
                    return
                except CONNECTION_ERRORS as exc:
                    await self._drop(exc)
                    raise self.error("refused a channel", exc) from None
            since = time.monotonic() - self._failed_at
            if since < self.retry_interval:
                raise ChannelLayerConnectionError(self._failure)
            try:
                # (aiormq closes the socket of a connect that is cancelled or fails.)
                self._connection = aiormq.Connection(self.url.url)
                await asyncio.wait_for(self._connection.connect(), self.connect_timeout)
                self._ops = await self._open_ops()
                self._consume = await self._connection.channel()
                self.generation += 1
                self._connection.closing.add_done_callback(self._closing)
                await self._on_connect(self._ops, self._consume)
            except (aiormq.exceptions.AMQPError, *CONNECTION_ERRORS) as exc:
                await self._drop(exc)
                error = self.error("is unreachable" if not isinstance(exc, asyncio.TimeoutError)
                                   else f"did not answer within {self.connect_timeout:g} s", exc)
                self._failed_at, self._failure = time.monotonic(), str(error)
                raise error from None
            logger.info("connected to RabbitMQ at %s", self.url.redacted)

    async def _open_ops(self) -> Any:
        return await self._connection.channel(publisher_confirms=True, on_return_raises=True)

    def _closing(self, future: asyncio.Future) -> None:
        if self._closed or (self._connection is not None and future is not self._connection.closing):
            return  # closed on purpose, or an older connection
        exc = future.exception() if not future.cancelled() else None
        logger.warning("lost the connection to RabbitMQ at %s: %s", self.url.redacted,
                       self.url.scrub(str(exc)) if exc else "closed")
        self._on_lost(self.error("closed the connection", exc))

    async def _drop(self, exc: BaseException | None) -> None:
        connection, self._connection, self._ops, self._consume = self._connection, None, None, None
        if connection is None or connection.is_closed:
            return
        try:  # aiormq closes its socket itself when the broker does not answer in time
            await asyncio.wait_for(connection.close(), 2)
        except BaseException:  # noqa: BLE001 - it is being thrown away
            pass

    async def close(self) -> None:
        self._closed = True
        await self._drop(None)

    def reopen(self) -> None:
        """Allow connecting again after :meth:`close` (a closed layer used again)."""
        self._closed = False
