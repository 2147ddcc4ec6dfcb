"""Benchmark: paas_channels' RedisChannelLayer against channels_redis 4, same Redis, one run.

    python bench/layer.py                 # private redis-server on a free port
    python bench/layer.py --url redis://127.0.0.1:6379/0

Measures sequential send, sequential receive, request/reply over process-
specific (``!``) channels and a group send to 1,000 members spread over two
inboxes (deliveries/s: send plus every member receiving it), for our sync API
(workers), our async API (interface) and channels_redis (async only); and our
sync API again with ``reply_spin_us=0``, to show what spinning for replies adds.  Also
measures raw unpipelined ``PING`` round trips: the ceiling any layer doing one
round trip per operation can approach.  The same operations run on the IPC
layer (sync and async) and on asgi_ipc 1.4.2 in its own venv
(:mod:`bench.layer_ipc`), in the same rounds.  Prints ratios and writes
``bench/results/layer.json``, ``bench/results/layer.md`` and the table between
README's ``bench:layer`` markers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: `python bench/layer.py`
    sys.path.insert(0, str(ROOT))

import hiredis  # noqa: E402
import redis  # noqa: E402
from channels_redis.core import RedisChannelLayer as ChannelsRedisLayer  # noqa: E402

from bench import layer_ipc  # noqa: E402
from bench._layer_ops import CAPACITY, GROUP_MEMBERS, PAYLOAD, async_scenario, rate, sync_scenario, timed  # noqa: E402
from paas_channels.layers.redis import RedisChannelLayer  # noqa: E402

RESULTS = ROOT / "bench" / "results"
README = ROOT / "README.md"

TESTS = [
    ("send", "sequential send", "sends/s"),
    ("receive", "sequential receive", "receives/s"),
    ("request_reply", "request/reply over ! channels", "round trips/s"),
    ("group", f"group send to {GROUP_MEMBERS:,} members on 2 inboxes", "deliveries/s"),
]


### paas_channels, sync ###


def ours_sync(url: str, n: int, **config: Any) -> dict[str, float]:
    layer = RedisChannelLayer(hosts=[url], prefix="bs" + uuid.uuid4().hex[:8], capacity=CAPACITY, **config)
    try:
        return sync_scenario(layer, n)
    finally:
        layer.flush()
        layer.close()


### paas_channels, async ###


async def ours_async(url: str, n: int) -> dict[str, float]:
    layer = RedisChannelLayer(hosts=[url], prefix="ba" + uuid.uuid4().hex[:8], capacity=CAPACITY)
    try:
        return await async_scenario(layer, n)
    finally:
        await layer.aflush()
        await layer.aclose()
        layer.close()


### channels_redis 4 (async only) ###


async def channels_redis(url: str, n: int) -> dict[str, float]:
    prefix = "bc" + uuid.uuid4().hex[:8]
    layer = ChannelsRedisLayer(hosts=[url], prefix=prefix, capacity=CAPACITY)
    other = ChannelsRedisLayer(hosts=[url], prefix=prefix, capacity=CAPACITY)
    try:
        out = {}
        out["send"] = await timed(n, lambda: layer.send("bench.chan", PAYLOAD))
        out["receive"] = await timed(n, lambda: layer.receive("bench.chan"))
        reply_channel = await layer.new_channel()

        async def request_reply() -> None:
            await layer.send("bench.request", {"reply_channel": reply_channel})
            request = await layer.receive("bench.request")
            await layer.send(request["reply_channel"], {"ok": True})
            await layer.receive(reply_channel)

        out["request_reply"] = await timed(n // 2, request_reply)
        # Two "processes": each instance's channels share its inbox prefix.
        members = [await (layer if i % 2 == 0 else other).new_channel() for i in range(GROUP_MEMBERS)]
        for member in members:
            await layer.group_add("bench.group", member)

        async def group_round() -> None:
            await layer.group_send("bench.group", PAYLOAD)
            for i, member in enumerate(members):
                await (layer if i % 2 == 0 else other).receive(member)

        out["group"] = await timed(max(10, n // 100), group_round) * GROUP_MEMBERS
        return out
    finally:
        await layer.flush()
        await layer.close_pools()
        await other.close_pools()


def ping_ceiling(url: str, n: int) -> float:
    """Unpipelined PING round trips on a bare socket parsed by hiredis: what Redis and the machine allow."""
    parts = urlsplit(url)
    reader = hiredis.Reader()
    with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        started = time.perf_counter()
        for _ in range(n):
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            while reader.gets() is False:
                reader.feed(sock.recv(65536))
        return rate(n, time.perf_counter() - started)


### Report ###


def table(results: dict[str, Any]) -> str:
    ours_sync_r, ours_async_r, peer = results["paas_sync"], results["paas_async"], results["channels_redis"]
    no_spin = results.get("paas_sync_no_spin")
    lines = [
        "| operation | paas-channels sync | paas-channels async | channels_redis 4 | sync / peer | async / peer "
        + ("| sync, `reply_spin_us=0` | its ratio |" if no_spin else "|"),
        "|---|---:|---:|---:|---:|---:|" + ("---:|---:|" if no_spin else ""),
    ]
    for key, label, unit in TESTS:
        lines.append(
            f"| {label} ({unit}) | {ours_sync_r[key]:,.0f} | {ours_async_r[key]:,.0f} | {peer[key]:,.0f} "
            f"| {ours_sync_r[key] / peer[key]:.1f}x | {ours_async_r[key] / peer[key]:.1f}x |"
            + (f" {no_spin[key]:,.0f} | {no_spin[key] / peer[key]:.1f}x |" if no_spin else "")
        )
    lines.append("")
    lines.append(
        f"Same Redis {results['redis_version']}, one run (best of {results['repeat']} alternating runs each), "
        f"{results['machine']}, {os.cpu_count()} cores, load average {results['load_before']:.1f} before and "
        f"{results['load_after']:.1f} after, n={results['n']:,}; "
        f"unpipelined PING on a bare socket: {results['ping_per_s']:,.0f}/s (the ceiling for one round trip per "
        f"operation, for a client that sleeps until the reply comes). paas-channels runs with its defaults "
        f"(`reply_spin_us=100`); the last columns turn spinning for replies off. "
        f"`python bench/layer.py` ({results['date']})."
    )
    if "ipc_sync" in results:
        lines += ["", layer_ipc.table(results)]
    return "\n".join(lines)


def write_readme(text: str) -> None:
    content = README.read_text()
    pattern = re.compile(r"(<!-- bench:layer -->\n).*?(<!-- /bench:layer -->)", re.S)
    if not pattern.search(content):
        print("README.md has no bench:layer markers; not updated", file=sys.stderr)
        return
    README.write_text(pattern.sub(lambda m: m.group(1) + text + "\n" + m.group(2), content))


def measure(n: int = 3000, repeat: int = 3, url: str | None = None, log=print) -> dict[str, Any]:
    """Every contender ``repeat`` times, alternating; each one's best run counts.  A private Redis unless ``url``."""
    server = None
    if url is None:
        from paas_channels.testing import RedisServer

        server = RedisServer().start()
        url = server.url
    try:
        with redis.Redis.from_url(url) as client:
            info = client.info("server")
        results: dict[str, Any] = {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": f"{platform.system()} {platform.machine()}, Python {platform.python_version()}",
            "redis_version": info["redis_version"],
            "n": n,
            "load_before": os.getloadavg()[0],
        }
        # Alternate the contenders and keep each one's best of `repeat` runs,
        # so that load from other processes on the machine hits all of them alike.
        runs: dict[str, list[dict[str, float]]] = {
            "channels_redis": [], "paas_sync": [], "paas_async": [], "paas_sync_no_spin": [],
            "ipc_sync": [], "ipc_async": [], "asgi_ipc": [],
        }
        pings = []
        for round_number in range(1, repeat + 1):
            log(f"== layer: round {round_number}/{repeat}, n={n:,}")
            pings.append(ping_ceiling(url, n * 2))
            runs["channels_redis"].append(asyncio.run(channels_redis(url, n)))
            runs["paas_sync"].append(ours_sync(url, n))
            runs["paas_async"].append(asyncio.run(ours_async(url, n)))
            runs["paas_sync_no_spin"].append(ours_sync(url, n, reply_spin_us=0))
            runs["ipc_sync"].append(layer_ipc.ipc_sync(n))
            runs["ipc_async"].append(asyncio.run(layer_ipc.ipc_async(n)))
            # asgi_ipc is slow (minutes for three runs): its first run counts.
            peer = layer_ipc.asgi_ipc(n) if round_number == 1 else {}
            if "error" in peer:
                results["asgi_ipc"] = peer
                log(f"== layer: asgi_ipc not measured: {peer['error']}")
            elif peer:
                runs["asgi_ipc"].append(peer)
        results["ping_per_s"] = max(pings)
        for name, measured in runs.items():
            if measured:
                results[name] = {key: max(run[key] for run in measured) for key, _, _ in TESTS}
        results["repeat"] = repeat
        results["load_after"] = os.getloadavg()[0]
        results["ratios"] = {
            f"{side}_{key}": results[f"paas_{side}"][key] / results["channels_redis"][key]
            for side in ("sync", "async", "sync_no_spin") for key, _, _ in TESTS
        }
        results["ipc_ratios"] = layer_ipc.ratios(results)
        return results
    finally:
        if server is not None:
            server.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", help="Redis to use (default: a private redis-server on a free port)")
    parser.add_argument("-n", type=int, default=3000, help="operations per sequential test (default 3000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each contender; the best counts (default 3)")
    parser.add_argument("--no-write", action="store_true", help="print only; do not write results or README")
    args = parser.parse_args(argv)

    results = measure(args.n, args.repeat, args.url)
    text = table(results)
    print(text)
    if not args.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "layer.json").write_text(json.dumps(results, indent=2) + "\n")
        (RESULTS / "layer.md").write_text("# Channel layer benchmark\n\n" + text + "\n")
        write_readme(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
