"""From ``django-admin startproject`` to a deployable app with ``paas-channels init`` alone.

A fresh startproject project gets ``init``, ``migrate``, then runs as
``run --combined`` and in split mode under honcho (its own Procfile, a private
Redis), and answers a view and a WebSocket group message in both.  With the
environment a platform gives, ``check --deploy`` on it and on the example
project finds nothing.  A ``.env`` with bogus values sits in the project the
whole time: honcho (tests.support.Honcho) must not read it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect

from .support import ROOT, Honcho, RedisServer, Started, free_port, platform_environment, wait_for_port
from .test_app_json import schema_problems

SECRET_KEY = "init-test-" + "s" * 50
#: What a developer's local recipe might have left behind: every value here would break the run.
BOGUS_DOTENV = (
    "REDIS_URL=redis://127.0.0.1:1/0\n"
    "DATABASE_URL=postgres://nobody@127.0.0.1:1/nothing\n"
    "DJANGO_SETTINGS_MODULE=nowhere.settings\n"
    "PAAS_CHANNELS_HTTP_TIMEOUT=nonsense\n"
)


def _run(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """startproject + init + migrate, as README's "Add to your project" says."""
    root = tmp_path_factory.mktemp("adopt")
    env = platform_environment()
    made = _run([sys.executable, "-m", "django", "startproject", "mysite", "."], root, env)
    assert made.returncode == 0, made.stderr
    (root / ".env").write_text(BOGUS_DOTENV)
    init = _run([sys.executable, "-m", "paas_channels.cli", "init"], root, env)
    assert init.returncode == 0, init.stdout + init.stderr
    for path in ("Procfile", "app.json", ".python-version", "runtime.txt", "mysite/routing.py"):
        assert f"created   {path}\n" in init.stdout
    assert "appended  mysite/settings.py\n" in init.stdout
    assert "    + configure(globals(), routing=\"mysite.routing.channel_routing\")" in init.stdout
    assert init.stdout.rstrip().endswith("paas-channels check: no problems")
    migrate = _run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], root, env)
    assert migrate.returncode == 0, migrate.stderr
    return root


def _view_and_group_message(url: str) -> None:
    login = httpx.get(f"{url}/admin/login/", timeout=20)
    assert login.status_code == 200 and "Django" in login.text
    ws_url = url.replace("http://", "ws://") + "/ws/"
    with connect(ws_url, open_timeout=20) as one, connect(ws_url, open_timeout=20) as two:
        one.send("hello, everyone")
        assert two.recv(timeout=20) == "hello, everyone"
        assert one.recv(timeout=20) == "hello, everyone"


def test_init_keeps_what_exists_and_force_replaces_files_not_settings(project):
    env = platform_environment()
    procfile = (project / "Procfile").read_text()
    (project / "Procfile").write_text("web: my-own-server\n")
    again = _run([sys.executable, "-m", "paas_channels.cli", "init"], project, env)
    assert "kept      Procfile (exists; --force overwrites it)" in again.stdout
    assert "kept      mysite/settings.py (already calls configure(globals(), ...))" in again.stdout
    assert (project / "Procfile").read_text() == "web: my-own-server\n"
    forced = _run([sys.executable, "-m", "paas_channels.cli", "init", "--force"], project, env)
    assert "replaced  Procfile" in forced.stdout and forced.returncode == 0, forced.stdout + forced.stderr
    assert (project / "Procfile").read_text() == procfile
    assert (project / "mysite/settings.py").read_text().count("configure(globals()") == 1


def test_init_outside_a_django_project_says_where_to_run_it(tmp_path):
    result = _run([sys.executable, "-m", "paas_channels.cli", "init"], tmp_path, platform_environment())
    assert result.returncode == 3 and "manage.py" in result.stderr and "Traceback" not in result.stderr


def test_combined_mode_answers_a_view_and_a_group_message(project):
    port = free_port()
    process = Started([sys.executable, "-m", "paas_channels.cli", "run", "--combined"],
                      platform_environment(PORT=str(port)), cwd=project)
    try:
        wait_for_port(port, timeout=30, process=process.process)
        process.wait_for_output(" consuming ", timeout=30)
        _view_and_group_message(f"http://127.0.0.1:{port}")
    finally:
        assert process.stop() == 0, process.output()[-3000:]
        process.close()


@pytest.mark.redis
def test_split_mode_under_honcho_ignores_the_projects_dotenv(project):
    assert (project / ".env").read_text() == BOGUS_DOTENV
    redis = RedisServer().start()
    try:
        port = free_port()
        env = platform_environment(PORT=str(port), REDIS_URL=redis.url, SECRET_KEY=SECRET_KEY)
        release = Honcho(["release"], env, cwd=project)
        try:
            assert release.wait(120) == 0, release.output()
        finally:
            release.close()
        web, worker = Honcho(["web"], env, cwd=project), Honcho(["worker"], env, cwd=project)
        try:
            wait_for_port(port, timeout=30, process=web.process)
            worker.wait_for_output(" consuming ", timeout=30)
            _view_and_group_message(f"http://127.0.0.1:{port}")
        finally:
            for process in (web, worker):
                process.close()
    finally:
        redis.close()


@pytest.mark.redis
@pytest.mark.parametrize("where", ["init project", "example project"])
def test_check_deploy_is_silent_with_a_platforms_environment(project, where):
    """DYNO, DATABASE_URL, REDIS_URL, SECRET_KEY set; DEBUG unset: no problem, no note, no warning."""
    directory = project if where == "init project" else ROOT
    redis = RedisServer().start()
    try:
        # DATABASE_SSL_REQUIRE=0: Heroku's Postgres takes TLS only, this machine's has none (check connects to it).
        env = platform_environment(DYNO="web.1", DATABASE_URL="postgres://postgres@127.0.0.1:5432/test",
                                   REDIS_URL=redis.url, SECRET_KEY=SECRET_KEY, DATABASE_SSL_REQUIRE="0")
        result = _run([sys.executable, "-m", "paas_channels.cli", "check", "--deploy"], directory, env)
    finally:
        redis.close()
    assert (result.returncode, result.stderr) == (0, ""), result.stdout + result.stderr
    assert result.stdout == "paas-channels check: no problems (with deployment checks)\n"


def test_the_environment_wins_over_the_startproject_settings(project):
    """startproject hard-codes DEBUG = True, ALLOWED_HOSTS = [] and SQLite: DEBUG=0, ALLOWED_HOSTS and
    DATABASE_URL from the environment are what Django runs with, and the start line says where they came from."""
    script = (
        "import django; django.setup(); from django.conf import settings as s\n"
        "from paas_channels.config.settings import describe_settings\n"
        "print(s.DEBUG, s.ALLOWED_HOSTS, s.DATABASES['default']['ENGINE'], s.DATABASES['default']['NAME'])\n"
        "print(describe_settings(s))\n"
    )
    env = platform_environment(DJANGO_SETTINGS_MODULE="mysite.settings", DEBUG="0", ALLOWED_HOSTS="example.com",
                               DATABASE_URL="postgres://app@db.example:5432/prod")
    result = _run([sys.executable, "-c", script], project, env)
    assert result.returncode == 0, result.stderr
    first, line = result.stdout.splitlines()
    assert first == "False ['example.com'] django.db.backends.postgresql prod"
    assert "DEBUG=False(env DEBUG)" in line and "ALLOWED_HOSTS=example.com(env ALLOWED_HOSTS)" in line
    assert "database=postgresql:db.example(env DATABASE_URL)" in line


def test_a_missing_database_driver_is_one_line_naming_the_extra(project, tmp_path):
    """DATABASE_URL=postgres://... with no psycopg installed (shadowed here): exit 3, one line, the extra named."""
    for module in ("psycopg", "psycopg2"):
        (tmp_path / f"{module}.py").write_text(f"raise ImportError('No module named {module}')\n")
    env = platform_environment(DATABASE_URL="postgres://postgres@127.0.0.1:5432/test", PORT=str(free_port()))
    env["PYTHONPATH"] = f"{tmp_path}{os.pathsep}{env['PYTHONPATH']}"
    result = _run([sys.executable, "-m", "paas_channels.cli", "run", "--combined"], project, env)
    assert result.returncode == 3, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("paas-channels: ")]
    assert len(errors) == 1 and "pip install 'paas-channels[postgres]'" in errors[0], result.stderr[-3000:]
    assert "Traceback" not in result.stderr


def test_check_reports_an_unreachable_database_without_its_password(project):
    env = platform_environment(DATABASE_URL=f"postgres://app:hunter2@127.0.0.1:{free_port()}/nothing")
    result = _run([sys.executable, "-m", "paas_channels.cli", "check"], project, env)
    assert result.returncode == 1, result.stdout + result.stderr
    problems = [line for line in result.stdout.splitlines() if line.startswith("problem: ")]
    assert len(problems) == 1 and problems[0].startswith(
        "problem: database 'default' (postgresql at 127.0.0.1:"), problems
    assert "is unreachable" in problems[0] and "DATABASE_URL" in problems[0]
    assert "hunter2" not in result.stdout + result.stderr


def test_manage_py_runworker_is_known_without_editing_installed_apps(project):
    """startproject's INSTALLED_APPS lacks paas_channels: configure() adds it, so the command exists."""
    installed = (project / "mysite/settings.py").read_text().split("INSTALLED_APPS = [", 1)[1].split("]", 1)[0]
    assert "paas_channels" not in installed
    result = _run([sys.executable, "manage.py", "help", "runworker"], project, platform_environment())
    assert result.returncode == 0 and "--only-channels" in result.stdout, result.stderr


def test_the_written_app_json_follows_herokus_schema(project):
    assert schema_problems(json.loads((project / "app.json").read_text())) == []
