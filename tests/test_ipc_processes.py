"""Two separately started processes share the IPC layer: ``run web`` and ``run worker`` on one machine.

What a Procfile's ``web`` and ``worker`` do under honcho on one dyno: the
example project's settings name ``IPCChannelLayer`` (no Redis anywhere), the
interface server and the worker are real processes, and real HTTP and
WebSocket clients check that a Django page, a long-poll answered by a group
send, and a chat room's group message all cross between them.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid

import httpx
import pytest
import websockets

from paas_channels.layers.ipc import IPCChannelLayer
from tests.interface_support import project_dir, project_env, scrubbed_environ, start_web, start_worker
from tests.support import ROOT, long_poll_answer

SETTINGS = '''\
from paas_iface_settings import *  # noqa: F401,F403 - the example project, static files collected

CHANNEL_LAYERS = {{
    "default": {{
        "BACKEND": "paas_channels.layers.IPCChannelLayer",
        "ROUTING": "example_project.routing.channel_routing",
        "CONFIG": {{"prefix": {prefix!r}, "directory": {directory!r}}},
    }}
}}
'''


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    base = tmp_path_factory.mktemp("ipc-project")
    prefix = "web" + uuid.uuid4().hex[:8]
    (base / "paas_ipc_settings.py").write_text(SETTINGS.format(prefix=prefix, directory=str(base / "layer")))
    env = project_env(
        DJANGO_SETTINGS_MODULE="paas_ipc_settings",
        PYTHONPATH=f"{base}:{project_dir()}:{ROOT}",
        DATABASE_URL=f"sqlite:///{base / 'db.sqlite3'}",
    )
    migrate = subprocess.run([sys.executable, "-m", "django", "migrate", "--noinput", "-v", "0"], cwd=ROOT,
                             env={**scrubbed_environ(), **env}, capture_output=True, text=True, timeout=120)
    assert migrate.returncode == 0, migrate.stderr
    layer = IPCChannelLayer(prefix=prefix, directory=base / "layer")
    web, port = start_web(env, "--http-timeout", "20")
    try:
        worker = start_worker(env, layer)
        try:
            yield {"url": f"http://127.0.0.1:{port}", "web": web, "worker": worker}
        finally:
            worker.close()
    finally:
        web.close()
        layer.close()


def test_both_processes_run_on_the_ipc_layer(stack):
    assert "IPCChannelLayer" in stack["web"].output()
    assert "IPCChannelLayer" in stack["worker"].output()


def test_http_request_crosses_to_the_worker_and_back(stack):
    page = httpx.get(stack["url"] + "/", timeout=20)
    assert page.status_code == 200
    assert "paas-channels example" in page.text


def test_long_poll_answered_by_a_group_send(stack):
    response = long_poll_answer(stack["url"], "over ipc")
    assert response is not None and response.status_code == 200
    assert "over ipc" in response.text


def test_websocket_group_message_reaches_every_member(stack):
    room = stack["url"].replace("http://", "ws://") + "/ws/chat/ipc/"

    async def chat():
        async with websockets.connect(room, open_timeout=20) as one:
            await asyncio.wait_for(one.recv(), 20)  # "anonymous joined ipc"
            async with websockets.connect(room, open_timeout=20) as two:
                await asyncio.wait_for(two.recv(), 20)
                await asyncio.wait_for(one.recv(), 20)
                await two.send(json.dumps({"text": "same dyno"}))
                return [json.loads(await asyncio.wait_for(ws.recv(), 20)) for ws in (one, two)]

    assert asyncio.run(chat()) == [{"user": "anonymous", "text": "same dyno", "room": "ipc"}] * 2
