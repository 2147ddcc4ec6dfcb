"""The interface's pieces in-process: Origin and subprotocol rules, the static index, body chunking.

The Daphne-level behaviour is tested with real processes elsewhere
(``test_interface_*``); here the same application runs in this process on a
real in-memory layer, driven through its ASGI interface, for cases Daphne
cannot produce on demand: body events of odd sizes, exact chunk boundaries.
"""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from django.test import override_settings

from paas_channels.interface.asgi import BODY_CHUNK
from paas_channels.interface.websocket import choose_subprotocol, origin_allowed
from paas_channels.interface.static import StaticFiles
from paas_channels.conf import load_config
from paas_channels.interface import InterfaceApplication
from paas_channels.layers import InMemoryChannelLayer

### Origin and subprotocols ###


@pytest.mark.parametrize("origin, patterns, allowed", [
    (None, ["example.com"], True),  # no Origin: not a browser
    (b"https://example.com", ["example.com"], True),
    (b"http://localhost:8000", ["localhost"], True),  # the port does not matter
    (b"https://chat.example.com", [".example.com"], True),
    (b"https://example.com.evil.net", [".example.com"], False),
    (b"https://evil.net", ["example.com", "localhost"], False),
    (b"https://anything.net", ["*"], True),
    (b"null", ["example.com"], False),  # sandboxed iframes, file:// pages
    (b"not a url", ["example.com"], False),
])
def test_origin_rules_follow_allowed_hosts(origin, patterns, allowed):
    headers = [(b"host", b"example.com")] + ([(b"origin", origin)] if origin is not None else [])
    assert origin_allowed(headers, patterns)[0] is allowed


def test_subprotocol_is_the_clients_first_choice_the_server_speaks():
    assert choose_subprotocol(["v1", "v2"], ["v2", "v1"]) == "v1"
    assert choose_subprotocol(["v3", "v2"], ["v1", "v2"]) == "v2"
    assert choose_subprotocol(["v3"], ["v1"]) is None
    assert choose_subprotocol([], ["v1"]) is None


### Static index ###


def test_manifest_names_are_immutable_and_others_are_not(tmp_path):
    (tmp_path / "app.css").write_text("body{}")
    (tmp_path / "app.0123456789ab.css").write_text("body{}")
    (tmp_path / "lib.fedcba987654.js").write_text("1")  # looks hashed, but the manifest says no
    (tmp_path / "staticfiles.json").write_text(json.dumps({"paths": {"app.css": "app.0123456789ab.css"}}))
    static = StaticFiles(tmp_path, "static/")
    assert static.prefix == "/static/"
    assert "immutable" in dict(static.lookup("/static/app.0123456789ab.css").alternatives[0][2])["Cache-Control"]
    assert dict(static.lookup("/static/app.css").alternatives[0][2])["Cache-Control"] == "max-age=60, public"
    assert "immutable" not in dict(static.lookup("/static/lib.fedcba987654.js").alternatives[0][2])["Cache-Control"]
    assert static.lookup("/static/missing.css") is None
    assert static.lookup("/other/app.css") is None


def test_hash_pattern_decides_without_a_manifest(tmp_path):
    (tmp_path / "app.0123456789ab.css").write_text("body{}")
    static = StaticFiles(tmp_path, "/assets/")
    assert "immutable" in dict(static.lookup("/assets/app.0123456789ab.css").alternatives[0][2])["Cache-Control"]


def test_missing_static_root_says_what_to_do(tmp_path, caplog):
    with override_settings(STATIC_URL="/static/", STATIC_ROOT=str(tmp_path / "not-collected")):
        with caplog.at_level(logging.WARNING, logger="paas_channels.interface.static"):
            assert StaticFiles.from_settings() is None
    assert "collectstatic" in caplog.text


def test_without_collectstatic_files_come_from_the_finders(tmp_path):
    (tmp_path / "css").mkdir()
    (tmp_path / "css" / "site.css").write_text("h1{}")
    with override_settings(STATICFILES_DIRS=[str(tmp_path)], STATIC_ROOT=str(tmp_path / "not-collected"),
                           STATICFILES_FINDERS=["django.contrib.staticfiles.finders.FileSystemFinder"]):
        static = StaticFiles(None, "/static/")
        entry = static.lookup("/static/css/site.css")
    assert entry is not None
    assert dict(entry.alternatives[0][2])["Cache-Control"] == "max-age=60, public"


def test_static_url_on_another_host_is_not_served(tmp_path):
    with override_settings(STATIC_URL="https://cdn.example.com/static/", STATIC_ROOT=str(tmp_path)):
        assert StaticFiles.from_settings() is None


### Request bodies through the real app and an in-memory layer ###


async def _post(body_events: list[bytes]) -> tuple[dict, list[dict], list[dict]]:
    """POST with ``body_events`` as the ASGI body events; a consumer task answers with the body length.

    Returns the http.request message, the body_channel chunks, and what the app sent.
    """
    layer = InMemoryChannelLayer(blocking_timeout=0.2)
    app = InterfaceApplication(layer, load_config("web", {"http_timeout": 10}, {}), static=False)
    events = [{"type": "http.request", "body": chunk, "more_body": index < len(body_events) - 1}
              for index, chunk in enumerate(body_events)]
    never = asyncio.Event()

    async def receive():
        if events:
            return events.pop(0)
        await never.wait()

    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    async def consumer():
        while True:
            channel, request = await layer.areceive(["http.request"], block=True)
            if channel:
                break
        chunks = []
        body = request["body"]
        while request["body_channel"]:
            channel, chunk = await layer.areceive([request["body_channel"]], block=True)
            if channel:
                chunks.append(chunk)
                body += chunk["content"]
                if not chunk["more_content"]:
                    break
        await layer.asend(request["reply_channel"], {"status": 200, "headers": [],
                                                     "content": str(len(body)).encode(), "more_content": False})
        return request, chunks

    task = asyncio.ensure_future(consumer())
    scope = {"type": "http", "method": "POST", "path": "/upload/", "query_string": b"", "headers": [],
             "client": ["127.0.0.1", 1234], "server": ["127.0.0.1", 80], "scheme": "http", "http_version": "1.1"}
    try:
        await asyncio.wait_for(app(scope, receive, send), 10)
        request, chunks = await asyncio.wait_for(task, 10)
    finally:
        task.cancel()
        await app.shutdown(0.1)
    return request, chunks, sent


@pytest.mark.parametrize("sizes", [
    [0],
    [BODY_CHUNK],  # exactly one chunk: inline
    [BODY_CHUNK, 1],  # one byte over: streamed
    [8192] * 100,  # small events, as another ASGI server sends them
    [BODY_CHUNK * 2],  # an exact multiple in one event
    [100, BODY_CHUNK * 3 + 7, 0],  # ragged, with an empty last event
])
def test_bodies_of_any_shape_arrive_whole_and_in_bounded_chunks(sizes):
    body_events = [bytes([index % 251]) * size for index, size in enumerate(sizes)]
    body = b"".join(body_events)
    request, chunks, sent = asyncio.run(_post(body_events))
    assert sent[0]["status"] == 200 and sent[1]["body"] == str(len(body)).encode()
    if len(body) <= BODY_CHUNK:
        assert request["body"] == body and request["body_channel"] is None and chunks == []
    else:
        assert request["body"] == b"" and request["body_channel"].startswith("http.request.body?")
        assert all(len(chunk["content"]) <= BODY_CHUNK and not chunk["closed"] for chunk in chunks)
        assert b"".join(chunk["content"] for chunk in chunks) == body
        assert [chunk["more_content"] for chunk in chunks] == [True] * (len(chunks) - 1) + [False]
