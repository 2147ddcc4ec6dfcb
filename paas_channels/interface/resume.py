"""The resume protocol between the browser client (``client.js``) and the interface (sans-IO).

A client opts in with ``paas_channels=1`` in the WebSocket URL's query
string, and tells where it stopped with ``paas_resume=group:epoch:offset,...``
(the last history position it saw per group).  The interface passes the
positions on in ``websocket.connect`` as ``"resume": {group: [epoch, offset]}``
(present, maybe empty, only for a client that opted in), and a connect
consumer's ``Group(name).add(message.reply_channel)`` joins with them
(``layer.group_join``).

What the opted-in client receives (a plain client sees exactly what it did
before: the frames as sent, no notices):

* a message to a history group: one text frame ``"\\x1e" + JSON position +
  "\\n" + text``; for bytes, the frame ``"\\x1e" + JSON position`` (with
  ``"binary": true``) and then the binary frame;
* a join's notice: ``"\\x1e" + JSON {group, epoch, offset, recovered}``;
* any other text frame as sent, unless it starts with ``"\\x1e"``: then it is
  prefixed with ``"\\x1e{}\\n"`` so the client never mistakes it for a position.

JSON never contains a raw newline, so the first ``"\\n"`` ends the header.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from .. import __version__
from .asgi import Scope, Send

__all__ = ["CLIENT_PATH", "MARK", "client_js", "frames", "opted_in", "resume_positions", "serve_client_js"]

#: The browser client, answered by the interface itself (no worker hop), so it
#: is always the version of the server that speaks to it.
CLIENT_PATH = "/.paas-channels/client.js"

#: First character of every frame the protocol adds (ASCII record separator).
MARK = "\x1e"
_ESCAPE = MARK + "{}\n"
_OPT_IN = "paas_channels"
_RESUME = "paas_resume"
_GROUP = re.compile(r"^[a-zA-Z\d\-_.]{1,99}$")
_EPOCH = re.compile(r"^[a-zA-Z\d]{1,40}$")
_MAX_POSITIONS = 100
_META_KEYS = ("group", "epoch", "offset", "replayed", "recovered")


def _query(scope: dict) -> list[tuple[str, str]]:
    raw = scope.get("query_string") or b""
    try:
        return parse_qsl(raw.decode("latin1"), keep_blank_values=True)
    except ValueError:
        return []


def opted_in(scope: dict) -> bool:
    """Whether the client speaks the resume protocol (``paas_channels=1`` in the query string)."""
    return any(name == _OPT_IN and value == "1" for name, value in _query(scope))


def resume_positions(scope: dict) -> dict[str, list[Any]]:
    """``{group: [epoch, offset]}`` from ``paas_resume``; malformed entries are left out.

    What a client sends is not trusted: names and epochs must look like the
    layer's, offsets are whole numbers, and at most 100 groups are read.
    """
    positions: dict[str, list[Any]] = {}
    for name, value in _query(scope):
        if name != _RESUME:
            continue
        for item in value.split(","):
            parts = item.split(":")
            if len(parts) != 3 or len(positions) >= _MAX_POSITIONS:
                continue
            group, epoch, offset = parts
            if _GROUP.match(group) and _EPOCH.match(epoch) and offset.isdigit() and len(offset) < 16:
                positions[group] = [epoch, int(offset)]
    return positions


def frames(reply: dict, opted: bool) -> list[dict]:
    """The ``websocket.send`` events for the data of one reply (text/bytes and ``history``).

    For a client that did not opt in the position is dropped and a notice
    sends nothing.
    """
    meta = reply.get("history")
    text = reply.get("text")
    data = reply.get("bytes")
    if not opted:
        if text is not None:
            return [{"type": "websocket.send", "text": text}]
        if data is not None:
            return [{"type": "websocket.send", "bytes": data}]
        return []
    if not isinstance(meta, dict):
        if text is not None:
            return [{"type": "websocket.send", "text": _ESCAPE + text if text.startswith(MARK) else text}]
        if data is not None:
            return [{"type": "websocket.send", "bytes": data}]
        return []
    header = {key: meta[key] for key in _META_KEYS if key in meta}
    if text is not None:
        return [{"type": "websocket.send", "text": MARK + _json(header) + "\n" + text}]
    if data is not None:
        return [{"type": "websocket.send", "text": MARK + _json({**header, "binary": True})},
                {"type": "websocket.send", "bytes": data}]
    return [{"type": "websocket.send", "text": MARK + _json(header)}]


def _json(value: dict) -> str:
    return json.dumps(value, separators=(",", ":"))


@functools.lru_cache(maxsize=1)
def client_js() -> tuple[bytes, bytes]:
    """``(the client's source with this version in it, its ETag)``."""
    source = (Path(__file__).with_name("client.js")).read_text(encoding="utf-8")
    body = source.replace("__PAAS_CHANNELS_VERSION__", __version__).encode("utf-8")
    return body, b'"' + hashlib.sha256(body).hexdigest()[:20].encode() + b'"'


async def serve_client_js(scope: Scope, send: Send) -> None:
    """Answer ``GET``/``HEAD`` of :data:`CLIENT_PATH`: revalidated on every load (``no-cache``), 304 when unchanged."""
    body, etag = client_js()
    headers = [
        (b"content-type", b"text/javascript; charset=utf-8"),
        (b"cache-control", b"no-cache"),
        (b"etag", etag),
    ]
    if any(name == b"if-none-match" and etag in value for name, value in scope.get("headers", ())):
        await send({"type": "http.response.start", "status": 304, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
        return
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if scope.get("method") == "HEAD" else body})
