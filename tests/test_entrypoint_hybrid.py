"""``--http direct``: plain HTTP in the web process's thread pool; WebSockets and long-poll via the layer."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import threading

import httpx
import pytest
import websockets

from paas_channels.testing import wait_until

from .support import ROOT, RedisServer, ServerProcess, free_port, long_poll_answer, wait_for_port


def _env(tmp_path, **extra):
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("PAAS_CHANNELS_") and key not in {"REDIS_URL", "REDIS_TLS_URL", "PORT", "DYNO",
                                                                   "WEB_CONCURRENCY"}}
    env.update({"DJANGO_SETTINGS_MODULE": "example_project.settings", "SECRET_KEY": "h" * 60,
                "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}", **extra})
    return env


async def _echo(url):
    async with websockets.connect(url.replace("http://", "ws://") + "/ws/echo/", open_timeout=20) as echo:
        await echo.send("through the layer")
        return await asyncio.wait_for(echo.recv(), 20)


@pytest.mark.redis
def test_web_direct_serves_http_without_workers_and_sockets_through_them(tmp_path):
    redis = RedisServer().start()
    env = _env(tmp_path, REDIS_URL=redis.url)
    migrate = subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=120)
    assert migrate.returncode == 0, migrate.stderr
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    web = ServerProcess(["run", "web", "--http", "direct", "--threads", "3", "--bind", "127.0.0.1",
                         "--port", str(port), "--http-timeout", "20"], env=env)
    worker = ServerProcess(["run", "worker"], env=env)
    try:
        web.start()
        wait_for_port(port, timeout=30, process=web.process)
        assert "HTTP served in-process by 3 thread(s); through the layer: WebSockets, ^/live/$" in web.output()

        # No worker is running: ordinary HTTP is answered by the web process itself.
        with httpx.Client(base_url=url, timeout=20) as client:
            assert client.get("/counter/").text == "count=1"
            assert client.get("/counter/").text == "count=2"  # the session works in-process
            lines = client.get("/stream/", params={"n": 3, "delay": 0.05}).text.splitlines()
            assert len(lines) == 3
            blob = os.urandom(2_500_000)  # spills the request body to a temporary file
            token = client.get("/upload/").cookies.get("csrftoken") or client.cookies["csrftoken"]
            uploaded = client.post("/upload/", data={"csrfmiddlewaretoken": token}, files={"file": ("b", blob)})
            assert uploaded.json()["sha256"] == hashlib.sha256(blob).hexdigest()
            assert client.get("/boom/").status_code == 500
            assert client.get("/static/paas_demo/app.js").status_code == 200

        # The long-poll path goes through the layer: with a worker it is answered by a group send.
        worker.start()
        worker.wait_for_output("consuming", timeout=30)
        answer = long_poll_answer(url, "hybrid")
        assert answer is not None and answer.json() == {"text": "hybrid"}
        assert asyncio.run(_echo(url)) == "through the layer"

        # SIGTERM: a direct request in flight finishes; new ones get 503; exit 0.
        slow = []
        thread = threading.Thread(target=lambda: slow.append(httpx.get(f"{url}/slow/?seconds=2", timeout=30)))
        thread.start()
        # In flight: the health endpoint counts the direct request the web process is running.
        assert wait_until(lambda: httpx.get(f"{url}/.paas-channels/health", timeout=10).json()["connections"]["http"] >= 1)
        web.signal()
        thread.join(30)
        assert slow and slow[0].status_code == 200 and slow[0].text == "slept 2.0"
        assert web.wait(timeout=30) == 0
    finally:
        web.close()
        worker.close()
        redis.close()


def test_combined_direct(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = ServerProcess(["run", "--combined", "--http", "direct", "--bind", "127.0.0.1", "--port", str(port)],
                            env=_env(tmp_path))
    try:
        process.start()
        wait_for_port(port, timeout=30, process=process.process)
        process.wait_for_output("consuming", timeout=30)
        assert httpx.get(f"{url}/whoami/", timeout=20).text == "anonymous"
        assert asyncio.run(_echo(url)) == "through the layer"
        assert "--http direct: HTTP served in-process" in process.output()
    finally:
        assert process.stop() == 0
        process.close()


def test_bad_long_poll_path_is_a_boot_error(tmp_path):
    process = ServerProcess(["run", "--combined", "--http", "direct", "--long-poll-path", "^/live/(",
                             "--port", str(free_port())], env=_env(tmp_path))
    try:
        process.start()
        assert process.wait(timeout=60) == 3
        assert "--long-poll-path '^/live/(' is not a regular expression" in process.output()
    finally:
        process.close()
