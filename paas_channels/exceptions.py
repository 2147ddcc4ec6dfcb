"""Exceptions shared across paas_channels."""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured

__all__ = ["ConfigError"]


class ConfigError(ImproperlyConfigured):
    """A setting, option or environment variable is wrong.

    The message says what was expected, what was found and what to do; it
    never contains a password.
    """
