"""The example chat open in Chromium through a full deploy: every line once, in order; told when lost.

Real ``run web`` and ``run worker`` of the example project on a private Redis,
behind a router (``TcpRouter``) that a deploy moves to the new web.  Lines
said while the page reconnects come from the room's history (the example's
``CONFIG["history"]``).  A second deploy with Redis flushed in between (the
history lost: a new epoch) makes the page say lines could not be recovered.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys

import pytest

from paas_channels.layers import RedisChannelLayer
from paas_channels.testing import TcpRouter

from .interface_support import SECRET_KEY, project_env, scrubbed_environ, start_web, start_worker
from .support import ROOT, RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ROOM = "deploy"
LINES = 30  # 10 a second; the deploy happens after the first 10


def _start(env, layer):
    # The page's /live/ long-poll stays open at a SIGTERM: the old web waits for it
    # up to --graceful-timeout, so a short one keeps the test short.
    web, port = start_web(env, "--ws-drain", "1", "--graceful-timeout", "4")
    return web, port, start_worker(env, layer)


async def _say_lines(layer, first, count):
    for n in range(first, first + count):
        said = {"user": "bot", "text": f"line {n}", "room": ROOM}
        await layer.asend_group(f"chat-{ROOM}", {"text": json.dumps(said)})
        await asyncio.sleep(0.1)


async def _scenario(tmp_path):
    from playwright.async_api import async_playwright

    with contextlib.ExitStack() as cleanup:
        redis = RedisServer().start()
        cleanup.callback(redis.close)
        env = project_env(redis_url=redis.url, DATABASE_URL=f"sqlite:///{tmp_path / 'chat.sqlite3'}")
        migrate = subprocess.run([sys.executable, "-m", "django", "migrate", "--noinput", "-v", "0"], cwd=ROOT,
                                 env={**scrubbed_environ(), **env}, capture_output=True, text=True, timeout=120)
        assert migrate.returncode == 0, migrate.stderr
        # The test speaks for the workers: the same layer settings as the example's.
        layer = RedisChannelLayer(hosts=[redis.url], history={"chat-*": {"size": 100, "ttl": 300}},
                                  channel_capacity={"interface.*": 2000})
        layer.use_keys([SECRET_KEY])  # as the processes sign (and check) their layer messages
        cleanup.callback(layer.close)
        old_web, old_port, old_worker = await asyncio.to_thread(_start, env, layer)
        cleanup.callback(old_web.close)
        cleanup.callback(old_worker.close)
        router = await TcpRouter(old_port).start()

        async def deploy(between=None):
            """New web and worker, the router moved, the old ones sent SIGTERM (web included)."""
            nonlocal old_web, old_worker
            new_web, new_port, new_worker = await asyncio.to_thread(_start, env, layer)
            cleanup.callback(new_web.close)
            cleanup.callback(new_worker.close)
            router.target = new_port
            old_web.signal()
            old_worker.signal()
            code = await asyncio.to_thread(old_web.wait, 40)
            # The page's /live/ long-poll is still open at the graceful timeout: cut, which the
            # web's exit status reports (1); nothing else may be cut.
            assert code == 0 or (code == 1 and "graceful timeout (4 s): 1 connection(s) still open are cut"
                                 in old_web.output()), old_web.output()[-3000:]
            assert await asyncio.to_thread(old_worker.wait, 40) == 0
            old_web, old_worker = new_web, new_worker

        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            page = await browser.new_page()
            errors = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            await page.goto(f"{router.url}/chat/{ROOM}/")
            guest_name = await page.locator("#guestname").inner_text()  # a logged-out page: guest-xxxxxx
            await page.locator("#log .sys", has_text=f"{guest_name} joined {ROOM}").wait_for(timeout=20_000)
            await _say_lines(layer, 0, 10)
            talk = asyncio.ensure_future(_say_lines(layer, 10, LINES - 10))
            await deploy()
            await talk
            await page.locator("#log .in", has_text=f"bot: line {LINES - 1}").wait_for(timeout=30_000)
            await asyncio.sleep(0.5)  # time for anything shown twice to show
            lines = await page.locator("#log .in").all_inner_texts()
            closes = await page.locator("#log .sys", has_text="closed (").count()
            lost_before = await page.locator("#log .lost").count()

            # The history lost between two deploys (Redis flushed): the page says so.
            await asyncio.to_thread(layer.flush)
            await deploy()
            await page.locator("#log .lost").wait_for(timeout=30_000)
            await browser.close()
        await router.close()
        await layer.aclose()
        return lines, closes, lost_before, errors


def test_chat_page_through_a_deploy(tmp_path):
    lines, closes, lost_before, errors = asyncio.run(_scenario(tmp_path))
    assert lines == [f"bot: line {n}" for n in range(LINES)]
    assert closes >= 1  # the page's socket was closed by the deploy, and came back
    assert lost_before == 0
    assert errors == []
