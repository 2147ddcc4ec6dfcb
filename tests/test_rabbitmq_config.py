"""RabbitMQ from the environment: settings (CLOUDAMQP_URL, RABBITMQ_URL), ``check`` and ``status``.

``check`` and ``status`` run as real processes on a vhost of their own on the
shared broker (made and deleted with ``rabbitmqctl``), with a real worker.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest

from paas_channels.conf import settings_from_env
from paas_channels.config.settings import describe_settings
from paas_channels.exceptions import ConfigError
from paas_channels.testing import free_port, wait_until
from tests import test_check, test_status

from .support import ROOT, ServerProcess, write_project

BASE = {"SECRET_KEY": "k" * 50}
RABBIT = "paas_channels.layers.RabbitMQChannelLayer"


def test_cloudamqp_url_then_rabbitmq_url(tmp_path):
    cloud = "amqps://user:pw@big-rabbit.cloudamqp.com/vhost"
    layers = settings_from_env({**BASE, "CLOUDAMQP_URL": cloud, "RABBITMQ_URL": "amqp://x/"}, base_dir=tmp_path)
    assert layers["CHANNEL_LAYERS"]["default"] == {"BACKEND": RABBIT, "CONFIG": {"url": cloud}}
    plain = settings_from_env({**BASE, "RABBITMQ_URL": "amqp://guest:guest@h:5672/%2F"}, base_dir=tmp_path)
    assert plain["CHANNEL_LAYERS"]["default"]["CONFIG"] == {"url": "amqp://guest:guest@h:5672/%2F"}
    # REDIS_URL keeps priority: an app with both add-ons stays on the layer it had.
    both = settings_from_env({**BASE, "REDIS_URL": "redis://h:6379/0", "CLOUDAMQP_URL": cloud}, base_dir=tmp_path)
    assert both["CHANNEL_LAYERS"]["default"]["BACKEND"] == "paas_channels.layers.RedisChannelLayer"


def test_bad_rabbitmq_url_says_what_to_do_and_hides_the_password(tmp_path):
    with pytest.raises(ConfigError) as caught:
        settings_from_env({**BASE, "CLOUDAMQP_URL": "http://user:hunter2@h:5672/"}, base_dir=tmp_path)
    message = str(caught.value)
    assert "CLOUDAMQP_URL" in message and "amqps://" in message and "hunter2" not in message


def test_describe_settings_shows_the_broker_masked():
    class settings:
        CHANNEL_LAYERS = {"default": {"BACKEND": RABBIT, "CONFIG": {"url": "amqp://u:hunter2@h:5672/v"}}}

    line = describe_settings(settings)
    assert "layer[default]=RabbitMQChannelLayer(amqp://u:***@h:5672/v)" in line and "hunter2" not in line


@pytest.fixture
def vhost():
    """A vhost of its own on the shared broker, so the default prefix collides with nothing."""
    name = f"paas-test-{uuid.uuid4().hex[:10]}"
    subprocess.run(["rabbitmqctl", "-q", "add_vhost", name], check=True, capture_output=True, timeout=60)
    subprocess.run(["rabbitmqctl", "-q", "set_permissions", "-p", name, "guest", ".*", ".*", ".*"],
                   check=True, capture_output=True, timeout=60)
    yield f"amqp://guest:guest@127.0.0.1:5672/{name}"
    subprocess.run(["rabbitmqctl", "-q", "delete_vhost", name], capture_output=True, timeout=60)


def test_check_with_the_cloudamqp_add_on(tmp_path, vhost):
    project = test_check.project.__wrapped__(tmp_path)
    (project / "app.json").write_text(json.dumps({**test_check.GOOD_APP, "addons": ["cloudamqp:lemur"]}))
    result, problems = test_check.check(project, CLOUDAMQP_URL=vhost)
    assert (result.returncode, problems) == (0, []), result.stdout + result.stderr
    port = free_port()  # nothing listens here
    result, problems = test_check.check(project, CLOUDAMQP_URL=f"amqp://u:hunter2@127.0.0.1:{port}/%2F")
    assert result.returncode == 1 and len(problems) == 1, problems
    assert f"RabbitMQChannelLayer at amqp://u:***@127.0.0.1:{port}/%2F) is unreachable" in problems[0]
    assert "hunter2" not in result.stdout + result.stderr


def test_status_sees_a_worker_on_rabbitmq(tmp_path, vhost):
    project = write_project(tmp_path, "statproj", test_status.SETTINGS, test_status.ROUTING)
    env = {"DJANGO_SETTINGS_MODULE": "statproj.settings", "RABBITMQ_URL": vhost, "SECRET_KEY": "s" * 60,
           "STATUS_RELEASE_FILE": str(project / "release"), "PYTHONPATH": str(project)}
    worker = ServerProcess(["run", "worker", "--threads", "2"], env=env, cwd=project)
    try:
        worker.start()
        worker.wait_for_output("consuming")
        full_env = {**os.environ, **env, "PYTHONPATH": f"{project}{os.pathsep}{ROOT}"}
        full_env.pop("REDIS_URL", None)

        def shown() -> str:
            result = subprocess.run([sys.executable, "-m", "paas_channels.cli", "status"], cwd=project,
                                    capture_output=True, text=True, timeout=60, env=full_env)
            assert result.returncode == 0, result.stderr
            return result.stdout

        assert wait_until(lambda: "1 worker(s), 2 thread(s)" in shown(), timeout=30), shown()
    finally:
        worker.close()
