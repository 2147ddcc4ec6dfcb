"""``paas-channels run`` on a brand-new Django project without CHANNEL_LAYERS: plain WSGI on gevent."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import threading
import time

import httpx
import pytest

from .support import ServerProcess, close_all, free_port, wait_for_port

VIEWS = '''
import logging
import time

from django.http import HttpResponse

logger = logging.getLogger("fresh.views")
_arrived = []


def barrier(request):
    """Answers 'met' only if a second request arrives while this one waits: proves concurrency."""
    _arrived.append(1)
    deadline = time.monotonic() + 10
    while len(_arrived) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    return HttpResponse("met" if len(_arrived) >= 2 else "alone")


def slow(request):
    logger.warning("slow view started")
    time.sleep(2)
    return HttpResponse("slow done")


def scheme(request):
    return HttpResponse(f"{request.scheme} {request.META['REMOTE_ADDR']} {request.get_full_path()}")
'''

URLS = '''
from django.contrib import admin
from django.urls import path

from . import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("barrier/", views.barrier),
    path("slow/", views.slow),
    path("scheme/", views.scheme),
]
'''


@pytest.fixture(scope="module")
def fresh_project(tmp_path_factory):
    """``django-admin startproject fresh`` plus three views; no CHANNEL_LAYERS anywhere."""
    root = tmp_path_factory.mktemp("fresh")
    subprocess.run([sys.executable, "-m", "django", "startproject", "fresh", str(root)], check=True, timeout=60)
    (root / "fresh" / "views.py").write_text(textwrap.dedent(VIEWS))
    (root / "fresh" / "urls.py").write_text(textwrap.dedent(URLS))
    assert "CHANNEL_LAYERS" not in (root / "fresh" / "settings.py").read_text()
    return root


@pytest.fixture
def serve(fresh_project):
    started = []

    def start(*args, env=None):
        port = free_port()
        # No DJANGO_SETTINGS_MODULE: the settings must be found from ./manage.py.
        proc = ServerProcess(["run", *args, "--port", str(port)], env={"DJANGO_SETTINGS_MODULE": "", **(env or {})},
                             cwd=fresh_project).start()
        started.append(proc)
        wait_for_port(port, process=proc.process)
        return proc, f"http://127.0.0.1:{port}"

    yield start
    close_all(started)


def test_no_mode_serves_a_fresh_project_as_wsgi_with_static_files(serve):
    proc, url = serve()
    assert "no mode given: running wsgi (settings define no CHANNEL_LAYERS)" in proc.output()
    assert "settings fresh.settings:" in proc.output() and "layer=none" in proc.output()
    login = httpx.get(f"{url}/admin/login/", timeout=10)
    assert login.status_code == 200 and "csrfmiddlewaretoken" in login.text
    css = httpx.get(f"{url}/static/admin/css/base.css", timeout=10)
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert httpx.get(f"{url}/static/admin/css/no-such-file.css", timeout=10).status_code == 404


def test_requests_run_concurrently_on_gevent(serve):
    _, url = serve("wsgi")
    results = []

    def get():
        results.append(httpx.get(f"{url}/barrier/", timeout=20).text)

    threads = [threading.Thread(target=get) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results == ["met", "met"]


def test_proxy_headers_and_root_path(serve):
    _, url = serve("wsgi", "--proxy-headers", "--root-path", "/app")
    response = httpx.get(f"{url}/scheme/", timeout=10,
                         headers={"X-Forwarded-For": "198.51.100.7, 203.0.113.9", "X-Forwarded-Proto": "https"})
    assert response.text == "https 203.0.113.9 /app/scheme/"


def test_sigterm_finishes_the_request_in_flight_and_closes_idle_connections(serve):
    proc, url = serve("wsgi", "--graceful-timeout", "30")
    with httpx.Client(timeout=20) as idle_client:
        # A keep-alive connection left idle must not hold the shutdown open.
        assert idle_client.get(f"{url}/admin/login/").status_code == 200
        in_flight = []
        request = threading.Thread(target=lambda: in_flight.append(httpx.get(f"{url}/slow/", timeout=20)))
        request.start()
        proc.wait_for_output("slow view started")
        signalled = time.monotonic()
        proc.signal()
        request.join(20)
        assert in_flight and in_flight[0].status_code == 200 and in_flight[0].text == "slow done"
        assert proc.wait(timeout=20) == 0
        # Well under the 30 s graceful timeout: the idle connection was closed, not waited for.
        assert time.monotonic() - signalled < 15
    output = proc.output()
    assert "shutting down" in output and "1 request(s) in flight" in output
    assert "cancelled" not in output


def test_sigterm_cancels_what_outlives_the_graceful_timeout(serve):
    proc, url = serve("wsgi", "--graceful-timeout", "0.5")
    errors = []

    def get():
        try:
            errors.append(httpx.get(f"{url}/slow/", timeout=20))
        except httpx.HTTPError as exc:
            errors.append(exc)

    request = threading.Thread(target=get)
    request.start()
    proc.wait_for_output("slow view started")
    proc.signal()
    assert proc.wait(timeout=20) == 0
    request.join(20)
    assert "cancelled 1 request(s) still running" in proc.output()
    # Cancelled: gevent answers 500 (or the connection ends), never the view's response.
    assert len(errors) == 1
    assert isinstance(errors[0], httpx.HTTPError) or errors[0].status_code == 500


def test_port_in_use_is_a_boot_error(fresh_project):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = ServerProcess(["run", "wsgi", "--bind", "127.0.0.1", "--port", str(port)],
                             env={"DJANGO_SETTINGS_MODULE": ""}, cwd=fresh_project).start()
        try:
            assert proc.wait(timeout=30) == 3
            assert f"cannot listen on 127.0.0.1:{port}" in proc.output()
        finally:
            proc.close()
