"""Redis host specifications for the Redis channel layer: parse, describe, build pools.

A host is given as a URL (``redis://``, ``rediss://``, ``unix://``), a
``(host, port)`` tuple, or a dict of connection keywords (optionally with an
``address`` that is one of the first two, as channels_redis accepts).  Each
becomes a :class:`RedisHost`: neutral connection keywords plus a transport
kind, from which :mod:`.transport` builds a sync (redis-py) and an asyncio pool.  No
error message here ever contains a password.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass, field
from typing import Any, Mapping
from urllib.parse import parse_qs, urlsplit, urlunsplit

import redis.connection

from ...exceptions import ConfigError

__all__ = ["RedisHost", "hosts_from_env", "parse_hosts", "redact_url"]

logger = logging.getLogger(__name__)

DEFAULT_URL = "redis://127.0.0.1:6379/0"
_SCHEMES = ("redis", "rediss", "unix")
_SCHEMES_TEXT = "redis://, rediss:// or unix://"
_CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
# Keywords the layer sets itself; a host may not override them.
_RESERVED = {"decode_responses", "connection_class", "parser_class", "retry"}


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for logs and errors)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if parts.password is None:
        # Without a scheme nothing is parsed: hide whatever precedes an '@'.
        return "***@" + url.rsplit("@", 1)[1] if "@" in url and not parts.netloc else url
    user = parts.username or ""
    host = parts.hostname or ""
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    netloc = f"{user}:***@{host}{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


@dataclass(frozen=True)
class RedisHost:
    """One Redis server: transport kind (``tcp``, ``ssl``, ``unix``) and connection keywords."""

    kind: str
    kwargs: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def __repr__(self) -> str:
        # The keywords may hold a password: shown only where the host is.
        return f"RedisHost({self.kind!r}, {self.describe()!r})"

    def describe(self) -> str:
        """Where this host is, for messages: ``host:port`` or the socket path; never a password."""
        if self.kind == "unix":
            return f"unix:{self.kwargs.get('path')}"
        scheme = "rediss" if self.kind == "ssl" else "redis"
        return f"{scheme}://{self.kwargs.get('host', '127.0.0.1')}:{self.kwargs.get('port', 6379)}"

    def secrets(self) -> list[str]:
        """Values that must never appear in a message (to scrub third-party errors)."""
        return [str(self.kwargs[name]) for name in ("password", "ssl_password") if self.kwargs.get(name)]

    def pool_kwargs(self, socket_timeout: float) -> dict[str, Any]:
        """Connection keywords for a pool of this host (:mod:`.transport` builds the pools)."""
        kwargs: dict[str, Any] = {"socket_timeout": socket_timeout, "socket_connect_timeout": 5}
        if self.kind != "unix":
            kwargs["socket_keepalive"] = True
        kwargs.update(self.kwargs)
        kwargs["decode_responses"] = False
        return kwargs


def parse_hosts(hosts: Any) -> list[RedisHost]:
    """Turn the ``hosts`` setting into :class:`RedisHost` objects (``None``: local Redis)."""
    if hosts is None:
        hosts = [DEFAULT_URL]
    if isinstance(hosts, (str, dict)) or (isinstance(hosts, tuple) and len(hosts) == 2 and isinstance(hosts[1], int)):
        hosts = [hosts]
    if not isinstance(hosts, (list, tuple)) or not hosts:
        raise ValueError(
            "hosts must be a non-empty list of Redis URLs, (host, port) tuples or dicts of "
            f"connection keywords, e.g. [{DEFAULT_URL!r}]; got {type(hosts).__name__}"
        )
    return [_parse_host(host, index) for index, host in enumerate(hosts)]


def _parse_host(host: Any, index: int) -> RedisHost:
    where = f"hosts[{index}]"
    if isinstance(host, str):
        return _parse_url(host, where)
    if isinstance(host, (tuple, list)):
        return _parse_address(host, where)
    if isinstance(host, dict):
        extra = dict(host)
        address = extra.pop("address", None)
        reserved = _RESERVED & set(extra)
        if reserved:
            raise ValueError(f"{where}: {', '.join(sorted(reserved))} is set by the layer; remove it")
        if address is None:
            base = RedisHost("ssl" if extra.pop("ssl", False) else "tcp", {})
        elif isinstance(address, str):
            base = _parse_url(address, where)
        else:
            base = _parse_address(address, where)
        kind = base.kind
        if extra.pop("ssl", False) and kind == "tcp":
            kind = "ssl"
        return _checked(RedisHost(kind, {**base.kwargs, **extra}), where)
    raise TypeError(
        f"{where} must be a Redis URL ({_SCHEMES_TEXT}), a (host, port) tuple or a dict of "
        f"connection keywords; got {type(host).__name__}"
    )


def _parse_address(address: Any, where: str) -> RedisHost:
    if (
        not isinstance(address, (tuple, list))
        or len(address) != 2
        or not isinstance(address[0], str)
        or isinstance(address[1], bool)
        or not isinstance(address[1], int)
    ):
        raise ValueError(f"{where} must be a (host, port) pair such as ('127.0.0.1', 6379); got {address!r:.80}")
    return RedisHost("tcp", {"host": address[0], "port": address[1]})


def _parse_url(url: str, where: str) -> RedisHost:
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in _SCHEMES:
        shown = f"scheme {scheme!r}" if scheme else "no scheme"
        raise ValueError(f"{where}: Redis URL {redact_url(url)!r} has {shown}; use {_SCHEMES_TEXT}")
    try:
        kwargs = redis.connection.parse_url(url)
        if scheme != "unix":
            urlsplit(url).port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        reason = str(exc)
        password = urlsplit(url).password if "@" in url else None
        if password:
            reason = reason.replace(password, "***")
        raise ValueError(f"{where}: invalid Redis URL {redact_url(url)!r}: {reason}") from None
    kwargs.pop("connection_class", None)
    kind = {"redis": "tcp", "rediss": "ssl", "unix": "unix"}[scheme]
    return _checked(RedisHost(kind, kwargs), where)


def _checked(host: RedisHost, where: str) -> RedisHost:
    kwargs = dict(host.kwargs)
    if "ssl_cert_reqs" in kwargs:
        if host.kind != "ssl":
            raise ValueError(f"{where}: ssl_cert_reqs only applies to rediss:// hosts")
        reqs = kwargs["ssl_cert_reqs"]
        if reqs is None or (isinstance(reqs, str) and reqs.lower() == "none"):
            reqs = ssl.CERT_NONE
        elif isinstance(reqs, str):
            if reqs.lower() not in _CERT_REQS:
                raise ValueError(f"{where}: ssl_cert_reqs must be none, optional or required; got {reqs!r}")
            reqs = _CERT_REQS[reqs.lower()]
        kwargs["ssl_cert_reqs"] = reqs
        if reqs == ssl.CERT_NONE:
            # Python refuses CERT_NONE while hostname checking is on.
            kwargs["ssl_check_hostname"] = False
    return RedisHost(host.kind, kwargs)


def hosts_from_env(environ: Mapping[str, str]) -> dict[str, Any] | None:
    """The layer ``CONFIG`` (``{"hosts": [...]}``) from ``REDIS_TLS_URL`` or ``REDIS_URL``.

    ``REDIS_TLS_URL`` wins over ``REDIS_URL``; several comma-separated URLs are
    shards.  On Heroku (``DYNO`` is set) a ``rediss://`` URL that does not say
    otherwise gets ``ssl_cert_reqs=None``: Heroku Redis presents a self-signed
    certificate, so verification would always fail there; everywhere else
    certificates are verified unless the URL itself says ``?ssl_cert_reqs=none``.
    Returns ``None`` when neither variable is set.
    """
    for name in ("REDIS_TLS_URL", "REDIS_URL"):
        value = (environ.get(name) or "").strip()
        if value:
            break
    else:
        return None
    urls = [part.strip() for part in value.split(",") if part.strip()]
    hosts: list[Any] = []
    for index, url in enumerate(urls):
        try:
            _parse_url(url, f"{name}[{index}]" if len(urls) > 1 else name)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        query = parse_qs(urlsplit(url).query)
        if url.lower().startswith("rediss://") and "DYNO" in environ and "ssl_cert_reqs" not in query:
            hosts.append({"address": url, "ssl_cert_reqs": None})
        else:
            hosts.append(url)
    return {"hosts": hosts}

