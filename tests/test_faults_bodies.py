"""Request bodies against a real web process: memory bounded whatever the size or content type,
and a body over ``--max-body-size`` refused 413 before any worker sees the request."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest

from paas_channels.testing import rss_kib
from tests.fault_support import figure, stack_fixture

pytestmark = pytest.mark.redis

MB = 1024 * 1024
UPLOAD = 100 * MB
PIECE = b"x" * (64 * 1024)


stack = stack_fixture("module", worker=("--threads", "2"), web=("--http-timeout", "60", "--max-body-size", "150MB"))


def _raw(size):
    for _ in range(size // len(PIECE)):
        yield PIECE


def _multipart(size, boundary=b"paasfaultboundary"):
    yield b"--" + boundary + b'\r\ncontent-disposition: form-data; name="file"; filename="big.bin"\r\n'
    yield b"content-type: application/octet-stream\r\n\r\n"
    yield from _raw(size)
    yield b"\r\n--" + boundary + b"--\r\n"


class _PeakRss:
    """The highest RSS of a process while the block runs, sampled every 20 ms."""

    def __init__(self, pid):
        self.pid, self.peak, self._stop = pid, 0, threading.Event()

    def __enter__(self):
        self.before = rss_kib(self.pid)
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_kib(self.pid))

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_kib(self.pid))

    @property
    def growth_mb(self):
        return (self.peak - self.before) / 1024


@pytest.mark.parametrize("kind", ["raw", "multipart"])
def test_a_100_mb_upload_costs_the_web_process_little_memory(stack, kind):
    web = next(p for p in stack.processes if p.args[:2] == ["run", "web"])
    # Warm up: the first request allocates what every request shares.
    assert httpx.post(f"{stack.url}/upload/", content=b"x" * (2 * MB), timeout=60).status_code == 200
    if kind == "raw":
        body, headers = _raw(UPLOAD), {"content-type": "application/octet-stream", "content-length": str(UPLOAD)}
    else:
        total = sum(len(part) for part in _multipart(0)) + UPLOAD
        body = _multipart(UPLOAD)
        headers = {"content-type": "multipart/form-data; boundary=paasfaultboundary", "content-length": str(total)}
    with _PeakRss(web.process.pid) as rss:
        started = time.monotonic()
        response = httpx.post(f"{stack.url}/upload/", content=body, headers=headers, timeout=120)
        seconds = time.monotonic() - started
    assert response.status_code == 200, response.text
    assert int(response.text.split()[0]) >= UPLOAD
    figure(f"100 MB {kind} upload", f"web RSS +{rss.growth_mb:.1f} MB at peak, {seconds:.1f} s")
    assert rss.growth_mb < 20, f"web RSS grew {rss.growth_mb:.0f} MB for a 100 MB {kind} upload"


def _http(port, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except (ConnectionResetError, socket.timeout):
            pass
    return data


def test_a_body_over_max_body_size_gets_413_before_any_worker_sees_it(stack):
    layer = stack.layer()
    before = layer.channel_statistics("http.request")["messages_count"]
    # Declared too large: refused on the headers alone, the body never sent.
    head = (b"POST /upload/ HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/octet-stream\r\n"
            b"content-length: %d\r\n\r\n" % (151 * MB))
    answer = _http(stack.port, head)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert b"--max-body-size" in answer
    # Chunked, no length: refused once the chunks add up to more than the limit.
    chunked = httpx.post(f"{stack.url}/upload/", content=_raw(160 * MB), timeout=60,
                         headers={"content-type": "application/octet-stream"})
    assert chunked.status_code == 413
    assert layer.channel_statistics("http.request")["messages_count"] == before
    layer.close()
