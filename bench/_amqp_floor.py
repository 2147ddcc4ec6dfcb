"""What ONE sequential confirmed publish costs with each AMQP client alone, no channel layer around it.

The layer scenario's send is a publish that waits for its publisher confirm
(what makes "at capacity" ``ChannelFull`` rather than a silent drop), one
after another.  Its ceiling is the client's own cost plus the broker's round
trip, so this measures, on the same broker in the same run:

* ``aiormq``: the client this project's layer uses;
* ``carehare``: the client channels_rabbitmq 4 uses;
* ``frames``: the broker's floor, the least any client can do: the three
  frames of a publish written to a socket with pamqp's codec and the confirm
  read back, nothing else (no heartbeats, no channel state, no error
  handling).  A probe for the bench, not a client to use.

Each publishes to its own queue declared as the layer declares a channel
(``x-max-length``, ``x-overflow: reject-publish``), then deletes it.
"""

from __future__ import annotations

import socket
import time
import uuid
from typing import Any
from urllib.parse import unquote, urlsplit

PAYLOAD_BYTES = 200  # about one enveloped bench PAYLOAD
_ARGUMENTS = {"x-max-length": 1_000_000, "x-overflow": "reject-publish", "x-expires": 60_000}


def _queue() -> str:
    return "bench-floor-" + uuid.uuid4().hex[:8]


async def aiormq_publishes(url: str, n: int) -> float:
    import aiormq

    connection = await aiormq.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        queue = _queue()
        await channel.queue_declare(queue, arguments=_ARGUMENTS)
        body = b"x" * PAYLOAD_BYTES
        started = time.perf_counter()
        for _ in range(n):
            await channel.basic_publish(body, routing_key=queue, mandatory=True)
        elapsed = time.perf_counter() - started
        await channel.queue_delete(queue)
        return n / elapsed
    finally:
        await connection.close()


async def carehare_publishes(url: str, n: int) -> float:
    import carehare

    connection = carehare.Connection(url)
    await connection.connect()
    try:
        queue = _queue()
        await connection.queue_declare(queue, arguments={**_ARGUMENTS, "x-expires": 10_000})
        body = b"x" * PAYLOAD_BYTES
        started = time.perf_counter()
        for _ in range(n):
            await connection.publish(body, routing_key=queue)
        return n / (time.perf_counter() - started)
    finally:  # carehare has no queue.delete: its queue expires 10 s after this
        await connection.close()


class _Frames:
    """A socket speaking just enough AMQP 0-9-1 (with pamqp's codec) to publish and read confirms."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.socket = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5672), timeout=10)
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""
        self._open(unquote(parts.username or "guest"), unquote(parts.password or "guest"),
                   unquote(parts.path[1:]) if len(parts.path) > 1 else "/")

    def _open(self, user: str, password: str, vhost: str) -> None:
        from pamqp import commands

        self.socket.sendall(b"AMQP\x00\x00\x09\x01")
        self.read()  # Connection.Start
        self.write(0, commands.Connection.StartOk(client_properties={}, mechanism="PLAIN",
                                                  response=f"\x00{user}\x00{password}"))
        tune = self.read()
        self.write(0, commands.Connection.TuneOk(channel_max=tune.channel_max, frame_max=tune.frame_max, heartbeat=0))
        self.write(0, commands.Connection.Open(virtual_host=vhost))
        self.read()
        for command in (commands.Channel.Open(), commands.Confirm.Select()):
            self.write(1, command)
            self.read()

    def write(self, channel: int, *frames: Any) -> None:
        from pamqp import frame

        self.socket.sendall(b"".join(frame.marshal(item, channel) for item in frames))

    def read(self) -> Any:
        from pamqp import exceptions, frame

        while True:
            if self.buffer:
                try:
                    used, _, value = frame.unmarshal(self.buffer)
                except exceptions.UnmarshalingException:
                    pass  # a partial frame: read more
                else:
                    self.buffer = self.buffer[used:]
                    return value
            chunk = self.socket.recv(65536)
            if not chunk:
                raise ConnectionError("the broker closed the connection")
            self.buffer += chunk

    def close(self) -> None:
        self.socket.close()


def frames_publishes(url: str, n: int) -> float:
    from pamqp import body, commands, header

    frames = _Frames(url)
    try:
        queue = _queue()
        frames.write(1, commands.Queue.Declare(queue=queue, arguments=_ARGUMENTS))
        frames.read()
        data = b"x" * PAYLOAD_BYTES
        started = time.perf_counter()
        for _ in range(n):
            frames.write(1, commands.Basic.Publish(routing_key=queue, mandatory=True),
                         header.ContentHeader(0, len(data), commands.Basic.Properties(delivery_mode=1)),
                         body.ContentBody(data))
            confirm = frames.read()
            if not isinstance(confirm, commands.Basic.Ack):
                raise RuntimeError(f"the broker answered {confirm!r} to a publish")
        elapsed = time.perf_counter() - started
        frames.write(1, commands.Queue.Delete(queue=queue))
        frames.read()
        return n / elapsed
    finally:
        frames.close()
