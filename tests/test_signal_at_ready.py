"""A SIGTERM that arrives the moment a web process says it is ready is a graceful stop, never a kill.

Under a supervisor a child's "ready" moves it from booting (a SIGTERM then
may end it: nothing was served) to serving (the supervisor counts a child
killed by SIGTERM as a cut, and exits 1).  So each server installs its
SIGTERM handler before it reports ready.  Daphne's listening completes before
Twisted's reactor runs, where the handler is installed: the ready report waits
for the reactor.  Here a real process sends itself SIGTERM from inside that
report, the worst moment, and must stop gracefully with status 0.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.interface_support import scrubbed_environ
from tests.support import ROOT, free_port

_DAPHNE = """
import logging, os, signal, sys
logging.basicConfig(level=logging.INFO)
from paas_channels.conf import load_config
from paas_channels.interface.app import serve

class App:
    http_timeout = 5
    def start(self): pass
    async def shutdown(self, timeout): return 0
    async def __call__(self, scope, receive, send): pass

config = load_config("web", {"bind": "127.0.0.1", "port": int(sys.argv[1])}, environ={})
sys.exit(serve(App(), config, ready=lambda: os.kill(os.getpid(), signal.SIGTERM)))
"""

_WSGI = """
import os, signal, sys
import django
django.setup()
import paas_channels.runtime.wsgi as wsgi
from paas_channels.conf import load_config

# The supervisor's ready report, at the moment the server makes it.
wsgi.report_ready = lambda: os.kill(os.getpid(), signal.SIGTERM)
sys.exit(wsgi.run(load_config("web", {"bind": "127.0.0.1", "port": int(sys.argv[1])}, environ={})))
"""


def _run(script: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script), str(free_port())], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def test_daphne_reports_ready_only_once_its_sigterm_handler_is_installed():
    done = _run(_DAPHNE, scrubbed_environ())
    assert done.returncode == 0, (done.returncode, done.stderr[-3000:])  # -15: killed, no handler yet
    assert "SIGTERM: shutting down gracefully" in done.stderr, done.stderr[-3000:]


def test_wsgi_reports_ready_only_once_its_sigterm_handler_is_installed():
    env = {**scrubbed_environ(), "DJANGO_SETTINGS_MODULE": "example_project.settings", "DEBUG": "1"}
    done = _run(_WSGI, env)
    assert done.returncode == 0, (done.returncode, done.stderr[-3000:])
    assert "wsgi: shutting down" in done.stderr, done.stderr[-3000:]
