"""Zero lost messages across a full deploy, web included, with real processes on a private Redis.

200 WebSocket clients speaking the resume protocol (``ResumingClient``, what
``client.js`` does) and two Chromium pages running ``client.js`` sit in one
history group that gets 20 messages a second.  Then the deploy a platform
does: new ``web`` and ``worker`` processes, the router sends new connections
to the new web, the old processes get SIGTERM (the old web closes its
sockets with 1012, spread over ``--ws-drain``).  Every client must end with
every message exactly once and in order.

With a history too short for the gap (the old processes stopped before the
new ones start, and 5 messages of history), every client must be told it
could not recover instead.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from paas_channels.testing import ResumingClient, TcpRouter

from .interface_support import scrubbed_environ
from .resume_support import GROUP, layer_config, make_project, project_env, sender_layer
from .support import RedisServer, ServerProcess, close_all, free_port, wait_for_port

pytestmark = [pytest.mark.redis, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
CLIENTS = 200
RATE = 20  # messages per second
MESSAGES = 160  # 8 s of them; the deploy happens 2 s in


class Release:
    """One release's ``web`` and ``worker`` processes."""

    def __init__(self, env: dict[str, str], project) -> None:
        self.port = free_port()
        self.web = ServerProcess(["run", "web", "--bind", "127.0.0.1", "--port", str(self.port), "--ws-drain", "2"],
                                 env={**scrubbed_environ(), **env}, cwd=project)
        self.worker = ServerProcess(["run", "worker", "--threads", "4"], env={**scrubbed_environ(), **env}, cwd=project)

    def start(self) -> "Release":
        self.web.start()
        self.worker.start()
        wait_for_port(self.port, timeout=30, process=self.web.process)
        self.worker.wait_for_output("consuming", timeout=30)
        return self

    def terminate(self) -> None:
        self.web.signal()
        self.worker.signal()

    def wait(self) -> None:
        assert self.web.wait(40) == 0, self.web.output()[-3000:]
        assert self.worker.wait(40) == 0, self.worker.output()[-3000:]
        # Every connection's application finished by itself: none held the shutdown until Daphne
        # killed it (a disconnect waiting for room that no stopped worker would make).
        assert "took too long to shut down" not in self.web.output(), self.web.output()[-3000:]

    def close(self) -> None:
        close_all([self.web, self.worker])


async def _until(predicate, timeout: float, what: str, clients=(), logs=lambda: "") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}; clients: {_summary(clients)}{logs()}")
        await asyncio.sleep(0.05)


def _summary(clients) -> str:
    """How many clients had how many messages, connections and recoveries (for a failure's message)."""
    from collections import Counter

    counts = Counter((len(c.messages), c.connects, tuple(ok for _, ok in c.recoveries)) for c in clients)
    return ", ".join(f"{n}x(messages={m}, connects={k}, recovered={r})" for (m, k, r), n in counts.most_common(8))


async def _deploy(tmp_path, history_size: int, preboot: bool):
    """Run the scenario; returns (Python clients, the pages' [got, recoveries])."""
    from playwright.async_api import async_playwright

    project = make_project(tmp_path)
    with contextlib.ExitStack() as cleanup:
        redis = RedisServer().start()
        cleanup.callback(redis.close)
        env = project_env(project, redis.url, ROOM_HISTORY_SIZE=str(history_size))
        old = Release(env, project)
        cleanup.callback(old.close)
        await asyncio.to_thread(old.start)
        new = Release(env, project)
        cleanup.callback(new.close)
        layer = sender_layer(redis.url, **layer_config(history_size))
        router = await TcpRouter(old.port).start()
        clients = [ResumingClient(lambda: f"ws://127.0.0.1:{router.target}/room/") for _ in range(CLIENTS)]
        stop = asyncio.Event()
        tasks = [asyncio.ensure_future(client.run(stop)) for client in clients]
        try:
            async with async_playwright() as playwright:
                browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
                pages = [await browser.new_page() for _ in range(2)]
                for page in pages:
                    await page.goto(router.url + "/")
                await _until(lambda: all(GROUP in client.state.positions for client in clients), 60, "every join")
                for page in pages:
                    await page.wait_for_function(f"window.conn.positions[{GROUP!r}] !== undefined", timeout=30_000)
                sent = []

                async def publish():
                    loop = asyncio.get_running_loop()
                    start = loop.time()
                    for n in range(MESSAGES):
                        await asyncio.sleep(max(0.0, start + n / RATE - loop.time()))
                        await layer.asend_group(GROUP, {"text": str(n)})
                        sent.append(n)

                publisher = asyncio.ensure_future(publish())
                await _until(lambda: len(sent) >= 2 * RATE, 30, "the first 2 s of messages")
                if preboot:  # new processes first, then the router moves, then the old ones stop
                    await asyncio.to_thread(new.start)
                    router.target = new.port
                    old.terminate()
                    await asyncio.to_thread(old.wait)
                else:  # the old ones stop first: a gap longer than a 5-message history
                    old.terminate()
                    await asyncio.to_thread(old.wait)
                    await asyncio.to_thread(new.start)
                    router.target = new.port
                await publisher
                logs = lambda: f"\nstats {layer.global_statistics()}\nnew web:\n{new.web.output()[-2500:]}\nnew worker:\n{new.worker.output()[-1500:]}"  # noqa: E731
                if preboot:
                    await _until(lambda: all(len(client.messages) >= MESSAGES for client in clients), 40,
                                 "every client to have every message", clients, logs)
                    for page in pages:
                        await page.wait_for_function(f"window.got.length >= {MESSAGES}", timeout=40_000)
                else:
                    await _until(lambda: all(client.recoveries for client in clients), 40, "every client's recovery",
                                 clients, logs)
                    for page in pages:
                        await page.wait_for_function("window.recoveries.length > 0", timeout=40_000)
                # A moment for anything sent twice to show itself as a duplicate.
                await asyncio.sleep(0.5)
                browsers = [await page.evaluate("[window.got, window.recoveries]") for page in pages]
                await browser.close()
        finally:
            stop.set()
            await asyncio.gather(*(client.close() for client in clients), return_exceptions=True)
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
            await router.close()
            await layer.aclose()
            layer.close()
        return clients, browsers


def test_full_deploy_loses_nothing(tmp_path):
    clients, browsers = asyncio.run(_deploy(tmp_path, history_size=500, preboot=True))
    expected = [str(n) for n in range(MESSAGES)]
    moved = sum(1 for client in clients if client.connects >= 2)
    assert moved == CLIENTS, f"only {moved} of {CLIENTS} clients reconnected: the deploy did not move them"
    for index, client in enumerate(clients):
        got = [data for data, meta in client.messages if meta["group"] == GROUP]
        assert got == expected, f"client {index}: {len(got)} messages, first differences at " \
            f"{next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))}"
        assert all(ok for _, ok in client.recoveries) and client.recoveries
    for got, recoveries in browsers:
        assert [data for data, _, _ in got] == expected
        assert recoveries and all(recoveries)


def test_history_too_short_every_client_is_told(tmp_path):
    clients, browsers = asyncio.run(_deploy(tmp_path, history_size=5, preboot=False))
    for index, client in enumerate(clients):
        assert (GROUP, False) in client.recoveries, f"client {index}: recoveries {client.recoveries}"
        got = [int(data) for data, meta in client.messages if meta["group"] == GROUP]
        assert got == sorted(set(got)), f"client {index}: a message twice or out of order"
    for got, recoveries in browsers:
        assert False in recoveries
        offsets = [offset for _, offset, _ in got]
        assert offsets == sorted(set(offsets))

