"""The example project end to end, the same test in combined mode and in split mode.

combined: ``paas-channels run --combined`` alone, on the in-memory layer.
split: ``paas-channels run web`` and ``paas-channels run worker`` as separate
processes on a private Redis.  Nothing else differs: same project, same
settings module, same test.  Real HTTP and WebSocket clients, and a real
browser (Chromium through Playwright) using the chat page's own JavaScript.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import httpx
import pytest
import websockets

from .support import ROOT, RedisServer, ServerProcess, free_port, long_poll_answer, wait_for_port

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def _environment(tmp_path, **extra):
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("PAAS_CHANNELS_") and key not in {"REDIS_URL", "REDIS_TLS_URL", "PORT", "DYNO",
                                                                   "WEB_CONCURRENCY", "DEBUG", "SECRET_KEY"}}
    env.update({
        "DJANGO_SETTINGS_MODULE": "example_project.settings",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "SECRET_KEY": "e2e-" + "k" * 60,
        **extra,
    })
    return env


class Deployment:
    """The processes of one mode, started from the repository as a user would."""

    def __init__(self, mode, tmp_path):
        self.mode = mode
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.redis = RedisServer().start() if mode == "split" else None
        extra = {"REDIS_URL": self.redis.url} if self.redis else {}
        self.env = _environment(tmp_path, **extra)
        migrate = subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT,
                                 env=self.env, capture_output=True, text=True, timeout=120)
        assert migrate.returncode == 0, migrate.stderr
        listen = ["--bind", "127.0.0.1", "--port", str(self.port)]
        if mode == "combined":
            self.processes = [ServerProcess(["run", "--combined", "--threads", "4", *listen], env=self.env)]
        else:
            self.processes = [ServerProcess(["run", "web", *listen], env=self.env),
                              ServerProcess(["run", "worker", "--threads", "4"], env=self.env)]
        for process in self.processes:
            process.start()
        wait_for_port(self.port, timeout=30, process=self.processes[0].process)
        self.workers = self.processes[-1]
        self.workers.wait_for_output("consuming", timeout=30)

    def close(self):
        for process in self.processes:
            process.close()
        if self.redis is not None:
            self.redis.close()

    def output(self):
        return "\n".join(process.output()[-3000:] for process in self.processes)


@pytest.fixture(params=["combined", "split"])
def deployment(request, tmp_path):
    deployed = Deployment(request.param, tmp_path)
    try:
        yield deployed
    finally:
        # Both parts drain and exit 0 on SIGTERM.
        codes = [process.stop(timeout=40) for process in deployed.processes]
        output = deployed.output()
        deployed.close()
        assert codes == [0] * len(codes), output


def _csrf(html):
    return re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html).group(1)


def _http_pages(url):
    """Views, forms, login and sessions, streaming, a chunked upload, static files, a failing view."""
    with httpx.Client(base_url=url, timeout=30) as client:
        home = client.get("/")
        assert home.status_code == 200 and "paas-channels example project" in home.text

        token = _csrf(client.get("/signup/").text)
        signed_up = client.post("/signup/", data={
            "csrfmiddlewaretoken": token, "username": "e2e-user",
            "password1": "a-Long-enough-passw0rd", "password2": "a-Long-enough-passw0rd",
        })
        assert signed_up.status_code == 302, signed_up.text[:2000]
        assert client.get("/whoami/").text == "e2e-user"
        assert client.get("/counter/").text == "count=1"
        assert client.get("/counter/").text == "count=2"

        token = _csrf(client.get("/form/").text)
        greeted = client.post("/form/", data={"csrfmiddlewaretoken": token, "name": "Ada", "color": "green"})
        assert "Hello, Ada! You picked green." in greeted.text

        lines = client.get("/stream/", params={"n": 3, "delay": 0.05}).text.splitlines()
        assert [line.split(" at ")[0] for line in lines] == ["line 0", "line 1", "line 2"]

        blob = os.urandom(300_000)  # over one body chunk: arrives through body_channel in split mode
        token = _csrf(client.get("/upload/").text)
        uploaded = client.post("/upload/", data={"csrfmiddlewaretoken": token}, files={"file": ("x.bin", blob)})
        assert uploaded.json() == {"name": "x.bin", "size": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}

        js = client.get("/static/paas_demo/chat.js")
        assert js.status_code == 200 and "WebSocket" in client.get("/static/paas_demo/app.js").text

        assert client.get("/boom/").status_code == 500
        assert client.get("/whoami/").text == "e2e-user"  # the worker went on
        return dict(client.cookies)


def _long_poll(url):
    """GET /live/ stays open until a POST to /live/publish/ answers it through a group send."""
    answer = long_poll_answer(url, "news")
    assert answer is not None and answer.status_code == 200 and answer.json() == {"text": "news"}


async def _chat(url, cookies):
    """Two WebSocket clients in one room; the logged-in one is named from the session."""
    ws_url = url.replace("http://", "ws://") + "/ws/chat/e2e/"
    cookie = "; ".join(f"{name}={value}" for name, value in cookies.items())
    async with websockets.connect(ws_url, additional_headers={"Cookie": cookie}, open_timeout=20) as alice:
        assert json.loads(await asyncio.wait_for(alice.recv(), 20)) == {"system": "e2e-user joined e2e"}
        async with websockets.connect(ws_url, open_timeout=20) as bob:
            assert json.loads(await asyncio.wait_for(alice.recv(), 20)) == {"system": "anonymous joined e2e"}
            assert json.loads(await asyncio.wait_for(bob.recv(), 20)) == {"system": "anonymous joined e2e"}
            await alice.send(json.dumps({"text": "hello bob"}))
            expected = {"user": "e2e-user", "text": "hello bob", "room": "e2e"}
            assert json.loads(await asyncio.wait_for(bob.recv(), 20)) == expected
            assert json.loads(await asyncio.wait_for(alice.recv(), 20)) == expected
    async with websockets.connect(url.replace("http://", "ws://") + "/ws/echo/", open_timeout=20) as echo:
        await echo.send("ping")
        assert await asyncio.wait_for(echo.recv(), 20) == "ping"


def _browser_chat(url):
    """Two Chromium pages on /chat/<room>/: a line typed in one appears in the other."""
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="paas-chromium-")
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch_persistent_context(
                profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            try:
                reader, writer = browser.new_page(), browser.new_page()
                reader.goto(f"{url}/chat/browser/")
                reader.wait_for_selector("#log .sys", timeout=20_000)  # "anonymous joined browser"
                writer.goto(f"{url}/chat/browser/")
                writer.wait_for_selector("#log .sys", timeout=20_000)
                writer.fill("#text", "typed in a browser")
                writer.press("#text", "Enter")
                reader.wait_for_selector("#log .in:has-text('anonymous: typed in a browser')", timeout=20_000)
            finally:
                browser.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def test_example_project_end_to_end(deployment):
    url = deployment.url
    cookies = _http_pages(url)
    _long_poll(url)
    asyncio.run(_chat(url, cookies))
    _browser_chat(url)

    # Background work on the `thumbnail` channel runs in the worker part.
    queued = httpx.post(f"{url}/thumbnail/", data={"name": "cat.png"}, timeout=10)
    assert queued.status_code == 202 and queued.json() == {"queued": "cat.png"}
    deployment.workers.wait_for_output("thumbnail ", timeout=20)
    assert re.search(r"thumbnail [0-9a-f]{16}\.png made", deployment.workers.output())
    if deployment.mode == "split":
        assert "paas_channels.worker" not in deployment.processes[0].output()  # the web process ran no consumer
        assert f"RedisChannelLayer({deployment.redis.url})" in deployment.processes[0].output()
    for process in deployment.processes:  # the effective settings are logged, the secret is not
        assert "settings example_project.settings: DEBUG=False SECRET_KEY=****" in process.output()
        assert deployment.env["SECRET_KEY"] not in process.output()
