"""The channel-layer contract every backend shares.

ASGI 1.0 channel layers (the Channels 1.x model): named channels carrying dict
messages, process-specific ``!`` channels, single-reader ``?`` channels, groups,
expiry and capacity.  Backends subclass :class:`BaseChannelLayer` and implement
the storage; names, capacity lookup and serialization live here once so that
every backend behaves the same.

Authentication lives here too, so every backend has it: a layer given keys
(:meth:`BaseChannelLayer.use_keys`; ``get_channel_layer`` passes the Django
settings' ``SECRET_KEY`` and ``SECRET_KEY_FALLBACKS``, or ``CONFIG["keys"]``)
signs every message it stores (HMAC-SHA256) or, with ``encrypt``, encrypts and
authenticates it (AES-GCM), and accepts only what one of its keys signed.  A
message that fails is counted (``rejected_count``), logged (rate-limited) and
handed to the receiver as an empty :class:`RejectedMessage`, which the worker
and the interface drop: it is never run.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import logging
import os
import random
import re
import secrets
import string
import threading
from typing import Any, Iterable

import msgpack

from ..logs import RateLimitedLog
from .history import HistoryRules

__all__ = [
    "BaseChannelLayer",
    "ChannelFull",
    "MessageTooLarge",
    "MAX_MESSAGE_SIZE",
    "MAX_NAME_LENGTH",
    "RejectedMessage",
]

logger = logging.getLogger(__name__)
_rejections = RateLimitedLog(logger)

#: Largest encoded message a layer accepts, in bytes (1 MiB).
MAX_MESSAGE_SIZE = 1024 * 1024
#: Default capacity of ``websocket.connect``: a burst of this many handshakes is queued, not refused.
CONNECT_CAPACITY = 1000
#: Default capacity of a web process's inbox (``interface.*``): every connection of the process
#: shares it, and a deploy's reconnect burst (with history: each join's notice) lands on it at once.
INBOX_CAPACITY = 2000
#: Channel and group names must be shorter than this.
MAX_NAME_LENGTH = 100

#: Decoding limits that fit the message limit: a 1 MiB message cannot decode into more
#: than this many arrays and maps in all (a msgpack "bomb" of empty arrays would make
#: one Python object per byte), nor carry ext types (never written here).
MAX_CONTAINERS = 65_536
_UNPACK_LIMITS = {
    "max_str_len": MAX_MESSAGE_SIZE, "max_bin_len": MAX_MESSAGE_SIZE, "max_array_len": MAX_CONTAINERS,
    "max_map_len": MAX_CONTAINERS, "max_ext_len": 0,
}
#: Payloads this small cannot hold enough containers to matter: decoded without counting them.
_COUNT_CONTAINERS_OVER = 16 * 1024

_CHANNEL_NAME = re.compile(r"^[a-zA-Z\d\-_.]+((\?|\!)[\d\w\-_.]*)?$")
_GROUP_NAME = re.compile(r"^[a-zA-Z\d\-_.]+$")
_RANDOM_ALPHABET = string.ascii_letters + string.digits
_names_random = random.Random(secrets.randbits(128))
# A forked child must not make the same names as its parent.
os.register_at_fork(after_in_child=lambda: _names_random.seed(secrets.randbits(128)))
_ALLOWED_TYPES = "dict, list, tuple, str, bytes, int, float, bool or None"


class ChannelFull(Exception):
    """The channel is at capacity: the message was not sent.

    The caller decides what to do: an interface server answers 503, a worker
    may retry later.  ``send_group`` never raises it.
    """


class MessageTooLarge(ValueError):
    """The encoded message is over :data:`MAX_MESSAGE_SIZE` bytes."""


class RejectedMessage(dict):
    """What a keyed layer's ``deserialize`` gives for a stored message that failed authentication
    (or could not be decoded): empty, so nothing in it can be acted on.  Receivers drop it."""

    __slots__ = ()

    def copy(self) -> "RejectedMessage":
        return RejectedMessage()


# Stored form of an authenticated message: a byte msgpack never starts an object with
# (0xc1 is "never used"), a mode, then the tag (HMAC) or nonce (AES-GCM), then the payload.
_MARK = 0xC1
_SIGNED, _ENCRYPTED = 1, 2
_TAG = 16
_NONCE = 12
_SIGN_CONTEXT = b"paas-channels layer messages: HMAC-SHA256 v1"
_ENCRYPT_CONTEXT = b"paas-channels layer messages: AES-256-GCM v1"


def _derive(secret: str | bytes, context: bytes) -> bytes:
    """A key for one purpose from a secret (never the secret itself, e.g. Django's SECRET_KEY)."""
    raw = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
    return hmac.new(raw, context, hashlib.sha256).digest()


def _reject_type(value: Any) -> Any:
    if isinstance(value, int):  # msgpack asks only for ints it cannot store
        raise ValueError(f"message contains an integer outside the 64-bit range: {value!r:.60}; send it as a str")
    raise TypeError(
        f"message values must be {_ALLOWED_TYPES}; got {type(value).__name__} "
        f"({value!r:.60}). Convert it first, e.g. str() for a date or list() for a set."
    )


class _Packers(threading.local):
    """One msgpack ``Packer`` per thread: making one per message costs more than packing it.

    (A ``Packer`` resets itself when packing raises, so a rejected message
    leaves nothing behind for the next one.)
    """

    def __init__(self) -> None:
        self.packer = msgpack.Packer(use_bin_type=True, default=_reject_type)


_packers = _Packers()


class BaseChannelLayer:
    """Shared behaviour of all channel layers.

    ``expiry``: seconds a message waits in a channel before it is dropped.
    ``group_expiry``: seconds a group membership lasts after the last ``group_add``.
    ``capacity``: messages a channel holds before ``send`` raises ``ChannelFull``.
    ``channel_capacity``: ``{glob: capacity}`` overrides, first match wins in
    the order given, e.g. ``{"http.request": 200, "websocket.send*": 20}``.

    Besides the ASGI 1.0 API every backend keeps worker heartbeats, readable
    from any process on the same layer: ``heartbeat(worker_id, info, ttl)``
    and ``heartbeats() -> {worker_id: info}`` (and ``aheartbeat``/``aheartbeats``).
    """

    extensions: list[str] = ["groups", "flush", "statistics", "heartbeats"]
    #: Who shares one layer: ``"process"`` (in-memory), ``"machine"`` (IPC) or
    #: ``"network"`` (Redis, RabbitMQ: processes on any dyno).
    reach: str = "network"
    # ASGI 1.0: the exceptions are attributes of every layer object (``layer.ChannelFull``).
    ChannelFull = ChannelFull
    MessageTooLarge = MessageTooLarge

    def __init__(
        self,
        expiry: float = 60,
        group_expiry: float = 86400,
        capacity: int = 100,
        channel_capacity: dict[str, int] | None = None,
    ) -> None:
        self.expiry = _positive_number("expiry", expiry)
        self.group_expiry = _positive_number("group_expiry", group_expiry)
        self.capacity = _positive_int("capacity", capacity)
        if channel_capacity is None:
            channel_capacity = {}
        if not isinstance(channel_capacity, dict):
            raise TypeError(
                "channel_capacity must be a dict of {glob: capacity}, e.g. "
                f'{{"http.request": 200}}; got {type(channel_capacity).__name__}'
            )
        self.channel_capacity = {
            str(pattern): _positive_int(f"channel_capacity[{pattern!r}]", value)
            for pattern, value in channel_capacity.items()
        }
        # Handshakes come in bursts (a deploy reconnects every client at once) and each
        # connect message is small: room for CONNECT_CAPACITY of them unless configured.
        if not any(fnmatch.fnmatchcase("websocket.connect", pattern) for pattern in self.channel_capacity):
            self.channel_capacity["websocket.connect"] = max(self.capacity, CONNECT_CAPACITY)
        # Appended after the configured globs, so any of them that matches an inbox wins.
        self.channel_capacity.setdefault("interface.*", max(self.capacity, INBOX_CAPACITY))
        # Globs compiled once: capacity is looked up on every send.
        self._capacity_patterns = [
            (re.compile(fnmatch.translate(pattern)), value)
            for pattern, value in self.channel_capacity.items()
        ]
        self._capacity_cache: dict[str, int] = {}

    ### Authentication ###

    #: Derived signing keys, the first signs; none: messages are stored unauthenticated.
    _sign_keys: tuple[bytes, ...] = ()
    _cipher_keys: tuple[Any, ...] = ()
    _warned_unauthenticated = False
    #: Stored messages this layer object refused (bad or missing signature, undecodable).
    rejected_count = 0

    def use_keys(self, keys: Iterable[str | bytes], encrypt: bool = False) -> None:
        """Authenticate every message from now on with ``keys`` (the first signs, any verifies:
        rotate by putting the new key first and keeping the old one until its messages expired).

        ``encrypt``: also encrypt (AES-256-GCM, needs the ``cryptography`` package), so
        whoever can read the layer's storage cannot read the messages either.
        """
        if isinstance(keys, (str, bytes)):
            keys = [keys]
        secrets_ = [key for key in keys if key]
        if not secrets_ or not all(isinstance(key, (str, bytes)) for key in secrets_):
            raise ValueError("layer keys must be a non-empty list of non-empty str or bytes secrets, "
                             "e.g. [settings.SECRET_KEY]")
        cipher_keys: tuple[Any, ...] = ()
        if encrypt:
            try:
                from cryptography.hazmat.primitives.ciphers.aead import AESGCM
            except ImportError:
                raise ValueError("encrypt=True needs the cryptography package: pip install "
                                 "'paas-channels[encrypt]'") from None
            cipher_keys = tuple(AESGCM(_derive(key, _ENCRYPT_CONTEXT)) for key in secrets_)
        self._sign_keys = tuple(_derive(key, _SIGN_CONTEXT) for key in secrets_)
        self._cipher_keys = cipher_keys

    @property
    def authenticated(self) -> bool:
        """Whether stored messages are signed (and checked) by this layer."""
        return bool(self._sign_keys)

    @property
    def encrypted(self) -> bool:
        return bool(self._cipher_keys)

    def _seal(self, data: bytes) -> bytes:
        if self._cipher_keys:
            nonce = os.urandom(_NONCE)
            return bytes((_MARK, _ENCRYPTED)) + nonce + self._cipher_keys[0].encrypt(nonce, data, None)
        if self._sign_keys:
            return bytes((_MARK, _SIGNED)) + hmac.digest(self._sign_keys[0], data, "sha256")[:_TAG] + data
        if not self._warned_unauthenticated and self.reach != "process":
            self._warned_unauthenticated = True
            logger.warning(
                "%s carries unauthenticated messages: anyone who can write to its storage can act as any "
                "client. Build it with get_channel_layer() (keys from SECRET_KEY) or call layer.use_keys([...])",
                type(self).__name__,
            )
        return data

    def _open(self, data: bytes) -> bytes | None:
        """The msgpack payload of a stored message, or None when it fails authentication."""
        data = bytes(data) if not isinstance(data, bytes) else data
        if len(data) >= 2 and data[0] == _MARK:
            mode = data[1]
            if mode == _SIGNED and len(data) >= 2 + _TAG:
                tag, payload = data[2:2 + _TAG], data[2 + _TAG:]
                if not self._sign_keys:
                    return payload  # an unkeyed layer checks nothing, signed or not
                for key in self._sign_keys:
                    if hmac.compare_digest(hmac.digest(key, payload, "sha256")[:_TAG], tag):
                        return payload
                return None
            if mode == _ENCRYPTED and self._cipher_keys and len(data) > 2 + _NONCE:
                nonce, sealed = data[2:2 + _NONCE], data[2 + _NONCE:]
                for cipher in self._cipher_keys:
                    try:
                        return cipher.decrypt(nonce, sealed, None)
                    except Exception:  # InvalidTag: not this key
                        continue
            return None
        return None if self._sign_keys else data

    def _reject(self, why: str) -> RejectedMessage:
        self.rejected_count += 1
        _rejections(logging.WARNING, f"{id(self)}:{why}",
                    "%s dropped a stored message: %s. Someone who can reach the layer wrote it, or a process "
                    "with another SECRET_KEY / CONFIG['keys'] did (%d dropped so far)",
                    type(self).__name__, why, self.rejected_count)
        return RejectedMessage()

    ### Names ###

    @staticmethod
    def valid_channel_name(name: Any, receive: bool = False) -> str:
        """Return ``name`` if it is a valid channel name, else raise.

        With ``receive=True`` a process-specific name must be given as its
        prefix ending in ``!`` (a process receives on its whole inbox).
        """
        if not isinstance(name, str):
            raise TypeError(f"channel name must be a str; got {type(name).__name__} {name!r:.60}")
        if len(name) >= MAX_NAME_LENGTH or not _CHANNEL_NAME.match(name):
            raise ValueError(
                f"invalid channel name {name!r:.120}: expected under {MAX_NAME_LENGTH} "
                "characters of ASCII letters, digits, '-', '_' or '.', optionally "
                "followed by one '!' or '?' and a suffix"
            )
        if receive and "!" in name and not name.endswith("!"):
            raise ValueError(
                f"cannot receive on {name!r}: receive on process-specific channels by "
                f"their prefix {name[: name.index('!') + 1]!r} instead; the full name "
                "is what receive() reports"
            )
        return name

    @staticmethod
    def valid_group_name(name: Any) -> str:
        """Return ``name`` if it is a valid group name, else raise."""
        if not isinstance(name, str):
            raise TypeError(f"group name must be a str; got {type(name).__name__} {name!r:.60}")
        if len(name) >= MAX_NAME_LENGTH or not _GROUP_NAME.match(name):
            raise ValueError(
                f"invalid group name {name!r:.120}: expected under {MAX_NAME_LENGTH} "
                "characters of ASCII letters, digits, '-', '_' or '.'"
            )
        return name

    def valid_receive_channels(self, channels: Iterable[str]) -> list[str]:
        """Validate the list given to ``receive``."""
        if isinstance(channels, str):
            raise TypeError(
                f"receive() takes a list of channel names; got the str {channels!r:.60}. "
                "Wrap it: receive([name])"
            )
        names = [self.valid_channel_name(name, receive=True) for name in channels]
        if not names:
            raise ValueError("receive() needs at least one channel name")
        return names

    @staticmethod
    def valid_new_channel_pattern(pattern: Any) -> str:
        if not isinstance(pattern, str):
            raise TypeError(f"new_channel pattern must be a str; got {type(pattern).__name__}")
        if not (pattern.endswith("?") or pattern.endswith("!")) or pattern.count("?") + pattern.count("!") != 1:
            raise ValueError(
                f"new_channel pattern {pattern!r:.120} must end with '?' (single-reader "
                "channel) or '!' (process-specific channel) and contain no other '?' or '!'"
            )
        BaseChannelLayer.valid_channel_name(pattern)
        return pattern

    @staticmethod
    def random_suffix(length: int = 12) -> str:
        """Random letters and digits making a channel name unique.

        Names are not secrets (only processes that reach the layer can send
        to it), so a generator seeded from the system's randomness will do:
        the interface makes a name per request on its event loop's thread,
        and a system call there (``secrets``) gives the GIL away to the
        worker threads of the combined mode, which may keep it for 5 ms.
        """
        return "".join(_names_random.choices(_RANDOM_ALPHABET, k=length))

    @staticmethod
    def non_local_name(name: str) -> str:
        """The part of a channel name that is stored: up to and including ``!``."""
        index = name.find("!")
        return name if index < 0 else name[: index + 1]

    ### Capacity ###

    def get_capacity(self, channel: str) -> int:
        """Capacity of ``channel``: the first matching ``channel_capacity`` glob, else ``capacity``.

        Process-specific channels share one capacity per ``!`` prefix, so the
        prefix is what is matched.
        """
        key = self.non_local_name(channel)
        try:
            return self._capacity_cache[key]
        except KeyError:
            pass
        capacity = self.capacity
        for pattern, value in self._capacity_patterns:
            if pattern.match(key):
                capacity = value
                break
        # Not for "?" names: one per request or conversation, each looked up a few times at most.
        if "?" not in key and len(self._capacity_cache) < 10_000:
            self._capacity_cache[key] = capacity
        return capacity

    ### Serialization ###

    def serialize(self, message: Any) -> bytes:
        """Encode a message dict with msgpack (bytes stay bytes, str stay str), signed or sealed
        when the layer has keys."""
        if not isinstance(message, dict):
            raise TypeError(f"a message must be a dict; got {type(message).__name__} {message!r:.60}")
        _check_keys(message, "message")
        try:
            data = _packers.packer.pack(message)
        except OverflowError as exc:
            raise ValueError(f"message contains an integer outside the 64-bit range: {exc}") from None
        except ValueError as exc:  # msgpack's own limits, e.g. nesting depth
            raise ValueError(f"message cannot be encoded: {exc}") from None
        if len(data) > MAX_MESSAGE_SIZE:
            raise MessageTooLarge(
                f"message is {len(data):,} bytes encoded; the limit is {MAX_MESSAGE_SIZE:,}. "
                "Send large bodies in chunks (HTTP bodies go through body_channel)."
            )
        return self._seal(data)

    def deserialize(self, data: bytes) -> dict:
        """A stored message: decoded when authentic, else an empty :class:`RejectedMessage` (counted)."""
        payload = self._open(data)
        if payload is None:
            return self._reject("missing or bad signature" if self._sign_keys else "undecodable envelope")
        if len(payload) > MAX_MESSAGE_SIZE:
            return self._reject(f"{len(payload):,} bytes, over the {MAX_MESSAGE_SIZE:,}-byte message limit")
        try:
            return _unpack(payload)
        except Exception as exc:  # garbage, or over the decoding limits
            return self._reject(f"not decodable ({type(exc).__name__}: {str(exc)[:80]})")

    ### Group history (opt-in; see layers/history.py) ###

    #: ``CONFIG["history"]`` checked; a layer that keeps history (its
    #: ``extensions`` name ``"history"``) sets its own from its CONFIG.
    history: HistoryRules = HistoryRules(None)

    def group_join(self, group: str, channel: str, since: tuple[str, int] | None = None) -> bool | None:
        """``group_add``, and for a history group, the join's notice and what ``channel`` missed.

        On a layer that keeps history, for a group that has it: puts on
        ``channel`` a notice (``{"history": {..., "recovered"}}``) and then the
        messages after ``since`` (``(epoch, offset)`` last seen), atomically
        with the membership.  Returns ``True`` (nothing lost), ``False`` (the
        history no longer covers the gap: nothing replayed) or ``None`` (no
        history for this group; a plain ``group_add``).
        """
        self.group_add(group, channel)
        return None

    async def agroup_join(self, group: str, channel: str, since: tuple[str, int] | None = None) -> bool | None:
        await self.agroup_add(group, channel)
        return None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} expiry={self.expiry} capacity={self.capacity}>"


class _TooManyContainers(ValueError):
    pass


def _unpack(payload: bytes) -> Any:
    """msgpack decoding within :data:`_UNPACK_LIMITS`; a large payload also within MAX_CONTAINERS in all."""
    if len(payload) <= _COUNT_CONTAINERS_OVER:
        return msgpack.unpackb(payload, raw=False, strict_map_key=False, **_UNPACK_LIMITS)
    budget = [MAX_CONTAINERS]

    def count(value: Any) -> Any:
        budget[0] -= 1
        if budget[0] < 0:
            raise _TooManyContainers(f"more than {MAX_CONTAINERS:,} arrays and maps")
        return value

    return msgpack.unpackb(payload, raw=False, strict_map_key=False, list_hook=count, object_hook=count,
                           **_UNPACK_LIMITS)


def _check_keys(mapping: dict, where: str) -> None:
    """Every dict key in a message is a str (ASGI 1.0: "unicode strings"), however deep.

    msgpack would store ``{1: "x"}`` as it is, and the receiver would get an
    int key; the sender hears about it here instead.  Walks dicts and lists
    only (the values a message may nest), so a flat message costs a loop.
    """
    for key, value in mapping.items():
        if type(key) is not str:
            raise TypeError(
                f"{where} has the key {key!r:.60} ({type(key).__name__}); message keys must be str, "
                f"e.g. {str(key)!r:.60}"
            )
        if isinstance(value, dict):
            _check_keys(value, f"{where}[{key!r}]")
        elif isinstance(value, (list, tuple)):
            _check_items(value, f"{where}[{key!r}]")


def _check_items(items: list | tuple, where: str) -> None:
    for index, value in enumerate(items):
        if isinstance(value, dict):
            _check_keys(value, f"{where}[{index}]")
        elif isinstance(value, (list, tuple)):
            _check_items(value, f"{where}[{index}]")


_PREFIX = re.compile(r"^[a-zA-Z\d_.\-]{1,40}$")


def _valid_prefix(prefix: Any) -> str:
    """A shared layer's ``prefix`` (it starts every key, queue or table name): 1-40 safe ASCII characters."""
    if not isinstance(prefix, str) or not _PREFIX.match(prefix):
        raise ValueError(f"prefix must be 1-40 ASCII letters, digits, '_', '.' or '-'; got {prefix!r:.60}")
    return prefix


def _positive_number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"{name} must be a positive number of seconds; got {value!r}")
    return value


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}")
    return value
