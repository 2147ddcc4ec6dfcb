"""The example project end to end, run the way a platform runs it, in a real browser.

procfile: honcho reads the repository's Procfile as Heroku (or Dokku) would:
the ``release`` line migrates a fresh PostgreSQL database, then ``web`` and
``worker`` run as two honcho processes with ``$PORT``, ``REDIS_URL`` (a private
redis-server) and ``DATABASE_URL`` set, so the worker can be restarted alone
while the browser stays on the page.
combined: ``paas-channels run --combined`` alone, with no Redis (in-memory
layer) and SQLite: the one-dyno variant and what a laptop runs.

Both modes run the same scenario: HTTP pages and raw WebSocket frames with
real clients, then two Chromium users (Playwright) who chat, get a long-poll
notification, and see the thumbnail a worker made of an uploaded picture.
A screenshot of the page is left in ``test-artifacts/``.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
import websockets
from PIL import Image

from .support import ROOT, Honcho, RedisServer, Started, free_port, free_ports, platform_environment, wait_for_port

pytestmark = pytest.mark.slow  # a deployed project and a browser per mode: 10-20 s each

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = ROOT / "test-artifacts"
POSTGRES = "postgresql://postgres@127.0.0.1:5432"
WAIT_MS = 20_000
SECRET_KEY = "e2e-" + "k" * 60
def _environment(**extra: str) -> dict[str, str]:
    return platform_environment(SECRET_KEY=SECRET_KEY, **extra)


### Processes ###


class PrivateDatabase:
    """A fresh PostgreSQL database on the local server, dropped afterwards."""

    def __init__(self) -> None:
        import psycopg

        self.name = f"paas_e2e_{uuid.uuid4().hex[:12]}"
        self.url = f"{POSTGRES}/{self.name}"
        with psycopg.connect(f"{POSTGRES}/postgres", autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{self.name}"')

    def query(self, sql: str) -> list[tuple]:
        import psycopg

        with psycopg.connect(self.url) as connection:
            return connection.execute(sql).fetchall()

    def drop(self) -> None:
        import psycopg

        with psycopg.connect(f"{POSTGRES}/postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


class ProcfileDeployment:
    """The Procfile under honcho: release, then web and worker, on Redis and PostgreSQL."""

    mode = "procfile"
    restartable = True
    web_processes = 1

    def __init__(self, cleanup: list) -> None:
        self.port = free_ports(self.web_processes)
        self.url = f"http://127.0.0.1:{self.port}"
        self.other_url = self.url  # where the second chat client connects
        self.database = PrivateDatabase()
        cleanup.append(self.database.drop)
        self.env = _environment(PORT=str(self.port), DATABASE_URL=self.database.url, **self.layer_env(cleanup))

        # The release phase: the Procfile's own command, before any process starts.
        release = Honcho(["release"], self.env)
        cleanup.append(release.close)
        assert release.wait(120) == 0, release.output()
        migrated = self.database.query("SELECT name FROM django_migrations WHERE app = 'example_project'")
        assert ("0001_initial",) in migrated, release.output()

        self.web = Honcho(["web"], self.env, f"web={self.web_processes}" if self.web_processes > 1 else "")
        cleanup.append(self.web.close)
        self.worker = self.start_worker(cleanup)
        wait_for_port(self.port, timeout=30, process=self.web.process)

    def layer_env(self, cleanup: list) -> dict[str, str]:
        self.redis = RedisServer().start()
        cleanup.append(self.redis.close)
        self.layer_text = f"RedisChannelLayer({self.redis.url})"
        return {"REDIS_URL": self.redis.url}

    def start_worker(self, cleanup: list) -> Honcho:
        worker = Honcho(["worker"], self.env)
        cleanup.append(worker.close)
        worker.wait_for_output(" consuming ", timeout=30)
        return worker

    def restart_worker(self, cleanup: list, between=lambda: None) -> None:
        """Stop the worker process type as a deploy does (SIGTERM), run ``between``, start it again."""
        self.worker.stop()
        assert "stopped cleanly" in self.worker.output(), self.worker.output()[-3000:]
        between()
        self.worker = self.start_worker(cleanup)

    def outputs(self) -> str:
        return self.web.output()[-3000:] + "\n" + self.worker.output()[-3000:]


class RabbitMQDeployment(ProcfileDeployment):
    """The same Procfile on RabbitMQ (``RABBITMQ_URL``: a vhost of its own on the shared broker),
    with two web processes (honcho gives the second ``$PORT + 1``): the chat's two clients are
    on different interface processes, so their messages cross process inboxes."""

    mode = "rabbitmq"
    web_processes = 2

    def __init__(self, cleanup: list) -> None:
        super().__init__(cleanup)
        self.other_url = f"http://127.0.0.1:{self.port + 1}"
        wait_for_port(self.port + 1, timeout=30, process=self.web.process)

    def layer_env(self, cleanup: list) -> dict[str, str]:
        vhost = f"paas-e2e-{uuid.uuid4().hex[:10]}"
        subprocess.run(["rabbitmqctl", "-q", "add_vhost", vhost], check=True, capture_output=True, timeout=60)
        cleanup.append(lambda: subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], capture_output=True,
                                              timeout=60))
        subprocess.run(["rabbitmqctl", "-q", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
                       check=True, capture_output=True, timeout=60)
        url = f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
        self.layer_text = f"RabbitMQChannelLayer(amqp://guest:***@127.0.0.1:5672/{vhost})"
        return {"RABBITMQ_URL": url}


class CombinedDeployment:
    """``paas-channels run --combined`` with no REDIS_URL: one process, in-memory layer, SQLite."""

    mode = "combined"
    restartable = False

    def __init__(self, cleanup: list, tmp_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = _environment(PORT=str(self.port), DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}")
        migrate = subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT,
                                 env=self.env, capture_output=True, text=True, timeout=120)
        assert migrate.returncode == 0, migrate.stderr
        # README's command, as typed (the settings module comes from ./manage.py).
        self.process = Started(["paas-channels", "run", "--combined"], self.env)
        cleanup.append(self.process.close)
        wait_for_port(self.port, timeout=30, process=self.process.process)
        self.process.wait_for_output(" consuming ", timeout=30)

    def outputs(self) -> str:
        return self.process.output()[-6000:]


@pytest.fixture(params=[pytest.param("procfile", marks=pytest.mark.redis), "rabbitmq", "combined"])
def deployment(request, tmp_path):
    cleanup: list = []
    try:
        if request.param == "procfile":
            deployed = ProcfileDeployment(cleanup)
        elif request.param == "rabbitmq":
            deployed = RabbitMQDeployment(cleanup)
        else:
            deployed = CombinedDeployment(cleanup, tmp_path)
        deployed.cleanup = cleanup
        yield deployed
        if request.param != "combined":
            # Both process types drain on SIGTERM, as on a platform's restart.  (honcho reports the
            # exit status of the shell around each command, which the same signal ends.)
            deployed.web.stop()
            deployed.worker.stop()
            for honcho, done in [(deployed.web, "interface server stopped"), (deployed.worker, "stopped cleanly")]:
                assert done in honcho.output(), honcho.output()[-3000:]
        else:
            assert deployed.process.stop(timeout=40) == 0, deployed.process.output()[-3000:]
    finally:
        for close in reversed(cleanup):
            close()


### Plain clients: HTTP and raw WebSocket frames ###


def _csrf(html):
    return re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html).group(1)


def _http_pages(url):
    """Views, forms, login and sessions, streaming, a chunked upload, static files, the admin, a failing view."""
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

        blob = os.urandom(300_000)  # over one body chunk: arrives through body_channel
        token = _csrf(client.get("/upload/").text)
        uploaded = client.post("/upload/", data={"csrfmiddlewaretoken": token}, files={"file": ("x.bin", blob)})
        assert uploaded.json() == {"name": "x.bin", "size": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}

        # Static files through the interface's WhiteNoise index, the admin's own included.
        assert "WebSocket" in client.get("/static/paas_demo/app.js").text
        assert client.get("/static/admin/css/base.css").status_code == 200
        admin = client.get("/admin/", follow_redirects=True)
        assert admin.status_code == 200 and "Django administration" in admin.text  # its login page

        assert client.get("/boom/").status_code == 500
        assert client.get("/whoami/").text == "e2e-user"  # the worker went on
        return dict(client.cookies)


async def _ws_frames(url, cookies, other_url=None):
    """The chat protocol itself: a logged-in and an anonymous client (on ``other_url``), names from the session."""
    ws_url = url.replace("http://", "ws://") + "/ws/chat/e2e/"
    other_ws_url = (other_url or url).replace("http://", "ws://") + "/ws/chat/e2e/"
    cookie = "; ".join(f"{name}={value}" for name, value in cookies.items())
    async with websockets.connect(ws_url, additional_headers={"Cookie": cookie}, open_timeout=20) as alice:
        assert json.loads(await asyncio.wait_for(alice.recv(), 20)) == {"system": "e2e-user joined e2e"}
        async with websockets.connect(other_ws_url, open_timeout=20) as bob:
            # No cookie, no session: nothing to keep a guest name in.
            assert json.loads(await asyncio.wait_for(alice.recv(), 20)) == {"system": "anonymous joined e2e"}
            assert json.loads(await asyncio.wait_for(bob.recv(), 20)) == {"system": "anonymous joined e2e"}
            await alice.send(json.dumps({"text": "hello bob"}))
            expected = {"user": "e2e-user", "text": "hello bob", "room": "e2e"}
            assert json.loads(await asyncio.wait_for(bob.recv(), 20)) == expected
            assert json.loads(await asyncio.wait_for(alice.recv(), 20)) == expected
    async with websockets.connect(url.replace("http://", "ws://") + "/ws/echo/", open_timeout=20) as echo:
        await echo.send("ping")
        assert await asyncio.wait_for(echo.recv(), 20) == "ping"


### The browser ###


def _png(width: int, height: int) -> bytes:
    image = Image.new("RGB", (width, height), "white")
    for x in range(0, width, 40):  # stripes, so the thumbnail is a real picture of something
        image.paste((200, 40, 40), (x, 0, x + 20, height))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def _say(page, text):
    page.fill("#text", text)
    page.press("#text", "Enter")


def _publish_until_seen(url, pages, text):
    """POST /live/publish/ until every page's long-poll got ``text`` (a page not yet waiting misses one)."""
    from playwright.sync_api import expect

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        httpx.post(f"{url}/live/publish/", data={"text": text}, timeout=10).raise_for_status()
        try:
            for page in pages:
                expect(page.locator("#notice")).to_have_text(text, timeout=1_000)
            return
        except AssertionError:
            continue
    for page in pages:
        expect(page.locator("#notice")).to_have_text(text, timeout=1)


def _browser_scenario(deployment, capsys):
    """Two users in Chromium: chat, a long-poll notification, a picture's thumbnail, a worker restart."""
    from playwright.sync_api import expect, sync_playwright

    url, room = deployment.url, f"room-{deployment.mode}"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            ada_context, guest_context = browser.new_context(), browser.new_context()  # two cookie jars
            ada, guest = ada_context.new_page(), guest_context.new_page()
            errors = []
            for page in (ada, guest):
                page.set_default_timeout(WAIT_MS)
                page.on("pageerror", lambda error: errors.append(str(error)))

            # Ada signs up in the browser (and is logged in); the guest stays anonymous.
            ada.goto(f"{url}/signup/")
            ada.fill("#id_username", "ada")
            ada.fill("#id_password1", "Lovelace-1815-engine")
            ada.fill("#id_password2", "Lovelace-1815-engine")
            ada.click("button[type=submit]")
            expect(ada.locator("#username")).to_have_text("ada")

            ada.goto(f"{url}/chat/{room}/")
            expect(ada.locator("#log .sys", has_text=f"ada joined {room}")).to_be_visible()
            guest.goto(f"{getattr(deployment, 'other_url', url)}/chat/{room}/")  # another web process, if any
            guest_name = guest.locator("#guestname").inner_text()  # kept in the guest's session
            assert re.fullmatch(r"guest-[0-9a-f]{6}", guest_name), guest_name
            expect(guest.locator("#log .sys", has_text=f"{guest_name} joined {room}")).to_be_visible()
            expect(ada.locator("#log .sys", has_text=f"{guest_name} joined {room}")).to_be_visible()

            _say(ada, "hello from Ada")
            expect(guest.locator("#log .in", has_text="ada: hello from Ada")).to_be_visible()
            _say(guest, "hi Ada, a guest here")
            expect(ada.locator("#log .in", has_text=f"{guest_name}: hi Ada, a guest here")).to_be_visible()

            # The long-poll on /live/ of both pages is answered by one group send.
            _publish_until_seen(url, [ada, guest], "new version deployed")

            # A picture: the upload answers at once, a worker makes the thumbnail, the socket shows it.
            ada.set_input_files("#image", files=[{"name": "stripes.png", "mimeType": "image/png",
                                                   "buffer": _png(640, 480)}])
            ada.click("#picture button")
            expect(ada.locator("#picture-status")).to_have_text("thumbnail ready")  # not "on its way" forever
            for page in (ada, guest):
                expect(page.locator("#pictures figcaption", has_text="ada: stripes.png")).to_be_visible()
            thumbnail = guest.locator("#pictures img[alt='stripes.png']")
            expect(thumbnail).to_be_visible()
            assert thumbnail.evaluate("img => img.complete && img.naturalWidth") == 128
            with Image.open(io.BytesIO(httpx.get(url + thumbnail.get_attribute("src"), timeout=10).content)) as made:
                assert (made.format, made.size) == ("PNG", (128, 96))

            ARTIFACTS.mkdir(exist_ok=True)
            screenshot = ARTIFACTS / f"e2e-{deployment.mode}.png"
            ada.screenshot(path=str(screenshot), full_page=True)
            with capsys.disabled():
                print(f"\nscreenshot of the chat page ({deployment.mode}): {screenshot}")

            if deployment.restartable:
                # A deploy restarts the worker; the open pages keep their WebSockets and go on.
                ada.evaluate("window.notReloaded = true")
                deployment.restart_worker(deployment.cleanup,
                                          between=lambda: _say(ada, "said while no worker runs"))
                expect(guest.locator("#log .in", has_text="ada: said while no worker runs")).to_be_visible()
                _say(guest, "the worker is back")
                expect(ada.locator("#log .in", has_text=f"{guest_name}: the worker is back")).to_be_visible()
                assert ada.evaluate("window.notReloaded") is True
                for page in (ada, guest):  # the socket never closed (chat.js logs every close)
                    expect(page.locator("#log .sys", has_text="closed (")).to_have_count(0)

            # The messages are in the database: a new visitor sees them as the room's history.
            late = guest_context.new_page()
            late.goto(f"{url}/chat/{room}/")
            expect(late.locator("#log .history", has_text="ada: hello from Ada")).to_be_visible()
            expect(late.locator("#log .history", has_text=f"{guest_name}: hi Ada, a guest here")).to_be_visible()
            expect(late.locator("#pictures img[alt='stripes.png']")).to_be_visible()
            assert errors == []
        finally:
            browser.close()


def test_example_project_as_deployed(deployment, capsys):
    url = deployment.url
    try:
        cookies = _http_pages(url)
        asyncio.run(_ws_frames(url, cookies, getattr(deployment, "other_url", None)))
        _browser_scenario(deployment, capsys)
    except BaseException:
        print(deployment.outputs())
        raise
    if deployment.mode != "combined":
        web = deployment.web.output()
        assert "paas_channels.worker" not in web  # the web process ran no consumer
        assert deployment.layer_text in web
        assert "settings example_project.settings: DEBUG=False(file) SECRET_KEY=****(env SECRET_KEY)" in web
        assert SECRET_KEY not in web + deployment.worker.output()
    else:
        assert "InMemoryChannelLayer" in deployment.process.output()
