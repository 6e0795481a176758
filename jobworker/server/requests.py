"""What every request goes through: body caps, query parsing, CSRF, JSON answers."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import unquote_to_bytes

from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from twisted.web.server import Request
from zope.interface import implementer

from ..errors import (
    BadRequest,
    Forbidden,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from ..jobs.queries import parseOwner, parseStatus
from ..jobs.records import JobRecord
from ..jobs.selection import JobFilter, parseIdPrefix, parseLabelFilters, parseName
from ..jobs.validation import parseJSONObject

#: No inline script or style, nothing from another origin, no framing, no
#: forms posted anywhere: the page only talks to this server, with fetch.
CONTENT_SECURITY_POLICY = (
    b"default-src 'self'; script-src 'self'; style-src 'self'; "
    b"img-src 'self' data:; connect-src 'self'; object-src 'none'; "
    b"base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

#: Sent with everything under C{/ui/}, errors included.
SECURITY_HEADERS = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"cache-control", b"no-cache"),
)


def dashboardHeaders(request: IRequest) -> None:
    """Set the dashboard's L{SECURITY_HEADERS} on the answer to C{request}."""
    for header, value in SECURITY_HEADERS:
        request.setHeader(header, value)


#: The code a request is counted with in the metrics when its client went
#: before its answer was finished (nginx's "client closed request").
CLIENT_GONE = 499

#: The largest request body accepted.
MAX_BODY_BYTES = 64 * 1024


class BoundedRequest(Request):
    """
    A request that keeps at most C{maxBodyBytes + 1} bytes of its body, and
    reports itself to the site's metrics when it finishes.
    """

    maxBodyBytes = MAX_BODY_BYTES
    _bodyBytes = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # The API takes JSON only: no form body is ever parsed into args
        # (Twisted parses the content type of every POST with the email
        # package for that: 8% of the server's time per job created).
        kwargs.setdefault("parsePOSTFormSubmission", False)
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self._began = time.perf_counter()

    #: Whether it was counted in the site's metrics (once: L{finish}, or
    #: L{connectionLost} before it).
    _counted = False

    def finish(self) -> None:
        # (A follow whose client left is finished as its connection goes,
        # before the request is told: the transport stops its producer
        # first. Counted as a client gone too: session review 41. Looked
        # at before: a finished request lets go of its channel.)
        gone = self._clientGone()
        super().finish()  # type: ignore[no-untyped-call]
        self._count(CLIENT_GONE if gone else self.code)

    def _clientGone(self) -> bool:
        """Is the connection under this request's (TLS) transport gone?"""
        transport = getattr(getattr(self, "channel", None), "transport", None)
        for _ in range(3):  # (TLS over TCP: two layers, and a spare)
            if transport is None:
                return False
            if getattr(transport, "disconnected", False):
                return True
            transport = getattr(transport, "transport", None)
        return False

    def connectionLost(self, reason: Any) -> None:
        """
        The client went before the answer was finished: counted all the
        same, as C{499} (nginx's "client closed request"): a long poll left
        (C{jw wait} interrupted), or a login whose client hung up in its
        password check, was never counted at all (code review 41).
        """
        super().connectionLost(reason)  # type: ignore[no-untyped-call]
        if not self.finished:
            self._count(CLIENT_GONE)

    def _count(self, code: int) -> None:
        if self._counted:
            return
        self._counted = True
        # twisted.web sets self.site when it processes the request.
        metrics = getattr(getattr(self, "site", None), "metrics", None)
        if metrics is not None:
            metrics.request(
                self.path, code, time.perf_counter() - self._began, self.method
            )

    def _handleStar(self) -> None:
        """
        A request for C{*} (RFC 9112 3.2.4: a server-wide C{OPTIONS}): the
        API has no such target, whatever the method. twisted.web answered
        C{OPTIONS *} 200 with no credentials asked, and the others 405 with
        no body (attack round 32).
        """
        body = _json(
            self, {"error": "the request target * is not served: name a path"}, 400
        )
        self.setHeader(b"content-length", b"%d" % len(body))  # type: ignore[no-untyped-call]
        self.write(body)  # type: ignore[no-untyped-call]
        self.finish()

    def handleContentChunk(self, data: bytes) -> None:
        room = self.maxBodyBytes + 1 - self._bodyBytes
        if room > 0:
            chunk = data[:room]
            self._bodyBytes += len(chunk)
            super().handleContentChunk(chunk)  # type: ignore[no-untyped-call]
        if self._bodyBytes > self.maxBodyBytes:
            # A chunked body past the cap: answered now, not once all of
            # it has come (attacker round 33; a Content-Length over it is
            # answered at the headers).
            refuse = getattr(self.channel, "refuseBody", None)
            if refuse is not None:
                refuse(self.maxBodyBytes)


def boundedRequestClass(maxBodyBytes: int) -> type[BoundedRequest]:
    """A L{BoundedRequest} class with this body cap, for C{Site.requestFactory}."""
    return type("BoundedRequest", (BoundedRequest,), {"maxBodyBytes": maxBodyBytes})


#: The most characters of a host name (RFC 1035: 253 in ASCII; each
#: character of a Unicode name is one at least).
MAX_HOST_NAME = 253

#: Reason phrases twisted.web does not know ("Unknown Status" otherwise).
REASONS = {429: b"Too Many Requests", 431: b"Request Header Fields Too Large"}


def _json(request: IRequest, value: object, code: int = 200) -> bytes:
    request.setResponseCode(code, REASONS.get(code))
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(value, separators=(",", ":")).encode("utf-8") + b"\n"


def _recordJSON(request: IRequest, record: JobRecord) -> bytes:
    """
    A job's JSON. A final record's is encoded once: clients poll finished
    jobs, and the manager hands out the same final record each time.
    """
    if record.encoded is not None:
        request.setHeader(b"content-type", b"application/json")
        return record.encoded
    body = _json(request, record.toJSON())
    if record.final:
        record.encoded = body
    return body


def _query(request: IRequest) -> dict[bytes, list[bytes]]:
    """
    The URL's query parameters only: twisted.web also merges a form-encoded
    body into C{request.args}, and a JSON body must never count as a query.
    """
    # Parsed once per request: a handler asks for several parameters.
    parsed: dict[bytes, list[bytes]] | None = getattr(request, "_jobworkerQuery", None)
    if parsed is None:
        parsed = parseQuery(bytes(request.uri).partition(b"?")[2])
        request._jobworkerQuery = parsed  # type: ignore[attr-defined]
    return parsed


def parseQuery(query: bytes) -> dict[bytes, list[bytes]]:
    """
    C{a=1&b=%ff} -> C{{b"a": [b"1"], b"b": [b"\xff"]}}: bytes in, bytes out,
    whatever the bytes (the standard library's parse_qs fails on a
    percent-encoded byte that is not UTF-8).
    """
    parsed: dict[bytes, list[bytes]] = {}
    for field in query.split(b"&"):
        if not field:
            continue
        name, _, value = field.partition(b"=")
        parsed.setdefault(unquote_to_bytes(name.replace(b"+", b" ")), []).append(
            unquote_to_bytes(value.replace(b"+", b" "))
        )
    return parsed


def _arg(request: IRequest, name: bytes) -> str | None:
    values = _query(request).get(name)
    if not values:
        return None
    if len(values) > 1:
        raise BadRequest(f"query parameter {name.decode()} given more than once")
    try:
        return bytes(values[0]).decode("utf-8")
    except UnicodeDecodeError:
        return "\ufffd"


def _body(request: IRequest) -> bytes:
    assert request.content is not None
    request.content.seek(0)
    limit: int = getattr(request, "maxBodyBytes", MAX_BODY_BYTES)
    body = bytes(request.content.read(limit + 1))
    if len(body) > limit:
        raise PayloadTooLarge(f"request body over {limit} bytes")
    return body


#: The most bytes of jobs one list response holds (then it pages early).
MAX_LIST_BYTES = 4 << 20

#: Methods that change state: only from a JSON client of this origin.
STATE_CHANGING = frozenset({b"POST", b"PUT", b"PATCH", b"DELETE"})


def refuseCrossSite(
    request: IRequest, contentTypes: tuple[bytes, ...] = (b"application/json",)
) -> None:
    """
    The CSRF defence, for state-changing requests: a browser on another
    site can send a form (C{text/plain}, no body at all) with the user's
    credentials or client certificate, but not C{application/json} without
    a CORS preflight, which this server never grants (it sends no CORS
    headers). And a browser says where a request comes from.

    @raise Forbidden: C{Sec-Fetch-Site: cross-site}, or an C{Origin} other
        than this server's own.
    @raise UnsupportedMediaType: no C{Content-Type: application/json}.
    """
    if request.method not in STATE_CHANGING:
        return
    site = request.getHeader(b"sec-fetch-site")
    if site is not None and site.strip().lower() == b"cross-site":
        raise Forbidden("cross-site requests may not change anything")
    origin = request.getHeader(b"origin")
    if origin is not None:
        host = request.getHeader(b"host") or b""
        if origin.strip().lower() != b"https://" + host.strip().lower():
            raise Forbidden("requests from another origin may not change anything")
    contentType = request.getHeader(b"content-type") or b""
    if contentType.split(b";")[0].strip().lower() not in contentTypes:
        # Neither type can come from an HTML form without a CORS preflight.
        raise UnsupportedMediaType(
            "a request that changes something needs Content-Type: "
            + " or ".join(t.decode() for t in contentTypes)
        )


def _noBody(request: IRequest) -> None:
    """@raise BadRequest: a body other than nothing or an empty JSON object
    (C{{}}, C{{ }}, as the OpenAPI document's C{maxProperties: 0}); a body
    of blanks alone is no JSON."""
    body = _body(request)
    if body and body != b"{}" and parseJSONObject(body):
        raise BadRequest("this request takes no body (or {})")


#: Headers the server decides by, which a request may give once only.
_DECIDING_HEADERS = (
    (b"authorization", "the Authorization header"),
    (b"content-type", "the Content-Type header"),
    (b"host", "the Host header"),
)

#: The methods whose routes read a body, so that its C{Content-Encoding}
#: matters.
_READS_A_BODY = frozenset({b"POST", b"DELETE"})


@implementer(IResource)
class _RequestGuard:
    """
    What every request meets before routing. The dashboard's security
    headers on all of C{/ui}. A path that is not UTF-8 once percent-decoded
    (C{/jobs/%ff}) is a 400 JSON error: Klein would fail decoding it with a
    500. And a
    method that is not all capitals (C{post}) as one no route has: methods
    are case-sensitive (RFC 9110 9.1), but werkzeug's routing capitalises
    them, so C{post} would reach the POST handler, whose CSRF check (like
    any C{request.method} test) would not know it.

    @param allowedMethods: the methods a path has routes for.
    """

    isLeaf = True

    def __init__(
        self,
        inner: IResource,
        allowedMethods: Callable[[str], Iterable[str]] = lambda path: (),
    ) -> None:
        self._inner = inner
        self._allowedMethods = allowedMethods

    def getChildWithDefault(self, name: bytes, request: IRequest) -> IResource:
        return self

    def putChild(self, path: bytes, child: IResource) -> None:
        raise NotImplementedError("the API has no children to add")

    def render(self, request: IRequest) -> bytes | int:
        if request.path == b"/ui" or request.path.startswith(b"/ui/"):
            # The dashboard's headers go with every answer under /ui (its
            # routes set them too, for /ui spelled otherwise: //ui/, /%75i/).
            dashboardHeaders(request)
        try:
            path = b"/".join(request.postpath or []).decode("utf-8")
        except UnicodeDecodeError:
            return _json(request, {"error": "the path is not valid UTF-8"}, 400)
        headers = request.requestHeaders
        for name, said in _DECIDING_HEADERS:
            if len(headers.getRawHeaders(name, ())) > 1:
                # The last one was taken: a proxy that reads the first saw
                # another user than the one served and audited (code
                # review round 32).
                return _json(request, {"error": f"{said} given twice"}, 400)
        for coding in headers.getRawHeaders(b"content-encoding", ()):
            # Only where a route reads a body (the operations that list a
            # 415): a GET's is never read (round 33: it was refused).
            if request.method in _READS_A_BODY and coding.strip().lower() not in (
                b"",
                b"identity",
            ):
                # (A gzip body was read as it came, as plain JSON.)
                return _json(
                    request,
                    {"error": "no Content-Encoding is taken: send the body plain"},
                    415,
                )
        try:
            # As the routing will take it (werkzeug: the name, IDNA-encoded).
            host = request.getRequestHostname().decode("utf-8").partition(":")[0]
            if len(host) > MAX_HOST_NAME:
                # Refused before its IDNA encoding: 8,000 non-ASCII letters
                # took 21 ms of the server's thread (attacker round 37).
                return _json(
                    request,
                    {"error": "the Host header is longer than a host name can be"},
                    400,
                )
            host.encode("idna")
        except UnicodeError:
            # (Klein answered one not UTF-8 in HTML, and werkzeug one that is
            # no host name, a..b, with a 500: each logged a traceback.)
            return _json(
                request, {"error": "the Host header is not a host name in UTF-8"}, 400
            )
        method = bytes(request.method)
        if method != method.upper():
            allowed = sorted(self._allowedMethods("/" + path))
            if not allowed:
                return _json(request, {"error": "no such route"}, 404)
            request.setHeader(b"allow", ", ".join(allowed).encode("ascii"))
            return _json(
                request,
                {"error": "method not allowed (methods are case-sensitive)"},
                405,
            )
        return self._inner.render(request)  # type: ignore[no-any-return]


#: The query parameters that filter a listing (L{jobSelection}).
FILTERS = ("status", "owner", "name", "label", "id_prefix")


def jobSelection(request: IRequest) -> JobFilter:
    """The job filter of a listing's (or bulk delete's) query."""
    return JobFilter(
        status=parseStatus(_arg(request, b"status")),
        owner=parseOwner(_arg(request, b"owner")),
        name=parseName(_arg(request, b"name")),
        labels=parseLabelFilters(
            [v.decode("utf-8", "replace") for v in _query(request).get(b"label", [])]
        ),
        idPrefix=parseIdPrefix(_arg(request, b"id_prefix")),
    )
