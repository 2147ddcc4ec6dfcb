"""redis-py's private internals are named in ONE module: ``paas_channels/layers/redis/transport.py``.

An AST scan (no import) of the whole package: any other module naming one of
them, or importing from a private redis-py module (``redis._parsers``), fails.
"""

from __future__ import annotations

import ast
from pathlib import Path

import paas_channels

PACKAGE = Path(paas_channels.__file__).resolve().parent
TRANSPORT = PACKAGE / "layers" / "redis" / "transport.py"

# Private to redis-py whatever object they are read from.
_ALWAYS = {"_sock", "_parser", "read_from_socket", "_next_response", "_HiredisParser", "_AsyncHiredisParser", "_RESP2Parser", "_RESP3Parser"}
# Common names elsewhere too (asyncio streams): private to redis-py in a module that uses redis.
_IN_REDIS_MODULES = {"_reader", "_writer", "_buffer", "_stream"}


def _uses_redis(tree: ast.AST) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(alias.name.split(".")[0] == "redis" for alias in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "redis":
            return True
    return False


def private_redis_names(source: str, filename: str = "<source>") -> list[str]:
    """``line: name`` for each private redis-py name or import in ``source``."""
    tree = ast.parse(source, filename)
    names = _ALWAYS | (_IN_REDIS_MODULES if _uses_redis(tree) else set())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in names:
            found.append(f"{node.lineno}: .{node.attr}")
        elif isinstance(node, ast.Name) and node.id in _ALWAYS:
            found.append(f"{node.lineno}: {node.id}")
        elif isinstance(node, ast.ImportFrom) and node.module:
            parts = node.module.split(".")
            if parts[0] == "redis" and any(part.startswith("_") for part in parts):
                found.append(f"{node.lineno}: from {node.module} import ...")
            found += [f"{node.lineno}: import {alias.name}" for alias in node.names if alias.name in _ALWAYS]
        elif isinstance(node, ast.Import):
            found += [
                f"{node.lineno}: import {alias.name}"
                for alias in node.names
                if alias.name.split(".")[0] == "redis" and any(part.startswith("_") for part in alias.name.split("."))
            ]
    return found


def test_only_the_transport_names_redis_py_internals():
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == TRANSPORT:
            continue
        found = private_redis_names(path.read_text(), str(path))
        if found:
            offenders[str(path.relative_to(PACKAGE))] = found
    assert not offenders, (
        f"redis-py internals outside layers/redis/transport.py: {offenders}; "
        "move that code into the transport (which checks at import that they exist)"
    )


def test_the_transport_is_where_they_are():
    # The scan must see them where they are, or it proves nothing.
    assert private_redis_names(TRANSPORT.read_text())


def test_the_scan_catches_each_way_of_naming_them():
    assert private_redis_names("def f(conn):\n    return conn._sock\n")
    assert private_redis_names("from redis._parsers.hiredis import NOT_ENOUGH_DATA\n")
    assert private_redis_names("import redis._parsers.hiredis\n")
    assert private_redis_names("import redis\n\ndef f(conn):\n    conn._writer.write(b'')\n")
    assert private_redis_names("def f(p):\n    return p.read_from_socket()\n")
    # asyncio's own stream attributes are fine where redis is not used.
    assert not private_redis_names("def f(self):\n    return self._writer\n")
    assert not private_redis_names("from redis.exceptions import ConnectionError\n")
