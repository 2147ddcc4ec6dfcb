"""Benchmark: paas_channels' RabbitMQChannelLayer against channels_rabbitmq 4, same broker, one run.

    python bench/layer_rabbitmq.py                      # the broker on 127.0.0.1:5672 (guest/guest)
    python bench/layer_rabbitmq.py --url amqp://u:p@host:5672/vhost

The layer scenario of ``bench/_layer_ops.py`` (sequential send, sequential
receive, request/reply over ``!`` channels, a group send to 1,000 members
spread over two inboxes in deliveries/s: the send plus every member
receiving it), for our sync API (workers, blocking receives as a worker's
loop does), our async API (interface) and channels_rabbitmq 4 (the Channels
4 RabbitMQ layer, async only, which receives only on channels it made: the
same operations on its own channels), on the same broker in the same run;
and this project's Redis layer (sync, on a private redis-server) beside
them.  Each contender's group test starts with one untimed group send (we
read the membership stream once per process; channels_rabbitmq binds its
queue).  One more receive test gives ours what the peer always has: a
consumer running before the sends, with the peer's prefetch (60,000); the
shared scenario's receive starts our consumer cold at its first receive,
with the default prefetch.  Every contender sends with what makes "at capacity" an error
rather than a silent drop (our layer: a publisher confirm per send on a
queue with ``x-overflow: reject-publish``; channels_rabbitmq: its own
confirms).  A second table is the ceiling of that send: one sequential
confirmed publish with each AMQP client alone (:mod:`bench._amqp_floor`),
against the peer's layer send.  Writes ``bench/results/layer_rabbitmq.json``
and ``.md`` and the tables between README's ``bench:layer-rabbitmq`` markers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: `python bench/layer_rabbitmq.py`
    sys.path.insert(0, str(ROOT))

from channels_rabbitmq.core import RabbitmqChannelLayer as ChannelsRabbitmqLayer  # noqa: E402

from bench._amqp_floor import aiormq_publishes, carehare_publishes, frames_publishes  # noqa: E402
from bench._layer_ops import (  # noqa: E402
    CAPACITY, GROUP_MEMBERS, PAYLOAD, async_scenario, rate, sync_scenario, timed,
)
from paas_channels.layers.rabbitmq import RabbitMQChannelLayer  # noqa: E402
from paas_channels.layers.redis import RedisChannelLayer  # noqa: E402

RESULTS = ROOT / "bench" / "results"
README = ROOT / "README.md"
DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"

TESTS = [
    ("send", "sequential send", "sends/s"),
    ("receive", "sequential receive", "receives/s"),
    ("receive_warm", "sequential receive, reader consuming before the sends, prefetch 60,000 as the peer's",
     "receives/s"),
    ("request_reply", "request/reply over ! channels", "round trips/s"),
    ("group", f"group send to {GROUP_MEMBERS:,} members on 2 inboxes", "deliveries/s"),
]


### paas_channels ###


def ours_sync(layer: Any, n: int) -> dict[str, float]:
    """The worker's view: blocking receives, as a worker's loop does."""
    try:
        layer.flush()
        return sync_scenario(layer, n, block=True, warm_up=True)
    finally:
        _dispose(layer)


#: channels_rabbitmq's ``local_capacity`` below (its consumer's prefetch): ours in the warm receive test.
PEER_PREFETCH = 60_000


def warm_receive_sync(url: str, n: int) -> float:
    """Receives when this process's consumer ran before the sends, as the peer's does from ``new_channel``.

    The peer consumes its queue from the moment it has a channel, with the
    prefetch the bench gives it; the shared scenario's first receive starts
    ours cold (prefetch 64), so its receives include the broker's deliveries.
    Here both are measured the same way: consuming first, same prefetch.
    """
    layer = RabbitMQChannelLayer(url=url, prefix="brw" + uuid.uuid4().hex[:8], capacity=CAPACITY,
                                 prefetch=PEER_PREFETCH)
    try:
        layer.send("bench.warm", PAYLOAD)
        layer.receive(["bench.warm"], block=True)  # untimed: the consumer runs
        for _ in range(n):
            layer.send("bench.warm", PAYLOAD)
        started = time.perf_counter()
        for _ in range(n):
            layer.receive(["bench.warm"], block=True)
        return rate(n, time.perf_counter() - started)
    finally:
        layer.destroy()


async def warm_receive_async(url: str, n: int) -> float:
    """:func:`warm_receive_sync` through the coroutines."""
    layer = RabbitMQChannelLayer(url=url, prefix="brv" + uuid.uuid4().hex[:8], capacity=CAPACITY,
                                 prefetch=PEER_PREFETCH)
    try:
        await layer.asend("bench.warm", PAYLOAD)
        await layer.areceive(["bench.warm"], block=True)
        for _ in range(n):
            await layer.asend("bench.warm", PAYLOAD)
        return await timed(n, lambda: layer.areceive(["bench.warm"], block=True))
    finally:
        await layer.aclose()
        layer.destroy()


def _dispose(layer: Any) -> None:
    if isinstance(layer, RabbitMQChannelLayer):
        layer.destroy()  # its streams and exchange too: nothing left on the broker
    else:
        layer.flush()
        layer.close()


async def ours_async(url: str, n: int) -> dict[str, float]:
    layer = RabbitMQChannelLayer(url=url, prefix="bra" + uuid.uuid4().hex[:8], capacity=CAPACITY)
    try:
        out = await async_scenario(layer, n, block=True, warm_up=True)
    finally:
        await layer.aclose()
        layer.destroy()
    out["receive_warm"] = await warm_receive_async(url, n)
    return out


### channels_rabbitmq 4 (async only) ###


async def channels_rabbitmq(url: str, n: int) -> dict[str, float]:
    """Its model: a layer receives only on channels it made, so every send goes to one of them."""
    exchange = "bcr" + uuid.uuid4().hex[:8]
    # local_capacity is its consumer's prefetch count, an AMQP short: at most 65,535.
    options = dict(host=url, local_capacity=60_000, remote_capacity=CAPACITY, groups_exchange=exchange)
    layer, other = ChannelsRabbitmqLayer(**options), ChannelsRabbitmqLayer(**options)
    try:
        out = {}
        channel = await layer.new_channel()
        out["send"] = await timed(n, lambda: layer.send(channel, PAYLOAD))
        out["receive"] = await timed(n, lambda: layer.receive(channel))
        out["receive_warm"] = out["receive"]  # its consumer always runs before the sends, with PEER_PREFETCH
        requests, replies = await layer.new_channel(), await layer.new_channel()

        async def request_reply() -> None:
            await layer.send(requests, {"reply_channel": replies})
            request = await layer.receive(requests)
            await layer.send(request["reply_channel"], {"ok": True})
            await layer.receive(replies)

        out["request_reply"] = await timed(n // 2, request_reply)
        # Two "processes": each instance's channels share its queue; a layer adds only its own channels.
        owners = [layer if i % 2 == 0 else other for i in range(GROUP_MEMBERS)]
        members = [await owner.new_channel() for owner in owners]
        for owner, member in zip(owners, members):
            await owner.group_add("bench.group", member)

        async def group_round() -> None:
            await layer.group_send("bench.group", PAYLOAD)
            for owner, member in zip(owners, members):
                await owner.receive(member)

        await group_round()  # untimed, as for every contender
        out["group"] = await timed(max(10, n // 100), group_round) * GROUP_MEMBERS
        return out
    finally:
        await layer.close()
        await other.close()
        await _delete_exchange(url, exchange)  # channels_rabbitmq leaves its groups exchange behind


async def _delete_exchange(url: str, exchange: str) -> None:
    import aiormq

    connection = await aiormq.connect(url)
    try:
        channel = await connection.channel()
        await channel.exchange_delete(exchange)
    finally:
        await connection.close()


### The send's ceiling: each client alone ###

FLOOR = [
    ("aiormq", "aiormq alone (this project's client)"),
    ("carehare", "carehare alone (channels_rabbitmq's client)"),
    ("frames", "pamqp frames on a bare socket (the broker's floor)"),
]


def client_floor(url: str, n: int) -> dict[str, float]:
    return {
        "aiormq": asyncio.run(aiormq_publishes(url, n)),
        "carehare": asyncio.run(carehare_publishes(url, n)),
        "frames": frames_publishes(url, n),
    }


### Report ###


def table(results: dict[str, Any]) -> str:
    sync, asynchronous, peer, redis = (results[name] for name in ("paas_sync", "paas_async", "channels_rabbitmq",
                                                                   "paas_redis_sync"))
    lines = [
        "| operation | paas-channels RabbitMQ sync | paas-channels RabbitMQ async | channels_rabbitmq 4 "
        "| sync / peer | async / peer | paas-channels Redis sync |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for key, label, unit in TESTS:
        lines.append(
            f"| {label} ({unit}) | {sync[key]:,.0f} | {asynchronous[key]:,.0f} | {peer[key]:,.0f} "
            f"| {sync[key] / peer[key]:.1f}x | {asynchronous[key] / peer[key]:.1f}x "
            f"| {'-' if key not in redis else format(redis[key], ',.0f')} |"
        )
    lines.append("")
    lines.append(
        f"Same RabbitMQ broker, one run (best of {results['repeat']} alternating runs each), {results['machine']}, "
        f"{os.cpu_count()} cores, load average {results['load_before']:.1f} before and {results['load_after']:.1f} "
        f"after, n={results['n']:,}. The Redis column is this project's Redis layer on a private redis-server, "
        f"for scale. The warm receive row is ours with the consumer started before the sends and the peer's "
        f"prefetch; the peer's figure there is its sequential receive (its consumer always runs first). "
        f"`python bench/layer_rabbitmq.py` ({results['date']})."
    )
    floor = results.get("floor")
    if floor:
        lines += [
            "",
            "The send's ceiling: one sequential publish waiting for its confirm, each client alone (no layer), "
            "same broker, same run:",
            "",
            "| client | confirmed publishes/s | / channels_rabbitmq 4's layer send |",
            "|---|---:|---:|",
        ]
        for key, label in FLOOR:
            lines.append(f"| {label} | {floor[key]:,.0f} | {floor[key] / peer['send']:.1f}x |")
    return "\n".join(lines)


def write_readme(text: str) -> None:
    content = README.read_text()
    pattern = re.compile(r"(<!-- bench:layer-rabbitmq -->\n).*?(<!-- /bench:layer-rabbitmq -->)", re.S)
    if not pattern.search(content):
        print("README.md has no bench:layer-rabbitmq markers; not updated", file=sys.stderr)
        return
    README.write_text(pattern.sub(lambda m: m.group(1) + text + "\n" + m.group(2), content))


def measure(n: int = 3000, repeat: int = 3, url: str | None = None, log=print) -> dict[str, Any]:
    """Every contender ``repeat`` times, alternating; each one's best run counts."""
    from paas_channels.testing import RedisServer

    url = url or DEFAULT_URL
    redis_server = RedisServer().start()
    try:
        results: dict[str, Any] = {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": f"{platform.system()} {platform.machine()}, Python {platform.python_version()}",
            "n": n,
            "load_before": os.getloadavg()[0],
        }
        runs: dict[str, list[dict[str, float]]] = {
            "channels_rabbitmq": [], "paas_sync": [], "paas_async": [], "paas_redis_sync": [], "floor": []
        }
        for round_number in range(1, repeat + 1):
            log(f"== layer-rabbitmq: round {round_number}/{repeat}, n={n:,}")
            runs["channels_rabbitmq"].append(asyncio.run(channels_rabbitmq(url, n)))
            runs["paas_sync"].append({**ours_sync(
                RabbitMQChannelLayer(url=url, prefix="brs" + uuid.uuid4().hex[:8], capacity=CAPACITY), n),
                "receive_warm": warm_receive_sync(url, n)})
            runs["paas_async"].append(asyncio.run(ours_async(url, n)))
            runs["paas_redis_sync"].append(ours_sync(
                RedisChannelLayer(hosts=[redis_server.url], prefix="brr" + uuid.uuid4().hex[:8], capacity=CAPACITY), n))
            runs["floor"].append(client_floor(url, n))
        for name, measured in runs.items():
            keys = [key for key, _ in FLOOR] if name == "floor" else [key for key, _, _ in TESTS if key in measured[0]]
            results[name] = {key: max(run[key] for run in measured) for key in keys}
        results["repeat"] = repeat
        results["load_after"] = os.getloadavg()[0]
        results["ratios"] = {
            f"{side}_{key}": results[f"paas_{side}"][key] / results["channels_rabbitmq"][key]
            for side in ("sync", "async") for key, _, _ in TESTS
        }
        return results
    finally:
        redis_server.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", help=f"RabbitMQ to use (default {DEFAULT_URL})")
    parser.add_argument("-n", type=int, default=3000, help="operations per sequential test (default 3000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each contender; the best counts (default 3)")
    parser.add_argument("--no-write", action="store_true", help="print only; do not write results or README")
    args = parser.parse_args(argv)

    results = measure(args.n, args.repeat, args.url)
    text = table(results)
    print(text)
    if not args.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "layer_rabbitmq.json").write_text(json.dumps(results, indent=2) + "\n")
        (RESULTS / "layer_rabbitmq.md").write_text("# RabbitMQ channel layer benchmark\n\n" + text + "\n")
        write_readme(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
