"""``paas-channels check``: one line per problem, non-zero exit, on real projects in temp directories."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from .support import ROOT, RedisServer, free_port, write_project

SETTINGS = '''
from pathlib import Path
from paas_channels.conf import configure
BASE_DIR = Path(__file__).resolve().parent.parent
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "django.contrib.staticfiles", "paas_channels"]
ROOT_URLCONF = "chkproj.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
configure(globals(), routing="chkproj.routing.channel_routing")
'''

ROUTING = '''
from paas_channels.handler import view_consumer
from paas_channels.consumers import ignore_message
from paas_channels.routing import route

def thumbnail(message):
    pass

channel_routing = [
    route("http.request", view_consumer),
    route("websocket.connect", ignore_message),
    route("websocket.receive", ignore_message),
    route("thumbnail", thumbnail),
]
'''

GOOD_PROCFILE = "web: paas-channels run web\nworker: paas-channels run worker\nrelease: python manage.py migrate\n"
GOOD_APP = {
    "env": {"SECRET_KEY": {"generator": "secret"}},
    "addons": ["heroku-redis:mini"],
    "formation": {"web": {"quantity": 1}, "worker": {"quantity": 1}},
}


@pytest.fixture
def project(tmp_path):
    """A small project: settings via configure(), a routing, and good deployment files."""
    write_project(tmp_path, "chkproj", SETTINGS, ROUTING)
    (tmp_path / "manage.py").write_text(
        "import os\nos.environ.setdefault('DJANGO_SETTINGS_MODULE', 'chkproj.settings')\n"
    )
    (tmp_path / "Procfile").write_text(GOOD_PROCFILE)
    (tmp_path / "app.json").write_text(json.dumps(GOOD_APP))
    (tmp_path / "runtime.txt").write_text("python-3.11.7\n")
    (tmp_path / ".python-version").write_text("3.11\n")
    return tmp_path


def check(directory, *args, **env):
    base = {key: value for key, value in os.environ.items()
            if key not in {"DJANGO_SETTINGS_MODULE", "REDIS_URL", "REDIS_TLS_URL", "SECRET_KEY", "DEBUG", "DYNO"}}
    base["PYTHONPATH"] = str(ROOT)
    base.update({"SECRET_KEY": "s" * 60, **env})
    result = subprocess.run([sys.executable, "-m", "paas_channels.cli", "check", *args], cwd=directory,
                            capture_output=True, text=True, timeout=60, env={k: v for k, v in base.items() if v is not None})
    problems = [line for line in result.stdout.splitlines() if line.startswith("problem: ")]
    return result, problems


def test_a_consistent_project_passes(project):
    result, problems = check(project)
    assert (result.returncode, problems) == (0, []), result.stdout + result.stderr
    assert "no problems" in result.stdout


def test_the_repository_example_project_passes():
    """The repo's own Procfile, app.json, runtime.txt and .python-version agree with example_project."""
    result, problems = check(ROOT)
    assert (result.returncode, problems) == (0, []), result.stdout + result.stderr


def test_broken_procfile(project):
    (project / "Procfile").write_text(
        "web paas-channels run web\n"                    # no colon
        "worker: paas-channels run wrker\n"              # no such mode
        "worker2: paas-channels run worker --treads 4\n"  # no such option
        "clock: paas-channels run worker --threads 0\n"  # bad value
        "clock: python clock.py\n"                       # defined twice
    )
    result, problems = check(project)
    assert result.returncode == 1
    text = "\n".join(problems)
    assert "Procfile line 1: 'web paas-channels run web' is not 'name: command'" in text
    assert "Procfile line 2 (worker)" in text and "invalid choice: 'wrker'" in text
    assert "Procfile line 3 (worker2)" in text and "unrecognized arguments: --treads 4" in text
    assert "Procfile line 4 (clock)" in text and "--threads: expected a positive integer" in text
    assert "Procfile line 5: process type 'clock' is defined twice" in text
    assert "Procfile has no 'web' process type" in text
    assert "app.json formation names process type 'web', which the Procfile does not define" in text
    assert len(problems) == len(set(problems)) >= 7


def test_split_mode_without_a_shared_layer_or_without_workers(project):
    (project / "app.json").write_text(json.dumps({**GOOD_APP, "addons": []}))
    result, problems = check(project)
    assert result.returncode == 1
    assert any("InMemoryChannelLayer, which processes cannot share" in line and "heroku-redis" in line
               for line in problems), problems
    (project / "Procfile").write_text("web: paas-channels run web\n")
    (project / "app.json").write_text(json.dumps({**GOOD_APP, "formation": {"web": {}}}))
    _, problems = check(project)
    assert any("no 'run worker' process: nothing would answer the requests" in line for line in problems), problems


def test_routed_channel_no_process_consumes(project):
    (project / "Procfile").write_text(
        "web: paas-channels run web\n"
        "worker: paas-channels run worker --only-channels 'http.*' --only-channels 'websocket.*'\n"
    )
    result, problems = check(project)
    assert result.returncode == 1
    assert problems == [
        "problem: routed channel(s) thumbnail consumed by no Procfile process type: their messages expire unread; "
        "drop the --only-channels/--exclude-channels that leave them out, or add a worker process type for them"
    ]
    (project / "Procfile").write_text(GOOD_PROCFILE + "slow: paas-channels run worker --only-channels thumbnails\n")
    _, problems = check(project)
    assert any("channel glob 'thumbnails' matches no routed channel" in line for line in problems), problems


def test_python_versions_must_agree(project):
    (project / ".python-version").write_text("3.12\n")
    (project / "runtime.txt").write_text("3.11\n")
    _, problems = check(project)
    assert any("runtime.txt: '3.11' is not a Python version; write e.g. 'python-3.11.7'" in line for line in problems)
    (project / "runtime.txt").write_text("python-3.11.9\n")
    _, problems = check(project)
    assert any("Python versions disagree (runtime.txt says 3.11, .python-version says 3.12)" in line
               for line in problems), problems


def test_missing_secret_key(project):
    result, problems = check(project, SECRET_KEY=None)
    assert result.returncode == 1
    assert len(problems) == 1 and problems[0].startswith("problem: settings: SECRET_KEY is not set")
    (project / "app.json").write_text(json.dumps({**GOOD_APP, "env": {}}))
    _, problems = check(project)
    assert any("app.json: env has no SECRET_KEY" in line for line in problems), problems


@pytest.mark.redis
def test_unreachable_redis_then_reachable(project):
    port = free_port()  # nothing listens here
    result, problems = check(project, REDIS_URL=f"redis://:hunter2@127.0.0.1:{port}/0")
    assert result.returncode == 1
    assert len(problems) == 1, problems
    assert f"channel layer 'default' (RedisChannelLayer at redis://:***@127.0.0.1:{port}/0) is unreachable" \
        in problems[0]
    assert "hunter2" not in result.stdout + result.stderr

    server = RedisServer().start()
    try:
        result, problems = check(project, REDIS_URL=server.url)
        assert (result.returncode, problems) == (0, []), result.stdout + result.stderr
    finally:
        server.close()


def test_routing_that_does_not_import(project):
    (project / "chkproj" / "routing.py").write_text("from paas_channels.routing import route\n"
                                                    "channel_routing = [route('http.request', 'chkproj.nope.view')]\n")
    _, problems = check(project)
    assert len(problems) == 1 and problems[0].startswith("problem: routing: ") and "chkproj.nope.view" in problems[0]
    (project / "chkproj" / "routing.py").write_text(textwrap.dedent('''
        from paas_channels.consumers import ignore_message
        from paas_channels.routing import route
        channel_routing = [route("websocket.connect", ignore_message), route("thumbnail", ignore_message)]
    '''))
    _, problems = check(project)
    assert any("no route for 'http.request'" in line for line in problems), problems
    assert any("no route for 'websocket.receive'" in line for line in problems), problems


def test_deploy_adds_django_deployment_checks(project):
    result, problems = check(project, "--deploy")
    assert result.returncode == 1
    assert any(line.startswith("problem: django security.W004") for line in problems), problems
    assert all(line.count("\n") == 0 for line in problems)


def test_the_ipc_layer_is_for_one_dyno(project):
    # WEB_CONCURRENCY=2 and no Redis: configure() gives the IPC layer (reach "machine").
    (project / "app.json").write_text(json.dumps({**GOOD_APP, "addons": []}))
    result, problems = check(project, WEB_CONCURRENCY="2")
    assert any("IPCChannelLayer" in problem and "one machine" in problem and "--combined" in problem
               for problem in problems), result.stdout
    (project / "Procfile").write_text("web: paas-channels run --combined\nrelease: python manage.py migrate\n")
    (project / "app.json").write_text(json.dumps({**GOOD_APP, "addons": [], "formation": {"web": {"quantity": 1}}}))
    result, problems = check(project, WEB_CONCURRENCY="2")
    assert not [problem for problem in problems if "IPCChannelLayer" in problem], result.stdout
