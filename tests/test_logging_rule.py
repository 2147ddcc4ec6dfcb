"""The logging rule: every log line on stderr in LOG_FORMAT (stdout is a command's own output),
and an access line per HTTP request in every serving mode, off with --no-access-log."""

from __future__ import annotations

import calendar
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from .support import ROOT, free_port, platform_environment, stop_process, wait_for_port, write_project

_ACCESS = re.compile(r"INFO paas_channels\.access\[\d+\]: GET /whoami/ 200 (\d+)B \d+\.\dms request_id=rid-(\w+)$",
                     re.MULTILINE)


class _Process:
    """A paas-channels process with stdout and stderr kept apart."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path) -> None:
        self.out = tempfile.TemporaryFile(mode="w+")
        self.err = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen([sys.executable, "-m", "paas_channels.cli", *args], cwd=cwd, env=env,
                                        stdout=self.out, stderr=self.err, start_new_session=True)

    def streams(self) -> tuple[str, str]:
        if self.out.closed:
            return self.final
        texts = []
        for stream in (self.out, self.err):
            stream.seek(0)
            texts.append(stream.read())
        return texts[0], texts[1]

    def wait_for_stderr(self, text: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.process.poll() is None:
            if text in self.streams()[1]:
                return
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not on stderr:\n{self.streams()[1][-3000:]}")

    def close(self) -> int:
        code = stop_process(self.process, 40)
        self.final = self.streams()
        self.out.close()
        self.err.close()
        return code


def _serve(mode_args: list[str], env: dict[str, str], cwd: Path = ROOT) -> tuple[_Process, str]:
    port = free_port()
    process = _Process(["run", *mode_args, "--bind", "127.0.0.1", "--port", str(port)], env, cwd)
    wait_for_port(port, timeout=30, process=process.process)
    return process, f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("mode", [["--combined"], ["wsgi"]])
def test_one_access_line_per_request_on_stderr_and_none_with_no_access_log(mode, tmp_path):
    env = platform_environment(SECRET_KEY="k" * 50, DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}")
    process, url = _serve(mode, env)
    try:
        for number in range(3):
            response = httpx.get(f"{url}/whoami/", headers={"X-Request-ID": f"rid-{number}"}, timeout=20)
            assert response.status_code == 200
        process.wait_for_stderr("request_id=rid-2")
    finally:
        assert process.close() == 0
    out, err = process.streams()
    lines = _ACCESS.findall(err)
    assert [rid for _, rid in lines] == ["0", "1", "2"], err[-3000:]  # once each, in order
    assert {int(size) for size, _ in lines} == {len(response.content)}
    assert "paas_channels.access" not in out and out == ""

    quiet, url = _serve([*mode, "--no-access-log"], env)
    try:
        assert httpx.get(f"{url}/whoami/", timeout=20).status_code == 200
    finally:
        assert quiet.close() == 0
    assert "paas_channels.access" not in "".join(quiet.streams())


def test_a_consumers_traceback_goes_to_stderr_in_the_log_format(tmp_path):
    """The seed: the worker 'will absorb tracebacks from inside consumers and forward them to stderr'."""
    write_project(tmp_path, "tbproj", settings="""
        from pathlib import Path
        from paas_channels.conf import configure
        BASE_DIR = Path(__file__).resolve().parent.parent
        INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth"]
        ROOT_URLCONF = "tbproj.urls"
        configure(globals(), routing="tbproj.routing.channel_routing")
    """, routing="""
        from paas_channels.routing import route

        def explode(message):
            raise RuntimeError("consumer exploded on purpose")

        channel_routing = [route("http.request", explode)]
    """)
    env = platform_environment(SECRET_KEY="k" * 50, PYTHONPATH=f"{tmp_path}:{ROOT}",
                               DJANGO_SETTINGS_MODULE="tbproj.settings")
    process, url = _serve(["--combined", "--http-timeout", "1"], env, cwd=tmp_path)
    try:
        assert httpx.get(f"{url}/anything/", timeout=20).status_code == 503
        process.wait_for_stderr("RuntimeError: consumer exploded on purpose")
    finally:
        process.close()
    out, err = process.streams()
    assert out == "", out[-2000:]
    first = next(line for line in err.splitlines() if "tbproj.routing" in line or "Traceback" in line)
    header = err.splitlines()[err.splitlines().index(first) - 1]
    assert re.match(r"^\d{4}-\d\d-\d\d [\d:,]+ ERROR paas_channels\.\S+\[\d+\]: ", header), err[-3000:]


@pytest.mark.parametrize("mode", ["worker", "web", "--combined"])
def test_an_unreachable_layer_at_boot_is_said_once_and_promises_no_reconnect(mode):
    env = platform_environment(SECRET_KEY="k" * 50, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    result = subprocess.run([sys.executable, "-m", "paas_channels.cli", "run", mode, "--port", str(free_port())],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 3, result.stderr[-3000:]
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("paas-channels: ") and "is unreachable: cannot reach Redis at redis://127.0.0.1:" in line
    assert line.count("Check") == 1 and "reconnect" not in line and ".." not in line, line


def test_every_process_of_a_dyno_logs_in_utc_whatever_tz_and_time_zone_say(tmp_path):
    """The supervisor never loads the settings (their TIME_ZONE); its children do: one clock for both."""
    write_project(tmp_path, "tzproj", settings="""
        from pathlib import Path
        from paas_channels.conf import configure
        BASE_DIR = Path(__file__).resolve().parent.parent
        INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth"]
        ROOT_URLCONF = "tzproj.urls"
        configure(globals())
        TIME_ZONE = "Asia/Kolkata"
    """, routing="channel_routing = []\n")
    env = platform_environment(SECRET_KEY="k" * 50, PYTHONPATH=f"{tmp_path}:{ROOT}", TZ="America/Chicago",
                               DJANGO_SETTINGS_MODULE="tzproj.settings", WEB_CONCURRENCY="2")
    process, _ = _serve(["wsgi"], env, cwd=tmp_path)
    try:
        process.wait_for_stderr("is serving")
    finally:
        process.close()
    stamps = re.findall(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d+ \w+ (paas_channels\.[\w.]+)\[", process.streams()[1],
                        re.MULTILINE)
    assert {"paas_channels.runtime.supervisor", "paas_channels.runtime.wsgi"} <= {name for _, name in stamps}, stamps
    now = time.time()
    for stamp, name in stamps:  # Chicago is 5-6 hours off UTC, Kolkata 5.5: none passes for UTC
        logged = calendar.timegm(time.strptime(stamp, "%Y-%m-%d %H:%M:%S"))
        assert abs(logged - now) < 600, (stamp, name, time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(now)))
