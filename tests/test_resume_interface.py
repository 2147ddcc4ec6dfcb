"""Resume through the interface: real ``run web`` and ``run worker`` on a private Redis.

A client speaking the resume protocol (``?paas_channels=1``, as ``client.js``
does) gets a join notice, each history message with its position, and on a
reconnect with ``paas_resume`` what it missed, replayed before the live ones;
a plain WebSocket client on the same group sees exactly the frames sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import httpx
import pytest
from websockets.asyncio.client import connect as aconnect
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from paas_channels.testing import free_port, wait_for_port

from .resume_support import make_project, project_env, sender_layer
from .support import RedisServer, ServerProcess

pytestmark = pytest.mark.redis

HISTORY = {"room-*": {"size": 50, "ttl": 300}}

MARK = "\x1e"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    project = make_project(tmp_path_factory.mktemp("resume"))
    with contextlib.ExitStack() as cleanup:
        redis = RedisServer().start()
        cleanup.callback(redis.close)
        env = project_env(project, redis.url, ROOM_HISTORY_SIZE="50")
        port = free_port()
        web = ServerProcess(["run", "web", "--bind", "127.0.0.1", "--port", str(port)], env=env, cwd=project)
        cleanup.callback(web.close)
        worker = ServerProcess(["run", "worker", "--threads", "2"], env=env, cwd=project)
        cleanup.callback(worker.close)
        web.start()
        worker.start()
        wait_for_port(port, timeout=30, process=web.process)
        worker.wait_for_output("consuming", timeout=30)
        layer = sender_layer(redis.url, history=HISTORY)  # senders share the history settings
        cleanup.callback(layer.close)
        yield {"ws": f"ws://127.0.0.1:{port}", "layer": layer, "env": env, "project": project}


def parse(frame):
    """``(position or None, data)`` of a frame of the resume protocol."""
    if isinstance(frame, str) and frame.startswith(MARK):
        header, _, data = frame[1:].partition("\n")
        return json.loads(header), (data if _ else None)
    return None, frame


def test_plain_client_sees_the_frames_as_sent(stack):
    layer = stack["layer"]
    with connect(f"{stack['ws']}/room/", open_timeout=20) as ws:
        ws.send("hello from plain")  # the consumer joined: this comes back through the group
        assert ws.recv(timeout=20) == "hello from plain"
        layer.send_group("room-1", {"text": MARK + "looks like a position"})
        layer.send_group("room-1", {"bytes": b"\x00\x01"})
        layer.send_group("room-1", {"text": "after"})
        assert ws.recv(timeout=20) == MARK + "looks like a position"
        assert ws.recv(timeout=20) == b"\x00\x01"
        assert ws.recv(timeout=20) == "after"


def test_resume_replays_what_was_missed_then_live(stack):
    layer = stack["layer"]
    with connect(f"{stack['ws']}/room/?paas_channels=1", open_timeout=20) as ws:
        notice, data = parse(ws.recv(timeout=20))
        assert data is None and notice["group"] == "room-1" and notice["recovered"] is None
        epoch, joined_at = notice["epoch"], notice["offset"]
        ws.send("one")
        meta, data = parse(ws.recv(timeout=20))
        assert data == "one" and meta == {"group": "room-1", "epoch": epoch, "offset": joined_at + 1}
        layer.send_group("room-1", {"text": MARK + "app text"})
        meta, data = parse(ws.recv(timeout=20))
        assert data == MARK + "app text" and meta["offset"] == joined_at + 2
        layer.send_group("room-1", {"bytes": b"\x02"})
        meta, data = parse(ws.recv(timeout=20))
        assert meta["binary"] is True and meta["offset"] == joined_at + 3 and data is None
        assert ws.recv(timeout=20) == b"\x02"
    seen = joined_at + 3
    for n in range(3):  # while the client is away
        layer.send_group("room-1", {"text": f"missed {n}"})
    with connect(f"{stack['ws']}/room/?paas_channels=1&paas_resume=room-1:{epoch}:{seen}", open_timeout=20) as ws:
        notice, _ = parse(ws.recv(timeout=20))
        assert notice == {"group": "room-1", "epoch": epoch, "offset": seen + 3, "recovered": True}
        replayed = [parse(ws.recv(timeout=20)) for _ in range(3)]
        assert [(meta["offset"], meta.get("replayed"), data) for meta, data in replayed] == [
            (seen + 1, True, "missed 0"), (seen + 2, True, "missed 1"), (seen + 3, True, "missed 2")]
        layer.send_group("room-1", {"text": "live"})
        meta, data = parse(ws.recv(timeout=20))
        assert (meta["offset"], "replayed" in meta, data) == (seen + 4, False, "live")


def test_a_lost_history_is_told_to_client_and_consumer(stack):
    with connect(f"{stack['ws']}/room/?paas_channels=1&paas_resume=room-1:gone0epoch:5", open_timeout=20) as ws:
        notice, _ = parse(ws.recv(timeout=20))
        assert notice["recovered"] is False and notice["group"] == "room-1"
        assert ws.recv(timeout=20) == "consumer: not recovered"


def test_malformed_resume_positions_are_ignored(stack):
    query = "paas_channels=1&paas_resume=room-1:bad%20epoch:1,room-1:x:-3,nogroup,%zz"
    with connect(f"{stack['ws']}/room/?{query}", open_timeout=20) as ws:
        notice, _ = parse(ws.recv(timeout=20))
        assert notice["recovered"] is None  # no valid position: a fresh join


def test_client_js_is_served_by_the_interface(stack):
    import paas_channels

    url = stack["ws"].replace("ws://", "http://") + "/.paas-channels/client.js"
    response = httpx.get(url, timeout=20)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/javascript")
    assert f'version: "{paas_channels.__version__}"' in response.text and "PaasChannels" in response.text
    again = httpx.get(url, headers={"if-none-match": response.headers["etag"]}, timeout=20)
    assert again.status_code == 304 and again.content == b""


def test_sigterm_spreads_the_closes_over_the_drain_window(stack):
    """--ws-drain 2: the 1012 closes of 20 sockets arrive over about 2 s, not in one instant."""
    port = free_port()
    web = ServerProcess(["run", "web", "--bind", "127.0.0.1", "--port", str(port), "--ws-drain", "2"],
                        env=stack["env"], cwd=stack["project"])
    web.start()
    try:
        wait_for_port(port, timeout=30, process=web.process)

        async def main():
            sockets = [await aconnect(f"ws://127.0.0.1:{port}/room/", open_timeout=20) for _ in range(20)]
            for ws in sockets:  # every one accepted and in the group
                await ws.send("ready")
                await ws.recv()
            closes = []

            async def wait_close(ws):
                with contextlib.suppress(ConnectionClosed):
                    while True:
                        await ws.recv()
                closes.append((time.monotonic(), ws.close_code))

            waiting = [asyncio.ensure_future(wait_close(ws)) for ws in sockets]
            web.signal()
            await asyncio.wait_for(asyncio.gather(*waiting), 30)
            return sorted(closes)

        closes = asyncio.run(main())
        assert [code for _, code in closes] == [1012] * 20
        assert closes[-1][0] - closes[0][0] >= 1.5  # spread over the window (a busy machine only spreads more)
        assert web.wait(30) == 0
    finally:
        web.close()
