"""Requests against real web and worker processes: a 503 means "not run", a worker SIGKILLed
mid-request costs that request only."""

from __future__ import annotations

import signal
import threading

import httpx
import pytest

from tests.fault_support import stack_fixture
from paas_channels.testing import wait_until

pytestmark = pytest.mark.redis


stack = stack_fixture()


def test_a_request_answered_503_is_never_run_later(stack):
    worker = stack.worker("--threads", "1")
    stack.web("--http-timeout", "1")
    busy = threading.Thread(target=httpx.get, args=(f"{stack.url}/slow/?s=3",), kwargs={"timeout": 20})
    busy.start()
    assert wait_until(lambda: stack.busy_workers() == 1, 10)
    # The only worker thread sleeps 3 s: this request waits past --http-timeout, gets 503...
    late = httpx.get(f"{stack.url}/ran/?id=late", timeout=20)
    assert late.status_code == 503
    busy.join(20)  # answered 503 too (3 s > 1 s), but its consumer still runs: wait for it
    assert wait_until(lambda: stack.busy_workers() == 0, 10)
    # ... and is skipped when the worker reaches it: the next request is the only one that ran.
    assert httpx.get(f"{stack.url}/ran/?id=next", timeout=20).status_code == 200
    assert stack.ran() == ["next"], stack.logs()
    assert "was skipped: its client was answered 503" in worker.output()


def test_a_worker_killed_mid_request_costs_that_request_only(stack):
    first = stack.worker("--threads", "2")
    stack.web("--http-timeout", "6")
    slow = []
    # 3 s of work, well within the 6 s timeout: only the kill can make it a 503.
    thread = threading.Thread(target=lambda: slow.append(httpx.get(f"{stack.url}/slow/?s=3", timeout=20)))
    thread.start()
    assert wait_until(lambda: stack.busy_workers() == 1, 10)
    first.signal(signal.SIGKILL)
    first.wait(10)
    stack.worker("--threads", "2")
    thread.join(20)
    assert slow and slow[0].status_code == 503  # the killed worker's request: told, not hung
    assert httpx.get(f"{stack.url}/", timeout=20).status_code == 200


def test_four_poisoned_messages_leave_a_threads_4_worker_with_4_live_loops(stack):
    stack.worker("--threads", "4")
    stack.web("--http-timeout", "10")
    from paas_channels.layers.redis import RedisChannelLayer

    keyed = stack.layer()  # signed: the poison passes authentication and reaches the loops
    for poison in ({"reply_channel": 12345, "path": "/"}, {"reply_channel": "no spaces!", "path": "/"},
                   {"reply_channel": ["a", "list"], "path": "/"}, {"reply_channel": "x.y!z", "path": 7}):
        keyed.send("http.request", poison)
    RedisChannelLayer(hosts=[stack.redis.url]).send("http.request", {"unsigned": True})
    assert wait_until(lambda: keyed.channel_statistics("http.request")["messages_pending"] == 0, 10)
    assert httpx.get(f"{stack.url}/", timeout=20).status_code == 200
    # The next heartbeat (every 5 s) reports the loops; health counts them.
    assert wait_until(lambda: httpx.get(f"{stack.url}/.paas-channels/health", timeout=10).json()["loops"]
                      == {"live": 4, "expected": 4, "lost": 0}, 15)
    keyed.close()
