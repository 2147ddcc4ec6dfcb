"""Bad input against a real web + worker on a private Redis: trickled headers, garbage in Redis,
bad WebSocket frames, bursts of handshakes, IPv6 origins; and secrets kept out of error pages."""

from __future__ import annotations

import asyncio
import socket
import time

import httpx
import pytest
import redis as redis_py
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from paas_channels.testing import wait_until
from tests.fault_support import figure, open_websockets, stack_fixture

pytestmark = pytest.mark.redis


stack = stack_fixture("module", worker=("--threads", "4"), web=("--http-timeout", "10", "--header-timeout", "2"))


def _healthy(stack) -> bool:
    return httpx.get(f"{stack.url}/", timeout=10).status_code == 200


def test_slowloris_headers_are_cut_at_the_header_deadline(stack):
    sock = socket.create_connection(("127.0.0.1", stack.port), timeout=5)
    sock.sendall(b"GET / HTTP/1.1\r\nhost: 127.0.0.1\r\n")
    started, cut = time.monotonic(), None
    for _ in range(40):  # a header byte every 0.25 s: 10 s at most, each byte resets an idle timeout
        try:
            sock.sendall(b"x")
            sock.settimeout(0.25)
            if sock.recv(1024) == b"":
                cut = time.monotonic() - started
                break
        except socket.timeout:
            continue
        except OSError:
            cut = time.monotonic() - started
            break
    sock.close()
    assert cut is not None, "the trickling client was never cut"
    figure("slowloris (a header byte every 0.25 s, --header-timeout 2)", f"connection cut after {cut:.1f} s")
    assert _healthy(stack)


def test_garbage_and_forged_entries_in_redis_hurt_nobody(stack):
    client = redis_py.Redis.from_url(stack.redis.url)
    for junk in (b"", b"\xc1\x01short", b"not msgpack at all \xff\xfe", b"\x00" * 64, b"\xdd\xff\xff\xff\xff"):
        client.rpush("paas:c:http.request", junk)
        client.rpush("paas:c:websocket.receive", junk)
    assert wait_until(lambda: client.llen("paas:c:http.request") == 0, 10)
    assert _healthy(stack)
    assert httpx.get(f"{stack.url}/.paas-channels/health", timeout=10).json()["loops"]["lost"] == 0
    client.close()


def test_bad_websocket_frames_close_that_socket_only(stack):
    with connect(f"ws://127.0.0.1:{stack.port}/echo/", open_timeout=10) as good:
        _bad_frames(stack)
        good.send("still here")
        assert good.recv(timeout=10) == "still here"


def _bad_frames(stack):
    raw = socket.create_connection(("127.0.0.1", stack.port), timeout=10)
    raw.sendall(b"GET /echo/ HTTP/1.1\r\nhost: 127.0.0.1\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
                b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n")
    assert b" 101 " in raw.recv(4096)
    # Unmasked (clients must mask), a reserved opcode, then a frame claiming 2**63 bytes.
    raw.sendall(b"\x81\x05hello" + b"\x83\x80abcd" + b"\x82\xff" + b"\x7f" * 8)
    raw.settimeout(10)
    try:
        while raw.recv(4096):
            pass
    except OSError:
        pass
    raw.close()


def test_a_burst_of_handshakes_is_queued_not_refused(stack):
    async def burst():
        sockets = await open_websockets(stack.port, 300, batch=300)
        for ws in sockets:
            await ws.close()
        return len(sockets)

    started = time.monotonic()
    assert asyncio.run(burst()) == 300  # all at once; open_websockets raises on any refusal
    figure("300 WebSocket handshakes at once", f"all accepted in {time.monotonic() - started:.1f} s")
    # And all gone from the web process: its worker routes no websocket.disconnect, so that
    # channel fills at its capacity (100) and nothing drains it; the rest are not waited on.
    assert wait_until(lambda: _open_websockets(stack) == 0, 5), _open_websockets(stack)


def _open_websockets(stack) -> int:
    return httpx.get(f"{stack.url}/.paas-channels/health", timeout=10).json()["connections"]["websocket"]


def test_an_ipv6_origin_is_checked_like_any_host(stack):
    with connect(f"ws://127.0.0.1:{stack.port}/echo/", open_timeout=10, origin="https://[::1]") as ws:
        ws.send("v6")
        assert ws.recv(timeout=10) == "v6"
    with pytest.raises(InvalidStatus):
        with connect(f"ws://127.0.0.1:{stack.port}/echo/", open_timeout=10, origin="https://[::2]"):
            pass


def test_the_debug_error_page_hides_layer_passwords():
    from django.test import override_settings

    from paas_channels.config.reporting import SecretsFilter
    from paas_channels.config.settings import settings_from_env

    # configure() installs the filter the DEBUG=1 technical 500 page uses for its settings table.
    installed = settings_from_env({"SECRET_KEY": "x", "REDIS_URL": "redis://:pw@r:6379"})
    assert installed["DEFAULT_EXCEPTION_REPORTER_FILTER"] == "paas_channels.config.reporting.SecretsFilter"
    layers = {"default": {"BACKEND": "paas_channels.layers.RedisChannelLayer",
                          "CONFIG": {"hosts": ["redis://:hunter2pass@redis.example:6379/0",
                                               {"address": "rediss://user:s3cretpass@r2.example:6380"}],
                                     "keys": ["layer-key-value"]}}}
    with override_settings(CHANNEL_LAYERS=layers):
        safe = repr(SecretsFilter().get_safe_settings()["CHANNEL_LAYERS"])
    for secret in ("hunter2pass", "s3cretpass", "layer-key-value"):
        assert secret not in safe
    assert "redis.example" in safe and "r2.example" in safe
