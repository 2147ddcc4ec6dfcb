"""The IPC layer survives processes killed with SIGKILL at any moment.

Victim processes hammer the layer (sends of 20 kB messages, group sends,
blocking receives, heartbeats) and are killed with SIGKILL at random points,
again and again: inside SQLite transactions, holding the write lock, blocked
in a receive with their wake-up address registered.  Meanwhile two survivors
keep working: one checks that every message it sends itself comes back
intact and in order, one sleeps in blocking receives (30 s timeout) on a
channel the victims also wait on, so a wakeup lost to a dead victim would
stall it.  After each kill both must make progress; afterwards the database
passes SQLite's integrity check and the layer still works.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import threading
import uuid

import pytest

from paas_channels.layers.ipc import IPCChannelLayer
from paas_channels.testing import wait_until
from tests.ipc_support import Script

VICTIM = """
import os, random, sys
from paas_channels.layers import ChannelFull
from paas_channels.layers.ipc import IPCChannelLayer
layer = IPCChannelLayer(prefix=sys.argv[1], directory=sys.argv[2], capacity=50, blocking_timeout=0.05)
me = layer.new_channel("victim!")
layer.group_add("crash.group", me)
for n in range(20):
    layer.group_add("crash.group", f"crash.member{n}")
blob = os.urandom(20_000)
print("ready", flush=True)
while True:
    roll = random.random()
    try:
        if roll < 0.3:
            layer.send("crash.work", {"blob": blob, "pid": os.getpid()})
        elif roll < 0.45:
            layer.send_group("crash.group", {"blob": blob[:2000]})
        elif roll < 0.9:
            layer.receive(["crash.work", "surv.shared", "victim!"], block=True)
        else:
            layer.heartbeat(f"victim.{os.getpid()}", {"pid": os.getpid()}, ttl=5)
    except ChannelFull:
        pass
"""

# Checks its own messages: each comes back whole and in order.
ECHOER = """
import os, sys
from paas_channels.layers import ChannelFull
from paas_channels.layers.ipc import IPCChannelLayer
layer = IPCChannelLayer(prefix=sys.argv[1], directory=sys.argv[2], capacity=50)
blob = bytes(range(256)) * 40
stop = sys.argv[3]
i = 0
print("ready", flush=True)
while not os.path.exists(stop):
    layer.send("surv.inbox!a", {"i": i, "blob": blob})
    channel, message = layer.receive(["surv.inbox!"], block=True)
    if channel != "surv.inbox!a" or message["i"] != i or message["blob"] != blob:
        print("BAD", channel, message and message.get("i"), flush=True)
        sys.exit(1)
    for name in ("surv.shared", "crash.work"):
        try:
            layer.send(name, {"i": i})
        except ChannelFull:
            pass
    i += 1
    if i % 10 == 0:
        print("progress", i, flush=True)
print("done", i, flush=True)
"""

# Sleeps in blocking receives that only a wakeup ends early.
SLEEPER = """
import os, sys
from paas_channels.layers.ipc import IPCChannelLayer
layer = IPCChannelLayer(prefix=sys.argv[1], directory=sys.argv[2], blocking_timeout=30)
stop = sys.argv[3]
got = 0
print("ready", flush=True)
while not os.path.exists(stop):
    channel, message = layer.receive(["surv.shared"], block=True)
    if channel is not None:
        got += 1
        print("got", got, flush=True)
print("done", got, flush=True)
"""

# Takes SQLite's write lock on the layer's database and keeps it until killed.
LOCK_HOLDER = """
import sqlite3, sys, time
from paas_channels.layers.ipc import IPCChannelLayer
layer = IPCChannelLayer(prefix=sys.argv[1], directory=sys.argv[2])
layer.send("held", {"before": True})
conn = sqlite3.connect(layer.path, isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
conn.execute("DELETE FROM messages")
print("locked", flush=True)
time.sleep(600)
"""

# Blocks in one long receive.
BLOCKED = """
import sys
from paas_channels.layers.ipc import IPCChannelLayer
IPCChannelLayer(prefix=sys.argv[1], directory=sys.argv[2], blocking_timeout=60).receive(["final"], block=True)
"""

KILLS = 12


def _integrity(path: str) -> str:
    with sqlite3.connect(path) as conn:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]


def _woken_receive(layer: IPCChannelLayer, channel: str) -> list:
    """A blocking receive in a thread (the layer's timeout is long); returns where its result will be."""
    result: list = []
    threading.Thread(target=lambda: result.append(layer.receive([channel], block=True)), daemon=True).start()
    return result


@pytest.mark.slow
@pytest.mark.timeout(110)
def test_processes_killed_at_random_moments_never_wedge_or_corrupt_the_others(tmp_path):
    prefix = "kill" + uuid.uuid4().hex[:8]
    stop = tmp_path / "stop"
    args = (prefix, tmp_path, stop)
    survivors = [Script(ECHOER, *args).start(), Script(SLEEPER, *args).start()]
    victims: list[Script] = []
    layer = IPCChannelLayer(prefix=prefix, directory=tmp_path, blocking_timeout=30)
    rng = random.Random(1234)
    try:
        for survivor in survivors:
            survivor.wait_for_output("ready")
        for kill in range(KILLS):
            # Two victims at a time: one starts while the other is running.
            while len(victims) < 2:
                victims.append(Script(VICTIM, prefix, tmp_path).start())
            victim = victims.pop(0)
            victim.wait_for_output("ready")
            echoed, slept = survivors[0].last_number("progress"), survivors[1].last_number("got")
            # The kill point: a random moment of the victim's work (not synchronisation).
            threading.Event().wait(rng.uniform(0.02, 0.4))
            os.killpg(victim.process.pid, signal.SIGKILL)
            assert victim.wait(10) == -signal.SIGKILL
            victim.close()
            assert wait_until(lambda: survivors[0].last_number("progress") > echoed + 10, timeout=20), (
                f"the echoer stalled after kill {kill}:\n{survivors[0].output()[-2000:]}")
            assert wait_until(lambda: survivors[1].last_number("got") > slept, timeout=20), (
                f"the sleeper was not woken after kill {kill}:\n{survivors[1].output()[-2000:]}")
        for victim in victims:
            os.killpg(victim.process.pid, signal.SIGKILL)
            victim.wait(10)
        stop.touch()
        layer.send("surv.shared", {"last": True})  # the sleeper's last receive ends now, not in 30 s
        for survivor in survivors:
            assert survivor.wait(30) == 0, survivor.output()[-2000:]
            assert "BAD" not in survivor.output()

        assert _integrity(layer.path) == "ok"
        layer.send("after", {"still": "works"})
        assert layer.receive(["after"]) == ("after", {"still": "works"})
        assert layer.group_channels("crash.group")  # the victims' memberships are intact rows
        # A receiver killed while it waits leaves its registration, first in line: the
        # one send that follows must skip it and wake the live receiver behind it.
        dead = Script(BLOCKED, prefix, tmp_path).start()
        assert wait_until(lambda: _registered(layer, "final") == 1, timeout=20), dead.output()
        os.killpg(dead.process.pid, signal.SIGKILL)
        dead.wait(10)
        dead.close()
        result = _woken_receive(layer, "final")
        assert wait_until(lambda: _registered(layer, "final") == 2, timeout=10)
        layer.send("final", {"wake": "up"})
        assert wait_until(lambda: result, timeout=10), "a blocked receive was not woken"
        assert result[0] == ("final", {"wake": "up"})
    finally:
        for process in [*victims, *survivors]:
            process.close()
        layer.close()


def _registered(layer: IPCChannelLayer, key: str) -> int:
    with sqlite3.connect(layer.path) as conn:
        return conn.execute("SELECT count(*) FROM waiters WHERE key = ?", (key,)).fetchone()[0]


@pytest.mark.timeout(60)
def test_a_process_killed_holding_the_write_lock_releases_it(tmp_path):
    prefix = "lock" + uuid.uuid4().hex[:8]
    holder = Script(LOCK_HOLDER, prefix, tmp_path).start()
    layer = IPCChannelLayer(prefix=prefix, directory=tmp_path, blocking_timeout=30)
    try:
        holder.wait_for_output("locked")
        # A sync send waits for the lock (as SQLite does); it goes through once the holder is gone.
        sent = []
        sender = threading.Thread(target=lambda: sent.append(layer.send("held", {"after": True})), daemon=True)
        sender.start()
        os.killpg(holder.process.pid, signal.SIGKILL)
        holder.wait(10)
        assert wait_until(lambda: sent, timeout=10)
        # The holder's uncommitted delete never happened.
        assert layer.receive(["held"]) == ("held", {"before": True})
        assert layer.receive(["held"]) == ("held", {"after": True})
        assert _integrity(layer.path) == "ok"
    finally:
        holder.close()
        layer.close()


@pytest.mark.timeout(60)
def test_the_async_api_keeps_the_loop_running_while_another_process_holds_the_lock(tmp_path):
    prefix = "alock" + uuid.uuid4().hex[:8]
    holder = Script(LOCK_HOLDER, prefix, tmp_path).start()
    layer = IPCChannelLayer(prefix=prefix, directory=tmp_path)
    try:
        holder.wait_for_output("locked")
        layer_ready = asyncio.run(layer.aheartbeats())  # reads take no lock: answered at once
        assert layer_ready == {}

        async def scenario():
            ticks = 0

            async def ticker():
                nonlocal ticks
                while True:
                    await asyncio.sleep(0.01)
                    ticks += 1

            task = asyncio.create_task(ticker())
            send = asyncio.create_task(layer.asend("held", {"after": True}))
            while ticks < 20:  # the loop runs while the send waits for the lock
                await asyncio.sleep(0.01)
            assert not send.done()
            os.killpg(holder.process.pid, signal.SIGKILL)
            await asyncio.wait_for(send, 10)
            task.cancel()
            return ticks

        assert asyncio.run(scenario()) >= 20
        assert layer.receive(["held"]) == ("held", {"before": True})
        assert layer.receive(["held"]) == ("held", {"after": True})
    finally:
        holder.close()
        layer.close()
