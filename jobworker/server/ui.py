"""The web dashboard's static files (C{GET /ui/}), with strict security headers."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable

from twisted.web.iweb import IRequest

from ..errors import NotFound
from ..jobs.queries import onlyParameters
from .requests import _query

#: The content type of each kind of file the dashboard is made of.
CONTENT_TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".svg": b"image/svg+xml",
    ".txt": b"text/plain; charset=utf-8",
}


@dataclass(frozen=True)
class StaticFile:
    """One file of the dashboard, read once."""

    body: bytes
    contentType: bytes
    etag: bytes


def _load(folder: Traversable) -> dict[str, StaticFile]:
    files = {}
    for entry in folder.iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in CONTENT_TYPES:
            body = entry.read_bytes()
            etag = b'"' + hashlib.sha256(body).hexdigest()[:32].encode() + b'"'
            files[entry.name] = StaticFile(body, CONTENT_TYPES[suffix], etag)
    return files


class Dashboard:
    """
    The files of C{jobworker/data/ui}, by name (a flat folder: no paths, so
    nothing outside it can be named). They need no credentials: the page
    asks for a token and sends it with each of its API requests.
    """

    def __init__(self, folder: Traversable | None = None) -> None:
        if folder is None:
            folder = resources.files("jobworker").joinpath("data/ui")
        self._files = _load(folder)

    def serve(self, request: IRequest, name: str) -> bytes:
        """
        The file called C{name} (C{index.html} for C{/ui/}), or a 304 when the
        client's copy is current.

        @raise NotFound: for a name that is not one of the files.
        @raise BadRequest: a query string (the page routes by its fragment).
        """
        # (The security headers: set by the routes, and the request guard.)
        found = self._files.get(name)
        if found is None:
            # (Before the query's check: /ui/jobs?limit=100, jw's list with
            # the dashboard's address as its server, was "unknown query
            # parameter 'limit'": new user round 38.)
            raise NotFound("no such file of the dashboard")
        onlyParameters(_query(request), frozenset())
        request.setHeader(b"etag", found.etag)
        if request.getHeader(b"if-none-match") == found.etag:
            request.setResponseCode(304)
            return b""
        request.setHeader(b"content-type", found.contentType)
        return found.body
