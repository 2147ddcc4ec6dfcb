"""Spinning for replies (``reply_spin_us``): when the Redis layer polls, when it stops, what it never does.

Real Redis throughout; a Redis "a network hop away" is the real one behind a
proxy that holds every reply 2 ms.  The layer's own counters (spins begun,
replies that came within the window) say what it did; no test reads a clock.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

from paas_channels.layers.redis import RedisChannelLayer
from paas_channels.testing import wait_until
from tests.support import ROOT, SlowLinkProxy, stop_process

# Replies through the proxy come 2 ms late: never within a 100 µs window.
SLOW = 0.002

pytestmark = pytest.mark.redis  # every test here runs on a private Redis


@pytest.fixture
def slow_redis(redis_server):
    proxy = SlowLinkProxy(redis_server.port, SLOW)
    yield proxy
    proxy.close()


def make(url, **config):
    return RedisChannelLayer(hosts=[url], prefix="spin" + uuid.uuid4().hex[:8], **config)


def spare_cpus(spin):
    """As if the machine had CPUs to spare whatever else runs now, so each test sees only its own rule.

    (How busy the machine is decides whether to spin at all:
    ``test_busy_machine_never_spins`` covers that, with real load.)
    """
    spin.cpus = 1_000_000
    return spin


def test_spins_for_replies_and_reads_them_whole(redis_server):
    # A window far longer than any loopback reply: every spin ends with its reply.
    layer = make(redis_server.url, reply_spin_us=5000, capacity=1000)
    spare_cpus(layer._sync.spin)
    big = {"blob": b"z" * 1_000_000, "n": 0}  # a reply read in many pieces while spinning
    try:
        for i in range(50):
            layer.send("spin.chan", {"n": i})
        layer.send("spin.chan", big)
        got = [layer.receive(["spin.chan"])[1] for _ in range(51)]
        spin = layer._sync.spin
        assert got == [{"n": i} for i in range(50)] + [big]
        assert spin.tries >= 101 and spin.hits > 0 and spin.misses < 16
    finally:
        layer.flush()
        layer.close()


def test_far_redis_stops_the_spinning_then_tries_again(slow_redis):
    layer = make(slow_redis.url, reply_spin_us=100)
    spare_cpus(layer._sync.spin)
    try:
        for i in range(40):
            layer.send("spin.far", {"n": i})
        spin = layer._sync.spin
        # 16 misses in a row pause it for a second; the other 24 sends slept at once.
        assert (spin.tries, spin.hits) == (16, 0)
        time.sleep(1.1)
        layer.send("spin.far", {"n": 40})
        layer.send("spin.far", {"n": 41})
        assert (spin.tries, spin.hits) == (17, 0), "one try after the pause, which missed and paused again"
        assert [layer.receive(["spin.far"])[1]["n"] for _ in range(42)] == list(range(42))
    finally:
        layer.flush()
        layer.close()


def test_far_redis_stops_the_spinning_async(slow_redis):
    layer = make(slow_redis.url, reply_spin_us=100)

    async def main():
        spare_cpus((await layer._async_io()).spin)
        try:
            for i in range(40):
                await layer.asend("spin.far", {"n": i})
            spin = (await layer._async_io()).spin
            assert (spin.tries, spin.hits) == (16, 0)
            assert [(await layer.areceive(["spin.far"]))[1]["n"] for _ in range(40)] == list(range(40))
        finally:
            await layer.aflush()
            await layer.aclose()

    asyncio.run(main())
    layer.close()


def test_async_spin_lets_other_tasks_run(slow_redis):
    # A 10 ms window over a 2 ms reply: the loop polls all along, and must
    # still run other tasks meanwhile (it is not a busy loop in the coroutine).
    layer = make(slow_redis.url, reply_spin_us=10_000)

    async def main():
        ticks = 0
        stop = False

        async def ticker():
            nonlocal ticks
            while not stop:
                ticks += 1
                await asyncio.sleep(0)

        spare_cpus((await layer._async_io()).spin)
        task = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        try:
            # 15 sends: fewer than the 16 misses in a row that would pause the spinning, so each
            # is polled for; on a loaded machine a reply may take longer than 10 ms, and once all
            # 5 of 5 did (a CI rehearsal), so more chances for the one that must come in time.
            sends = 15
            for i in range(sends):
                before = ticks
                await layer.asend("spin.coop", {"n": i})
                assert ticks > before + 1, "no other task ran while a reply was awaited"
            spin = (await layer._async_io()).spin
            assert spin.tries == sends and spin.hits >= 1
        finally:
            stop = True
            await task
            await layer.aflush()
            await layer.aclose()

    asyncio.run(main())
    layer.close()


def test_zero_turns_spinning_off(redis_server):
    layer = make(redis_server.url, reply_spin_us=0)
    spare_cpus(layer._sync.spin)
    try:
        layer.send("spin.off", {"a": 1})
        assert layer.receive(["spin.off"]) == ("spin.off", {"a": 1})
        assert layer._sync.spin.tries == 0
    finally:
        layer.close()


def test_busy_machine_never_spins(redis_server):
    # As many CPU-bound processes as CPUs (the rule's threshold, not more: the
    # load is sized to the machine): a spin would take CPU from them or from
    # Redis, so every reply is slept for.
    cpus = len(os.sched_getaffinity(0))
    burners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True) for _ in range(cpus)
    ]
    layer = make(redis_server.url, reply_spin_us=5000)
    try:
        # The burners are running: the kernel counts them runnable (this process too).
        assert wait_until(lambda: (_runnable_now() or 0) > cpus, timeout=10)
        for i in range(30):
            layer.send("spin.busy", {"n": i})
        assert [layer.receive(["spin.busy"])[1]["n"] for _ in range(30)] == list(range(30))
        assert layer._sync.spin.budget > 0 and layer._sync.spin.tries == 0
    finally:
        for burner in burners:
            stop_process(burner, 5)
        layer.flush()
        layer.close()


@pytest.mark.parametrize("value", [-1, 10_001, "100", True, None])
def test_bad_reply_spin_us_says_what_is_allowed(value):
    with pytest.raises(ValueError, match=r"reply_spin_us must be a number of microseconds from 0 \(off\) to 10000"):
        RedisChannelLayer(reply_spin_us=value)


def _runnable_now() -> int | None:
    """Runnable tasks on the machine, from /proc/loadavg's fourth field (running/total)."""
    try:
        with open("/proc/loadavg") as loadavg:
            return int(loadavg.read().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return None


def _run_child(code: str, url: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), url], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_never_spins_with_one_cpu(redis_server):
    # Redis needs the only CPU to answer: polling for the reply would only delay it.
    out = _run_child(
        """
        import os, sys
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
        from paas_channels.layers.redis import RedisChannelLayer
        layer = RedisChannelLayer(hosts=[sys.argv[1]], prefix="spin1cpu", reply_spin_us=5000)
        for i in range(20):
            layer.send("spin.one", {"n": i})
        assert [layer.receive(["spin.one"])[1]["n"] for i in range(20)] == list(range(20))
        print(layer._sync.spin.budget, layer._sync.spin.tries)
        layer.close()
        """,
        redis_server.url,
    )
    assert out == "0.0 0"


def test_never_spins_on_gevent_sockets(redis_server):
    # A spinning greenlet would hold up every other greenlet of the worker.
    out = _run_child(
        """
        from gevent import monkey; monkey.patch_all()
        import sys
        from paas_channels.layers.redis import RedisChannelLayer
        layer = RedisChannelLayer(hosts=[sys.argv[1]], prefix="spingevent", reply_spin_us=5000)
        for i in range(20):
            layer.send("spin.gevent", {"n": i})
        assert [layer.receive(["spin.gevent"])[1]["n"] for i in range(20)] == list(range(20))
        print(layer._sync.spin.budget > 0, layer._sync.spin.tries)
        layer.close()
        """,
        redis_server.url,
    )
    assert out == "True 0"
