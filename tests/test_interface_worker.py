"""The interface server with a real worker: the split-mode promise end to end.

``paas-channels run web`` (Daphne) and ``paas-channels run worker`` as real
processes of the example project on a private Redis, driven by real HTTP and
WebSocket clients: Django pages, 5 MB bodies both ways, WebSocket accept,
reject, echo, close codes and subprotocols, the health endpoint, and the
point of it all: restarting the worker leaves open WebSockets connected.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import time

import httpx
import pytest
from websockets.asyncio.client import connect as aconnect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from paas_channels.layers import RedisChannelLayer
from tests.interface_support import SECRET_KEY, project_env, start_web, start_worker
from tests.support import RedisServer

FIVE_MB = 5 * 1024 * 1024

pytestmark = pytest.mark.redis  # every test here runs on a private Redis


@pytest.fixture(scope="module")
def stack():
    """Private Redis, one web process (subprotocol chat.v2 from CHANNELS_WS_PROTOCOLS) and one worker."""
    with contextlib.ExitStack() as cleanup:  # every step undone even when another one fails
        redis = RedisServer().start()
        cleanup.callback(redis.close)
        layer = RedisChannelLayer(hosts=[redis.url])
        layer.use_keys([SECRET_KEY])  # what the processes sign with
        cleanup.callback(layer.close)
        env = project_env(redis_url=redis.url)
        stack = {"redis": redis, "layer": layer, "env": env, "web": None, "worker": None}
        # The restart test replaces the worker: close whichever is current at the end.
        cleanup.callback(lambda: stack["worker"] and stack["worker"].close())
        cleanup.callback(lambda: stack["web"] and stack["web"].close())
        stack["web"], port = start_web({**env, "CHANNELS_WS_PROTOCOLS": "chat.v2"}, "--http-timeout", "20")
        stack["worker"] = start_worker(env, layer)
        stack.update(url=f"http://127.0.0.1:{port}", ws=f"ws://127.0.0.1:{port}")
        yield stack


def test_django_page_and_its_static_file(stack):
    with httpx.Client(base_url=stack["url"], timeout=20) as client:
        page = client.get("/")
        assert page.status_code == 200
        assert "paas-channels example" in page.text
        stylesheet = re.search(r'href="(/static/[^"]+\.css)"', page.text).group(1)
        css = client.get(stylesheet)
        assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")


def test_five_megabyte_upload(stack):
    payload = os.urandom(FIVE_MB)
    with httpx.Client(base_url=stack["url"], timeout=60) as client:
        form = client.get("/upload/")
        assert form.status_code == 200
        token = client.cookies["csrftoken"]
        response = client.post("/upload/", files={"file": ("big.bin", payload, "application/octet-stream")},
                               headers={"X-CSRFToken": token, "Referer": stack["url"] + "/upload/"})
    assert response.status_code == 200, response.text[:500]
    assert response.json() == {"name": "big.bin", "size": FIVE_MB, "sha256": hashlib.sha256(payload).hexdigest()}


def test_five_megabyte_download(stack):
    with httpx.stream("GET", f"{stack['url']}/data/{FIVE_MB}/", timeout=60) as response:
        assert response.status_code == 200
        body = b"".join(response.iter_bytes())
    assert len(body) == FIVE_MB
    assert body == (bytes(range(256)) * (FIVE_MB // 256))


def test_streaming_response_arrives_line_by_line(stack):
    arrivals = []
    with httpx.stream("GET", f"{stack['url']}/stream/?n=4&delay=0.4", timeout=30) as response:
        for line in response.iter_lines():
            if line:
                arrivals.append(time.monotonic())
    assert len(arrivals) == 4
    # The first line was on the client long before the view produced the last one.
    assert arrivals[-1] - arrivals[0] > 0.8


def test_health_counts_the_worker(stack):
    body = httpx.get(f"{stack['url']}/.paas-channels/health", timeout=10).json()
    assert body["status"] == "ok" and body["workers"] >= 1


def test_websocket_echo_text_and_bytes(stack):
    with connect(f"{stack['ws']}/ws/echo/", origin="http://localhost", open_timeout=20) as socket:
        socket.send("hello")
        assert socket.recv(timeout=10) == "hello"
        socket.send(b"\x00\x01binary")
        assert socket.recv(timeout=10) == b"\x00\x01binary"


def test_websocket_rejected_by_consumer_is_403(stack):
    with pytest.raises(InvalidStatus) as refused:
        connect(f"{stack['ws']}/ws/nobody-serves-this/", open_timeout=20)
    assert refused.value.response.status_code == 403


def test_websocket_subprotocol_from_configuration(stack):
    with connect(f"{stack['ws']}/ws/echo/", subprotocols=["chat.v1", "chat.v2"], open_timeout=20) as socket:
        assert socket.subprotocol == "chat.v2"
        socket.send("with protocol")
        assert socket.recv(timeout=10) == "with protocol"


def test_websocket_close_code_from_consumer(stack):
    with connect(f"{stack['ws']}/ws/close/4003/", open_timeout=20) as socket:
        with pytest.raises(ConnectionClosed):
            socket.recv(timeout=10)
        assert socket.close_code == 4003


async def _open_echo_sockets(url, count):
    sockets = []
    for start in range(0, count, 25):  # in batches, like browsers reconnecting after a deploy
        batch = min(count, start + 25) - start
        sockets.extend(await asyncio.gather(*(aconnect(url, open_timeout=30) for _ in range(batch))))
    return sockets


async def _echo_all(sockets, tag):
    async def one(index, socket):
        await socket.send(f"{tag}-{index}")
        return await asyncio.wait_for(socket.recv(), 30)

    return await asyncio.gather(*(one(index, socket) for index, socket in enumerate(sockets)))


def test_worker_restart_keeps_100_websockets_connected(stack):
    """Deploying new code restarts workers only: the web process keeps every client connected."""
    url = f"{stack['ws']}/ws/echo/"

    async def scenario():
        sockets = await _open_echo_sockets(url, 100)
        try:
            assert await _echo_all(sockets, "before") == [f"before-{i}" for i in range(100)]
            stack["worker"].stop()  # SIGTERM: the deploy's restart
            # Frames sent while no worker runs wait on the layer for the next one.
            sends = [socket.send(f"between-{i}") for i, socket in enumerate(sockets)]
            await asyncio.gather(*sends)
            stack["worker"].close()
            stack["worker"] = None
            stack["worker"] = await asyncio.to_thread(start_worker, stack["env"], stack["layer"])
            between = await asyncio.gather(*(asyncio.wait_for(socket.recv(), 30) for socket in sockets))
            assert between == [f"between-{i}" for i in range(100)]
            assert await _echo_all(sockets, "after") == [f"after-{i}" for i in range(100)]
            assert all(socket.close_code is None for socket in sockets)
        finally:
            await asyncio.gather(*(socket.close() for socket in sockets), return_exceptions=True)

    try:
        asyncio.run(scenario())
    except BaseException:
        print("--- web log ---\n", stack["web"].output()[-6000:])  # shown by pytest on failure
        raise
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the web process let go of all 100
        if httpx.get(f"{stack['url']}/.paas-channels/health", timeout=10).json()["connections"]["websocket"] == 0:
            break
        time.sleep(0.2)
    else:
        raise AssertionError("the web process still counts open WebSockets after the clients closed")
