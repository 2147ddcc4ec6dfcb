"""Scenario 3, WebSocket broadcast: N clients on one web process in one group, B group sends.

Ours: ``paas-channels run web`` + one ``run worker`` on a private Redis; the
worker's connect consumer (bench/project/routing.py) adds each reply channel
to the group ``bench``, and the broadcasts are ``send_group`` calls on a
RedisChannelLayer built from the same REDIS_URL, outside every server process.
Peer: Daphne + a Channels 4 ``AsyncWebsocketConsumer`` (``groups = ["bench"]``)
on channels_redis with its documented defaults (capacity 100, expiry 60 s), the
broadcasts ``group_send`` from outside through channels_redis.  Both get the
same clients (bench/_wsclient.py); each message carries its send time, so a
delivery's latency is receive time minus send time on the same clock.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from bench._procs import SECRET_KEY, Clients, Deployment, cpu_seconds, percentile

GROUP = "bench"
PEER_NOTE = ("channels_redis configured as Channels 4's documentation shows (hosts only: capacity 100, "
             "expiry 60 s, group_expiry 1 day); consumer `AsyncWebsocketConsumer` with `groups = ['bench']`")


def _payload(index: int) -> str:
    return json.dumps({"i": index, "t": time.time()})


def _send_ours(redis_url: str, broadcasts: int, interval: float) -> None:
    from paas_channels.layers.redis import RedisChannelLayer, config_from_env

    layer = RedisChannelLayer(**config_from_env({"REDIS_URL": redis_url}))
    layer.use_keys([SECRET_KEY])  # as the servers' get_channel_layer() does
    try:
        for index in range(broadcasts):
            started = time.monotonic()
            layer.send_group(GROUP, {"text": _payload(index)})
            time.sleep(max(0.0, interval - (time.monotonic() - started)))
    finally:
        layer.close()


async def _send_channels4(redis_url: str, broadcasts: int, interval: float) -> None:
    from channels_redis.core import RedisChannelLayer

    layer = RedisChannelLayer(hosts=[redis_url])
    try:
        for index in range(broadcasts):
            started = time.monotonic()
            await layer.group_send(GROUP, {"type": "bench.message", "text": _payload(index)})
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))
    finally:
        await layer.close_pools()


def run_side(kind: str, workdir: Path, clients: int, broadcasts: int, interval: float,
             client_processes: int) -> dict:
    """One deployment, ``clients`` joined connections, ``broadcasts`` group sends: deliveries and latency."""
    deployment = Deployment(kind, workdir, workers=1)
    pool = None
    try:
        started = time.monotonic()
        pool = Clients(deployment.url("/ws/bench/"), clients, joined=True, processes=client_processes)
        connect_s = time.monotonic() - started
        cpu_before = cpu_seconds(deployment.web.pid)
        if kind == "ours":
            _send_ours(deployment.redis.url, broadcasts, interval)
        else:
            asyncio.run(_send_channels4(deployment.redis.url, broadcasts, interval))
        report = pool.wait_for_deliveries(pool.connected * broadcasts, timeout=60)
        web_cpu = cpu_seconds(deployment.web.pid) - cpu_before
    finally:
        if pool is not None:
            pool.close()
        deployment.close()
    latencies = report["latencies"]
    expected = clients * broadcasts
    return {
        "label": deployment.label,
        "clients": clients, "connected": pool.connected, "connect_failed": pool.failed,
        "connect_errors": pool.errors, "connect_seconds": round(connect_s, 2),
        "broadcasts": broadcasts, "expected": expected, "delivered": len(latencies),
        "delivered_fraction": len(latencies) / expected if expected else None,
        "closed_by_server": report["closed"],
        "web_cpu_seconds": round(web_cpu, 2),  # the web process's CPU time from the first broadcast to the last delivery
        "latency_ms": {name: (value * 1000 if value is not None else None)
                       for name, value in (("p50", percentile(latencies, 0.50)), ("p99", percentile(latencies, 0.99)),
                                           ("max", percentile(latencies, 1.0)))},
    }


def run(workdir: Path, clients: int, broadcasts: int, interval: float, client_processes: int,
        log=print) -> dict:
    """Ours, then the peer (each on fresh processes), and their ratios."""
    sides = {}
    for kind in ("ours", "channels4"):
        log(f"== broadcast: {kind}, {clients:,} clients, {broadcasts} broadcasts")
        sides[kind] = run_side(kind, workdir, clients, broadcasts, interval, client_processes)
        side = sides[kind]
        log(f"   delivered {side['delivered']:,}/{side['expected']:,}, latency ms {side['latency_ms']}")
    ours, peer = sides["ours"], sides["channels4"]
    p99_ratio = (ours["latency_ms"]["p99"] / peer["latency_ms"]["p99"]
                 if ours["latency_ms"]["p99"] and peer["latency_ms"]["p99"] else None)
    return {
        "ours": ours, "channels4": peer, "peer_config": PEER_NOTE, "interval_s": interval,
        "ratios": {"p99_latency": p99_ratio,
                   "p50_latency": (ours["latency_ms"]["p50"] / peer["latency_ms"]["p50"]
                                   if ours["latency_ms"]["p50"] and peer["latency_ms"]["p50"] else None),
                   "delivered": (ours["delivered"] / peer["delivered"] if peer["delivered"] else None)},
    }
