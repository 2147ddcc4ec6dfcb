"""get_channel_layer() from settings.CHANNEL_LAYERS, and its errors."""

from __future__ import annotations

import pytest
from django.test import override_settings

from paas_channels.layers import (
    ConfigError,
    InMemoryChannelLayer,
    build_channel_layer,
    get_channel_layer,
    has_channel_layers,
    reset_channel_layers,
)


@pytest.fixture(autouse=True)
def fresh_layers():
    reset_channel_layers()
    yield
    reset_channel_layers()


def test_layer_built_once_per_alias():
    layer = get_channel_layer()
    assert isinstance(layer, InMemoryChannelLayer)
    assert get_channel_layer() is layer
    assert get_channel_layer("default") is layer


def test_config_passed_to_backend():
    layers = {
        "default": {
            "BACKEND": "paas_channels.layers.InMemoryChannelLayer",
            "CONFIG": {"expiry": 5, "capacity": 7, "channel_capacity": {"http.request": 9}},
        }
    }
    with override_settings(CHANNEL_LAYERS=layers):
        layer = get_channel_layer()
    assert (layer.expiry, layer.capacity, layer.get_capacity("http.request")) == (5, 7, 9)


@pytest.mark.parametrize(
    "config, inbox, connect, other",
    [
        ({}, 2000, 1000, 100),  # the defaults: room for a deploy's reconnect burst
        ({"capacity": 5000}, 5000, 5000, 5000),  # never below capacity
        ({"channel_capacity": {"interface.*": 50}}, 50, 1000, 100),  # configured: theirs
        ({"channel_capacity": {"*": 10}}, 10, 10, 10),  # any configured glob that matches wins
    ],
)
def test_web_inbox_and_connect_capacity_defaults(config, inbox, connect, other):
    layer = InMemoryChannelLayer(**config)
    reply_channel = "interface.web-1.a1b2c3!d4e5f6"
    assert layer.get_capacity(reply_channel) == inbox
    assert layer.get_capacity("websocket.connect") == connect
    assert layer.get_capacity("http.request") == other


def test_wrong_backend_path_names_the_setting():
    layers = {"default": {"BACKEND": "paas_channels.layers.NoSuchLayer"}}
    with override_settings(CHANNEL_LAYERS=layers):
        with pytest.raises(ConfigError) as info:
            get_channel_layer()
    message = str(info.value)
    assert "CHANNEL_LAYERS['default']['BACKEND']" in message
    assert "'paas_channels.layers.NoSuchLayer' cannot be imported" in message
    assert "paas_channels.layers.RedisChannelLayer" in message  # says what to use


def test_backend_that_is_not_a_layer():
    with override_settings(CHANNEL_LAYERS={"default": {"BACKEND": "collections.OrderedDict"}}):
        with pytest.raises(ConfigError, match="is not a channel layer class"):
            get_channel_layer()


def test_bad_config_keyword_names_the_setting():
    layers = {"default": {"BACKEND": "paas_channels.layers.InMemoryChannelLayer", "CONFIG": {"hostz": []}}}
    with override_settings(CHANNEL_LAYERS=layers):
        with pytest.raises(ConfigError, match=r"CHANNEL_LAYERS\['default'\]\['CONFIG'\].*hostz"):
            get_channel_layer()


def test_bad_config_value_names_the_setting():
    layers = {"default": {"BACKEND": "paas_channels.layers.InMemoryChannelLayer", "CONFIG": {"capacity": -3}}}
    with override_settings(CHANNEL_LAYERS=layers):
        with pytest.raises(ConfigError, match=r"CONFIG.*capacity must be a positive integer; got -3"):
            get_channel_layer()


def test_missing_backend_key():
    with override_settings(CHANNEL_LAYERS={"default": {"CONFIG": {}}}):
        with pytest.raises(ConfigError, match="must be a dict with a 'BACKEND' dotted path"):
            get_channel_layer()


def test_unknown_alias_lists_defined_ones():
    with pytest.raises(ConfigError, match="no alias 'other'; defined: 'default'"):
        get_channel_layer("other")


def test_no_channel_layers_setting():
    with override_settings(CHANNEL_LAYERS=None):
        assert not has_channel_layers()
        with pytest.raises(ConfigError, match="CHANNEL_LAYERS is not set.*run wsgi"):
            get_channel_layer()


def test_build_channel_layer_from_class():
    layer = build_channel_layer(InMemoryChannelLayer, {"expiry": 2})
    assert layer.expiry == 2
