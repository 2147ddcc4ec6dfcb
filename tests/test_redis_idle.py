"""Idle processes on the Redis layer cost (almost) no CPU: blocking receives, no polling.

Two real subprocesses on three shards: a worker blocked on normal channels
(one BLPOP per shard at once) and an interface-style asyncio loop on its inbox.
Their CPU time is read from /proc while they idle, then each is sent a message
to prove its loop was live all along.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from paas_channels.layers.redis import RedisChannelLayer
from tests.support import ROOT

WORKER = """
import sys
from paas_channels.layers.redis import RedisChannelLayer
layer = RedisChannelLayer(hosts=sys.argv[1].split(","), prefix=sys.argv[2])
print("ready", flush=True)
while True:
    channel, message = layer.receive(["http.request", "websocket.receive", "thumbnail"], block=True)
    if channel is not None:
        print("got", channel, message["n"], flush=True)
        break
"""

INTERFACE = """
import asyncio, sys
from paas_channels.layers.redis import RedisChannelLayer
layer = RedisChannelLayer(hosts=sys.argv[1].split(","), prefix=sys.argv[2])
async def main():
    print("ready", flush=True)
    while True:
        channel, message = await layer.areceive(["daphne.idle!"], block=True)
        if channel is not None:
            print("got", channel, message["n"], flush=True)
            return
asyncio.run(main())
"""

pytestmark = pytest.mark.redis  # every test here runs on a private Redis


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _Script:
    def __init__(self, code: str, *args: str) -> None:
        self.log = tempfile.NamedTemporaryFile(prefix="paas-idle-", suffix=".log", delete=False)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.process = subprocess.Popen(
            [sys.executable, "-c", code, *args], stdout=self.log, stderr=subprocess.STDOUT,
            env=env, start_new_session=True,
        )

    def output(self) -> str:
        return Path(self.log.name).read_text()

    def wait_for(self, text: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise AssertionError(f"{text!r} not printed; output:\n{self.output()}")
            time.sleep(0.05)

    def close(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.log.close()
        os.unlink(self.log.name)


@pytest.mark.timeout(60)
def test_idle_worker_and_interface_use_under_one_percent_cpu(redis_shard_servers):
    hosts = ",".join(server.url for server in redis_shard_servers)
    prefix = "idle" + uuid.uuid4().hex[:8]
    procs = [_Script(WORKER, hosts, prefix), _Script(INTERFACE, hosts, prefix)]
    layer = RedisChannelLayer(hosts=hosts.split(","), prefix=prefix)
    try:
        for proc in procs:
            proc.wait_for("ready")
        time.sleep(1.0)  # past imports and first connections
        started = [cpu_seconds(proc.process.pid) for proc in procs]
        began = time.monotonic()
        time.sleep(5.0)
        elapsed = time.monotonic() - began
        used = [cpu_seconds(proc.process.pid) - start for proc, start in zip(procs, started)]
        assert all(proc.process.poll() is None for proc in procs)
        for name, seconds in zip(("worker", "interface"), used):
            assert seconds / elapsed < 0.01, f"idle {name} used {seconds / elapsed:.1%} CPU"

        # Both loops were live the whole time: each takes its message at once.
        layer.send("thumbnail", {"n": 1})
        layer.send("daphne.idle!conn9", {"n": 2})
        procs[0].wait_for("got thumbnail 1", timeout=5)
        procs[1].wait_for("got daphne.idle!conn9 2", timeout=5)
        for proc in procs:
            assert proc.process.wait(10) == 0, proc.output()
    finally:
        layer.flush()
        layer.close()
        for proc in procs:
            proc.close()
