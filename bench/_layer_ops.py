"""The layer scenario's operations, written once for every layer with the ASGI 1.0 API.

Only the standard library: ``bench/_asgi_ipc_peer.py`` runs the same sync
scenario in asgi_ipc's own venv (an older msgpack, no paas_channels), so the
peer is timed on exactly the same operations.
"""

from __future__ import annotations

import time
from typing import Any, Awaitable, Callable

GROUP_MEMBERS = 1000
CAPACITY = 1_000_000
PAYLOAD = {"text": "x" * 100, "bytes": b"y" * 50, "n": 1}


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def sync_scenario(layer: Any, n: int, group_sends: int | None = None, block: bool = False,
                  warm_up: bool = False) -> dict[str, float]:
    """Sequential send, receive, request/reply over ``!`` channels, group deliveries: operations/s.

    ``group_sends``: group sends of 1,000 deliveries each (default ``max(10, n // 100)``).
    ``block``: the sequential receives block as a worker's loop does (else they poll).
    ``warm_up``: one untimed group send first (a layer that reads membership once per process).
    """
    out = {}
    started = time.perf_counter()
    for _ in range(n):
        layer.send("bench.chan", PAYLOAD)
    out["send"] = rate(n, time.perf_counter() - started)
    started = time.perf_counter()
    for _ in range(n):
        layer.receive(["bench.chan"], block=block)
    out["receive"] = rate(n, time.perf_counter() - started)

    rounds = n // 2
    started = time.perf_counter()
    for i in range(rounds):
        layer.send("bench.request", {"reply_channel": "bench.inbox!c1", "i": i})
        _, request = layer.receive(["bench.request"], block=True)
        layer.send(request["reply_channel"], {"i": request["i"]})
        layer.receive(["bench.inbox!"], block=True)
    out["request_reply"] = rate(rounds, time.perf_counter() - started)

    for i in range(GROUP_MEMBERS):
        layer.group_add("bench.group", f"bench.inbox{'AB'[i % 2]}!c{i}")

    def group_round() -> None:
        layer.send_group("bench.group", PAYLOAD)
        for _ in range(GROUP_MEMBERS // 2):
            layer.receive(["bench.inboxA!"], block=True)
            layer.receive(["bench.inboxB!"], block=True)

    if warm_up:
        group_round()
    sends = group_sends or max(10, n // 100)
    started = time.perf_counter()
    for _ in range(sends):
        group_round()
    out["group"] = rate(sends * GROUP_MEMBERS, time.perf_counter() - started)
    return out


async def async_scenario(layer: Any, n: int, block: bool = False, warm_up: bool = False) -> dict[str, float]:
    """The same operations through the ``a``-prefixed coroutines."""
    out = {}
    out["send"] = await timed(n, lambda: layer.asend("bench.chan", PAYLOAD))
    out["receive"] = await timed(n, lambda: layer.areceive(["bench.chan"], block=block))

    async def request_reply() -> None:
        await layer.asend("bench.request", {"reply_channel": "bench.inbox!c1"})
        _, request = await layer.areceive(["bench.request"], block=True)
        await layer.asend(request["reply_channel"], {"ok": True})
        await layer.areceive(["bench.inbox!"], block=True)

    out["request_reply"] = await timed(n // 2, request_reply)
    for i in range(GROUP_MEMBERS):
        await layer.agroup_add("bench.group", f"bench.inbox{'AB'[i % 2]}!c{i}")

    async def group_round() -> None:
        await layer.asend_group("bench.group", PAYLOAD)
        for _ in range(GROUP_MEMBERS // 2):
            await layer.areceive(["bench.inboxA!"], block=True)
            await layer.areceive(["bench.inboxB!"], block=True)

    if warm_up:
        await group_round()
    out["group"] = await timed(max(10, n // 100), group_round) * GROUP_MEMBERS
    return out


async def timed(count: int, operation: Callable[[], Awaitable[Any]]) -> float:
    started = time.perf_counter()
    for _ in range(count):
        await operation()
    return rate(count, time.perf_counter() - started)
