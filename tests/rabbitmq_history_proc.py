"""A process sending to a RabbitMQ history group, for tests/test_rabbitmq_history.py.

    python -m tests.rabbitmq_history_proc URL PREFIX GROUP NAME COUNT [HEARTBEAT]

Sends ``{"from": NAME, "n": i}`` to GROUP for i in 0..COUNT-1 (COUNT 0: until
stopped), one after the other, and prints ``ok i`` once each send returned
(``error i ...`` when it raised).  SIGTERM: stop sending, close the layer
(a sequencer hands over), print ``closed`` and exit 0.
"""

from __future__ import annotations

import signal
import sys
import threading

from paas_channels.layers.rabbitmq import ChannelLayerConnectionError, RabbitMQChannelLayer

HISTORY = {"proc-*": {"size": 10_000, "ttl": 300}}
KEY = "rabbitmq-history-test-key"


def main() -> int:
    url, prefix, group, name, count = sys.argv[1:6]
    heartbeat = float(sys.argv[6]) if len(sys.argv) > 6 else 15
    layer = RabbitMQChannelLayer(url=url, prefix=prefix, history=HISTORY, timeout=20, capacity=5000,
                                 heartbeat=heartbeat)
    layer.use_keys([KEY])
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    n = 0
    while not stop.is_set() and (int(count) == 0 or n < int(count)):
        try:
            layer.send_group(group, {"from": name, "n": n})
            print(f"ok {n}", flush=True)
        except ChannelLayerConnectionError as exc:
            print(f"error {n} {exc}", flush=True)
        n += 1
    layer.close()
    print("closed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
