"""Django's error reports without the secrets paas-channels settings hold.

Django's ``SafeExceptionReporterFilter`` hides settings whose *name* looks
secret (``SECRET_KEY``, ``PASSWORD``...), but a Redis or AMQP URL sits inside
``CHANNEL_LAYERS["default"]["CONFIG"]["hosts"]``, under names that look
harmless, and the ``DEBUG=1`` technical 500 page would show its password.
:class:`SecretsFilter` also masks the password of every URL and the ``keys``
of every layer ``CONFIG``.  ``configure()`` installs it as
``DEFAULT_EXCEPTION_REPORTER_FILTER`` unless the project chose another.
"""

from __future__ import annotations

import re
from typing import Any

from django.views.debug import SafeExceptionReporterFilter

__all__ = ["SecretsFilter"]

# scheme://user:password@host -> scheme://user:********************@host
_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z\d+.-]*://[^:/@\s]*:)(?P<password>[^@/\s]+)(?=@)")
_SECRET_KEYS = re.compile(r"^(keys|password|symmetric_encryption_keys)$", re.I)


class SecretsFilter(SafeExceptionReporterFilter):
    """Django's filter, plus: URL passwords anywhere in settings, layer ``keys``/``password`` values."""

    def cleanse_setting(self, key: Any, value: Any) -> Any:
        if isinstance(key, str) and _SECRET_KEYS.match(key):
            return self.cleansed_substitute
        cleansed = super().cleanse_setting(key, value)
        return _mask_urls(cleansed, self.cleansed_substitute)


def _mask_urls(value: Any, substitute: str) -> Any:
    if isinstance(value, str):
        return _URL_PASSWORD.sub(lambda match: match["head"] + substitute, value)
    if isinstance(value, (list, tuple)):
        return type(value)(_mask_urls(item, substitute) for item in value)
    return value
