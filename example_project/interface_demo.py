"""Consumers that show the interface server's WebSocket close handling.

``/ws/close/<code>/`` accepts the socket and closes it at once with ``code``
(1000 or 3000-4999), so a client (and the interface tests) can see a
consumer's close code arrive unchanged.
"""

from __future__ import annotations

from paas_channels.message import Message


def close_with_code(message: Message, code: str = "1000") -> None:
    """Accept, then close with the code from the URL."""
    message.reply_channel.send({"accept": True, "close": int(code)})
