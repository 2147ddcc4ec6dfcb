"""The seed: "You can even use different Python versions for the interface servers and the workers."

``run web`` on this interpreter (Python 3.11, Django 5.2) and ``run worker`` on
a second one (Python 3.12+ with Django 6, in its own virtualenv), on one
private Redis: a view with a session, a WebSocket chat and a chunked upload
work across them.  The second interpreter is ``$PAAS_TEST_SECOND_PYTHON``, else
``/tmp/paas-second-python/bin/python``, which ``.ci/run`` makes from pyenv's
3.12 or 3.13 (README, "Tests").
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import websockets

from .support import ROOT, RedisServer, ServerProcess, Started, free_port, platform_environment, wait_for_port

SECOND_PYTHON = Path(os.environ.get("PAAS_TEST_SECOND_PYTHON", "/tmp/paas-second-python/bin/python"))

pytestmark = [
    pytest.mark.redis,
    pytest.mark.skipif(not SECOND_PYTHON.exists(),
                       reason=f"no second Python at {SECOND_PYTHON} (.ci/run makes one from pyenv 3.12/3.13)"),
]


def _versions(python: str) -> tuple[str, str]:
    out = subprocess.run([python, "-c", "import sys, django; print('%d.%d' % sys.version_info[:2], django.__version__)"],
                         capture_output=True, text=True, timeout=60, check=True).stdout.split()
    return out[0], out[1]


async def _chat(url: str) -> dict:
    room = url.replace("http://", "ws://") + "/ws/chat/versions/"
    async with websockets.connect(room, open_timeout=20) as one:
        await asyncio.wait_for(one.recv(), 20)  # "anonymous joined versions"
        async with websockets.connect(room, open_timeout=20) as two:
            await asyncio.wait_for(two.recv(), 20)
            await asyncio.wait_for(one.recv(), 20)
            await two.send(json.dumps({"text": "across Python versions"}))
            return json.loads(await asyncio.wait_for(one.recv(), 20))


def test_web_and_worker_on_different_python_and_django_versions(tmp_path):
    web_python, web_django = _versions(sys.executable)
    worker_python, worker_django = _versions(str(SECOND_PYTHON))
    assert web_python != worker_python, "the second Python must be another version"
    redis = RedisServer().start()
    processes = []
    try:
        env = platform_environment(SECRET_KEY="versions-" + "k" * 50, REDIS_URL=redis.url,
                                   DJANGO_SETTINGS_MODULE="example_project.settings",
                                   DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}")
        # The worker runs the views, so its Django makes the schema.
        migrate = subprocess.run([str(SECOND_PYTHON), "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT,
                                 env=env, capture_output=True, text=True, timeout=180)
        assert migrate.returncode == 0, migrate.stderr
        worker = Started([str(SECOND_PYTHON), "-m", "paas_channels.cli", "run", "worker", "--threads", "2"], env)
        processes.append(worker)
        port = free_port()
        web = ServerProcess(["run", "web", "--port", str(port)], env=env).start()
        processes.append(web)
        wait_for_port(port, timeout=30, process=web.process)
        worker.wait_for_output(" consuming ", timeout=60)
        url = f"http://127.0.0.1:{port}"

        with httpx.Client(base_url=url, timeout=20) as client:
            assert client.get("/counter/").text == "count=1"
            assert client.get("/counter/").text == "count=2"  # the session, kept by the worker's Django
            token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', client.get("/upload/").text).group(1)
            blob = os.urandom(600_000)  # three body chunks through body_channel
            uploaded = client.post("/upload/", data={"csrfmiddlewaretoken": token}, files={"file": ("v.bin", blob)})
        assert uploaded.json() == {"name": "v.bin", "size": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}
        assert asyncio.run(_chat(url)) == {"user": "anonymous", "text": "across Python versions", "room": "versions"}
        # The two really are different: Python and Django versions as each process reports them.
        assert (web_python, web_django[0]) != (worker_python, worker_django[0])
        for process in processes:
            assert process.stop() == 0, process.output()[-3000:]
    finally:
        for process in processes:
            process.close()
        redis.close()
