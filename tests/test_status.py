"""``paas-channels status``: a real worker on a private Redis, seen busy from another process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from paas_channels.layers import InMemoryChannelLayer, RedisChannelLayer
from paas_channels.tools.status import render, take_snapshot

from .support import ROOT, RedisServer, ServerProcess, write_project

SETTINGS = '''
from pathlib import Path
from paas_channels.conf import configure
BASE_DIR = Path(__file__).resolve().parent.parent
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "paas_channels"]
ROOT_URLCONF = "statproj.urls"
configure(globals(), routing="statproj.routing.channel_routing")
'''

ROUTING = '''
import os
import time
from paas_channels.handler import view_consumer
from paas_channels.routing import route

def slow(message):
    """Stays busy until the test creates the release file (bounded), so 'busy' is certain."""
    deadline = time.monotonic() + 60
    while not os.path.exists(os.environ["STATUS_RELEASE_FILE"]) and time.monotonic() < deadline:
        time.sleep(0.05)

channel_routing = [route("http.request", view_consumer), route("slow", slow)]
'''


@pytest.fixture
def project(tmp_path):
    return write_project(tmp_path, "statproj", SETTINGS, ROUTING)


def status(project, redis_url, *args):
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "statproj.settings", "REDIS_URL": redis_url,
           "SECRET_KEY": "s" * 60, "PYTHONPATH": f"{project}{os.pathsep}{ROOT}"}
    return subprocess.run([sys.executable, "-m", "paas_channels.cli", "status", *args], cwd=project,
                          capture_output=True, text=True, timeout=60, env=env)


def wait_for_status(project, redis_url, text, *args, timeout=30.0):
    deadline = time.monotonic() + timeout
    result = None
    while time.monotonic() < deadline:
        result = status(project, redis_url, *args)
        assert result.returncode == 0, result.stderr
        if text in result.stdout:
            return result.stdout
        time.sleep(0.2)
    raise AssertionError(f"{text!r} never shown; last status:\n{result.stdout if result else ''}")


@pytest.mark.redis
@pytest.mark.slow
def test_status_shows_a_busy_worker_then_its_throughput(project):
    redis = RedisServer().start()
    release = project / "release"
    worker = ServerProcess(
        ["run", "worker", "--threads", "2"],
        env={"DJANGO_SETTINGS_MODULE": "statproj.settings", "REDIS_URL": redis.url, "SECRET_KEY": "s" * 60,
             "STATUS_RELEASE_FILE": str(release), "PYTHONPATH": str(project)},
        cwd=project,
    )
    try:
        worker.start()
        worker.wait_for_output("consuming")
        sender = RedisChannelLayer(hosts=[redis.url])
        sender.use_keys(["s" * 60])  # the worker's SECRET_KEY
        sender.send("slow", {"n": 1})
        sender.send("slow", {"n": 2})
        sender.send("slow", {"n": 3})  # waits: both threads are busy

        screen = wait_for_status(project, redis.url, "2 busy (100%)")
        assert "1 worker(s), 2 thread(s), 2 busy (100%)" in screen
        assert "every worker thread is busy" in screen
        slow_line = next(line for line in screen.splitlines() if line.startswith("slow "))
        assert slow_line.split()[1] == "1"  # one message still pending behind the busy threads
        worker_line = next(line for line in screen.splitlines() if "slow" in line and " 100% " in line)
        assert worker_line.split()[1:4] == ["2", "2", "100%"]

        release.write_text("go")
        screen = wait_for_status(project, redis.url, "0 busy (0%)", "--group", "nobody")
        worker_line = next(line for line in screen.splitlines() if " 0% " in line)
        assert worker_line.split()[4] == "3"  # done
        assert "nobody" in screen and "messages/s" in screen
        sender.close()
    finally:
        worker.close()
        redis.close()


def test_render_computes_rates_and_busy_ratio():
    layer = InMemoryChannelLayer()
    layer.heartbeat("w1", {"threads": 4, "busy": 1, "done": 10, "channels": ["http.request"]})
    before = take_snapshot(layer, ["http.request"])
    for n in range(6):
        layer.send("http.request", {"n": n})
    layer.heartbeat("w1", {"threads": 4, "busy": 3, "done": 16, "channels": ["http.request"]})
    now = take_snapshot(layer, ["http.request"])
    now.at = before.at + 2.0  # two seconds between the readings
    screen = render(now, before)
    assert "6 messages sent, 3.0/s" in screen
    assert next(line for line in screen.splitlines() if line.startswith("http.request")).split()[1] == "6"
    worker = next(line for line in screen.splitlines() if line.startswith("w1"))
    assert worker.split()[1:6] == ["4", "3", "75%", "16", "3.0"]
    assert "1 worker(s), 4 thread(s), 3 busy (75%), 3.0 messages/s" in screen


def test_watch_refreshes_until_interrupted():
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "paas_channels.cli", "status", "--watch", "0.2"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        lines = []
        while time.monotonic() < deadline and sum("paas-channels status at" in line for line in lines) < 3:
            lines.append(process.stdout.readline())
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
        process.stderr.close()
    assert sum("paas-channels status at" in line for line in lines) == 3
    assert any("the in-memory layer lives inside one process" in line for line in lines)


def test_render_lists_web_processes_beside_workers():
    layer = InMemoryChannelLayer()
    web = {"kind": "web", "pid": 41, "threads": 0, "busy": 0, "done": 100, "channels": [],
           "connections": {"http": 2, "websocket": 5}, "inbox": "interface.h.abc!"}
    layer.heartbeat("web.h.41", web)
    layer.heartbeat("w1", {"kind": "combined", "pid": 42, "threads": 4, "busy": 1, "done": 10,
                           "channels": ["http.request"], "connections": {"http": 0, "websocket": 3}})
    before = take_snapshot(layer, [])
    layer.heartbeat("web.h.41", {**web, "done": 160})
    now = take_snapshot(layer, [])
    now.at = before.at + 2.0
    screen = render(now, before)
    # Workers (combined processes count) in their table, web processes in theirs, rates alike.
    assert "total: 1 worker(s), 4 thread(s), 1 busy (25%)" in screen
    web_line = next(line for line in screen.splitlines() if line.startswith("web.h.41"))
    assert web_line.split()[1:6] == ["41", "2", "5", "160", "30.0"]
    assert "total: 1 web process(es), 7 connection(s), 30.0 messages/s" in screen
    assert next(line for line in screen.splitlines() if line.startswith("w1")).split()[6:10] == ["4", "combined", "42", "3"]
