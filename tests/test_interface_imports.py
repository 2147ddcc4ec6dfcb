"""``run web`` imports settings but never the project's URLconf, ROUTING or consumers.

That is what lets a deploy restart workers only: the web process holds no
project code that could go stale.  Checked on the real command: the process
serves a page request, a static file, the health endpoint and a WebSocket
handshake, is stopped with SIGTERM, and writes the modules it had loaded at exit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.interface_support import project_env, scrubbed_environ, static_files
from tests.support import ROOT, free_port, wait_for_port

_RUN_AND_DUMP = """
import atexit, json, sys
out = sys.argv.pop(1)
atexit.register(lambda: open(out, "w").write(json.dumps(sorted(sys.modules))))
from paas_channels.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_web_process_never_imports_urlconf_routing_or_consumers(tmp_path):
    port = free_port()
    out = tmp_path / "modules.json"
    log = open(tmp_path / "web.log", "wb")
    process = subprocess.Popen(
        [sys.executable, "-c", _RUN_AND_DUMP, str(out), "run", "web", "--bind", "127.0.0.1",
         "--port", str(port), "--http-timeout", "1"],
        env={**scrubbed_environ(), **project_env(), "PYTHONUNBUFFERED": "1"},
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        wait_for_port(port, timeout=30, process=process)
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{url}/", timeout=10).status_code == 503  # went to the layer, no worker
        assert httpx.get(f"{url}/static/{static_files()['paas_demo/app.css']}", timeout=10).status_code == 200
        assert httpx.get(f"{url}/.paas-channels/health", timeout=10).status_code == 200
        with pytest.raises(InvalidStatus):
            connect(f"ws://127.0.0.1:{port}/echo/", open_timeout=10)
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()
    loaded = json.loads(out.read_text())
    project = sorted(name for name in loaded if name.startswith("example_project"))
    assert "example_project.settings" in project  # the check can see the project's modules
    for forbidden in ("example_project.urls", "example_project.routing", "example_project.views",
                      "example_project.consumers", "paas_channels.routing", "paas_channels.handler",
                      "paas_channels.consumers", "paas_channels.worker"):
        assert forbidden not in loaded, f"run web imported {forbidden}; loaded project modules: {project}"
