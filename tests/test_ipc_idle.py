"""Idle processes on the IPC layer cost (almost) no CPU: receivers sleep on a socket, nobody polls.

The scenario of ``tests/idle_support.py``, as for the Redis layer: the worker
waits in ``poll`` on its wake-up socket, the interface loop in
``loop.add_reader``.
"""

from __future__ import annotations

import uuid

import pytest

from paas_channels.layers.ipc import IPCChannelLayer
from tests.idle_support import check_idle_then_live, idle_scripts

MAKE_LAYER = """
from paas_channels.layers.ipc import IPCChannelLayer
layer = IPCChannelLayer(prefix=sys.argv[1], directory=sys.argv[2])
"""


@pytest.mark.timeout(60)
def test_idle_worker_and_interface_use_under_one_percent_cpu(tmp_path):
    prefix = "idle" + uuid.uuid4().hex[:8]
    scripts = idle_scripts(MAKE_LAYER, prefix, tmp_path)
    layer = IPCChannelLayer(prefix=prefix, directory=tmp_path)
    try:
        check_idle_then_live(scripts, layer, seconds=4.0)
    finally:
        for script in scripts:
            script.close()
        layer.close()
