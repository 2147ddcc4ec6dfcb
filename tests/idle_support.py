"""The idle-CPU scenario every layer's idle test runs (``tests/test_*_idle.py``).

Two real subprocesses on one layer: a worker blocked on normal channels (sync
``receive``) and an interface-style asyncio loop on its inbox (``areceive``).
Their CPU time is read from /proc while they idle, then each is sent a message
to prove its loop was live all along.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

from paas_channels.testing import cpu_seconds
from tests.support import Script, ServerProcess

_WORKER = """
import sys
{make_layer}
print("ready", flush=True)
while True:
    channel, message = layer.receive(["http.request", "websocket.receive", "thumbnail"], block=True)
    if channel is not None:
        print("got", channel, message["n"], flush=True)
        break
"""

_INTERFACE = """
import asyncio, sys
{make_layer}
async def main():
    print("ready", flush=True)
    while True:
        channel, message = await layer.areceive(["daphne.idle!"], block=True)
        if channel is not None:
            print("got", channel, message["n"], flush=True)
            return
asyncio.run(main())
"""


def idle_scripts(make_layer: str, *args: object) -> list[Script]:
    """The worker and the interface script, started; ``make_layer`` is the code that sets ``layer``
    (from ``sys.argv[1:]``, which are ``args``)."""
    return [Script(code.format(make_layer=make_layer), *args).start() for code in (_WORKER, _INTERFACE)]


def idle_cpu(processes: Sequence[ServerProcess], seconds: float) -> list[float]:
    """The share of one core each of ``processes`` used while idling for ``seconds`` (from /proc).

    Each must have printed ``ready``; the window opens a second later (past its imports
    and first receive) and is what is measured, not a synchronisation.  Fails if one exited.
    """
    for process in processes:
        process.wait_for_output("ready")
    time.sleep(1.0)
    started = [cpu_seconds(process.process.pid) for process in processes]
    began = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - began
    used = [cpu_seconds(process.process.pid) - start for process, start in zip(processes, started)]
    assert all(process.process.poll() is None for process in processes), [p.output()[-2000:] for p in processes]
    return [seconds_used / elapsed for seconds_used in used]


def check_idle_then_live(scripts: Sequence[Script], layer: Any, seconds: float) -> None:
    """Under 1% CPU each while idle for ``seconds``; then each takes its message at once and exits 0."""
    for name, share in zip(("worker", "interface"), idle_cpu(scripts, seconds)):
        assert share < 0.01, f"idle {name} used {share:.1%} CPU"
    layer.send("thumbnail", {"n": 1})
    layer.send("daphne.idle!conn9", {"n": 2})
    scripts[0].wait_for_output("got thumbnail 1", timeout=5)
    scripts[1].wait_for_output("got daphne.idle!conn9 2", timeout=5)
    for script in scripts:
        assert script.wait(10) == 0, script.output()
