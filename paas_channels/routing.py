"""Channel routing in the Channels 1.x style.

A routing is a list of ``route(channel, consumer, **filters)``,
``route_class(ConsumerClass, **filters)`` and ``include(routing, **filters)``.
Filters are regular expressions on message keys (usually ``path``), matched at
the start of the value; their named groups become keyword arguments of the
consumer.  ``include`` strips what its filters matched, so an included routing
matches the rest of the path (the consumer still sees the full message).

The first matching route wins.  A worker consumes exactly the channels its
routing names (:attr:`Router.channels`).
"""

from __future__ import annotations

import re
import traceback
from typing import Any, Callable

from django.utils.module_loading import import_string

from .consumers import accept_connection, ignore_message
from .exceptions import ConfigError
from .handler import view_consumer

__all__ = ["Route", "RouteClass", "Include", "Router", "route", "route_class", "include", "default_routing"]

Consumer = Callable[..., Any]


def _compile_filters(filters: dict[str, Any], where: str) -> dict[str, re.Pattern]:
    compiled = {}
    for key, pattern in filters.items():
        if isinstance(pattern, re.Pattern):
            compiled[key] = pattern
            continue
        if not isinstance(pattern, str):
            raise TypeError(
                f"{where}: filter {key}= must be a regex string such as r'^/chat/$'; got {type(pattern).__name__}"
            )
        if not pattern.startswith("^"):
            raise ValueError(
                f"{where}: filter {key}={pattern!r} must start with '^' (filters match from the "
                f"start of the value); write {key}=r'^{pattern}'"
            )
        try:
            compiled[key] = re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"{where}: filter {key}={pattern!r} is not a valid regex: {exc}") from None
    return compiled


def _match_filters(filters: dict[str, re.Pattern], values: dict[str, Any]) -> tuple[dict[str, str], dict[str, Any]] | None:
    """Match every filter; return (kwargs from named groups, values with matches stripped) or None."""
    kwargs: dict[str, str] = {}
    rest = values
    for key, pattern in filters.items():
        value = values.get(key)
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        if not isinstance(value, str):
            return None
        match = pattern.match(value)
        if match is None:
            return None
        kwargs.update({name: group for name, group in match.groupdict().items() if group is not None})
        if rest is values:
            rest = dict(values)
        rest[key] = value[match.end():]
    return kwargs, rest


class _ConsumerRoute:
    """A consumer for a set of channels, behind filters (shared by route and route_class)."""

    consumer: Any
    filters: dict[str, re.Pattern]
    _channels: frozenset[str]

    @property
    def channels(self) -> set[str]:
        return set(self._channels)

    def match(self, channel: str, values: dict[str, Any]) -> tuple[Consumer, dict[str, str]] | None:
        if channel not in self._channels:
            return None
        matched = _match_filters(self.filters, values)
        return None if matched is None else (self.consumer, matched[0])


class Route(_ConsumerRoute):
    """Send messages on ``channel`` that pass the filters to ``consumer``."""

    def __init__(self, channel: str, consumer: Consumer | str, **filters: Any) -> None:
        if not isinstance(channel, str) or not channel:
            raise TypeError(f"route() takes a channel name first, e.g. route('http.request', view); got {channel!r}")
        if "!" in channel or "?" in channel:
            raise ValueError(
                f"route({channel!r}, ...): workers consume normal channels only; '!' and '?' "
                "channels are read by the process that created them"
            )
        self.channel = channel
        self._channels = frozenset({channel})
        if isinstance(consumer, str):
            consumer = _import(consumer, f"route({channel!r}, {consumer!r})")
        if not callable(consumer):
            raise TypeError(f"route({channel!r}, ...): the consumer must be callable; got {type(consumer).__name__}")
        self.consumer = consumer
        self.filters = _compile_filters(filters, f"route({channel!r}, {_name(consumer)})")

    def __repr__(self) -> str:
        return f"route({self.channel!r}, {_name(self.consumer)}, {_show(self.filters)})"


class RouteClass(_ConsumerRoute):
    """Route every channel a consumer class handles (its ``method_mapping``) to it."""

    def __init__(self, consumer: type, **filters: Any) -> None:
        channel_names = getattr(consumer, "channel_names", None)
        if not isinstance(consumer, type) or channel_names is None:
            raise TypeError(
                f"route_class() takes a consumer class with a method_mapping (e.g. a "
                f"WebsocketConsumer subclass); got {consumer!r}"
            )
        self.consumer = consumer
        self.filters = _compile_filters(filters, f"route_class({consumer.__name__})")
        self._channels = frozenset(channel_names())

    def __repr__(self) -> str:
        return f"route_class({self.consumer.__name__}, {_show(self.filters)})"


class Include:
    """A routing (a list or its dotted path) used under a filter prefix."""

    def __init__(self, routing: Any, **filters: Any) -> None:
        where = f"include({routing!r:.80})"
        if isinstance(routing, str):
            routing = _import(routing, where)
        self.routing = _flatten(routing, where)
        self.filters = _compile_filters(filters, where)

    @property
    def channels(self) -> set[str]:
        return set().union(*(entry.channels for entry in self.routing))

    def match(self, channel: str, values: dict[str, Any]) -> tuple[Consumer, dict[str, str]] | None:
        matched = _match_filters(self.filters, values)
        if matched is None:
            return None
        kwargs, rest = matched
        for entry in self.routing:
            found = entry.match(channel, rest)
            if found is not None:
                return found[0], {**kwargs, **found[1]}
        return None

    def __repr__(self) -> str:
        return f"include({len(self.routing)} routes, {_show(self.filters)})"


def route(channel: str, consumer: Consumer | str, **filters: Any) -> Route:
    """``route("websocket.connect", ws_connect, path=r"^/chat/(?P<room>\\w+)/$")``."""
    return Route(channel, consumer, **filters)


def route_class(consumer: type, **filters: Any) -> RouteClass:
    """``route_class(ChatConsumer, path=r"^/chat/$")``: all of the class's channels."""
    return RouteClass(consumer, **filters)


def include(routing: Any, **filters: Any) -> Include:
    """``include("polls.routing.routes", path=r"^/polls")``: a routing under a prefix."""
    return Include(routing, **filters)


class Router:
    """A flattened routing: finds the consumer for a message and lists the channels."""

    def __init__(self, routing: Any) -> None:
        where = "ROUTING"
        if isinstance(routing, str):
            where = f"ROUTING {routing!r}"
            routing = _import(routing, where)
        self.routing = _flatten(routing, where)

    @property
    def channels(self) -> set[str]:
        """Every channel some route names."""
        return set().union(*(entry.channels for entry in self.routing)) if self.routing else set()

    def match(self, channel: str, content: dict[str, Any]) -> tuple[Consumer, dict[str, str]] | None:
        """The first (consumer, kwargs) whose route matches ``channel`` and ``content``."""
        for entry in self.routing:
            found = entry.match(channel, content)
            if found is not None:
                return found
        return None


def default_routing() -> list[Route]:
    """Routes used when ``CHANNEL_LAYERS[alias]`` names no ``ROUTING``: Django views for
    HTTP, WebSocket connections accepted, other WebSocket events ignored."""
    return [
        route("http.request", view_consumer),
        route("http.disconnect", ignore_message),
        route("websocket.connect", accept_connection),
        route("websocket.receive", ignore_message),
        route("websocket.disconnect", ignore_message),
    ]


def _flatten(routing: Any, where: str) -> list[Route | RouteClass | Include]:
    if isinstance(routing, (Route, RouteClass, Include)):
        return [routing]
    if not isinstance(routing, (list, tuple)):
        raise ConfigError(
            f"{where} must be a list of route(), route_class() and include() entries; got {type(routing).__name__}"
        )
    entries: list[Route | RouteClass | Include] = []
    for index, entry in enumerate(routing):
        if isinstance(entry, (Route, RouteClass, Include)):
            entries.append(entry)
        elif isinstance(entry, (list, tuple)):
            entries.extend(_flatten(entry, where))
        else:
            raise ConfigError(
                f"{where}[{index}] is {entry!r:.80}; expected route(channel, consumer), "
                "route_class(ConsumerClass) or include('dotted.path.to.routing')"
            )
    return entries


def _import(path: str, where: str) -> Any:
    try:
        return import_string(path)
    except ImportError as exc:
        raise ConfigError(f"{where}: cannot import {path!r} ({exc}); give a dotted path such as 'myapp.routing.channel_routing'") from None
    except Exception as exc:
        # A routing or consumer module with a bug: one line that says where, not a crash.
        frames = traceback.extract_tb(exc.__traceback__)
        where_in = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
        raise ConfigError(f"{where}: importing {path!r} raised {type(exc).__name__}: {exc}{where_in}") from None


def _name(consumer: Any) -> str:
    return getattr(consumer, "__qualname__", None) or repr(consumer)


def _show(filters: dict[str, re.Pattern]) -> str:
    return ", ".join(f"{key}={pattern.pattern!r}" for key, pattern in filters.items())

