"""The interface server on its own: what it answers without any worker.

A real ``paas-channels run web`` (Daphne) on a free port and a private Redis,
the example project with collected static files, and no worker at all: static files and the health
endpoint still answer, requests get an honest 503 after ``--http-timeout``,
a WebSocket from a foreign Origin is refused before anything reaches a worker.
"""

from __future__ import annotations

import gzip
import time

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.interface_support import project_dir, project_env, scrubbed_environ, start_web, static_files
from tests.support import RedisServer, ServerProcess, free_port

HTTP_TIMEOUT = 2

pytestmark = pytest.mark.redis  # every test here runs on a private Redis


@pytest.fixture(scope="module")
def web():
    """``run web`` in split mode (Redis layer) with no worker anywhere."""
    redis = RedisServer().start()
    try:
        process, port = start_web(project_env(redis_url=redis.url), "--http-timeout", str(HTTP_TIMEOUT))
        try:
            yield process, f"http://127.0.0.1:{port}"
        finally:
            process.close()
    finally:
        redis.close()


def test_hashed_static_file_is_served_immutable_and_compressed(web):
    _, url = web
    hashed = static_files()["paas_demo/app.css"]
    original = (project_dir() / "static" / "paas_demo" / "app.css").read_bytes()
    with httpx.Client(base_url=url, timeout=10) as client:
        plain = client.get(f"/static/{hashed}", headers={"Accept-Encoding": "identity"})
        assert plain.status_code == 200
        assert plain.content == original
        assert plain.headers["content-type"].startswith("text/css")
        assert "immutable" in plain.headers["cache-control"]
        assert "max-age=315360000" in plain.headers["cache-control"]

        compressed = client.get(f"/static/{hashed}", headers={"Accept-Encoding": "gzip"})
        assert compressed.headers["content-encoding"] == "gzip"
        assert compressed.headers["vary"] == "Accept-Encoding"
        assert compressed.content == original  # httpx decoded the gzip variant
        assert int(compressed.headers["content-length"]) < len(original)

        again = client.get(f"/static/{hashed}", headers={"If-None-Match": plain.headers["etag"]})
        assert again.status_code == 304


def test_unhashed_static_name_gets_short_caching(web):
    _, url = web
    response = httpx.get(f"{url}/static/paas_demo/app.js", timeout=10)
    assert response.status_code == 200
    assert b"1012" in response.content
    assert response.headers["cache-control"] == "max-age=60, public"


def test_static_file_is_not_gzip_decoded_twice(web):
    _, url = web
    hashed = static_files()["paas_demo/app.js"]
    with httpx.Client(base_url=url, timeout=10) as client:
        with client.stream("GET", f"/static/{hashed}", headers={"Accept-Encoding": "gzip"}) as response:
            raw = b"".join(response.iter_raw())
    assert gzip.decompress(raw) == (project_dir() / "static" / "paas_demo" / "app.js").read_bytes()


def test_health_endpoint_reports_layer_and_workers(web):
    _, url = web
    response = httpx.get(f"{url}/.paas-channels/health", timeout=10)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["layer"] == "reachable"
    assert body["workers"] == 0
    assert response.headers["cache-control"] == "no-store"


def test_request_with_no_worker_gets_503_after_http_timeout(web):
    _, url = web
    started = time.monotonic()
    response = httpx.get(f"{url}/", timeout=30)
    elapsed = time.monotonic() - started
    assert response.status_code == 503
    assert "no worker answered" in response.text
    assert HTTP_TIMEOUT - 0.1 <= elapsed < HTTP_TIMEOUT + 5


def test_websocket_from_foreign_origin_is_refused_at_once(web):
    _, url = web
    started = time.monotonic()
    with pytest.raises(InvalidStatus) as refused:
        connect(url.replace("http", "ws") + "/echo/", origin="https://evil.example.com", open_timeout=10)
    assert refused.value.response.status_code == 403
    # Refused by the interface itself, not after waiting for a worker's answer.
    assert time.monotonic() - started < HTTP_TIMEOUT / 2


def test_websocket_with_no_worker_is_refused_after_http_timeout(web):
    _, url = web
    started = time.monotonic()
    with pytest.raises(InvalidStatus) as refused:
        connect(url.replace("http", "ws") + "/echo/", origin="http://localhost", open_timeout=20)
    assert refused.value.response.status_code == 403
    assert time.monotonic() - started >= HTTP_TIMEOUT - 0.1


def test_warns_when_no_worker_heartbeat_is_seen(web):
    process, _ = web
    process.wait_for_output("no worker heartbeat", timeout=20)
    assert "paas-channels run worker" in process.output()


def test_boot_error_when_port_is_taken(web):
    _, url = web
    port = url.rsplit(":", 1)[1]
    process = ServerProcess(["run", "web", "--bind", "127.0.0.1", "--port", port],
                            env={**scrubbed_environ(), **project_env()})
    try:
        process.start()
        assert process.wait(30) == 3
        last = process.output().strip().splitlines()[-1]
        assert last.startswith("paas-channels: cannot listen on") and "--port" in last
    finally:
        process.close()


def test_boot_error_when_the_layer_is_unreachable():
    url = f"redis://:hunter2-secret@127.0.0.1:{free_port()}/0"  # nothing listens there
    process = ServerProcess(["run", "web", "--bind", "127.0.0.1", "--port", str(free_port())],
                            env={**scrubbed_environ(), **project_env(redis_url=url)})
    try:
        process.start()
        assert process.wait(30) == 3
        output = process.output()
        last = output.strip().splitlines()[-1]
        assert last.startswith("paas-channels: the channel layer") and "unreachable" in last and "Redis" in last
        assert "hunter2-secret" not in output
    finally:
        process.close()


def test_layer_outage_is_503_and_recovers_without_a_restart():
    redis = RedisServer().start()
    process = None
    try:
        process, port = start_web(project_env(redis_url=redis.url), "--http-timeout", str(HTTP_TIMEOUT))
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{url}/.paas-channels/health", timeout=10).status_code == 200
        redis.stop()
        health = httpx.get(f"{url}/.paas-channels/health", timeout=10)
        assert health.status_code == 503
        assert health.json()["status"] == "error" and health.json()["layer"].startswith("unreachable")
        started = time.monotonic()
        page = httpx.get(f"{url}/", timeout=30)
        assert page.status_code == 503 and "channel layer" in page.text
        assert time.monotonic() - started < HTTP_TIMEOUT  # told at once, not after the timeout
        static = httpx.get(f"{url}/static/{static_files()['paas_demo/app.css']}", timeout=10)
        assert static.status_code == 200  # static files never needed the layer
        redis.start()  # same port: the process reconnects by itself
        deadline = time.monotonic() + 15
        while httpx.get(f"{url}/.paas-channels/health", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, "health did not recover after Redis came back"
            time.sleep(0.2)
        again = httpx.get(f"{url}/", timeout=30)
        assert again.status_code == 503 and "no worker answered" in again.text  # the layer path works again
        assert process.output().count("receiving on the inbox") <= 3  # logged once per outage, not per retry
    finally:
        if process is not None:
            process.close()
        redis.close()
