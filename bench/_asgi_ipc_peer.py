"""Run by asgi_ipc's own venv: the layer scenario's sync operations on asgi_ipc 1.4.2, JSON on stdout.

    /tmp/asgi-ipc-venv/bin/python bench/_asgi_ipc_peer.py N

asgi_ipc needs its own msgpack-python 0.5 and asgiref 1.x, so it cannot live
in the project's environment; this script imports only it and
``bench/_layer_ops.py`` (standard library only).
"""

import json
import os
import sys
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import asgi_ipc  # noqa: E402
from _layer_ops import CAPACITY, sync_scenario  # noqa: E402


def main() -> int:
    n = int(sys.argv[1])
    # Its shared memory must hold every pending message of the sequential tests.
    layer = asgi_ipc.IPCChannelLayer(prefix="bench" + uuid.uuid4().hex[:8], capacity=CAPACITY,
                                     message_memory=200 * 1024 * 1024)
    try:
        # One group send: asgi_ipc rewrites its whole pickled store per delivery (~100/s here),
        # so the usual ten would take minutes; a rate from 1,000 deliveries is as telling.
        result = sync_scenario(layer, n, group_sends=1)
    finally:
        layer.flush()
        for store in (layer.message_store, layer.group_store):
            store.semaphore.unlink()
            store.memory.unlink()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
