"""Idle processes on the IPC layer cost (almost) no CPU: receivers sleep on a socket, nobody polls.

Two real subprocesses, as in the Redis layer's idle test: a worker blocked on
normal channels (sync, ``poll`` on its wake-up socket) and an interface-style
asyncio loop on its inbox (``loop.add_reader``).  Their CPU time is read from
/proc while they idle, then each is sent a message to prove it was live.
"""

from __future__ import annotations

import uuid

import pytest

from paas_channels.layers.ipc import IPCChannelLayer
from tests.support import Script, idle_cpu

WORKER = """
import sys
from paas_channels.layers.ipc import IPCChannelLayer
layer = IPCChannelLayer(prefix=sys.argv[1], directory=sys.argv[2])
print("ready", flush=True)
while True:
    channel, message = layer.receive(["http.request", "websocket.receive", "thumbnail"], block=True)
    if channel is not None:
        print("got", channel, message["n"], flush=True)
        break
"""

INTERFACE = """
import asyncio, sys
from paas_channels.layers.ipc import IPCChannelLayer
layer = IPCChannelLayer(prefix=sys.argv[1], directory=sys.argv[2])
async def main():
    print("ready", flush=True)
    while True:
        channel, message = await layer.areceive(["daphne.idle!"], block=True)
        if channel is not None:
            print("got", channel, message["n"], flush=True)
            return
asyncio.run(main())
"""


@pytest.mark.timeout(60)
def test_idle_worker_and_interface_use_under_one_percent_cpu(tmp_path):
    prefix = "idle" + uuid.uuid4().hex[:8]
    procs = [Script(WORKER, prefix, tmp_path).start(), Script(INTERFACE, prefix, tmp_path).start()]
    layer = IPCChannelLayer(prefix=prefix, directory=tmp_path)
    try:
        for name, share in zip(("worker", "interface"), idle_cpu(procs, 4.0)):
            assert share < 0.01, f"idle {name} used {share:.1%} CPU"

        # Both were live the whole time: each takes its message at once.
        layer.send("thumbnail", {"n": 1})
        layer.send("daphne.idle!conn9", {"n": 2})
        procs[0].wait_for_output("got thumbnail 1", timeout=5)
        procs[1].wait_for_output("got daphne.idle!conn9 2", timeout=5)
        for proc in procs:
            assert proc.wait(10) == 0, proc.output()
    finally:
        for proc in procs:
            proc.close()
        layer.close()
