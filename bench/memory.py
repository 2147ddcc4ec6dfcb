"""Scenario 4, memory: resident memory of the web process per open idle WebSocket.

(VmRSS with N idle connections - VmRSS with none) / N, for our ``run web``
process (the worker is another process and is not counted: it holds no
connection) and for Daphne running a Channels 4 consumer (which holds them
all in its one process).  Both endpoints only accept (``/ws/idle/``).  Before
the baseline reading a few connections are opened and closed, so that code
loaded on first use is in both readings.
"""

from __future__ import annotations

import time
from pathlib import Path

from bench._procs import Clients, Deployment, rss_kib

WARMUP_CONNECTIONS = 10
SETTLE_SECONDS = 2.0


def run_side(kind: str, workdir: Path, connections: int, client_processes: int, settle: float) -> dict:
    deployment = Deployment(kind, workdir, workers=1)
    pool = None
    try:
        Clients(deployment.url("/ws/idle/"), WARMUP_CONNECTIONS, joined=False).close()
        time.sleep(settle)
        before = rss_kib(deployment.web.pid)
        pool = Clients(deployment.url("/ws/idle/"), connections, joined=False, processes=client_processes)
        time.sleep(settle)
        after = rss_kib(deployment.web.pid)
        connected = pool.connected
    finally:
        if pool is not None:
            pool.close()
        deployment.close()
    return {
        "label": deployment.label, "connections": connections, "connected": connected,
        "rss_before_kib": before, "rss_after_kib": after,
        "kib_per_connection": (after - before) / connected if connected else None,
    }


def run(workdir: Path, connections: int, client_processes: int, settle: float = SETTLE_SECONDS, log=print) -> dict:
    sides = {}
    for kind in ("ours", "channels4"):
        log(f"== memory: {kind}, {connections:,} idle WebSockets")
        sides[kind] = side = run_side(kind, workdir, connections, client_processes, settle)
        per = side["kib_per_connection"]
        log(f"   RSS {side['rss_before_kib']:,} -> {side['rss_after_kib']:,} KiB, "
            f"{per:.1f} KiB per connection" if per is not None else "   no connection opened")
    ours, peer = sides["ours"]["kib_per_connection"], sides["channels4"]["kib_per_connection"]
    return {**sides, "ratios": {"per_connection": ours / peer if ours is not None and peer else None}}
