"""``paas-channels init``: add what a Django project needs to run and deploy with paas-channels.

Run in the directory that holds ``manage.py``.  It writes what is missing and
shows each change:

* ``Procfile`` with ``release`` (migrations), ``web`` and ``worker``;
* ``app.json`` (Heroku: a generated ``SECRET_KEY``, Redis and Postgres add-ons);
* ``.python-version`` and ``runtime.txt``, both naming the running Python;
* ``<project>/routing.py``: every HTTP request to the Django views, and one
  WebSocket consumer (``/ws/``, a group everyone connected shares) to start from;
* the ``configure(globals(), routing=...)`` lines at the end of the settings.

A file that exists is kept unless ``--force`` is given (the settings are only
ever appended to, once).  It ends by running ``paas-channels check`` and exits
with its status.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ..exceptions import ConfigError
from ..runtime.boot import find_settings_module

__all__ = ["run_init"]

_CONFIGURE_CALL = re.compile(r"^\s*configure\(\s*globals\(\)", re.MULTILINE)

_ROUTING = '''\
"""Channel routing: which consumer runs for each message (CHANNEL_LAYERS['default']['ROUTING']).

Written by `paas-channels init` as a start: every HTTP request goes to the
Django views; a WebSocket on /ws/ joins the group "everyone", and whatever one
client sends, every connected client receives.
"""

from paas_channels import Group
from paas_channels.handler import view_consumer
from paas_channels.routing import route


def ws_connect(message):
    Group("everyone").add(message.reply_channel)  # first: once the socket is open, it gets the group's messages
    message.reply_channel.send({"accept": True})


def ws_receive(message):
    Group("everyone").send({"text": message.content.get("text") or ""})


def ws_disconnect(message):
    Group("everyone").discard(message.reply_channel)


channel_routing = [
    route("websocket.connect", ws_connect, path=r"^/ws/$"),
    route("websocket.receive", ws_receive, path=r"^/ws/$"),
    route("websocket.disconnect", ws_disconnect, path=r"^/ws/$"),
    route("http.request", view_consumer),
]
'''

_PROCFILE = """\
release: python manage.py migrate --noinput
web: paas-channels run web
worker: paas-channels run worker
"""

_SETTINGS_LINES = """

# paas-channels (written by `paas-channels init`). Precedence: environment > the values above > defaults:
# DEBUG, SECRET_KEY, ALLOWED_HOSTS, DATABASE_URL and REDIS_URL from the environment replace what is set above.
from paas_channels.conf import configure  # noqa: E402

configure(globals(), routing="{routing}")
"""


@dataclass(frozen=True)
class _Change:
    path: Path
    text: str
    append: bool = False


def _app_json(name: str) -> str:
    app = {
        "name": name,
        "buildpacks": [{"url": "heroku/python"}],
        "env": {
            "SECRET_KEY": {"description": "Django's SECRET_KEY: signs sessions and CSRF tokens.",
                           "generator": "secret"},
        },
        "formation": {"web": {"quantity": 1, "size": "basic"}, "worker": {"quantity": 1, "size": "basic"}},
        "addons": [{"plan": "heroku-redis:mini", "as": "REDIS"},
                   {"plan": "heroku-postgresql:essential-0", "as": "DATABASE"}],
    }
    return json.dumps(app, indent=2) + "\n"


def _planned(directory: Path, settings_module: str | None) -> list[_Change]:
    module = find_settings_module(settings_module, directory)
    if not module:
        raise ConfigError(
            "no Django project here: run `paas-channels init` in the directory that holds manage.py "
            "(django-admin startproject NAME . makes one), or pass --settings NAME.settings"
        )
    settings_file = directory.joinpath(*module.split(".")).with_suffix(".py")
    if not settings_file.is_file():
        raise ConfigError(
            f"settings module {module!r} is not the file {settings_file}: init edits a single settings file; "
            "add the configure() lines by hand (see README, 'Add to your project')"
        )
    package = module.rsplit(".", 1)[0] if "." in module else ""
    routing_file = settings_file.with_name("routing.py")
    routing = f"{package}.routing.channel_routing" if package else "routing.channel_routing"
    version = sys.version_info
    changes = [
        _Change(directory / "Procfile", _PROCFILE),
        _Change(directory / "app.json", _app_json(package.replace("_", "-") or directory.name)),
        _Change(directory / ".python-version", f"{version.major}.{version.minor}\n"),
        _Change(directory / "runtime.txt", f"python-{version.major}.{version.minor}.{version.micro}\n"),
        _Change(routing_file, _ROUTING),
    ]
    if not _CONFIGURE_CALL.search(settings_file.read_text(encoding="utf-8")):
        changes.append(_Change(settings_file, _SETTINGS_LINES.format(routing=routing), append=True))
    else:
        print(f"kept      {settings_file.relative_to(directory)} (already calls configure(globals(), ...))")
    return changes


def _show(verb: str, change: _Change, directory: Path) -> None:
    print(f"{verb:<9} {change.path.relative_to(directory)}")
    for line in change.text.strip("\n").splitlines():
        print(f"    + {line}" if line else "    +")


def run_init(directory: Path, *, force: bool = False, settings_module: str | None = None, check: bool = True) -> int:
    """Write the missing files into the project at ``directory``; then ``paas-channels check``; its exit status."""
    for change in _planned(directory, settings_module):
        if change.append:
            with change.path.open("a", encoding="utf-8") as handle:
                handle.write(change.text)
            _show("appended", change, directory)
        elif change.path.exists() and not force:
            print(f"kept      {change.path.relative_to(directory)} (exists; --force overwrites it)")
        else:
            verb = "replaced" if change.path.exists() else "created"
            change.path.write_text(change.text, encoding="utf-8")
            _show(verb, change, directory)
    if not check:
        return 0
    print("running   paas-channels check", flush=True)
    command = [sys.executable, "-m", "paas_channels.cli", "check"]
    if settings_module:
        command += ["--settings", settings_module]
    return subprocess.run(command, cwd=directory).returncode
