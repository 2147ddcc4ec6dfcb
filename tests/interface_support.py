"""Real processes for the interface-server tests: the example project, collected static files,
``paas-channels run web`` and ``run worker`` on a private Redis.

Each test module starts what it needs once (module fixtures) and stops it even
when a test fails.  The settings module used by the processes is the example
project's, with ``STATIC_ROOT`` moved to a temporary directory and WhiteNoise's
``CompressedManifestStaticFilesStorage`` (hashed names and ``.gz`` variants),
written to a temporary package on ``PYTHONPATH``.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.support import ROOT, ServerProcess, free_port, wait_for_port

SETTINGS_MODULE = "paas_iface_settings"
#: The processes' SECRET_KEY: a test's own layer signs with it to talk to them.
SECRET_KEY = "interface-tests-secret-" + "k" * 40

_SETTINGS = '''\
"""Example project settings with static files collected to a temporary STATIC_ROOT."""
from example_project.settings import *  # noqa: F401,F403

STATIC_ROOT = {static_root!r}
STORAGES = {{
    "default": {{"BACKEND": "django.core.files.storage.FileSystemStorage"}},
    "staticfiles": {{"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"}},
}}
'''


@functools.lru_cache(maxsize=None)
def project_dir() -> Path:
    """A temporary directory holding the settings module, collected static files and the SQLite file."""
    base = Path(tempfile.mkdtemp(prefix="paas-iface-"))
    atexit.register(shutil.rmtree, base, True)
    (base / f"{SETTINGS_MODULE}.py").write_text(_SETTINGS.format(static_root=str(base / "static")))
    result = subprocess.run(
        [sys.executable, "-m", "django", "collectstatic", "--noinput", "-v", "0"],
        env=project_env(base), cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    if result.returncode != 0:
        raise RuntimeError(f"collectstatic failed:\n{result.stdout}\n{result.stderr}")
    return base


def project_env(base: Path | None = None, redis_url: str | None = None, **extra: str) -> dict[str, str]:
    """Environment for a process of the example project (``REDIS_URL`` selects the Redis layer)."""
    base = base or project_dir()
    env = {
        "DJANGO_SETTINGS_MODULE": SETTINGS_MODULE,
        "PYTHONPATH": os.pathsep.join([str(base), str(ROOT)]),
        "DATABASE_URL": f"sqlite:///{base / 'db.sqlite3'}",
        "PAAS_CHANNELS_LOG_LEVEL": "info",
        "SECRET_KEY": SECRET_KEY,
        **extra,
    }
    env.pop("REDIS_URL", None)
    if redis_url:
        env["REDIS_URL"] = redis_url
    return env


def scrubbed_environ() -> dict[str, str]:
    """This process's environment without variables that would change a child's configuration."""
    return {key: value for key, value in os.environ.items()
            if not key.startswith("PAAS_CHANNELS_") and key not in {"REDIS_URL", "PORT", "DYNO", "WEB_CONCURRENCY"}}


def start_web(env: dict[str, str], *args: str) -> tuple[ServerProcess, int]:
    """``paas-channels run web`` on a free port; returns once it listens."""
    port = free_port()
    process = ServerProcess(["run", "web", "--bind", "127.0.0.1", "--port", str(port), *args],
                            env={**scrubbed_environ(), **env})
    process.start()
    try:
        wait_for_port(port, timeout=30, process=process.process)
        process.wait_for_output("listening on", timeout=10)
    except Exception:
        output = process.output()
        process.close()
        raise RuntimeError(f"run web did not start:\n{output[-3000:]}") from None
    return process, port


def start_worker(env: dict[str, str], layer, *args: str, timeout: float = 30.0) -> ServerProcess:
    """``paas-channels run worker``; returns once its heartbeat (its pid's) is on ``layer``."""
    process = ServerProcess(["run", "worker", *args], env={**scrubbed_environ(), **env})
    process.start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # Its own pid: a web process's first heartbeat may land meanwhile too.
        if any(isinstance(info, dict) and info.get("pid") == process.process.pid
               for info in layer.heartbeats().values()):
            return process
        if process.process.poll() is not None:
            break
        time.sleep(0.1)
    output = process.output()
    process.close()
    raise RuntimeError(f"run worker sent no heartbeat within {timeout}s:\n{output[-3000:]}")


def static_files(base: Path | None = None) -> dict[str, str]:
    """``{original name: hashed name}`` from the collected manifest."""
    import json

    manifest = (base or project_dir()) / "static" / "staticfiles.json"
    return json.loads(manifest.read_text())["paths"]
