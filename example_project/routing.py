"""Channel routing of the example project (CHANNEL_LAYERS['default']['ROUTING'])."""

from paas_channels.consumers import ignore_message
from paas_channels.handler import view_consumer
from paas_channels.routing import include, route, route_class

from . import consumers, interface_demo

#: Included under ^/ws/echo: these filters see the path with that prefix stripped.
echo_routing = [
    route("websocket.connect", consumers.echo_connect, path=r"^/?$"),
    route("websocket.receive", consumers.echo, path=r"^/?$"),
    route("websocket.disconnect", ignore_message, path=r"^/?$"),
]

channel_routing = [
    # HTTP: /live/ is a long-poll answered by a consumer; everything else is Django.
    route("http.request", consumers.long_poll, path=r"^/live/$"),
    route("http.disconnect", consumers.long_poll_disconnect, path=r"^/live/$"),
    route("http.disconnect", ignore_message),
    route("http.request", view_consumer),
    # WebSockets.
    route_class(consumers.ChatConsumer, path=r"^/ws/chat/(?P<room>[-\w]+)/$"),
    include(echo_routing, path=r"^/ws/echo"),
    route("websocket.connect", interface_demo.close_with_code, path=r"^/ws/close/(?P<code>1000|[34]\d{3})/$"),
    route("websocket.connect", consumers.reject_connection),
    route("websocket.receive", ignore_message),
    route("websocket.disconnect", ignore_message),
    # Background work.
    route("thumbnail", consumers.make_thumbnail),
]
