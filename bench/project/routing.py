"""paas-channels side: /ws/bench/ joins the ``bench`` group, /ws/room/ the ``room`` group
(with history under settings_history), /ws/idle/ only accepts."""

from paas_channels import Group
from paas_channels.consumers import ignore_message
from paas_channels.handler import view_consumer
from paas_channels.message import Message
from paas_channels.routing import route

GROUP = "bench"
ROOM = "room"


def join(message: Message) -> None:
    message.reply_channel.send({"accept": True})
    Group(GROUP).add(message.reply_channel)
    message.reply_channel.send({"text": "joined"})  # the client counts itself in once it reads this


def leave(message: Message) -> None:
    Group(GROUP).discard(message.reply_channel)


def join_room(message: Message) -> None:
    message.reply_channel.send({"accept": True})
    Group(ROOM).add(message.reply_channel)  # a resuming client gets what it missed first


def leave_room(message: Message) -> None:
    Group(ROOM).discard(message.reply_channel)


def accept(message: Message) -> None:
    message.reply_channel.send({"accept": True})


channel_routing = [
    route("websocket.connect", join, path=r"^/ws/bench/$"),
    route("websocket.disconnect", leave, path=r"^/ws/bench/$"),
    route("websocket.connect", join_room, path=r"^/ws/room/$"),
    route("websocket.disconnect", leave_room, path=r"^/ws/room/$"),
    route("websocket.connect", accept, path=r"^/ws/idle/$"),
    route("websocket.receive", ignore_message),
    route("websocket.disconnect", ignore_message),
    route("http.disconnect", ignore_message),
    route("http.request", view_consumer),
]
