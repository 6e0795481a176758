"""The REST API: Klein routes that read like the API description."""

from __future__ import annotations

import functools
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any, Concatenate, ParamSpec
from urllib.parse import unquote_to_bytes

from klein import Klein
from prometheus_client import CONTENT_TYPE_LATEST
from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred, DeferredList, succeed
from twisted.internet.interfaces import IConsumer, IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from twisted.web.server import Request
from werkzeug.exceptions import HTTPException
from zope.interface import implementer

from ..auth.audit import AuditLog
from ..auth.authenticator import REALM, Authenticator, clientAddress
from ..auth.permissions import Permission, User, authorize
from ..auth.tokens import fingerprint
from ..errors import (
    BadRequest,
    Forbidden,
    JobworkerError,
    NotFound,
    PayloadTooLarge,
    TooManyRequests,
    Unauthorized,
    UnsupportedMediaType,
)
from ..jobs.combined import STREAMS, CombinedReader, combinedId, parseCombinedId
from ..jobs.manager import JobManager
from ..jobs.records import JobRecord, rfc3339
from ..jobs.spool import FileProducer, OutputSource, SpoolReader, tailOffsetSoon
from ..jobs.store import StoreError
from ..jobs.validation import (
    onlyParameters,
    parseBool,
    parseCursor,
    parseJobId,
    parseJobRequest,
    parseLimit,
    parseOffset,
    parseOwner,
    parseStatus,
    parseStream,
    parseTail,
    parseWait,
)
from ..metrics import Metrics
from .sse import EventStream, parseLastEventId

#: The API's OpenAPI 3.1 document, kept in the package and served as is.
OPENAPI = resources.files("jobworker").joinpath("data/openapi.json").read_bytes()

#: The largest request body accepted.
MAX_BODY_BYTES = 64 * 1024

P = ParamSpec("P")
Handler = Callable[Concatenate["JobsAPI", IRequest, User, P], Awaitable[Any]]
Route = Callable[Concatenate["JobsAPI", IRequest, P], Awaitable[Any]]


class BoundedRequest(Request):
    """
    A request that keeps at most C{maxBodyBytes + 1} bytes of its body, and
    reports itself to the site's metrics when it finishes.
    """

    maxBodyBytes = MAX_BODY_BYTES
    _bodyBytes = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self._began = time.perf_counter()

    def finish(self) -> None:
        super().finish()  # type: ignore[no-untyped-call]
        # twisted.web sets self.site when it processes the request.
        metrics = getattr(getattr(self, "site", None), "metrics", None)
        if metrics is not None:
            metrics.request(self.path, self.code, time.perf_counter() - self._began)

    def handleContentChunk(self, data: bytes) -> None:
        room = self.maxBodyBytes + 1 - self._bodyBytes
        if room > 0:
            chunk = data[:room]
            self._bodyBytes += len(chunk)
            super().handleContentChunk(chunk)  # type: ignore[no-untyped-call]


def boundedRequestClass(maxBodyBytes: int) -> type[BoundedRequest]:
    """A L{BoundedRequest} class with this body cap, for C{Site.requestFactory}."""
    return type("BoundedRequest", (BoundedRequest,), {"maxBodyBytes": maxBodyBytes})


def _json(request: IRequest, value: object, code: int = 200) -> bytes:
    request.setResponseCode(code)
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


def refuseCrossSite(request: IRequest) -> None:
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
    if contentType.split(b";")[0].strip().lower() != b"application/json":
        raise UnsupportedMediaType(
            "a request that changes something needs Content-Type: application/json"
        )


def _noBody(request: IRequest) -> None:
    """@raise BadRequest: a body other than nothing or C{{}}."""
    body = _body(request).strip()
    if body and body != b"{}":
        raise BadRequest("this request takes no body (or {})")


def guarded(
    permission: Permission, *parameters: str, tokens: bool = True
) -> Callable[[Handler[P]], Route[P]]:
    """
    Authenticate the request and check C{permission} before the handler;
    refuse query parameters other than C{parameters}, and bearer tokens
    unless C{tokens}.
    """
    allowed = frozenset(parameters)

    def decorate(handler: Handler[P]) -> Route[P]:
        async def wrapper(
            self: JobsAPI, request: IRequest, /, *args: P.args, **kwargs: P.kwargs
        ) -> Any:
            user = await self._authenticator.authenticate(request, tokens)
            try:
                refuseCrossSite(request)
                authorize(user, permission)
                onlyParameters(_query(request), allowed)
                return await handler(self, request, user, *args, **kwargs)
            except Forbidden as e:
                self._audit(request, "access.denied", user, "refused", reason=e.message)
                raise

        functools.update_wrapper(wrapper, handler)
        return wrapper

    return decorate


class JobsAPI:
    """
    The HTTP face of a L{JobManager}. Each handler authenticates, authorises
    through the permission table, then calls the manager.
    """

    app = Klein()
    log = Logger()

    def __init__(
        self,
        manager: JobManager,
        authenticator: Authenticator,
        clock: IReactorTime,
        metrics: Metrics | None = None,
        audit: AuditLog | None = None,
        maxStreams: int = 1000,
        maxStreamsPerUser: int | None = None,
    ) -> None:
        self._manager = manager
        self._auditLog = audit
        self._maxStreams = maxStreams
        #: One user may hold this many of the log streams (a quarter of them
        #: by default), so others can still follow their own jobs.
        self._maxStreamsPerUser = (
            maxStreamsPerUser
            if maxStreamsPerUser is not None
            else max(1, maxStreams // 4)
        )
        self._streamsBy: Counter[str] = Counter()
        self._authenticator = authenticator
        self._clock = clock
        self._metrics = metrics
        self._streams: set[Deferred[None]] = set()
        #: The connection of each open log response (to close at shutdown).
        self._streamChannels: dict[Deferred[None], Any] = {}

    def resource(self) -> IResource:
        """The API as a web resource (what the Site serves)."""
        return _EncodingGuard(self.app.resource())

    def _audit(
        self, request: IRequest, event: str, user: User, result: str, **fields: Any
    ) -> None:
        if self._auditLog is not None:
            self._auditLog.record(
                event, user.name, clientAddress(request), result, **fields
            )

    # -- errors: the one mapping from domain errors to HTTP --------------------

    @app.handle_errors(JobworkerError)
    def _domainError(self, request: IRequest, failure: Failure) -> bytes:
        error = failure.value
        assert isinstance(error, JobworkerError)
        if isinstance(error, Unauthorized):
            request.setHeader(
                b"www-authenticate", f'Basic realm="{REALM}"'.encode("ascii")
            )
        elif isinstance(error, TooManyRequests):
            request.setHeader(b"retry-after", str(error.retryAfter).encode("ascii"))
        return _json(request, error.body(), error.code)

    @app.handle_errors(StoreError)
    def _storeError(self, request: IRequest, failure: Failure) -> bytes:
        self.log.error(
            "store error on {method} {path}: {error}",
            method=request.method,
            path=request.path,
            error=str(failure.value),
        )
        request.setHeader(b"retry-after", b"5")
        return _json(
            request,
            {
                "error": "the job store cannot be used right now (is the state "
                "dir's disk full?): try again"
            },
            503,
        )

    @app.handle_errors(HTTPException)
    def _routingError(self, request: IRequest, failure: Failure) -> bytes:
        error = failure.value
        assert isinstance(error, HTTPException)
        code = error.code or 500
        if code in (301, 302, 307, 308):
            code = 404  # werkzeug would redirect "//" paths: no such route here
        if code == 405 and error.valid_methods:  # type: ignore[attr-defined]
            methods = ", ".join(error.valid_methods)  # type: ignore[attr-defined]
            request.setHeader(b"allow", methods.encode("ascii"))
        message = {404: "no such route", 405: "method not allowed"}.get(
            code, error.name.lower()
        )
        return _json(request, {"error": message}, code)

    @app.handle_errors(Exception)
    def _unexpectedError(self, request: IRequest, failure: Failure) -> bytes | None:
        if failure.check(CancelledError):
            return None
        self.log.failure(
            "unexpected error on {method} {path}",
            failure,
            method=request.method,
            path=request.path,
        )
        return _json(request, {"error": "internal server error"}, 500)

    # -- routes ----------------------------------------------------------------

    @app.route("/jobs", methods=["POST"])
    @guarded(Permission.CREATE)
    async def createJob(self, request: IRequest, user: User) -> bytes:
        jobRequest = parseJobRequest(_body(request))
        record = self._manager.create(jobRequest, owner=user.name, account=user.account)
        result = "refused"
        try:
            # Slurm answers sbatch asynchronously; locally this is at once.
            record = await self._manager.accepted(record)
            result = record.status.value
        finally:
            # Audited whatever happens: accepted, 503, or the client gone.
            self._audit(
                request,
                "job.create",
                user,
                result,
                job=record.id,
                command=record.command,
                args=len(record.args),
                run_as=record.run_as,
            )
        request.setHeader(b"location", f"/jobs/{record.id}".encode("ascii"))
        return _json(request, record.toJSON(), 201)

    @app.route("/jobs", methods=["GET"])
    @guarded(Permission.GET, "status", "owner", "limit", "cursor")
    async def listJobs(self, request: IRequest, user: User) -> bytes:
        records, following = self._manager.page(
            status=parseStatus(_arg(request, b"status")),
            owner=parseOwner(_arg(request, b"owner")),
            limit=parseLimit(_arg(request, b"limit")),
            before=parseCursor(_arg(request, b"cursor")),
        )
        # Bounded in bytes as well as in count: past MAX_LIST_BYTES the page
        # ends early, and the cursor carries on from the last job in it.
        parts: list[bytes] = []
        size = 0
        for index, record in enumerate(records):
            encoded = json.dumps(record.toJSON(), separators=(",", ":")).encode()
            if parts and size + len(encoded) > MAX_LIST_BYTES:
                following = records[index - 1].seq
                break
            parts.append(encoded)
            size += len(encoded) + 1
        cursor = b"null" if following is None else b'"%d"' % following
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"application/json")
        return b'{"jobs":[' + b",".join(parts) + b'],"next_cursor":' + cursor + b"}\n"

    @app.route("/tokens", methods=["POST"])
    @guarded(Permission.TOKENS, tokens=False)
    async def createToken(self, request: IRequest, user: User) -> bytes:
        _noBody(request)
        signer = self._authenticator.tokens
        if signer is None:
            raise NotFound("tokens are not enabled")
        token, expires = signer.issue(user.name, user.role.value)
        self._audit(
            request,
            "token.issue",
            user,
            "issued",
            token=fingerprint(token),
            expires_at=rfc3339(expires),
        )
        request.setHeader(b"cache-control", b"no-store")
        return _json(
            request,
            {"token": token, "expires_at": rfc3339(expires), "user": user.name},
            201,
        )

    @app.route("/openapi.json", methods=["GET"])
    @guarded(Permission.GET)
    async def openapi(self, request: IRequest, user: User) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        return OPENAPI

    @app.route("/metrics", methods=["GET"])
    @guarded(Permission.METRICS)
    async def metrics(self, request: IRequest, user: User) -> bytes:
        if self._metrics is None:
            raise NotFound("metrics are not enabled")
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        return self._metrics.render()

    @app.route("/healthz", methods=["GET"])
    async def health(self, request: IRequest) -> bytes:
        # No authentication and no details: fit for a load balancer's probe.
        return _json(request, {"status": "ok"})

    @app.route("/jobs/<jobId>", methods=["GET"])
    @app.route("/jobs/<jobId>/status", methods=["GET"])
    @guarded(Permission.GET, "wait")
    async def jobStatus(self, request: IRequest, user: User, jobId: str) -> bytes:
        record = self._manager.record(parseJobId(jobId))
        wait = parseWait(_arg(request, b"wait"))
        if wait and not record.status.ended:
            ended = self._manager.whenEnded(record.id)
            try:
                record = await ended.addTimeout(wait, self._clock)
            except defer.TimeoutError:
                record = self._manager.record(record.id)
        return _recordJSON(request, record)

    @app.route("/jobs/<jobId>", methods=["DELETE"])
    @guarded(Permission.DELETE)
    async def deleteJob(self, request: IRequest, user: User, jobId: str) -> bytes:
        _noBody(request)
        record = self._manager.record(parseJobId(jobId))
        authorize(user, Permission.DELETE, owner=record.owner)
        self._manager.delete(record.id)
        self._audit(request, "job.delete", user, "ok", job=record.id)
        return _json(request, {"deleted": record.id})

    @app.route("/jobs/<jobId>/stop", methods=["POST"])
    @guarded(Permission.STOP)
    async def stopJob(self, request: IRequest, user: User, jobId: str) -> bytes:
        _noBody(request)
        record = self._manager.record(parseJobId(jobId))
        authorize(user, Permission.STOP, owner=record.owner)
        self._audit(request, "job.stop", user, "requested", job=record.id)
        stopped = await self._manager.stop(record.id, by=user.name)
        return _json(request, stopped.toJSON())

    @app.route("/jobs/<jobId>/logs", methods=["GET"])
    @guarded(Permission.LOGS, "stream", "offset", "tail", "follow", "format")
    async def jobLogs(self, request: IRequest, user: User, jobId: str) -> bytes:
        record = self._manager.record(parseJobId(jobId))
        authorize(user, Permission.LOGS, owner=record.owner)
        if len(self._streams) >= self._maxStreams:
            raise TooManyRequests(
                f"{len(self._streams)} log streams are open, the most this server "
                "allows",
                retryAfter=1,
            )
        if self._streamsBy[user.name] >= self._maxStreamsPerUser:
            raise TooManyRequests(
                f"you have {self._streamsBy[user.name]} log streams open, the "
                "most one user may",
                retryAfter=1,
            )
        self._track(request, user.name)
        stream = parseStream(_arg(request, b"stream"))
        offset = parseOffset(_arg(request, b"offset"))
        tail = parseTail(_arg(request, b"tail"))
        sse = _wantsEvents(request)
        follow = parseBool(_arg(request, b"follow"), "follow", default=sse)
        if stream == "combined":
            return await self._combined(request, record, sse, follow, offset, tail)
        spool = self._manager.output(record.id, stream)
        lastEventId = request.getHeader(b"last-event-id") if sse else None
        resume = (
            None
            if lastEventId is None
            else parseLastEventId(lastEventId.decode("utf-8", "replace"), stream)
        )
        if resume is not None:
            offset = resume
        elif tail is not None:
            # The last lines, but none before offset (if given).
            offset = max(
                offset,
                await tailOffsetSoon(self._clock, spool.path, spool.size, tail),
            )
        dropped = record.stdout_dropped if stream == "stdout" else record.stderr_dropped
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"x-job-status", record.status.value.encode("ascii"))
        request.setHeader(b"x-output-truncated", b"true" if dropped else b"false")
        request.setHeader(b"x-output-dropped", str(dropped).encode("ascii"))
        request.setHeader(b"x-output-offset", str(offset).encode("ascii"))
        if sse:
            return await self._events(request, record.id, stream, spool, offset, follow)
        request.setHeader(b"content-type", b"application/octet-stream")
        if not follow:
            length = max(0, spool.size - offset)
            request.setHeader(b"content-length", str(length).encode("ascii"))
        await self._send(SpoolReader(spool, IConsumer(request), offset, follow))
        return b""

    async def _events(
        self,
        request: IRequest,
        jobId: str,
        stream: str,
        spool: OutputSource,
        offset: int,
        follow: bool,
    ) -> bytes:
        """The logs route as Server-Sent Events, ending with an C{end} event."""
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-cache")
        events = EventStream(IConsumer(request), stream, offset, self._clock)
        try:
            await self._send(SpoolReader(spool, events, offset, follow))
            await self._endEvents(events, jobId, (stream,), follow)
        finally:
            events.close()
        return b""

    async def _combined(
        self,
        request: IRequest,
        record: JobRecord,
        sse: bool,
        follow: bool,
        offset: int,
        tail: int | None,
    ) -> bytes:
        """
        Both streams interleaved in arrival order: raw bytes, or SSE events
        (C{stdout}/C{stderr}) whose ids C{combined:<stdout>:<stderr>} hold
        both offsets, so C{Last-Event-ID} resumes with no gap or repeat.
        C{offset} counts combined bytes; C{tail} starts each stream at its
        own last C{tail} lines.
        """
        streams = (
            self._manager.output(record.id, "stdout"),
            self._manager.output(record.id, "stderr"),
        )
        position = (0, 0)
        if tail is not None:
            position = (
                await tailOffsetSoon(
                    self._clock, streams[0].path, streams[0].size, tail
                ),
                await tailOffsetSoon(
                    self._clock, streams[1].path, streams[1].size, tail
                ),
            )
        order = self._manager.order(record.id)
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"x-job-status", record.status.value.encode("ascii"))
        dropped = record.stdout_dropped + record.stderr_dropped
        request.setHeader(b"x-output-truncated", b"true" if dropped else b"false")
        request.setHeader(b"x-output-dropped", str(dropped).encode("ascii"))
        consumer = IConsumer(request)
        if not sse:
            request.setHeader(b"content-type", b"application/octet-stream")
            if not follow:
                length = sum(
                    max(0, source.size - start)
                    for source, start in zip(streams, position, strict=True)
                )
                length = max(0, length - offset)
                request.setHeader(b"content-length", str(length).encode("ascii"))
            await self._send(
                CombinedReader(
                    streams,
                    order,
                    consumer,
                    lambda _, data: consumer.write(data),
                    position,
                    follow,
                    offset,
                    self._clock,
                )
            )
            return b""
        lastEventId = request.getHeader(b"last-event-id")
        if lastEventId is not None:
            resumed = parseCombinedId(lastEventId.decode("utf-8", "replace"))
            if resumed is not None:
                position, offset = resumed, 0
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-cache")
        events = EventStream(consumer, "combined", 0, self._clock)

        def sink(index: int, data: bytes) -> None:
            events.output(STREAMS[index], data, combinedId(reader.position))

        reader = CombinedReader(
            streams, order, events, sink, position, follow, offset, self._clock
        )
        try:
            await self._send(reader)
            await self._endEvents(events, record.id, STREAMS, follow)
        finally:
            events.close()
        return b""

    async def _endEvents(
        self, events: EventStream, jobId: str, streams: tuple[str, ...], follow: bool
    ) -> None:
        """C{truncated} events where output was dropped, then C{end}."""
        record = self._manager.record(jobId)
        if not (follow or record.status.ended):
            return
        if follow:
            record = await self._manager.whenEnded(jobId)
        for stream in streams:
            dropped = getattr(record, f"{stream}_dropped")
            if dropped:
                events.send("truncated", {"stream": stream, "dropped": dropped})
        events.send("end", record.toJSON())

    async def _send(self, reader: FileProducer) -> None:
        try:
            await reader.start()
        except CancelledError:
            reader.stopProducing()
            raise

    def _track(self, request: IRequest, user: str) -> None:
        """Remember an open log response until it is finished or lost."""
        finished: Deferred[None] = request.notifyFinish()  # type: ignore[attr-defined]
        self._streams.add(finished)
        self._streamsBy[user] += 1
        channel = getattr(request, "channel", None)
        if channel is not None:
            self._streamChannels[finished] = channel

        def done(result: object) -> None:
            self._streams.discard(finished)
            self._streamsBy[user] -= 1
            if self._streamsBy[user] <= 0:
                del self._streamsBy[user]
            whenClosed = getattr(channel, "whenClosed", None)
            if result is not None or whenClosed is None:
                # The client went away: nothing to close at shutdown.
                self._streamChannels.pop(finished, None)
            else:
                # Its last bytes may still be on their way: keep it until
                # its connection closes, so a shutdown can wait for them.
                whenClosed().addCallback(
                    lambda _: self._streamChannels.pop(finished, None)
                )

        finished.addBoth(done)

    def drain(self, timeout: float = 5.0) -> Deferred[None]:
        """
        At shutdown, after the jobs ended: let every open log response send
        its last bytes and its end (chunked terminator, SSE C{end} event),
        then close its connection and wait until it is closed, so the bytes
        have left the process before the reactor stops. Bounded by
        C{timeout} seconds in all.
        """
        channels = list(self._streamChannels.values())
        pending = list(self._streams)
        if not pending and not channels:
            return succeed(None)
        return Deferred.fromCoroutine(self._drain(pending, channels, timeout))

    async def _drain(
        self, pending: list[Deferred[None]], channels: list[Any], timeout: float
    ) -> None:
        deadline = self._clock.seconds() + timeout

        async def bounded(waits: list[Deferred[Any]]) -> None:
            if not waits:
                return
            left = max(0.0, deadline - self._clock.seconds())
            both = DeferredList(waits, consumeErrors=True)
            await both.addTimeout(left, self._clock).addErrback(lambda _: None)

        await bounded(pending)
        # A client whose stream just ended may ask one more thing on the
        # same connection (jw asks for the job's final status): let each
        # connection fall quiet before closing it.
        while self._clock.seconds() < deadline and any(
            getattr(channel, "idleFor", lambda: float("inf"))() < LINGER
            for channel in channels
        ):
            await deferLater(self._clock, 0.05, lambda: None)
        closing = []
        for channel in channels:
            whenClosed = getattr(channel, "whenClosed", None)
            if whenClosed is None:
                continue
            closing.append(whenClosed())
            channel.loseConnection()
        await bounded(closing)


#: At shutdown, how long a follower's connection must have been quiet
#: before it is closed (time for its client's last request).
LINGER = 0.3


@implementer(IResource)
class _EncodingGuard:
    """
    Answer a path that is not UTF-8 once percent-decoded (C{/jobs/%ff}) with
    a 400 JSON error: Klein would fail decoding it with a 500.
    """

    isLeaf = True

    def __init__(self, inner: IResource) -> None:
        self._inner = inner

    def getChildWithDefault(self, name: bytes, request: IRequest) -> IResource:
        return self

    def putChild(self, path: bytes, child: IResource) -> None:
        raise NotImplementedError("the API has no children to add")

    def render(self, request: IRequest) -> bytes | int:
        try:
            b"/".join(request.postpath or []).decode("utf-8")
        except UnicodeDecodeError:
            return _json(request, {"error": "the path is not valid UTF-8"}, 400)
        return self._inner.render(request)  # type: ignore[no-any-return]


def _wantsEvents(request: IRequest) -> bool:
    """SSE when asked by C{?format=sse} or C{Accept: text/event-stream}."""
    form = _arg(request, b"format")
    if form is not None:
        if form not in ("raw", "sse"):
            raise BadRequest("format must be raw or sse")
        return form == "sse"
    accept = request.getHeader(b"accept") or b""
    return b"text/event-stream" in accept
