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

__all__ = ["CLIENT_PATH", "ClientState", "MARK", "client_js", "frames", "opted_in", "resume_positions", "serve_client_js"]

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


class ClientState:
    """The client's side of the protocol, without I/O: what ``client.js`` does, in Python.

    ``query()`` is what to add to the URL of the next connection; ``feed(frame)``
    takes each frame received and returns the ``(data, meta)`` to hand to the
    application, each message once and in order per group; ``recoveries``
    lists ``(group, ok)`` from the join notices of resumed connections.
    For Python clients (tests, benchmarks, a service) speaking to the server
    the way the browser does.
    """

    def __init__(self) -> None:
        self.positions: dict[str, list[Any]] = {}  # group -> [epoch, last offset handed out]
        self.recoveries: list[tuple[str, bool]] = []
        self._pending: dict[str, dict[int, tuple[Any, dict]]] = {}
        self._binary_meta: dict | None = None

    def query(self) -> str:
        resume = ",".join(f"{group}:{epoch}:{offset}" for group, (epoch, offset) in self.positions.items())
        return f"{_OPT_IN}=1" + (f"&{_RESUME}={resume}" if resume else "")

    def connection_lost(self) -> None:
        """A half-received binary message is gone with its connection."""
        self._binary_meta = None

    def feed(self, frame: str | bytes) -> list[tuple[Any, dict]]:
        if self._binary_meta is not None:
            meta, self._binary_meta = self._binary_meta, None
            return self._history(meta, frame)
        if not isinstance(frame, str) or not frame.startswith(MARK):
            return [(frame, dict(_PLAIN))]
        header_text, newline, body = frame[1:].partition("\n")
        header = json.loads(header_text)
        data = body if newline else None
        if not header.get("group"):
            return [(data, dict(_PLAIN))]
        if "recovered" in header:
            return self._notice(header)
        if header.get("binary"):
            self._binary_meta = header
            return []
        return self._history(header, data)

    def waiting(self) -> bool:
        """Whether a later message came and an earlier one has not (yet).

        A gap that stays means a message was lost on the way (a full inbox,
        an expired message): ``client.js`` then reconnects at once, and the
        resume fills it from the history.
        """
        return any(self._pending.values())

    def skip_gaps(self) -> list[tuple[Any, dict]]:
        """Give up waiting for missing offsets (``client.js`` does after ``gapTimeout``)."""
        out = []
        for group, pending in self._pending.items():
            if pending:
                self.positions[group][1] = min(pending) - 1
                out += self._drain(group)
        return out

    def _notice(self, notice: dict) -> list[tuple[Any, dict]]:
        group = notice["group"]
        position = self.positions.get(group)
        if notice["recovered"] is False or position is None or position[0] != notice["epoch"]:
            self.positions[group] = [notice["epoch"], notice["offset"]]
        if notice["recovered"] is not None:
            self.recoveries.append((group, notice["recovered"]))
        return self._drain(group)

    def _history(self, meta: dict, data: Any) -> list[tuple[Any, dict]]:
        group = meta["group"]
        position = self.positions.get(group)
        if position is None or position[0] != meta["epoch"]:
            self._pending[group] = {}
            position = self.positions[group] = [meta["epoch"], meta["offset"] - 1]
        if meta["offset"] > position[1]:
            self._pending.setdefault(group, {})[meta["offset"]] = (data, meta)
        return self._drain(group)

    def _drain(self, group: str) -> list[tuple[Any, dict]]:
        position = self.positions[group]
        pending = self._pending.get(group)
        if not pending:
            return []
        for offset in [offset for offset in pending if offset <= position[1]]:
            del pending[offset]
        out = []
        while position[1] + 1 in pending:
            position[1] += 1
            data, meta = pending.pop(position[1])
            out.append((data, {"group": group, "epoch": meta["epoch"], "offset": meta["offset"],
                               "replayed": bool(meta.get("replayed"))}))
        return out


_PLAIN = {"group": None, "epoch": None, "offset": None, "replayed": False}
