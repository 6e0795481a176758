"""The REST API: Klein routes that read like the API description."""

from __future__ import annotations

import functools
import hashlib
import json
import math
import signal
from collections.abc import Awaitable, Callable
from dataclasses import replace
from importlib import resources
from typing import Any, Concatenate, ParamSpec

from klein import Klein
from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from werkzeug.exceptions import HTTPException

from ..auth.audit import AuditLog
from ..auth.authenticator import (
    REALM,
    Authenticator,
    chainEnds,
    clientAddress,
    peerCertificate,
)
from ..auth.permissions import Permission, User, authorize, grants, onlyOwnJobs
from ..auth.tokens import fingerprint
from ..errors import (
    BadRequest,
    Forbidden,
    JobworkerError,
    LeftoversStopped,
    NotFound,
    ServiceUnavailable,
    TooManyRequests,
    Unauthorized,
)
from ..jobs.buckets import TokenBuckets
from ..jobs.manager import JobManager
from ..jobs.queries import (
    onlyParameters,
    parseAge,
    parseBool,
    parseCursor,
    parseLimit,
    parseOffset,
    parseWait,
)
from ..jobs.records import JobRecord, rfc3339
from ..jobs.stopping import StopRequest, parseStopRequest
from ..jobs.store import StoreError
from ..jobs.validation import parseJobId, parseJobRequest, parseJSONObject
from ..metrics import METRICS_TYPE, Metrics
from .deadlines import markAuthenticated
from .logs import LogStreams
from .reloads import Reloads
from .requests import (
    FILTERS,
    MAX_LIST_BYTES,
    _arg,
    _body,
    _json,
    _noBody,
    _query,
    _recordJSON,
    _RequestGuard,
    dashboardHeaders,
    jobSelection,
    refuseCrossSite,
)
from .turns import Turns
from .ui import Dashboard
from .unread import UnreadAnswers

#: The API's OpenAPI 3.1 document, kept in the package and served as is.
OPENAPI = resources.files("jobworker").joinpath("data/openapi.json").read_bytes()


P = ParamSpec("P")
Handler = Callable[Concatenate["JobsAPI", IRequest, User, P], Awaitable[Any]]
Route = Callable[Concatenate["JobsAPI", IRequest, P], Awaitable[Any]]


def guarded(
    permission: Permission,
    *parameters: str,
    tokens: bool = True,
    bodyType: bytes = b"application/json",
) -> Callable[[Handler[P]], Route[P]]:
    """
    Authenticate the request and check C{permission} before the handler;
    refuse query parameters other than C{parameters}, bearer tokens unless
    C{tokens}, and a state change whose body is not C{bodyType}.
    """
    allowed = frozenset(parameters)

    def decorate(handler: Handler[P]) -> Route[P]:
        async def wrapper(
            self: JobsAPI, request: IRequest, /, *args: P.args, **kwargs: P.kwargs
        ) -> Any:
            user = await self._authenticator.authenticate(request, tokens)
            markAuthenticated(request, user.name)
            # What an authenticated request is answered is no cache's to keep
            # (a job's output may hold secrets; a browser with a client
            # certificate kept it on disk: attacker round 27).
            request.setHeader(b"cache-control", b"no-store")
            try:
                refuseCrossSite(request, (bodyType,))
                authorize(user, permission)
                onlyParameters(_query(request), allowed)
                return await handler(self, request, user, *args, **kwargs)
            except Forbidden as e:
                # Once a minute per user: a loop of refusals changes nothing.
                if self._auditLog is not None:
                    # (Naming the job and the permission: the lines said
                    # neither: auth review 37.)
                    jobId = kwargs.get("jobId")
                    self._auditLog.recordSparsely(
                        "access.denied",
                        user.name,
                        clientAddress(request),
                        "refused",
                        perJob=False,
                        reason=e.message,
                        permission=e.permission or permission.value,
                        **({"job": jobId} if isinstance(jobId, str) else {}),
                    )
                raise

        functools.update_wrapper(wrapper, handler)
        return wrapper

    return decorate


def challenge(request: IRequest) -> bytes:
    """
    The C{WWW-Authenticate} challenge of a 401: C{Basic}, but C{Bearer} for
    a request a page's script sent (C{fetch}: a C{Sec-Fetch-Mode} other than
    C{navigate}, set by the browser and never by the script).

    A browser answers a Basic challenge to a script's credentialed request
    (the dashboard's certificate login) with its own password dialog in
    front of the page, which headless chromium waits on for ever; a page
    logs in by itself. No browser prompts for Bearer, the scheme the page
    uses once logged in.
    """
    mode = request.getHeader(b"sec-fetch-mode")
    script = mode is not None and mode.strip().lower() != b"navigate"
    return f'{"Bearer" if script else "Basic"} realm="{REALM}"'.encode("ascii")


#: The most jobs one C{DELETE /jobs} deletes (C{"more": true} says to go on).
MAX_CLEAN = 1000


#: The most characters of a command C{job.create} audits (a request may
#: hold 32 KiB of it, and a command that cannot run costs nothing else).
AUDIT_COMMAND_CHARS = 256


def auditedCommand(command: str) -> dict[str, object]:
    """
    A command as the audit log names it: whole if short, else its first
    L{AUDIT_COMMAND_CHARS} characters, its length and its SHA-256.
    """
    if len(command) <= AUDIT_COMMAND_CHARS:
        return {"command": command}
    return {
        "command": command[:AUDIT_COMMAND_CHARS],
        "command_chars": len(command),
        "command_sha256": hashlib.sha256(
            command.encode("utf-8", "replace")
        ).hexdigest(),
    }


#: Tokens a user may be issued: one a second, after a burst of ten.
TOKEN_RATE = 1.0
TOKEN_BURST = 10.0


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
        dashboard: Dashboard | None = None,
        reloads: Reloads | None = None,
    ) -> None:
        self._manager = manager
        #: What the last SIGHUP made of the files it reads again.
        self._reloads = reloads if reloads is not None else Reloads()
        self._auditLog = audit
        self._authenticator = authenticator
        self._clock = clock
        self._metrics = metrics
        self._logs = LogStreams(manager, clock, maxStreams, maxStreamsPerUser)
        self._dashboard = dashboard or Dashboard()
        #: Per user: the tokens (credentials) it may be issued now.
        self._tokenBuckets = TokenBuckets(TOKEN_RATE, TOKEN_BURST)
        #: Pages of the job list (and of a bulk delete) take turns.
        self._turns = Turns(clock)
        self._unread = UnreadAnswers()
        #: The long polls waiting for a job's end (L{_waitEnded}) or for a
        #: drain's running jobs (L{drainState}), ended at L{drain}.
        self._waits: set[Deferred[JobRecord] | Deferred[None]] = set()
        self._draining = False

    def drain(self, timeout: float = 5.0) -> Deferred[None]:
        """At shutdown: let every log response finish (L{LogStreams.drain}),
        and every page waiting for its turn run. A long poll is answered
        with its job as it is: a queued job's stays queued, and its wait
        was cut with no answer (operator round 37)."""
        self._turns.close()
        self._draining = True
        for waiting in list(self._waits):
            waiting.cancel()
        return self._logs.drain(timeout)

    def resource(self) -> IResource:
        """The API as a web resource (what the Site serves)."""
        urls = self.app.url_map.bind("localhost")
        return _RequestGuard(self.app.resource(), urls.allowed_methods)

    def _audit(
        self, request: IRequest, event: str, user: User, result: str, **fields: Any
    ) -> None:
        if self._auditLog is not None:
            self._auditLog.record(
                event, user.name, clientAddress(request), result, **fields
            )

    def _paceTokens(self, name: str) -> None:
        """
        A user is issued at most L{TOKEN_RATE} tokens a second, after a
        burst of L{TOKEN_BURST}: each is an audit line, and a loop of
        C{POST /tokens} wrote 2,000 a second.

        @raise TooManyRequests: with the seconds until the next one.
        """
        wait = self._tokenBuckets.take(name, self._clock.seconds())
        if wait > 0:
            raise TooManyRequests(
                f"you are asking for tokens faster than {TOKEN_RATE:g} a second",
                retryAfter=max(1, math.ceil(wait)),
            )

    # -- errors: the one mapping from domain errors to HTTP --------------------

    @app.handle_errors(JobworkerError)
    def _domainError(self, request: IRequest, failure: Failure) -> bytes:
        error = failure.value
        assert isinstance(error, JobworkerError)
        return self._answer(request, error)

    def _answer(self, request: IRequest, error: JobworkerError) -> bytes:
        """The one mapping of a domain error to its HTTP answer."""
        if isinstance(error, Unauthorized):
            request.setHeader(b"www-authenticate", challenge(request))
        elif isinstance(error, (TooManyRequests, ServiceUnavailable)):
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
        error = failure.value
        assert isinstance(error, StoreError)
        unavailable = ServiceUnavailable(
            f"the job store cannot be used right now ({error.reason}): try again"
        )
        return self._answer(request, unavailable)

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
        if jobRequest.priority > 0:
            # Anyone may lower their jobs' priority; only Admins raise it.
            authorize(user, Permission.PRIORITIZE)
        for dependency in (*jobRequest.after, *jobRequest.after_ok):
            self._mayWaitFor(user, dependency)
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
                **auditedCommand(record.command),
                args=len(record.args),
                run_as=record.run_as,
                **({"slurm": jobRequest.slurm.given()} if jobRequest.slurm else {}),
            )
        request.setHeader(b"location", f"/jobs/{record.id}".encode("ascii"))
        return _json(request, record.toJSON(), 201)

    def _mayWaitFor(self, user: User, jobId: str) -> None:
        """
        A job may wait only for jobs its owner may see: another's job that
        C{user} may not read is as unknown as a job that does not exist.
        """
        try:
            authorize(user, Permission.GET, self._manager.record(jobId).owner)
        except (NotFound, Forbidden):
            raise BadRequest(f"no job {jobId} to wait for") from None

    @app.route("/jobs", methods=["GET"])
    @guarded(Permission.GET, *FILTERS, "limit", "cursor")
    async def listJobs(self, request: IRequest, user: User) -> bytes:
        selection = jobSelection(request)
        limit = parseLimit(_arg(request, b"limit"))
        before = parseCursor(_arg(request, b"cursor"))
        await self._turns.take(user.name)
        records, following = self._manager.page(
            selection, limit=limit, before=before, maxBytes=MAX_LIST_BYTES
        )
        # Bounded in bytes as well as in count: past MAX_LIST_BYTES the page
        # ends early (the store reads no more than about that much), and
        # the cursor carries on from the last job in it.
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
        body = b'{"jobs":[' + b",".join(parts) + b'],"next_cursor":' + cursor + b"}\n"
        self._unread.admit(user.name, getattr(request, "channel", None), len(body))
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"application/json")
        return body

    @app.route("/jobs", methods=["DELETE"])
    @guarded(Permission.DELETE, "status", "owner", "older_than_seconds", "cursor")
    async def cleanJobs(self, request: IRequest, user: User) -> bytes:
        _noBody(request)
        selection = jobSelection(request)
        if selection.status is not None and not selection.status.ended:
            raise BadRequest("only ended jobs can be deleted: status must be ended")
        if selection.owner is None and onlyOwnJobs(user, Permission.DELETE):
            selection = replace(selection, owner=user.name)
        authorize(user, Permission.DELETE, owner=selection.owner)
        age = parseAge(_arg(request, b"older_than_seconds"))
        cursor = parseCursor(_arg(request, b"cursor"))
        await self._turns.take(user.name)
        if age is not None:
            selection = replace(selection, endedBefore=self._clock.seconds() - age)
        ids, following = self._manager.cleanIds(selection, MAX_CLEAN, cursor)
        deleted = len(ids)
        if deleted:  # (a clean of nothing changes nothing: no line)
            self._audit(
                request,
                "job.clean",
                user,
                "ok",
                deleted=deleted,
                jobs=ids,
                owner=selection.owner,
                status=None if selection.status is None else selection.status.value,
                older_than_seconds=age,
            )
        return _json(
            request,
            {
                "deleted": deleted,
                "more": following is not None,
                "next_cursor": None if following is None else str(following),
            },
        )

    @app.route("/tokens", methods=["POST"])
    @guarded(Permission.TOKENS, tokens=False)
    async def createToken(self, request: IRequest, user: User) -> bytes:
        _noBody(request)
        signer = self._authenticator.tokens
        if signer is None:
            raise NotFound("tokens are not enabled")
        self._paceTokens(user.name)
        certified = (
            None if request.getHeader(b"authorization") else peerCertificate(request)
        )
        until = ca = None
        if certified is not None:
            until = chainEnds(*certified)
            # Tied to its CA: a CA removed from --client-ca (there is no
            # CRL) refused the certificate, not its tokens (attacker round 29).
            which = self._authenticator.certificateCA
            if which is not None:
                ca = which(*certified)
                if ca is None:
                    raise Forbidden(
                        "the client certificate chains to no CA of --client-ca now: "
                        "no token for it"
                    )
        token, expires = signer.issue(user.name, user.role.value, until, ca)
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
        request.setHeader(b"content-type", METRICS_TYPE)
        return self._metrics.render()

    @app.route("/whoami", methods=["GET"])
    @guarded(Permission.GET)
    async def whoami(self, request: IRequest, user: User) -> bytes:
        # What the dashboard shows, from the one permission table.
        return _json(
            request,
            {"user": user.name, "role": user.role.value, "permissions": grants(user)},
        )

    @app.route("/drain", methods=["GET"])
    @guarded(Permission.DRAIN, "wait")
    async def drainState(self, request: IRequest, user: User) -> bytes:
        # ?wait=N: answered once no job runs (or the drain ends), or after N
        # seconds as it is then (jw drain --wait).
        wait = parseWait(_arg(request, b"wait"))
        if wait and self._manager.draining()["draining"]:
            with self._logs.holding(user.name):
                # Held to what it was let in on, as a job's long poll is: a
                # users reload that takes the Admin's role away answers it
                # at once (it ran its whole wait: session review 41).
                grant = self._authenticator.grant(request, user, Permission.DRAIN)
                drained = self._manager.whenDrained()
                revoked: list[JobworkerError] = []

                def lost(error: JobworkerError) -> None:
                    revoked.append(error)
                    drained.cancel()

                grant.watch(lost, self._clock)
                self._waits.add(drained)
                try:
                    await drained.addTimeout(wait, self._clock)
                except (defer.TimeoutError, CancelledError):
                    if revoked:
                        raise revoked[0] from None
                finally:
                    self._waits.discard(drained)
                    grant.release()
        return self._drainAnswer(request)

    @app.route("/drain", methods=["POST"])
    @guarded(Permission.DRAIN)
    async def startDrain(self, request: IRequest, user: User) -> bytes:
        _noBody(request)
        started = self._manager.drain(user.name)
        self._audit(request, "server.drain", user, "started" if started else "already")
        return self._drainAnswer(request)

    @app.route("/drain", methods=["DELETE"])
    @guarded(Permission.DRAIN)
    async def endDrain(self, request: IRequest, user: User) -> bytes:
        _noBody(request)
        ended = self._manager.resume(user.name)
        self._audit(request, "server.resume", user, "ended" if ended else "none")
        return self._drainAnswer(request)

    def _drainAnswer(self, request: IRequest) -> bytes:
        state = self._manager.draining()
        since = state["since"]
        if isinstance(since, float):
            state["since"] = rfc3339(since)
        return _json(request, state)

    @app.route("/", methods=["GET"])
    async def root(self, request: IRequest) -> bytes:
        # The address the start-up log names, opened in a browser: the
        # dashboard (it was a JSON 404: new user round 38).
        return await self.dashboardFolder(request)

    @app.route("/ui", methods=["GET"])
    async def dashboardFolder(self, request: IRequest) -> bytes:
        # The address a person types: on to the page, whose files are /ui/*.
        # The headers here too: the guard sees /ui only as it is spelled.
        dashboardHeaders(request)
        onlyParameters(_query(request), frozenset())
        request.redirect(b"/ui/")
        request.setResponseCode(308)
        return b""

    @app.route("/ui/", methods=["GET"])
    @app.route("/ui/<file>", methods=["GET"])
    async def dashboard(self, request: IRequest, file: str = "index.html") -> bytes:
        # No credentials for the page's files; its data requests need a token.
        dashboardHeaders(request)
        return self._dashboard.serve(request, file)

    @app.route("/healthz", methods=["GET"])
    async def health(self, request: IRequest) -> bytes:
        # No authentication and few details: fit for a load balancer's probe.
        # An executor that cannot take jobs (Slurm unreachable) is "degraded",
        # and so is a store that refuses writes (every POST a 503: a full or
        # failing disk answered "ok" here).
        onlyParameters(_query(request), frozenset())
        health = self._manager.health()
        refusal = self._manager.storeRefusal()
        risk = self._manager.storeAtRisk()
        unreloaded = self._reloads.refused()
        unaudited = self._auditLog.troubled() if self._auditLog is not None else None
        drain = self._manager.draining()
        if (
            health.up
            and refusal is None
            and risk is None
            and unreloaded is None
            and unaudited is None
            and not drain["draining"]
        ):
            return _json(request, {"status": "ok"})
        body: dict[str, Any] = {"status": "degraded"}
        reasons = []
        if not health.up:
            body["executor"] = health.executor
            reasons.append(health.reason)
        if refusal is not None:
            body["store"] = refusal
            reasons.append(f"the job store refuses writes: {refusal}")
        if risk is not None:
            body.setdefault("store", risk)
            reasons.append(f"the job store's file does not hold every job: {risk}")
        if unreloaded is not None:
            body["reload"] = unreloaded
            reasons.append(unreloaded)
        if unaudited is not None:
            body["audit"] = unaudited
            reasons.append(unaudited)
        if drain["draining"]:
            # (A balancer takes it out: it takes no new job.)
            why = f" ({drain['reason']})" if drain["reason"] else ""
            body["drain"] = said = (
                f"draining{why}: no new job is taken; {drain['running']} running, "
                f"{drain['queued']} queued"
            )
            reasons.append(said)
        body["reason"] = "; ".join(r for r in reasons if r) or None
        return _json(request, body)

    @app.route("/jobs/<jobId>", methods=["GET"])
    @app.route("/jobs/<jobId>/status", methods=["GET"])
    @guarded(Permission.GET, "wait")
    async def jobStatus(self, request: IRequest, user: User, jobId: str) -> bytes:
        record = self._manager.record(parseJobId(jobId))
        wait = parseWait(_arg(request, b"wait"))
        if wait and not record.status.ended:
            record = await self._waitEnded(request, user, record, wait)
        return _recordJSON(request, record)

    async def _waitEnded(
        self, request: IRequest, user: User, record: JobRecord, wait: float
    ) -> JobRecord:
        """
        The job's record once it ends, or as it is after C{wait} seconds;
        held meanwhile to what the request was let in on, as a log follower
        is: a users reload that takes the access away, or the expiry of
        the token it came with, answers it at once with why (audited).
        """
        with self._logs.holding(user.name):
            grant = self._authenticator.grant(
                request, user, Permission.GET, None, record.id
            )
            ended = self._manager.whenEnded(record.id)
            revoked: list[JobworkerError] = []

            def lost(error: JobworkerError) -> None:
                revoked.append(error)
                ended.cancel()

            grant.watch(lost, self._clock)
            self._waits.add(ended)
            try:
                return await ended.addTimeout(wait, self._clock)
            except defer.TimeoutError:
                return self._manager.record(record.id)
            except CancelledError:
                if revoked:
                    raise revoked[0] from None
                if self._draining:
                    return self._manager.record(record.id)
                raise
            finally:
                self._waits.discard(ended)
                grant.release()

    @app.route("/jobs/<jobId>", methods=["DELETE"])
    @guarded(Permission.DELETE)
    async def deleteJob(self, request: IRequest, user: User, jobId: str) -> bytes:
        _noBody(request)
        # (A damaged record is deleted too: the one way to be rid of it.)
        record = self._manager.recordOrDamaged(parseJobId(jobId))
        authorize(user, Permission.DELETE, owner=record.owner)
        self._manager.delete(record.id)
        self._audit(request, "job.delete", user, "ok", job=record.id)
        return _json(request, {"deleted": record.id})

    @app.route("/jobs/<jobId>/stop", methods=["POST"])
    @guarded(Permission.STOP)
    async def stopJob(self, request: IRequest, user: User, jobId: str) -> bytes:
        body = _body(request)
        how = parseStopRequest(parseJSONObject(body) if body else {})
        record = self._manager.recordOrDamaged(parseJobId(jobId))
        authorize(user, Permission.STOP, owner=record.owner)
        # A job that has ended is a 409 here, and no line: no stop was made.
        # One already being stopped: one line a minute (a loop of stops of
        # it wrote a line each, whether or not they hastened its end).
        # (Its timeout's stop counts: it stores the job's error as it fires,
        # and each stop of a timed-out job was a line of its own: code
        # review 35.)
        again = record.stopped_by is not None or (
            not record.status.ended and record.error is not None
        )
        try:
            stopping = self._manager.stop(record.id, user.name, how)
        except LeftoversStopped:
            # The job had ended, what it left had not: this stop ended them
            # sooner, and is audited as the stop it is (review of attacker
            # round 28).
            self._auditStop(request, user, record.id, how, again, "leftovers")
            raise
        self._auditStop(request, user, record.id, how, again, "requested")
        try:
            stopped = await stopping
        except ServiceUnavailable as e:
            # (Audited "requested" alone, it read as made: known since
            # stop 54.)
            # (One a minute of a job: a loop of stops of an unreachable
            # Slurm wrote two lines each: session review 38.)
            self._auditStop(request, user, record.id, how, True, "failed", e.message)
            raise
        return _json(request, stopped.toJSON())

    def _auditStop(
        self,
        request: IRequest,
        user: User,
        jobId: str,
        how: StopRequest,
        again: bool,
        result: str,
        error: str | None = None,
    ) -> None:
        """The C{job.stop} line (one a minute for a job already being stopped;
        with C{error}, why it failed)."""
        if self._auditLog is None:
            return
        write = self._auditLog.recordSparsely if again else self._auditLog.record
        extra: dict[str, Any] = {} if error is None else {"error": error}
        write(
            "job.stop",
            user.name,
            clientAddress(request),
            result,
            job=jobId,
            signal=signal.Signals(how.signal).name,
            grace=how.grace,
            **extra,
        )

    @app.route("/jobs/<jobId>/stdin", methods=["POST"])
    @guarded(Permission.STDIN, "eof", "offset", bodyType=b"application/octet-stream")
    async def jobStdin(self, request: IRequest, user: User, jobId: str) -> bytes:
        record = self._manager.record(parseJobId(jobId))
        authorize(user, Permission.STDIN, owner=record.owner)
        eof = parseBool(_arg(request, b"eof"), "eof")
        given = _arg(request, b"offset")
        offset = None if given is None else parseOffset(given)
        data = _body(request)
        # The write that closed it, sent again at its offset, is answered
        # as taken: audited once, when it closed it.
        wasClosed = self._manager.stdinClosed(record.id)
        written = await self._manager.writeStdin(record.id, data, eof, offset)
        if eof and not wasClosed:
            self._audit(request, "job.stdin", user, "closed", job=record.id)
        return _json(request, {"written": written, "closed": eof})

    @app.route("/jobs/<jobId>/logs", methods=["GET"])
    @guarded(Permission.LOGS, "stream", "offset", "tail", "follow", "format")
    async def jobLogs(self, request: IRequest, user: User, jobId: str) -> bytes:
        record = self._manager.record(parseJobId(jobId))
        authorize(user, Permission.LOGS, owner=record.owner)
        # Held to it while it runs: a follower ends once a users reload takes
        # the permission away, or its token expires (attacker round 9).
        grant = self._authenticator.grant(
            request, user, Permission.LOGS, record.owner, record.id
        )
        checked = None
        if user.name != record.owner and self._auditLog is not None:
            # Another user's output (an Admin's read) is audited: who read
            # whose; once a minute of a reader, client and job (the output
            # may hold secrets, and no trace was left: operator round 40),
            # once its parameters are checked (session review 40).
            checked = functools.partial(
                self._auditLog.recordSparsely,
                "job.read",
                user.name,
                clientAddress(request),
                "ok",
                job=record.id,
                owner=record.owner,
            )
        return await self._logs.serve(request, user, record, grant, checked)
