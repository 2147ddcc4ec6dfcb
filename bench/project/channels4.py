"""Channels 4 side: the same two endpoints as routing.py, written as its docs show."""

from django.core.asgi import get_asgi_application

django_asgi_app = get_asgi_application()

from channels.generic.websocket import AsyncWebsocketConsumer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402


class JoinConsumer(AsyncWebsocketConsumer):
    groups = ["bench"]  # joined before connect(), left at disconnect

    async def connect(self) -> None:
        await self.accept()
        await self.send(text_data="joined")

    async def bench_message(self, event: dict) -> None:
        await self.send(text_data=event["text"])


class RoomConsumer(AsyncWebsocketConsumer):
    groups = ["room"]

    async def bench_message(self, event: dict) -> None:
        await self.send(text_data=event["text"])


class IdleConsumer(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        await self.accept()


application = ProtocolTypeRouter({
    "http": django_asgi_app,
    "websocket": URLRouter([
        path("ws/bench/", JoinConsumer.as_asgi()),
        path("ws/room/", RoomConsumer.as_asgi()),
        path("ws/idle/", IdleConsumer.as_asgi()),
    ]),
})
