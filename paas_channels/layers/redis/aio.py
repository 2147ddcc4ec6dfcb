"""The Redis channel layer's coroutine API: one set of connections per event loop.

The interface server's loop (Daphne) and any ``asyncio.run`` in tests or
management commands each get their own ``redis.asyncio`` connections, made on
first use and closed when that loop shuts down, while worker threads share the
sync side.  The operations themselves are the layer's ``_op_*`` generators,
the same ones the sync API runs.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, AsyncIterator

from .drivers import AsyncIO

__all__ = ["AsyncLayerAPI"]


class AsyncLayerAPI:
    """Mixin for :class:`~paas_channels.layers.redis.RedisChannelLayer`: the ``a``-prefixed methods."""

    hosts: list
    reply_spin_us: float
    command_timeout: float
    blocking_timeout: float

    def _init_async(self) -> None:
        self._async: dict[asyncio.AbstractEventLoop, tuple[AsyncIO, Any]] = {}
        self._async_lock = threading.Lock()

    async def asend(self, channel: str, message: dict) -> None:
        return await (await self._async_io()).run(self._op_send(channel, message))

    async def anew_channel(self, pattern: str) -> str:
        return self.new_channel(pattern)

    async def agroup_add(self, group: str, channel: str) -> None:
        return await (await self._async_io()).run(self._op_group_add(group, channel))

    async def agroup_join(self, group: str, channel: str, since: tuple[str, int] | None = None) -> bool | None:
        return await (await self._async_io()).run(self._op_group_join(group, channel, since))

    async def agroup_discard(self, group: str, channel: str) -> None:
        return await (await self._async_io()).run(self._op_group_discard(group, channel))

    async def agroup_channels(self, group: str) -> list[str]:
        return await (await self._async_io()).run(self._op_group_channels(group))

    async def asend_group(self, group: str, message: dict) -> None:
        return await (await self._async_io()).run(self._op_send_group(group, message))

    async def aflush(self) -> None:
        return await (await self._async_io()).run(self._op_flush())

    async def aglobal_statistics(self) -> dict[str, int]:
        return await (await self._async_io()).run(self._op_global_statistics())

    async def achannel_statistics(self, channel: str) -> dict[str, Any]:
        return await (await self._async_io()).run(self._op_channel_statistics(channel))

    async def aheartbeat(self, worker_id: str, info: dict, ttl: float = 30) -> None:
        return await (await self._async_io()).run(self._op_heartbeat(worker_id, info, ttl))

    async def aheartbeats(self) -> dict[str, dict]:
        return await (await self._async_io()).run(self._op_heartbeats())

    async def aclose(self) -> None:
        """Close this event loop's connections."""
        loop = asyncio.get_running_loop()
        with self._async_lock:
            entry = self._async.pop(loop, None)
        if entry is not None:
            await entry[0].close()
            await entry[1].aclose()

    async def _async_io(self) -> AsyncIO:
        """This loop's client, made on first use and closed when the loop shuts down.

        ``asyncio.run`` finalizes async generators before closing its loop, so
        a parked generator per loop closes the connections in time: no
        "unclosed connection" warnings, no client outliving its loop.
        """
        loop = asyncio.get_running_loop()
        entry = self._async.get(loop)
        if entry is not None:
            return entry[0]
        io = AsyncIO(self.hosts, self.reply_spin_us, self.command_timeout, self.blocking_timeout)
        closer = self._close_with_loop(loop, io)
        with self._async_lock:
            self._async[loop] = (io, closer)
        await closer.__anext__()
        return io

    async def _close_with_loop(self, loop: asyncio.AbstractEventLoop, io: AsyncIO) -> AsyncIterator[None]:
        try:
            yield
        finally:
            with self._async_lock:
                if self._async.get(loop, (None,))[0] is io:
                    del self._async[loop]
            await io.close()
