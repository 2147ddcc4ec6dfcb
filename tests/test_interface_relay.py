"""The interface server's messages on the wire, read by a consumer in this test process.

A real ``run web`` on a private Redis; instead of a worker, the test itself
takes ``http.request`` / ``websocket.*`` messages from the same Redis and
answers on their reply channels.  That shows exactly what the interface puts
on the layer (proxy headers, body chunks, ``order``) and how it turns replies
into responses and frames (close codes, data before accept, 1012 on SIGTERM).
"""

from __future__ import annotations

import base64
import os
import socket as socket_module
import threading
import time

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from paas_channels.layers import RedisChannelLayer
from paas_channels.testing import wait_until
from tests.interface_support import SECRET_KEY, project_env, start_web
from tests.support import RedisServer

HTTP_TIMEOUT = 8

pytestmark = pytest.mark.redis  # every test here runs on a private Redis


@pytest.fixture(scope="module")
def redis():
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def layer(redis):
    layer = RedisChannelLayer(hosts=[redis.url])
    layer.use_keys([SECRET_KEY])  # what the web process signs with
    layer.flush()
    try:
        yield layer
    finally:
        layer.flush()
        layer.close()


@pytest.fixture(scope="module")
def web(redis):
    process, port = start_web(project_env(redis_url=redis.url), "--http-timeout", str(HTTP_TIMEOUT),
                              "--ws-protocol", "chat.v2", "--ws-protocol", "chat.v1", "--ping-interval", "1")
    try:
        yield process, port
    finally:
        process.close()


@pytest.fixture(scope="module")
def proxied_web(redis):
    process, port = start_web(project_env(redis_url=redis.url), "--http-timeout", str(HTTP_TIMEOUT),
                              "--proxy-headers", "--allowed-origin", ".example.com", "--root-path", "/app")
    try:
        yield process, port
    finally:
        process.close()


def take(layer, channel, timeout=10.0):
    """The next message on ``channel`` (as a worker would get it), or fail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        name, message = layer.receive([channel], block=True)
        if name is not None:
            return message
    raise AssertionError(f"no message on {channel!r} within {timeout}s")


def in_thread(function, *args, **kwargs):
    """Run a blocking client call in a thread; ``result()`` joins it and re-raises its error."""
    box = {}

    def target():
        try:
            box["value"] = function(*args, **kwargs)
        except BaseException as exc:  # handed to the test thread
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()

    def result(timeout=30):
        thread.join(timeout)
        assert not thread.is_alive(), "client call did not finish"
        if "error" in box:
            raise box["error"]
        return box["value"]

    return result


def reply_ok(layer, request, body=b"ok"):
    layer.send(request["reply_channel"], {"status": 200, "headers": [[b"content-type", b"text/plain"]],
                                          "content": body, "more_content": False})


### HTTP ###


def test_request_message_without_proxy_headers(web, layer):
    _, port = web
    pending = in_thread(httpx.get, f"http://127.0.0.1:{port}/where/?a=1",
                        headers={"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"}, timeout=30)
    request = take(layer, "http.request")
    reply_ok(layer, request)
    assert pending().text == "ok"
    assert request["path"] == "/where/" and request["query_string"] == b"a=1"
    assert request["method"] == "GET" and request["scheme"] == "http"
    assert request["client"][0] == "127.0.0.1" and request["client"][1] > 0
    assert request["server"] == ["127.0.0.1", port]
    assert request["body"] == b"" and request["body_channel"] is None
    assert request["reply_channel"].startswith("interface.") and "!" in request["reply_channel"]
    assert [b"x-forwarded-for", b"203.0.113.7"] in request["headers"]


def test_request_message_with_proxy_headers(proxied_web, layer):
    _, port = proxied_web
    pending = in_thread(httpx.get, f"http://127.0.0.1:{port}/where/",
                        headers={"X-Forwarded-For": "203.0.113.7, 10.0.0.1", "X-Forwarded-Proto": "https"},
                        timeout=30)
    request = take(layer, "http.request")
    reply_ok(layer, request)
    assert pending().status_code == 200
    assert request["client"][0] == "203.0.113.7"
    assert request["scheme"] == "https"


def test_root_path_is_passed_on_and_prefixes_the_health_endpoint(proxied_web, layer):
    _, port = proxied_web
    assert httpx.get(f"http://127.0.0.1:{port}/app/.paas-channels/health", timeout=10).json()["status"] == "ok"
    pending = in_thread(httpx.get, f"http://127.0.0.1:{port}/app/page/", timeout=30)
    request = take(layer, "http.request")
    reply_ok(layer, request)
    assert pending().status_code == 200
    assert request["root_path"] == "/app" and request["path"] == "/app/page/"


def test_large_body_goes_through_body_channel_in_chunks(web, layer):
    _, port = web
    body = bytes(range(256)) * 4096 + b"tail"  # 1 MiB and a bit: over one message
    pending = in_thread(httpx.post, f"http://127.0.0.1:{port}/upload/", content=body, timeout=30)
    request = take(layer, "http.request")
    assert request["body"] == b""
    assert request["body_channel"].startswith("http.request.body?")
    chunks = []
    while True:
        chunk = take(layer, request["body_channel"])
        assert not chunk["closed"]
        assert 0 < len(chunk["content"]) <= 256 * 1024
        chunks.append(chunk["content"])
        if not chunk["more_content"]:
            break
    assert b"".join(chunks) == body
    reply_ok(layer, request, str(len(body)).encode())
    assert pending().text == str(len(body))


def test_early_reply_stops_the_body_instead_of_waiting_for_the_timeout(web, layer):
    _, port = web
    body = b"x" * (30 * 1024 * 1024)  # more than a body channel holds (100 chunks of 256 KiB)
    started = time.monotonic()
    pending = in_thread(httpx.post, f"http://127.0.0.1:{port}/upload/", content=body, timeout=30)
    request = take(layer, "http.request")
    assert request["body_channel"]
    layer.send(request["reply_channel"], {"status": 413, "headers": [], "content": b"too large",
                                          "more_content": False})
    response = pending()
    assert response.status_code == 413 and response.text == "too large"
    assert time.monotonic() - started < HTTP_TIMEOUT / 2  # not a 503 after the timeout


def test_streamed_reply_is_written_as_it_comes(web, layer):
    _, port = web
    received = []

    def read_stream():
        with httpx.stream("GET", f"http://127.0.0.1:{port}/stream/", timeout=30) as response:
            for part in response.iter_bytes():
                received.append((time.monotonic(), part))
        return response

    pending = in_thread(read_stream)
    request = take(layer, "http.request")
    layer.send(request["reply_channel"], {"status": 200, "headers": [], "content": b"first;",
                                          "more_content": True})
    deadline = time.monotonic() + 10
    while not received and time.monotonic() < deadline:
        time.sleep(0.05)
    assert received and received[0][1] == b"first;", "the first chunk was held back"
    layer.send(request["reply_channel"], {"content": b"second", "more_content": False})
    assert pending().status_code == 200
    assert b"".join(part for _, part in received) == b"first;second"


def test_client_going_away_sends_http_disconnect(web, layer):
    _, port = web
    pending = in_thread(httpx.get, f"http://127.0.0.1:{port}/live/", timeout=1.0)
    request = take(layer, "http.request")
    with pytest.raises(httpx.ReadTimeout):
        pending()
    disconnect = take(layer, "http.disconnect")
    assert disconnect == {"reply_channel": request["reply_channel"], "path": "/live/"}


def test_full_http_request_channel_answers_503_at_once(web, layer):
    _, port = web
    for index in range(layer.get_capacity("http.request")):
        layer.send("http.request", {"filler": index})
    started = time.monotonic()
    response = httpx.get(f"http://127.0.0.1:{port}/", timeout=30)
    assert response.status_code == 503
    assert "queue is full" in response.text
    assert time.monotonic() - started < HTTP_TIMEOUT / 4  # at once, not after the HTTP timeout


def test_invalid_reply_is_a_500_not_a_hang(web, layer):
    _, port = web
    pending = in_thread(httpx.get, f"http://127.0.0.1:{port}/", timeout=30)
    request = take(layer, "http.request")
    layer.send(request["reply_channel"], {"content": b"no status"})
    response = pending()
    assert response.status_code == 500 and "invalid reply" in response.text


def test_stalled_stream_is_cut_not_falsely_completed(redis, layer):
    process, port = start_web(project_env(redis_url=redis.url), "--http-timeout", "2")
    try:
        def read_stream():
            with httpx.stream("GET", f"http://127.0.0.1:{port}/stream/", timeout=30) as response:
                return b"".join(response.iter_bytes())

        pending = in_thread(read_stream)
        request = take(layer, "http.request")
        layer.send(request["reply_channel"], {"status": 200, "headers": [], "content": b"partial",
                                              "more_content": True})
        # The worker never sends the rest: after --http-timeout the client must see a broken
        # response, not a complete one that silently lacks its end.
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            pending()
        assert "closing the connection" in process.output()
    finally:
        process.close()


### WebSocket ###


def ws_url(port, path="/ws/test/"):
    return f"ws://127.0.0.1:{port}{path}"


def test_websocket_messages_carry_order_and_subprotocols(web, layer):
    _, port = web
    pending = in_thread(connect, ws_url(port) + "?room=1", subprotocols=["chat.v1", "chat.v2"],
                        origin="http://localhost:8000", open_timeout=20)
    hello = take(layer, "websocket.connect")
    assert hello["order"] == 0 and hello["path"] == "/ws/test/" and hello["query_string"] == b"room=1"
    assert hello["subprotocols"] == ["chat.v1", "chat.v2"] and hello["scheme"] == "ws"
    layer.send(hello["reply_channel"], {"accept": True})
    with pending() as socket:
        # The client's first choice the server is configured for: chat.v1.
        assert socket.subprotocol == "chat.v1"
        socket.send("one")
        socket.send(b"two")
        first, second = take(layer, "websocket.receive"), take(layer, "websocket.receive")
        assert (first["order"], first["text"]) == (1, "one") and "bytes" not in first
        assert (second["order"], second["bytes"]) == (2, b"two") and "text" not in second
        layer.send(hello["reply_channel"], {"text": "back"})
        assert socket.recv(timeout=10) == "back"
    goodbye = take(layer, "websocket.disconnect")
    assert goodbye["order"] == 3 and goodbye["code"] == 1000
    assert goodbye["reply_channel"] == hello["reply_channel"]


def test_websocket_proxy_headers_give_client_and_scheme(proxied_web, layer):
    _, port = proxied_web
    pending = in_thread(connect, ws_url(port), open_timeout=20,
                        additional_headers={"X-Forwarded-For": "198.51.100.9", "X-Forwarded-Proto": "https"})
    hello = take(layer, "websocket.connect")
    layer.send(hello["reply_channel"], {"accept": True})
    with pending():
        pass
    assert hello["client"][0] == "198.51.100.9" and hello["scheme"] == "wss"


def test_allowed_origin_option_replaces_allowed_hosts(proxied_web, layer):
    _, port = proxied_web
    pending = in_thread(connect, ws_url(port), origin="https://app.example.com", open_timeout=20)
    hello = take(layer, "websocket.connect")
    assert [b"origin", b"https://app.example.com"] in hello["headers"]
    layer.send(hello["reply_channel"], {"accept": True})
    with pending():
        pass
    # localhost is in ALLOWED_HOSTS, but --allowed-origin took its place.
    with pytest.raises(InvalidStatus) as refused:
        connect(ws_url(port), origin="http://localhost", open_timeout=20)
    assert refused.value.response.status_code == 403
    assert layer.receive(["websocket.connect"]) == (None, None)  # nothing reached a worker


def test_data_before_accept_accepts_and_close_code_reaches_the_client(web, layer):
    _, port = web
    pending = in_thread(connect, ws_url(port), open_timeout=20)
    hello = take(layer, "websocket.connect")
    layer.send(hello["reply_channel"], {"text": "hi"})
    with pending() as socket:
        assert socket.recv(timeout=10) == "hi"
        layer.send(hello["reply_channel"], {"close": 4321})
        with pytest.raises(ConnectionClosed):
            socket.recv(timeout=10)
        assert socket.close_code == 4321


def test_invalid_websocket_reply_closes_with_1011(web, layer):
    _, port = web
    pending = in_thread(connect, ws_url(port), open_timeout=20)
    hello = take(layer, "websocket.connect")
    layer.send(hello["reply_channel"], {"accept": True})
    with pending() as socket:
        layer.send(hello["reply_channel"], {"text": b"bytes where text belongs"})
        with pytest.raises(ConnectionClosed):
            socket.recv(timeout=10)
        assert socket.close_code == 1011


def test_reject_before_accept_is_403(web, layer):
    _, port = web
    pending = in_thread(connect, ws_url(port), open_timeout=20)
    hello = take(layer, "websocket.connect")
    layer.send(hello["reply_channel"], {"close": True})
    with pytest.raises(InvalidStatus) as refused:
        pending()
    assert refused.value.response.status_code == 403


def test_idle_websocket_gets_pings_at_the_ping_interval(web, layer):
    """Keep-alive pings stop an idle socket from hitting a proxy's idle limit (Heroku: 55 s)."""
    _, port = web
    raw = socket_module.create_connection(("127.0.0.1", port), timeout=10)
    try:
        key = base64.b64encode(os.urandom(16)).decode()
        raw.sendall((f"GET /ws/idle/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                     f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        hello = take(layer, "websocket.connect")
        layer.send(hello["reply_channel"], {"accept": True})
        response = b""
        while b"\r\n\r\n" not in response:
            response += raw.recv(4096)
        assert response.startswith(b"HTTP/1.1 101")
        frames = response.split(b"\r\n\r\n", 1)[1]
        started = time.monotonic()
        while len(frames) < 2:  # a server frame: opcode byte, then length; pings carry a short payload
            frames += raw.recv(4096)
        # The client sent nothing: an unsolicited ping (opcode 9) within a few seconds of --ping-interval 1.
        assert frames[0] & 0x0F == 0x9, f"expected a ping frame, got {frames[:8]!r}"
        assert time.monotonic() - started < 10
    finally:
        raw.close()


def test_full_websocket_receive_closes_with_1013(web, layer):
    _, port = web
    pending = in_thread(connect, ws_url(port), open_timeout=20)
    hello = take(layer, "websocket.connect")
    layer.send(hello["reply_channel"], {"accept": True})
    with pending() as socket:
        for index in range(layer.get_capacity("websocket.receive")):
            layer.send("websocket.receive", {"filler": index})
        socket.send("one too many")
        with pytest.raises(ConnectionClosed):
            socket.recv(timeout=10)
        assert socket.close_code == 1013


def test_disconnect_waits_for_room_on_a_full_channel(web, layer):
    """Thousands of clients leaving at once fill websocket.disconnect; none may be lost (groups keep them)."""
    _, port = web
    pending = in_thread(connect, ws_url(port), open_timeout=20)
    hello = take(layer, "websocket.connect")
    layer.send(hello["reply_channel"], {"accept": True})
    # Fill it to the brim (a late disconnect of an earlier test's client may already be in it).
    fillers = 0
    while True:
        try:
            layer.send("websocket.disconnect", {"filler": fillers})
        except layer.ChannelFull:
            break
        fillers += 1
    assert fillers > 0
    full_before = layer.channel_statistics("websocket.disconnect")["channel_full_count"]
    with pending():
        pass  # the client closes
    # The interface found the channel full and waits for room.
    assert wait_until(lambda: layer.channel_statistics("websocket.disconnect")["channel_full_count"] > full_before)
    taken = []
    while not taken or taken[-1].get("reply_channel") != hello["reply_channel"]:
        taken.append(take(layer, "websocket.disconnect"))
    # Every filler came first, then ours: nothing was lost, ours waited for room.
    assert [m["filler"] for m in taken if "filler" in m] == list(range(fillers))
    assert all("filler" in m or m.get("reply_channel") != hello["reply_channel"] for m in taken[:-1])


### Shutdown ###


def test_sigterm_closes_websockets_with_1012_and_finishes_responses(redis, layer):
    process, port = start_web(project_env(redis_url=redis.url), "--http-timeout", str(HTTP_TIMEOUT))
    try:
        pending_ws = in_thread(connect, ws_url(port), open_timeout=20)
        hello = take(layer, "websocket.connect")
        layer.send(hello["reply_channel"], {"accept": True})
        with pending_ws() as socket:
            pending_http = in_thread(httpx.get, f"http://127.0.0.1:{port}/slow/", timeout=30)
            request = take(layer, "http.request")

            process.signal()
            started = time.monotonic()
            with pytest.raises(ConnectionClosed):
                socket.recv(timeout=10)
            assert socket.close_code == 1012
            assert time.monotonic() - started < 5  # clients are told at once, not at the graceful timeout
        process.wait_for_output("shutting down", timeout=10)
        # No longer accepting: new connections are refused while the old ones drain.
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
        # A response in flight still completes after the signal.
        reply_ok(layer, request, b"finished after SIGTERM")
        assert pending_http().text == "finished after SIGTERM"
        assert process.wait(30) == 0
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
    finally:
        process.close()
