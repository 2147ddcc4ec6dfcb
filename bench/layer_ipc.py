"""The layer scenario on the IPC layer: ours (sync and async) against asgi_ipc 1.4.2, the seed's IPC layer.

asgi_ipc runs in its own venv (it needs msgpack-python 0.5 and asgiref 1.x)::

    python -m venv /tmp/asgi-ipc-venv && /tmp/asgi-ipc-venv/bin/pip install asgi_ipc==1.4.2

(``ASGI_IPC_PYTHON`` names another interpreter.)  Without it the peer's
column says why and the rest still runs.  Called by :mod:`bench.layer` in
each round, next to the Redis layer, so both are measured under the same load.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Any

from bench._layer_ops import CAPACITY, async_scenario, sync_scenario
from paas_channels.layers.ipc import IPCChannelLayer

ASGI_IPC_PYTHON = os.environ.get("ASGI_IPC_PYTHON", "/tmp/asgi-ipc-venv/bin/python")
INSTALL = "python -m venv /tmp/asgi-ipc-venv && /tmp/asgi-ipc-venv/bin/pip install asgi_ipc==1.4.2"
KEYS = ("send", "receive", "request_reply", "group")
LABELS = {
    "send": "sequential send (sends/s)",
    "receive": "sequential receive (receives/s)",
    "request_reply": "request/reply over ! channels (round trips/s)",
    "group": "group send to 1,000 members on 2 inboxes (deliveries/s)",
}


def _layer() -> IPCChannelLayer:
    return IPCChannelLayer(prefix="bench" + uuid.uuid4().hex[:8], capacity=CAPACITY)


def ipc_sync(n: int) -> dict[str, float]:
    layer = _layer()
    try:
        return sync_scenario(layer, n)
    finally:
        _remove(layer)


async def ipc_async(n: int) -> dict[str, float]:
    layer = _layer()
    try:
        return await async_scenario(layer, n)
    finally:
        _remove(layer)


def asgi_ipc(n: int) -> dict[str, Any]:
    """asgi_ipc 1.4.2's sync figures from its venv, or ``{"error": why}``."""
    if not Path(ASGI_IPC_PYTHON).exists():
        return {"error": f"asgi_ipc venv not found at {ASGI_IPC_PYTHON}; make it with `{INSTALL}`"}
    with tempfile.TemporaryFile("w+") as errors:
        run = subprocess.run([ASGI_IPC_PYTHON, str(Path(__file__).with_name("_asgi_ipc_peer.py")), str(n)],
                             stdout=subprocess.PIPE, stderr=errors, text=True, timeout=600)
        if run.returncode != 0:
            errors.seek(0)
            return {"error": f"asgi_ipc exited with {run.returncode}: {errors.read()[-300:].strip()}"}
    return json.loads(run.stdout)


def ratios(results: dict[str, Any]) -> dict[str, float]:
    """IPC sync against this run's Redis layer (sync) and against asgi_ipc, per operation."""
    out = {f"sync_vs_redis_{key}": results["ipc_sync"][key] / results["paas_sync"][key] for key in KEYS}
    if "error" not in results.get("asgi_ipc", {"error": "not run"}):
        out.update({f"sync_vs_asgi_ipc_{key}": results["ipc_sync"][key] / results["asgi_ipc"][key] for key in KEYS})
    return out


def _remove(layer: IPCChannelLayer) -> None:
    layer.flush()
    layer.close()
    for suffix in ("", "-wal", "-shm"):
        try:
            os.unlink(layer.path + suffix)
        except FileNotFoundError:
            pass


def table(results: dict[str, Any]) -> str:
    """IPC sync and async, this run's Redis layer (sync) and asgi_ipc, with ratios."""
    ours, ours_async, redis_sync = results["ipc_sync"], results["ipc_async"], results["paas_sync"]
    peer = results.get("asgi_ipc", {})
    lines = [
        "| operation | IPC layer sync | IPC layer async | Redis layer sync | asgi_ipc 1.4.2 | IPC / Redis | IPC / asgi_ipc |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for key in KEYS:
        theirs = peer.get(key)
        lines.append(
            f"| {LABELS[key]} | {ours[key]:,.0f} | {ours_async[key]:,.0f} | {redis_sync[key]:,.0f} "
            f"| {'n/a' if theirs is None else f'{theirs:,.0f}'} | {ours[key] / redis_sync[key]:.1f}x "
            f"| {'n/a' if theirs is None else f'{ours[key] / theirs:.1f}x'} |"
        )
    lines.append("")
    lines.append(
        "IPC layer: SQLite in WAL mode under /dev/shm, one process here, same rounds as the Redis layer above "
        "(best of each). asgi_ipc: sync API (it has no async one), in its own venv, "
        + (f"not measured: {peer['error']}" if "error" in peer else
           "Python 3.11 (it installs and runs), one run, its group figure from one group send")
        + "."
    )
    return "\n".join(lines)
