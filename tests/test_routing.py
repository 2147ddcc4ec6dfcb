"""Routing: channels, filters anchored at the start, named groups, include prefixes, errors."""

from __future__ import annotations

import pytest

from paas_channels.consumers import WebsocketConsumer
from paas_channels.exceptions import ConfigError
from paas_channels.routing import Router, include, route, route_class
from paas_channels.worker import select_channels


def consumer_a(message, **kwargs):
    pass


def consumer_b(message, **kwargs):
    pass


class Chat(WebsocketConsumer):
    pass


# A routing module-level list so include() can find it by dotted path.
polls_routes = [
    route("http.request", consumer_a, path=r"^/(?P<poll_id>\d+)/$"),
    route("websocket.connect", consumer_b, path=r"^/live/$"),
]


def test_first_matching_route_wins_and_channels_must_match():
    router = Router([
        route("http.request", consumer_a, path=r"^/a/"),
        route("http.request", consumer_b),
    ])
    assert router.match("http.request", {"path": "/a/x"}) == (consumer_a, {})
    assert router.match("http.request", {"path": "/b/"}) == (consumer_b, {})
    assert router.match("websocket.connect", {"path": "/a/"}) is None


def test_filters_are_anchored_at_the_start():
    router = Router([route("http.request", consumer_a, path=r"^/chat/")])
    assert router.match("http.request", {"path": "/chat/room"}) is not None
    assert router.match("http.request", {"path": "/x/chat/"}) is None


def test_named_groups_become_kwargs_and_all_filters_must_match():
    router = Router([route("websocket.connect", consumer_a, path=r"^/room/(?P<room>\w+)/$", method=r"^GET$")])
    assert router.match("websocket.connect", {"path": "/room/lobby/", "method": "GET"}) == (consumer_a, {"room": "lobby"})
    assert router.match("websocket.connect", {"path": "/room/lobby/", "method": "POST"}) is None
    # A message without the filtered key does not match.
    assert router.match("websocket.connect", {"method": "GET"}) is None


def test_bytes_values_are_matched_too():
    router = Router([route("thumbnail", consumer_a, kind=r"^png$")])
    assert router.match("thumbnail", {"kind": b"png"}) == (consumer_a, {})


def test_include_strips_the_matched_prefix_and_merges_kwargs():
    router = Router([include("tests.test_routing.polls_routes", path=r"^/(?P<site>\w+)/polls")])
    consumer, kwargs = router.match("http.request", {"path": "/main/polls/42/"})
    assert consumer is consumer_a and kwargs == {"site": "main", "poll_id": "42"}
    assert router.match("websocket.connect", {"path": "/main/polls/live/"}) == (consumer_b, {"site": "main"})
    # The included filters see the remainder only: the unstripped path does not match them.
    assert router.match("http.request", {"path": "/42/"}) is None
    assert router.channels == {"http.request", "websocket.connect"}


def test_nested_includes():
    inner = [route("http.request", consumer_b, path=r"^/leaf/$")]
    router = Router([include([include(inner, path=r"^/b")], path=r"^/a")])
    assert router.match("http.request", {"path": "/a/b/leaf/"}) == (consumer_b, {})
    assert router.match("http.request", {"path": "/a/leaf/"}) is None


def test_route_class_routes_every_channel_of_the_class():
    router = Router([route_class(Chat, path=r"^/chat/(?P<room>\w+)/$")])
    assert router.channels == {"websocket.connect", "websocket.receive", "websocket.disconnect"}
    assert router.match("websocket.receive", {"path": "/chat/x/"}) == (Chat, {"room": "x"})
    assert router.match("http.request", {"path": "/chat/x/"}) is None


def test_consumer_by_dotted_path():
    assert Router([route("thumbnail", "tests.test_routing.consumer_a")]).match("thumbnail", {}) == (consumer_a, {})


@pytest.mark.parametrize(
    "make, error, text",
    [
        (lambda: route("http.request", consumer_a, path="/no-caret/"), ValueError, r"must start with '\^'"),
        (lambda: route("http.request", consumer_a, path=r"^/(unclosed"), ValueError, "not a valid regex"),
        (lambda: route("http.request", consumer_a, path=42), TypeError, "regex string"),
        (lambda: route("inbox!", consumer_a), ValueError, "normal channels only"),
        (lambda: route("http.request", "no.such.module.view"), ConfigError, "cannot import"),
        (lambda: route("http.request", 42), TypeError, "must be callable"),
        (lambda: route_class(consumer_a), TypeError, "consumer class"),
        (lambda: Router("tests.test_routing.consumer_a"), ConfigError, "must be a list"),
        (lambda: Router([route("a", consumer_a), "oops"]), ConfigError, r"\[1\] is 'oops'"),
    ],
)
def test_bad_routing_says_what_to_do(make, error, text):
    with pytest.raises(error, match=text):
        make()


def test_select_channels_globs():
    routed = {"http.request", "websocket.connect", "websocket.receive", "thumbnail"}
    assert select_channels(routed, only=["websocket.*"]) == ["websocket.connect", "websocket.receive"]
    assert select_channels(routed, exclude=["thumbnail"]) == ["http.request", "websocket.connect", "websocket.receive"]
    assert select_channels(routed, only=["websocket.*", "thumbnail"], exclude=["*.receive"]) == [
        "thumbnail", "websocket.connect"
    ]
    assert select_channels(routed) == sorted(routed)


def test_routing_module_that_raises_is_a_one_line_config_error(tmp_path, monkeypatch):
    (tmp_path / "buggy_routing_mod.py").write_text("channel_routing = []\nraise NameError('name undefined_consumer is not defined')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match=r"raised NameError: name undefined_consumer is not defined at .*buggy_routing_mod.py:2"):
        Router("buggy_routing_mod.channel_routing")
