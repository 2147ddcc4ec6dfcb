"""Channels 4 for the full-deploy scenario: channels_redis with room for one group's burst.

channels_redis counts a Daphne process's capacity over all its connections,
so its default 100 skips group messages to 200 connections of one process;
5000, like this project's ``interface.*`` capacity in settings_history, keeps
what is measured to what a deploy loses.
"""

from .settings_channels4 import *  # noqa: F401,F403

PEER_CAPACITY = 5000
CHANNEL_LAYERS["default"]["CONFIG"]["capacity"] = PEER_CAPACITY  # noqa: F405
