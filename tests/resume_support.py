"""A small project for the resume tests: one history group, a consumer that joins it, a page running client.js.

``room-1`` keeps ``ROOM_HISTORY_SIZE`` messages (environment, default 500) for
300 s.  ``/room/`` is a ``WebsocketConsumer`` in ``room-1`` that says when its
join could not recover; what a client sends goes to the group.  ``/`` is a
page whose ``window.conn`` is ``PaasChannels.connect("/room/")``, recording
what it is handed in ``window.got`` and its recoveries in ``window.recoveries``.
"""

from __future__ import annotations

import os
from pathlib import Path

from paas_channels.layers import RedisChannelLayer

from .support import ROOT, write_project

PACKAGE = "resumeproj"
GROUP = "room-1"
#: The project's processes sign their layer messages with keys from it (and drop unsigned ones).
SECRET_KEY = "s" * 60

SETTINGS = '''
import os
from tests.resume_support import layer_config as HISTORY_CONFIG
from pathlib import Path
from paas_channels.conf import configure
BASE_DIR = Path(__file__).resolve().parent.parent
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "paas_channels"]
ROOT_URLCONF = "resumeproj.urls"
configure(globals(), routing="resumeproj.routing.channel_routing")
CHANNEL_LAYERS["default"]["CONFIG"].update(HISTORY_CONFIG(int(os.environ.get("ROOM_HISTORY_SIZE", "500"))))
'''

ROUTING = '''
from paas_channels import Group
from paas_channels.consumers import WebsocketConsumer
from paas_channels.handler import view_consumer
from paas_channels.routing import route, route_class


class Room(WebsocketConsumer):
    groups = ["room-1"]

    def connect(self, message, **kwargs):
        message.reply_channel.send({"accept": True})
        if self.recovered.get("room-1") is False:
            self.send(text="consumer: not recovered")

    def receive(self, text=None, bytes=None, **kwargs):
        Group("room-1").send({"text": text})


channel_routing = [route_class(Room, path=r"^/room/$"), route("http.request", view_consumer)]
'''

URLS = '''
from django.http import HttpResponse
from django.urls import path

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>room</title></head><body>
<script src="/.paas-channels/client.js"></script>
<script>
window.got = []; window.recoveries = []; window.opens = 0;
window.conn = PaasChannels.connect("/room/", {
  onmessage: function (data, meta) { if (meta.group) window.got.push([data, meta.offset, meta.replayed]); },
  onrecover: function (ok, group) { window.recoveries.push(ok); },
  onopen: function () { window.opens += 1; }
});
</script></body></html>"""

urlpatterns = [path("", lambda request: HttpResponse(PAGE))]
'''


def layer_config(history_size: int = 500) -> dict:
    """The layer CONFIG every process of the project uses (and the test's own senders).

    A web process's inbox is one channel for all its connections: a reconnect
    storm (accepts, joins with their replays) must not fill it, or group
    messages to it are skipped.
    """
    return {"history": {"room-*": {"size": history_size, "ttl": 300}}, "channel_capacity": {"interface.*": 5000}}


def make_project(root: Path) -> Path:
    project = write_project(root, PACKAGE, SETTINGS, ROUTING)
    (project / PACKAGE / "urls.py").write_text(URLS)
    return project


def project_env(project: Path, redis_url: str, **extra: str) -> dict[str, str]:
    return {"DJANGO_SETTINGS_MODULE": f"{PACKAGE}.settings", "REDIS_URL": redis_url, "SECRET_KEY": SECRET_KEY,
            "PYTHONPATH": f"{project}{os.pathsep}{ROOT}", **extra}


def sender_layer(redis_url: str, **config) -> RedisChannelLayer:
    """A layer for the tests to send with and read from: keyed as the processes' layers are
    (from their SECRET_KEY), else they drop its messages as unsigned and it cannot read theirs."""
    layer = RedisChannelLayer(hosts=[redis_url], **config)
    layer.use_keys([SECRET_KEY])
    return layer
