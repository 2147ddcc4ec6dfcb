"""``paas-channels run --combined``: choice of mode, thread count, drain order, shared Redis groups."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading

import httpx
import pytest
import websockets

from paas_channels.testing import wait_until

from .support import ROOT, RedisServer, ServerProcess, close_all, free_port, wait_for_port


def _env(tmp_path, **extra):
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("PAAS_CHANNELS_") and key not in {"REDIS_URL", "REDIS_TLS_URL", "PORT", "DYNO",
                                                                   "WEB_CONCURRENCY"}}
    env.update({"DJANGO_SETTINGS_MODULE": "", "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
                "SECRET_KEY": "c" * 60, **extra})
    return env


@pytest.fixture
def started():
    processes = []

    def start(args, env):
        port = free_port()
        process = ServerProcess([*args, "--bind", "127.0.0.1", "--port", str(port)], env=env).start()
        processes.append(process)
        wait_for_port(port, timeout=30, process=process.process)
        process.wait_for_output("consuming", timeout=30)
        return process, f"http://127.0.0.1:{port}"

    yield start
    close_all(processes)


def test_no_mode_with_channel_layers_runs_combined_with_paas_channels_threads(tmp_path, started):
    # No DJANGO_SETTINGS_MODULE: found from the repository's manage.py.
    process, url = started(["run"], _env(tmp_path, PAAS_CHANNELS_THREADS="3"))
    output = process.output()
    assert "no mode given: running combined (settings define CHANNEL_LAYERS)" in output
    assert "settings example_project.settings:" in output and "InMemoryChannelLayer" in output
    assert "with 3 loop(s)" in output and "threads=3(env)" in output
    assert "combined: 1 process x 3 worker thread(s)" in output  # WEB_CONCURRENCY unset: one process
    assert httpx.get(f"{url}/whoami/", timeout=20).text == "anonymous"


def test_sigterm_drains_the_interface_then_the_workers(tmp_path, started):
    process, url = started(["run", "--combined", "--graceful-timeout", "20"], _env(tmp_path))
    answers = []
    slow = threading.Thread(target=lambda: answers.append(httpx.get(f"{url}/slow/?seconds=2", timeout=30)))
    slow.start()
    # The request is in flight (the interface holds it; a worker thread runs the 2 s view).
    assert wait_until(lambda: httpx.get(f"{url}/.paas-channels/health", timeout=10).json()["connections"]["http"] >= 1)
    process.signal()
    slow.join(30)
    assert answers and answers[0].status_code == 200 and answers[0].text == "slept 2.0"
    assert process.wait(timeout=30) == 0
    output = process.output()
    interface_at = output.index("shutting down gracefully")
    worker_at = output.index("stopping: no new messages")
    assert interface_at < worker_at  # the workers kept running until the interface had its answers
    assert "stopped cleanly" in output


@pytest.mark.redis
def test_two_combined_dynos_share_groups_on_redis(tmp_path, started):
    redis = RedisServer().start()
    try:
        env = _env(tmp_path, REDIS_URL=redis.url, DJANGO_SETTINGS_MODULE="example_project.settings")
        migrate = subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT,
                                 env=env, capture_output=True, text=True, timeout=120)
        assert migrate.returncode == 0, migrate.stderr
        first, first_url = started(["run", "--combined", "--threads", "2"], env)
        second, second_url = started(["run", "--combined", "--threads", "2"], env)
        assert "RedisChannelLayer" in first.output()

        async def chat():
            room = "/ws/chat/dynos/"
            async with websockets.connect(first_url.replace("http", "ws") + room, open_timeout=20) as one:
                await asyncio.wait_for(one.recv(), 20)
                async with websockets.connect(second_url.replace("http", "ws") + room, open_timeout=20) as two:
                    await asyncio.wait_for(two.recv(), 20)
                    await asyncio.wait_for(one.recv(), 20)
                    await two.send(json.dumps({"text": "across dynos"}))
                    return json.loads(await asyncio.wait_for(one.recv(), 20))

        assert asyncio.run(chat()) == {"user": "anonymous", "text": "across dynos", "room": "dynos"}
    finally:
        redis.close()


def test_unreachable_redis_is_a_boot_error(tmp_path):
    port = free_port()  # nothing listens here
    process = ServerProcess(["run", "--combined", "--port", str(free_port())],
                            env=_env(tmp_path, REDIS_URL=f"redis://:s3cret@127.0.0.1:{port}/0",
                                     DJANGO_SETTINGS_MODULE="example_project.settings"))
    try:
        process.start()
        assert process.wait(timeout=60) == 3
        output = process.output()
        assert "unreachable" in output and "s3cret" not in output
    finally:
        process.close()
