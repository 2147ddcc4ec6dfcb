"""RabbitMQ URLs: parse and check ``amqp://``/``amqps://``, redact passwords, read the environment.

Kept apart from the connection so that settings, ``check`` and ``status`` can
use it without importing the AMQP client.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

__all__ = ["ENV_VARIABLES", "AMQPUrl", "config_from_env", "parse_url", "redact_url", "url_from_env"]

#: Read in this order; the first one set wins.  CloudAMQP (the Heroku add-on)
#: sets ``CLOUDAMQP_URL``; ``RABBITMQ_URL`` is the generic name.
ENV_VARIABLES = ("CLOUDAMQP_URL", "RABBITMQ_URL")
_SCHEMES = {"amqp": 5672, "amqps": 5671}


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***``: safe for logs, errors and ``repr``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname or ''}"
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is not None:
        netloc += f":{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


@dataclass(frozen=True)
class AMQPUrl:
    """A checked broker URL: what to connect to (``url``) and what to show (``redacted``)."""

    url: str
    redacted: str
    password: str
    host: str
    port: int
    vhost: str

    def __repr__(self) -> str:  # the dataclass one would show the password
        return f"AMQPUrl({self.redacted!r})"

    def scrub(self, text: str) -> str:
        """``text`` (e.g. a client's error message) with the password taken out."""
        if self.password:
            for secret in {self.password, quote(self.password, safe="")}:
                text = text.replace(secret, "***")
        return text


def parse_url(url: Any, heartbeat: float | None = None, name: str = "CONFIG['url']") -> AMQPUrl:
    """Check ``url`` and return it with the client options this layer wants.

    ``heartbeat`` (seconds) is added to the query unless the URL has one, so a
    dead connection is noticed in about twice that time.  Errors name the
    accepted schemes and never the password.
    """
    if not isinstance(url, str) or not url.strip():
        raise ValueError(
            f"{name} must be a broker URL such as amqp://user:password@host:5672/vhost; got {type(url).__name__}"
        )
    url = url.strip()
    shown = redact_url(url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValueError(f"{name} {shown!r} is not a valid URL: expected amqp://user:password@host:5672/vhost") from None
    if parts.scheme not in _SCHEMES:
        raise ValueError(
            f"{name} scheme {parts.scheme!r} is not supported; use amqp:// or amqps:// "
            f"(e.g. amqp://guest:guest@127.0.0.1:5672/%2F); got {shown!r}"
        )
    if not parts.hostname:
        raise ValueError(f"{name} {shown!r} has no host: expected amqp://user:password@host:5672/vhost")
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    if heartbeat is not None and "heartbeat" not in query:
        query["heartbeat"] = str(max(1, round(heartbeat)))
    full = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), parts.fragment))
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    return AMQPUrl(
        url=full,
        redacted=redact_url(full),
        password=unquote(parts.password or ""),
        host=parts.hostname,
        port=port or _SCHEMES[parts.scheme],
        vhost=vhost,
    )


def url_from_env(environ: Mapping[str, str]) -> tuple[str, str] | None:
    """``(variable, url)`` of the first of :data:`ENV_VARIABLES` that is set, else ``None``."""
    for variable in ENV_VARIABLES:
        value = (environ.get(variable) or "").strip()
        if value:
            return variable, value
    return None


def config_from_env(environ: Mapping[str, str]) -> dict[str, Any] | None:
    """The layer's ``CONFIG`` (``{"url": ...}``) from ``CLOUDAMQP_URL``/``RABBITMQ_URL``, checked; ``None`` if unset."""
    found = url_from_env(environ)
    if found is None:
        return None
    variable, url = found
    parse_url(url, name=f"environment variable {variable}")
    return {"url": url}
