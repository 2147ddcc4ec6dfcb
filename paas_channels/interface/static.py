"""Static files for the interface server, served in-process from WhiteNoise's index.

The web process answers ``STATIC_URL`` itself so a page's CSS and JS never cost
a worker hop and keep loading while workers restart.  WhiteNoise's
framework-free core does the hard parts (one ``stat`` per file at start,
pre-compressed ``.gz``/``.br`` variants chosen by ``Accept-Encoding``, ETags,
ranges); this module only adapts its WSGI-shaped responses to ASGI and reads
large files off the event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Awaitable, Callable

from django.conf import settings
from whitenoise.base import WhiteNoise

from ..runtime.wsgi import finder_files

logger = logging.getLogger(__name__)

__all__ = ["StaticFiles"]

#: Bytes read per chunk; files larger than one chunk are read in a thread.
_READ_CHUNK = 64 * 1024
#: Hash Django's ManifestStaticFilesStorage inserts: ``app.3f2a9c1b0d4e.css``.
_HASHED_NAME = re.compile(r"\.[0-9a-f]{12}\.[^/.]+$")

Send = Callable[[dict], Awaitable[None]]


class StaticFiles:
    """An index of static files served at URL ``prefix``: the files under ``root``,
    or, with ``root=None``, the apps' static folders (Django's finders).

    Files whose names carry a content hash (listed in ``staticfiles.json``, or
    matching Django's hash pattern when there is no manifest) get a ten-year
    ``immutable`` cache header; every other file ``max_age`` seconds.
    """

    def __init__(self, root: str | os.PathLike | None, prefix: str, max_age: int = 60) -> None:
        self.root = Path(root) if root is not None else None
        self.prefix = "/" + prefix.strip("/") + "/"
        self._hashed = self._manifest_names()
        self._whitenoise = WhiteNoise(
            None,
            max_age=max_age,
            immutable_file_test=self._is_immutable,
        )
        if self.root is not None:
            self._whitenoise.add_files(str(self.root), self.prefix)
            where = str(self.root)
        else:
            for url, path in finder_files(self.prefix):
                if url not in self._whitenoise.files:  # the first finder wins, as in collectstatic
                    self._whitenoise.add_file_to_dictionary(url, path)
            where = "the apps' static folders (no STATIC_ROOT: run collectstatic for compressed, hashed files)"
        logger.info("static files: %d from %s served at %s", len(self._whitenoise.files), where, self.prefix)

    @classmethod
    def from_settings(cls) -> "StaticFiles | None":
        """Build from ``STATIC_URL``/``STATIC_ROOT``, or None (with a log line) when there is nothing to serve.

        Before ``collectstatic`` has filled ``STATIC_ROOT`` the files come straight
        from the apps' static folders, so a fresh project still gets its CSS
        without a worker hop.
        """
        static_url = getattr(settings, "STATIC_URL", None)
        static_root = getattr(settings, "STATIC_ROOT", None)
        if not static_url:
            logger.info("static files: not served (STATIC_URL is not set)")
            return None
        if "://" in str(static_url) or str(static_url).startswith("//"):
            logger.info("static files: STATIC_URL %s is on another host; not served here", static_url)
            return None
        if static_root and Path(static_root).is_dir():
            return cls(static_root, str(static_url))
        if "django.contrib.staticfiles" in settings.INSTALLED_APPS:
            return cls(None, str(static_url))
        logger.warning(
            "static files: STATIC_ROOT %s does not exist, so %s answers 404; run "
            "`python manage.py collectstatic --noinput` in the build step",
            static_root, static_url,
        )
        return None

    def lookup(self, path: str) -> Any | None:
        """The WhiteNoise entry for a URL path, or None when it is not a static file."""
        if not path.startswith(self.prefix):
            return None
        return self._whitenoise.files.get(path)

    async def serve(self, entry: Any, scope: dict, send: Send) -> None:
        """Send ``entry``'s response (200, 304, 206, 405...) for this request."""
        environ = {
            "HTTP_" + name.decode("latin1").upper().replace("-", "_"): value.decode("latin1")
            for name, value in scope.get("headers", ())
        }
        response = entry.get_response(scope["method"], environ)
        headers = [(name.lower().encode("latin1"), str(value).encode("latin1")) for name, value in response.headers]
        await send({"type": "http.response.start", "status": int(response.status), "headers": headers})
        if response.file is None:
            await send({"type": "http.response.body", "body": b""})
            return
        length = int(dict(response.headers).get("Content-Length", _READ_CHUNK + 1))
        loop = asyncio.get_running_loop()
        try:
            while True:
                # A small file is one quick read; only big ones leave the loop's thread.
                if length <= _READ_CHUNK:
                    chunk = response.file.read(_READ_CHUNK)
                else:
                    chunk = await loop.run_in_executor(None, response.file.read, _READ_CHUNK)
                more = len(chunk) == _READ_CHUNK
                await send({"type": "http.response.body", "body": chunk, "more_body": more})
                if not more:
                    return
        finally:
            response.file.close()

    ### Internals ###

    def _manifest_names(self) -> frozenset[str]:
        if self.root is None:
            return frozenset()
        manifest = self.root / "staticfiles.json"
        try:
            data = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return frozenset()
        paths = data.get("paths", {}) if isinstance(data, dict) else {}
        return frozenset(str(name) for name in paths.values())

    def _is_immutable(self, path: str, url: str) -> bool:
        name = url[len(self.prefix):]
        if self._hashed:
            return name in self._hashed
        return bool(_HASHED_NAME.search(name))
