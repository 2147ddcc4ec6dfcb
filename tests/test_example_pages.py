"""The example project explains itself, in Chromium (``run --combined``, in-memory layer, SQLite).

The long-poll link leads to a page that says what it waits for and has the
button that publishes (a browser sent to ``/live/`` lands there instead of
spinning until the HTTP timeout); an upload answers with a page of the site,
scripts still get JSON; two logged-out chatters get names of their own; the
status of a shared picture changes when the worker's thumbnail arrives.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import subprocess
import sys

import httpx
import pytest
from PIL import Image

from .support import ROOT, Started, free_port, platform_environment, wait_for_port

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    database = tmp_path_factory.mktemp("pages") / "db.sqlite3"
    port = free_port()
    env = platform_environment(SECRET_KEY="pages-" + "k" * 50, DATABASE_URL=f"sqlite:///{database}", PORT=str(port))
    migrate = subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=120)
    assert migrate.returncode == 0, migrate.stderr
    process = Started([sys.executable, "-m", "paas_channels.cli", "run", "--combined"], env)
    try:
        wait_for_port(port, timeout=30, process=process.process)
        process.wait_for_output(" consuming ", timeout=30)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.close()


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def _page(browser):
    page = browser.new_context().new_page()
    page.set_default_timeout(20_000)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.errors = errors
    return page


def test_the_long_poll_page_has_the_button_that_answers_it(site, browser):
    from playwright.sync_api import expect

    first, second = _page(browser), _page(browser)
    first.goto(f"{site}/")
    first.click("text=A long-poll")
    assert first.url == f"{site}/live/page/"
    second.goto(f"{site}/live/")  # typed by hand: the page, not a tab spinning for --http-timeout
    assert second.url == f"{site}/live/page/"
    expect(second.locator("main")).to_contain_text("It is answered when someone publishes")
    for attempt in range(20):  # a page whose long-poll is not yet in the group misses one notice
        text = f"deployed v{attempt}"
        first.fill("#text", text)
        first.click("#publish button")
        expect(first.locator("#published")).to_contain_text("answered")
        try:
            for page in (first, second):
                expect(page.locator("#notice")).to_have_text(text, timeout=1_000)
            break
        except AssertionError:
            continue
    else:
        raise AssertionError("no published notice reached both pages")
    expect(first.locator("#published")).to_have_text("answered 2 waiting request(s)")
    assert first.errors == second.errors == []
    # A script still gets the long-poll itself, and JSON from the publisher.
    assert httpx.post(f"{site}/live/publish/", data={"text": "x"}, timeout=10).json().keys() == {"answered"}


def test_an_upload_answers_with_a_page_and_scripts_get_json(site, browser):
    from playwright.sync_api import expect

    page = _page(browser)
    page.goto(f"{site}/upload/")
    blob = os.urandom(300_000)  # over one body chunk
    page.set_input_files("input[name=file]", files=[{"name": "blob.bin", "mimeType": "application/octet-stream",
                                                      "buffer": blob}])
    page.click("button[type=submit]")
    expect(page.locator("#upload-sha256")).to_have_text(hashlib.sha256(blob).hexdigest())
    expect(page.locator("#upload-size")).to_have_text(f"{len(blob)} bytes")
    expect(page.locator("nav")).to_be_visible()  # still in the site
    with httpx.Client(base_url=site, timeout=20) as client:
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', client.get("/upload/").text).group(1)
        answer = client.post("/upload/", data={"csrfmiddlewaretoken": token}, files={"file": ("b.bin", b"abc")})
    assert answer.json() == {"name": "b.bin", "size": 3, "sha256": hashlib.sha256(b"abc").hexdigest()}


def test_guests_get_names_of_their_own_and_the_thumbnail_status_updates(site, browser):
    from playwright.sync_api import expect

    one, two = _page(browser), _page(browser)
    names = []
    for page in (one, two):
        page.goto(f"{site}/chat/guests/")
        names.append(page.locator("#guestname").inner_text())
    assert names[0] != names[1] and all(re.fullmatch(r"guest-[0-9a-f]{6}", name) for name in names), names
    expect(one.locator("#log .sys", has_text=f"{names[1]} joined guests")).to_be_visible()
    two.fill("#text", "who am I?")
    two.press("#text", "Enter")
    expect(one.locator("#log .in", has_text=f"{names[1]}: who am I?")).to_be_visible()

    picture = io.BytesIO()
    Image.new("RGB", (300, 200), "teal").save(picture, "PNG")
    one.set_input_files("#image", files=[{"name": "teal.png", "mimeType": "image/png", "buffer": picture.getvalue()}])
    one.click("#picture button")
    expect(one.locator("#picture-status")).to_have_text("thumbnail ready")
    expect(two.locator("#pictures figcaption", has_text=f"{names[0]}: teal.png")).to_be_visible()
    one.set_input_files("#image", files=[{"name": "fake.png", "mimeType": "image/png", "buffer": b"not a picture"}])
    one.click("#picture button")
    expect(one.locator("#picture-status")).to_have_text("no thumbnail: not an image")
    assert one.errors == two.errors == []
