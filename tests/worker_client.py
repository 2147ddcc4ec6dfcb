"""The interface server's side of the wire, for worker tests.

:class:`LayerClient` does what ``run web`` does, without Daphne: it puts
``http.request`` / ``websocket.*`` messages on a layer and reads the replies
from its own process inbox (a ``!`` channel), one buffer per reply channel.
Worker tests use it against real worker processes on Redis, and against
in-process workers on the in-memory layer.
"""

from __future__ import annotations

import re
import time
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import urlencode

from paas_channels.layers import BaseChannelLayer

BODY_CHUNK = 256 * 1024
_CSRF_INPUT = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')


class Response:
    def __init__(self, status: int, headers: list, body: bytes, messages: int) -> None:
        self.status = status
        self.headers = [(bytes(name).decode("latin-1").lower(), bytes(value).decode("latin-1")) for name, value in headers]
        self.body = body
        self.messages = messages

    def header(self, name: str) -> str | None:
        return next((value for key, value in self.headers if key == name.lower()), None)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.body[:80]!r}>"


class LayerClient:
    """A fake interface process: one inbox, many reply channels, a cookie jar."""

    def __init__(self, layer: BaseChannelLayer, host: str = "localhost") -> None:
        self.layer = layer
        self.inbox = f"tests.{BaseChannelLayer.random_suffix(8)}!"
        self.host = host
        self.cookies: dict[str, str] = {}
        self._buffers: dict[str, list[dict]] = {}

    def reply_channel(self) -> str:
        return self.inbox + BaseChannelLayer.random_suffix(10)

    ### Receiving ###

    def next_for(self, reply_channel: str, timeout: float = 10.0) -> dict | None:
        """The next message for ``reply_channel``, or None after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            buffer = self._buffers.get(reply_channel)
            if buffer:
                return buffer.pop(0)
            if time.monotonic() >= deadline:
                return None
            channel, message = self.layer.receive([self.inbox], block=True)
            if channel is not None:
                self._buffers.setdefault(channel, []).append(message)

    def response(self, reply_channel: str, timeout: float = 10.0) -> Response:
        """Collect an http.response: the first message then chunks until more_content is false."""
        first = self.next_for(reply_channel, timeout)
        if first is None:
            raise TimeoutError(f"no http.response on {reply_channel} within {timeout} s")
        body, count, message = bytearray(first.get("content", b"")), 1, first
        while message.get("more_content"):
            message = self.next_for(reply_channel, timeout)
            if message is None:
                raise TimeoutError(f"response on {reply_channel} stopped after {count} chunk(s)")
            body += message.get("content", b"")
            count += 1
        response = Response(first["status"], first.get("headers", []), bytes(body), count)
        for name, value in response.headers:
            if name == "set-cookie":
                cookie = SimpleCookie()
                cookie.load(value)
                for key, morsel in cookie.items():
                    self.cookies[key] = morsel.value
        return response

    ### HTTP ###

    def send_request(
        self,
        method: str,
        path: str,
        *,
        query: dict | None = None,
        body: bytes = b"",
        headers: list[tuple[bytes, bytes]] | None = None,
        content_type: str | None = None,
        host: str | None = None,
    ) -> str:
        """Put one http.request (body chunks on a body_channel when large); return its reply channel."""
        reply = self.reply_channel()
        all_headers = [(b"host", (host or self.host).encode())]
        if self.cookies:
            all_headers.append((b"cookie", "; ".join(f"{k}={v}" for k, v in self.cookies.items()).encode()))
        if content_type:
            all_headers.append((b"content-type", content_type.encode()))
        if body:
            all_headers.append((b"content-length", str(len(body)).encode()))
        all_headers.extend(headers or [])
        message: dict[str, Any] = {
            "reply_channel": reply,
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "query_string": urlencode(query or {}).encode(),
            "root_path": "",
            "headers": [[name, value] for name, value in all_headers],
            "body": body[:BODY_CHUNK],
            "body_channel": None,
            "client": ["127.0.0.1", 50000],
            "server": ["127.0.0.1", 8000],
        }
        rest = body[BODY_CHUNK:]
        if rest:
            message["body_channel"] = self.layer.new_channel("http.request.body?")
            chunks = [rest[start : start + BODY_CHUNK] for start in range(0, len(rest), BODY_CHUNK)]
            for index, chunk in enumerate(chunks):
                self.layer.send(message["body_channel"],
                                {"content": chunk, "closed": False, "more_content": index < len(chunks) - 1})
        self.layer.send("http.request", message)
        return reply

    def request(self, method: str, path: str, timeout: float = 10.0, **kwargs: Any) -> Response:
        return self.response(self.send_request(method, path, **kwargs), timeout)

    def get(self, path: str, **kwargs: Any) -> Response:
        return self.request("GET", path, **kwargs)

    def post_form(self, path: str, fields: dict[str, str], csrf_from: str | None = None, **kwargs: Any) -> Response:
        """POST a urlencoded form, with the CSRF token of the page ``csrf_from`` (GET first)."""
        fields = dict(fields)
        if csrf_from is not None:
            page = self.get(csrf_from)
            match = _CSRF_INPUT.search(page.text)
            assert match, f"no CSRF token in {csrf_from}: {page.text[:300]}"
            fields["csrfmiddlewaretoken"] = match.group(1)
        return self.request("POST", path, body=urlencode(fields).encode(),
                            content_type="application/x-www-form-urlencoded", **kwargs)

    ### WebSocket ###

    def ws_message(self, reply_channel: str, path: str, order: int, **extra: Any) -> dict:
        headers = [[b"host", self.host.encode()]]
        if self.cookies:
            headers.append([b"cookie", "; ".join(f"{k}={v}" for k, v in self.cookies.items()).encode()])
        return {
            "reply_channel": reply_channel, "path": path, "query_string": b"", "headers": headers,
            "client": ["127.0.0.1", 50001], "server": ["127.0.0.1", 8000], "order": order, **extra,
        }

    def ws_connect(self, path: str) -> str:
        reply = self.reply_channel()
        self.layer.send("websocket.connect", self.ws_message(reply, path, 0, subprotocols=[]))
        return reply

    def ws_send(self, reply: str, path: str, order: int, text: str) -> None:
        self.layer.send("websocket.receive", self.ws_message(reply, path, order, text=text))

    def ws_disconnect(self, reply: str, path: str, order: int, code: int = 1000) -> None:
        self.layer.send("websocket.disconnect", self.ws_message(reply, path, order, code=code))


def run_all(worker: Any, layer: BaseChannelLayer) -> None:
    """Run every waiting message's consumer in this thread (``Worker.run_consumer``) until none is left."""
    while True:
        channel, content = layer.receive(worker.channels)
        if channel is None:
            return
        worker.run_consumer(channel, content)


def ws(reply: str, order: int, path: str = "/", **extra: Any) -> dict:
    """A minimal websocket.* message for in-process consumer tests."""
    return {"reply_channel": reply, "path": path, "order": order, **extra}


def multipart(field: str, filename: str, data: bytes, boundary: str = "paasBoundary7MA4YWxkTrZu0gW") -> tuple[bytes, str]:
    """A multipart/form-data body with one file; returns (body, content type)."""
    body = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


class ExampleStack:
    """A private Redis, a migrated SQLite database and the example project's settings
    for real ``paas-channels run worker`` processes; ``close()`` stops everything."""

    def __init__(self) -> None:
        import subprocess
        import sys
        import tempfile

        from tests.support import ROOT, RedisServer

        self.redis = RedisServer().start()
        self.dir = tempfile.mkdtemp(prefix="paas-worker-test-")
        self.env = {
            "REDIS_URL": self.redis.url,
            "DATABASE_URL": f"sqlite:///{self.dir}/db.sqlite3",
            "DJANGO_SETTINGS_MODULE": "example_project.settings",
            "SECRET_KEY": "worker-tests-secret",
            "PAAS_CHANNELS_LOG_LEVEL": "info",
        }
        self.processes: list = []
        import os

        result = subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput", "-v0"],
            cwd=ROOT, env={**os.environ, **self.env}, capture_output=True, text=True, timeout=90,
        )
        if result.returncode != 0:
            self.close()
            raise RuntimeError(f"migrate failed: {result.stderr[-2000:]}")
        from paas_channels.layers import RedisChannelLayer

        self.layer = RedisChannelLayer(hosts=[self.redis.url])
        self.layer.use_keys([self.env["SECRET_KEY"]])  # what the workers sign with

    def worker(self, *args: str, env: dict[str, str] | None = None, wait: bool = True):
        """Start ``paas-channels run worker <args>``; wait until it consumes."""
        from tests.support import ServerProcess

        process = ServerProcess(["run", "worker", *args], env={**self.env, **(env or {})}).start()
        self.processes.append(process)
        if wait:
            process.wait_for_output(" consuming ", timeout=30)
        return process

    def client(self) -> LayerClient:
        return LayerClient(self.layer)

    def logs(self, tail: int = 3000) -> str:
        """The end of every worker's output, for assertion messages."""
        return "\n".join(f"--- {process.args}:\n{process.output()[-tail:]}" for process in self.processes)

    def close(self) -> None:
        import shutil

        for process in self.processes:
            process.close()
        if hasattr(self, "layer"):
            self.layer.close()
        self.redis.close()
        shutil.rmtree(self.dir, ignore_errors=True)
