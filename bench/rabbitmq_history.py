"""Benchmark: what group history costs on RabbitMQ, side by side with a plain group send, one run.

    python bench/rabbitmq_history.py                    # the broker on 127.0.0.1:5672 (guest/guest)
    python bench/rabbitmq_history.py --url amqp://u:p@host:5672/vhost --n 1000

A history group's message goes to the prefix's sequencer (a process the
broker picks), which numbers it, appends it to the history stream and
delivers it; a plain group send publishes straight to the member inboxes.
Three layer objects on one prefix stand for three processes: the
sequencer ``S`` (it used history first), a sender ``P`` and a reader ``R``
holding the members (10 connections on one inbox).  For each kind of send,
sequentially: the time from ``send_group`` being called to the member's
``receive`` returning it (p50, p99), and, with 8 sender threads in ``P``,
deliveries/s.  Rounds alternate between the kinds (best of ``--repeat``).
Writes ``bench/results/rabbitmq_history.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script
    sys.path.insert(0, str(ROOT))

from paas_channels.layers.rabbitmq import RabbitMQChannelLayer  # noqa: E402

RESULTS = ROOT / "bench" / "results"
MEMBERS = 10
THREADS = 8
PAYLOAD = {"text": "x" * 100, "n": 1}
HISTORY = {"hist-*": {"size": 100, "ttl": 300}}
KINDS = [
    ("plain", "plain group send", "P", "plain-g"),
    ("history", "history group send, from a process that does not sequence", "P", "hist-g"),
    ("history_local", "history group send, from the sequencing process", "S", "hist-g"),
]


def _layers(url: str) -> dict[str, RabbitMQChannelLayer]:
    prefix = "bh" + uuid.uuid4().hex[:8]
    layers = {name: RabbitMQChannelLayer(url=url, prefix=prefix, history=HISTORY, capacity=100_000)
              for name in "SPR"}
    for layer in layers.values():
        layer.use_keys(["bench-key"])
    layers["S"].send_group("hist-g", {"warm": True})  # S stands first: it sequences
    for group in ("plain-g", "hist-g"):
        for i in range(MEMBERS):
            layers["R"].group_add(group, f"bench.r!m{i}")
    layers["P"].send_group("hist-g", {"warm": True})
    _drain(layers["R"])
    assert layers["S"]._history.sequencer._active and not layers["P"]._history.sequencer._active
    return layers


def _drain(reader: RabbitMQChannelLayer) -> None:
    while reader.receive(["bench.r!"])[0] is not None:
        pass


def latency(layers: dict, sender: str, group: str, n: int) -> list[float]:
    """Seconds from send_group to the first member receiving it, ``n`` times."""
    layer, reader = layers[sender], layers["R"]
    times = []
    for _ in range(n):
        started = time.perf_counter()
        layer.send_group(group, PAYLOAD)
        reader.receive(["bench.r!"], block=True)
        times.append(time.perf_counter() - started)
        for _ in range(MEMBERS - 1):
            reader.receive(["bench.r!"], block=True)
    return times


def throughput(layers: dict, sender: str, group: str, n: int) -> float:
    """Deliveries/s with THREADS threads of one process sending ``n`` messages in all."""
    layer, reader = layers[sender], layers["R"]
    per_thread = max(1, n // THREADS)
    threads = [threading.Thread(target=lambda: [layer.send_group(group, PAYLOAD) for _ in range(per_thread)])
               for _ in range(THREADS)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for _ in range(per_thread * THREADS * MEMBERS):
        reader.receive(["bench.r!"], block=True)
    return per_thread * THREADS * MEMBERS / (time.perf_counter() - started)


def run(url: str, n: int, repeat: int) -> dict:
    layers = _layers(url)
    try:
        best: dict[str, dict] = {}
        for _ in range(repeat):
            for key, _, sender, group in KINDS:
                times = latency(layers, sender, group, n)
                rate = throughput(layers, sender, group, n)
                row = {"p50_ms": statistics.median(times) * 1000,
                       "p99_ms": sorted(times)[int(len(times) * 0.99) - 1] * 1000, "deliveries_per_s": rate}
                old = best.get(key)
                best[key] = row if old is None else {
                    "p50_ms": min(old["p50_ms"], row["p50_ms"]), "p99_ms": min(old["p99_ms"], row["p99_ms"]),
                    "deliveries_per_s": max(old["deliveries_per_s"], row["deliveries_per_s"])}
        return best
    finally:
        layers["S"].destroy()
        for layer in layers.values():
            layer.close()


def table(results: dict, meta: str) -> str:
    plain = results["plain"]
    lines = ["| send | p50 send→receive | p99 | ratio p50 / plain | deliveries/s, 8 threads | ratio / plain |",
             "|---|---:|---:|---:|---:|---:|"]
    for key, label, _, _ in KINDS:
        row = results[key]
        lines.append(f"| {label} | {row['p50_ms']:.2f} ms | {row['p99_ms']:.2f} ms | "
                     f"{row['p50_ms'] / plain['p50_ms']:.2f}x | {row['deliveries_per_s']:,.0f} | "
                     f"{row['deliveries_per_s'] / plain['deliveries_per_s']:.2f}x |")
    return "\n".join(lines) + "\n\n" + meta + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("PAAS_CHANNELS_TEST_RABBITMQ_URL",
                                                        "amqp://guest:guest@127.0.0.1:5672/%2F"))
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    results = run(args.url, args.n, args.repeat)
    meta = (f"One broker, one run (best of {args.repeat} alternating rounds), n={args.n}, {MEMBERS} members on one "
            f"inbox, Linux {platform.machine()}, Python {platform.python_version()}, {os.cpu_count()} cores, load "
            f"average {load_before:.1f} before and {os.getloadavg()[0]:.1f} after. `python bench/rabbitmq_history.py` "
            f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}).")
    text = table(results, meta)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "rabbitmq_history.json").write_text(json.dumps({"results": results, "meta": meta}, indent=2) + "\n")
    (RESULTS / "rabbitmq_history.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
