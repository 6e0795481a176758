"""
The jobworker API's calls as paths, queries and bodies, and what their
answers mean: shared by the Twisted client (L{jobworker.client.http}) and
the standard-library one for short commands (L{jobworker.client.quick}).
Nothing here imports Twisted.
"""

from __future__ import annotations

import json
import re
import signal as _signal
from collections.abc import Awaitable
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from ..framing import CONTENT_TYPE as FRAMES_TYPE
from . import config
from .errors import ClientError, NoAPIThere

#: What a job's end looks like in an exit status, for C{jw exec --follow}.
EXIT_CANNOT_START = 127

#: The status of a request refused for now, to be asked again after its
#: C{Retry-After} (a log stream past the server's cap, say).
TOO_MANY = 429

#: The status of a request the server cannot serve now (no thread free for
#: a password check, a job's output or the store not readable): it comes
#: with C{Retry-After} too.
UNAVAILABLE = 503

#: The statuses a follow asks again after their C{Retry-After}.
ASK_AGAIN = (TOO_MANY, UNAVAILABLE)

#: Exit status for a job that ran but whose end is not known (the server
#: crashed under it), as ssh exits 255 when its connection is lost.
EXIT_STATUS_LOST = 255


def exitStatusOf(job: dict[str, Any]) -> int:
    """
    The shell-style exit status of an ended job: its code, 128+signal, 127
    if it never started, L{EXIT_STATUS_LOST} if it ran but its end is not
    known (the server's crash took it). A job that did not complete is
    never 0: one that exited 0 all the same (at its timeout's or a stop's
    TERM, which it caught; its output not written) is 1 (it was 0, and
    C{jw exec -f ... && deploy} deployed after a timeout: new user round 30).
    """
    if job.get("exit_code") is not None:
        code = int(job["exit_code"])
        return 1 if code == 0 and job.get("status") not in (None, "COMPLETED") else code
    name = job.get("signal")
    if name:
        try:
            return 128 + int(_signal.Signals[name])
        except KeyError:
            return 128
    return EXIT_STATUS_LOST if started(job) else EXIT_CANNOT_START


def started(job: dict[str, Any]) -> bool:
    """Did the job's process start (whatever became of it)?"""
    return job.get("started_at") is not None or job.get("pid") is not None


#: A job's own path (C{/jobs/ID}, C{/jobs/ID/stop}, ...): its id.
_JOB_PATH = re.compile(r"/jobs/([0-9a-f-]{36})(?:[/?]|\Z)")


def errorFor(
    code: int,
    raw: bytes,
    retryAfter: str | None = None,
    path: str | None = None,
    server: str | None = None,
) -> ClientError:
    """
    The L{ClientError} of an answer with status C{code}, body C{raw} and
    C{Retry-After} header C{retryAfter} (seconds; a date is not used), to a
    request for C{path}: a job of its that is not found is named (a script
    going through several ids read "no such job", not which: new user
    round 32). A routing error of a jobworker server is said to be one of
    C{server}'s URL (L{noAPIThere}).
    """
    body: Any = None
    try:
        body = json.loads(raw)
        message = str(body["error"])
    except (ValueError, KeyError, TypeError):
        message = raw.decode("utf-8", "replace").strip()[:200] or "no details"
    if server is not None and isinstance(body, dict) and _routingError(code, message):
        return noAPIThere(server, code, message, body)
    named = _JOB_PATH.match(path or "")
    if code == 404 and message == "no such job" and named is not None:
        return ClientError(f"not found: no job {named.group(1)}", code, body)
    prefix = {
        401: "authentication failed",
        403: "forbidden",
        404: "not found",
        409: "conflict",
    }.get(code, f"server answered {code}")
    seconds = retryAfter.strip() if retryAfter else ""
    return ClientError(
        f"{prefix}: {message}",
        code,
        body,
        float(seconds) if seconds.isdigit() else None,
    )


def _routingError(code: int, message: str) -> bool:
    """
    Is this a jobworker server's answer to a path it has no route for (or
    not for that method)? jw sends only its API's paths and methods: only
    a wrong URL gets one.
    """
    return (code == 404 and message == "no such route") or (
        code == 405 and message.startswith("method not allowed")
    )


def noAPIThere(server: str, code: int, message: str, body: Any = None) -> ClientError:
    """
    The error of a routing error's answer: C{server}'s path has no
    jobworker API, and where it is. It was "not found: no such route" of a
    job that exists, "server answered 405" (the dashboard's URL given as
    the server: new user round 38).
    """
    parts = urlsplit(server)
    root = f"{parts.scheme}://{parts.netloc}"
    return NoAPIThere(
        f"no jobworker API at {server} (the server answered {code}: {message}): "
        f"is it the right URL? A jobworker server's API is at its root ({root}); "
        "/ui/ is its web dashboard",
        code,
        body,
    )


def requestBody(body: Any) -> bytes:
    """
    A request's JSON body, in UTF-8 as it is: escaped (C{\\u00e9}), a
    command line in letters other than ASCII was up to three times its
    size, and within the server's 32 KiB of job data got its 64 KiB body
    cap's 413 (new user round 37). Every word is UTF-8 (L{checkArguments
    <jobworker.client.verbs.checkArguments>} refuses others).
    """
    return json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass")


#: What each answer of the API holds, by the call: the keys a jobworker
#: server's answer always has, and their JSON types.
Shape = dict[str, type | tuple[type, ...]]
JOB_SHAPE: Shape = {"id": str, "status": str}
LIST_SHAPE: Shape = {"jobs": list}
TOKEN_SHAPE: Shape = {"token": str, "expires_at": str, "user": str}
DELETED_SHAPE: Shape = {"deleted": str}
CLEANED_SHAPE: Shape = {"deleted": int}
#: C{GET}, C{POST} and C{DELETE /drain} (its C{draining}, a bool, is read
#: apart: a shape's types take no bool).
DRAIN_SHAPE: Shape = {"running": int, "queued": int}

#: The longest C{GET /drain?wait=} a server takes
#: (L{jobworker.jobs.queries.MAX_WAIT}: not imported, jw starts without it).
MAX_DRAIN_WAIT = 300.0


def notJobworker(server: str, code: int, contentType: str, what: str) -> ClientError:
    """
    The error of an answer no jobworker server gives (C{what} it was): the
    URL names another service (a wrong port, a reverse proxy's or a
    captive portal's page). It was "unexpected error: JSONDecodeError", or
    for C{jw rm} exit 0 (new user round 37).
    """
    # (Cut short: another service's header; jw's line escapes its controls.)
    given = contentType.split(";")[0].strip()[:80] or "no Content-Type"
    return ClientError(
        f"{server} did not answer as a jobworker server (HTTP {code}, "
        f"{given}, {what}): is it the right URL?",
        code,
    )


def jsonAnswer(
    server: str, code: int, contentType: str, raw: bytes, shape: Shape | None = None
) -> Any:
    """
    The decoded answer C{raw} (status C{code}) of a call that answers with
    one JSON object: C{shape}'s keys in it, of their types.

    @raise ClientError: not a JSON object, or not of that shape: not a
        jobworker server's answer (L{notJobworker}).
    """
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        raise notJobworker(server, code, contentType, "not JSON") from None
    if not isinstance(value, dict):
        raise notJobworker(server, code, contentType, "not a JSON object")
    for key, kind in (shape or {}).items():
        if not isinstance(value.get(key), kind) or isinstance(value.get(key), bool):
            raise notJobworker(server, code, contentType, f"no {key!r} in it")
    return value


def streamType(frames: bool) -> str:
    """The media type of a log answer as frames (C{frames}), else as events."""
    return FRAMES_TYPE if frames else "text/event-stream"


def checkStreamType(server: str, code: int, contentType: str, expected: str) -> None:
    """
    A log answer (status C{code}) is of the C{expected} media type, if it
    names one (a frame stream, events): another service's page was read
    as frames ("a frame of 1701604463 bytes": new user round 37). (A raw
    stream's bytes are anything: each path that reads one reads the job's
    record too, which another service's answer is not.)

    @raise ClientError: it names another (L{notJobworker}).
    """
    given = contentType.split(";")[0].strip().lower()
    if given and given != expected:
        raise notJobworker(server, code, contentType, f"not {expected}")


#: The longest grace a server gives a stop (its C{--stop-grace} and a
#: request's C{grace_seconds}: L{jobworker.jobs.stopping.MAX_GRACE}).
MAX_GRACE = 3600.0

#: The longest timeout a job may be given (L{jobworker.jobs.validation.MAX_TIMEOUT}).
MAX_TIMEOUT = 366 * 86400

#: The most lines a tail may ask for (L{jobworker.jobs.queries.MAX_TAIL}).
MAX_TAIL = 1_000_000

#: The largest offset in a job's output a request may name
#: (L{jobworker.jobs.validation.MAX_INT64}).
MAX_OFFSET = (1 << 63) - 1


#: How often in all a request/response call is asked when the server
#: answers 503 with a short C{Retry-After} (L{ApiCalls._ask}), the
#: longest C{Retry-After} waited, and the seconds it may be asked for.
BUSY_TRIES = 3
BUSY_WAIT = 5.0
BUSY_FOR = 30.0


def _mayAskAgain(method: str, path: str) -> bool:
    """
    May a request the server answered 503 be sent again? A 503 did
    nothing: a C{GET} or a C{DELETE} may be sent twice anyway; a C{POST
    /jobs} refused so created no job (the API says so); a C{POST
    /tokens} issued none; a stop asked twice is one stop, a drain begun
    twice one drain. (A write to a job's stdin is not made here.)
    """
    if method in ("GET", "DELETE"):
        return True
    bare = path.split("?", 1)[0]
    return bare in ("/jobs", "/tokens", "/drain") or (
        bare.startswith("/jobs/") and bare.endswith("/stop")
    )


class ApiCalls:
    """
    The calls of the API that answer with one JSON document. How a request
    travels is a subclass's L{_json}; a short 503 is asked again
    (L{_ask}).

    @ivar server: base URL, C{https://host:port}.
    @ivar reactor: its clock (C{seconds}).
    """

    server: str
    reactor: Any

    #: What renews the login kept when the server refuses its token under
    #: a follow (L{Renewal<jobworker.client.session.Renewal>}); None: not
    #: renewed (a password, a certificate, C{JW_TOKEN}).
    renewal: Any = None

    #: Is the token sent C{JW_TOKEN}'s (given, not kept by C{jw login})?
    #: It, not a login, is what to renew when the server refuses it.
    givenToken: bool = False

    def bearer(self) -> str | None:
        """The bearer token sent now, if one is."""
        raise NotImplementedError

    def useToken(self, token: str) -> None:
        """Send the bearer C{token} from now on (a renewed login's)."""
        raise NotImplementedError

    def pause(self, seconds: float) -> Awaitable[None]:
        """Wait C{seconds}."""
        raise NotImplementedError

    async def _json(
        self,
        method: str,
        path: str,
        body: Any = None,
        slow: float = 0.0,
        shape: Shape | None = None,
    ) -> Any:
        """
        Send one request; its decoded JSON answer (an object of C{shape}:
        L{jsonAnswer}), or a L{ClientError}. C{slow}: seconds the server
        may take to answer beyond a plain request's bound (a long poll's
        wait, a stop's grace).
        """
        raise NotImplementedError

    async def _ask(
        self,
        method: str,
        path: str,
        body: Any = None,
        slow: float = 0.0,
        shape: Shape | None = None,
    ) -> Any:
        """
        L{_json}'s answer. A 503 whose C{Retry-After} is short (at most
        L{BUSY_WAIT}: the server cannot serve it now, "too many password
        checks in progress: retry in 1 s") is asked again after it,
        quietly, up to L{BUSY_TRIES} times in all and for L{BUSY_FOR}
        seconds, as a follow asks again: it ended C{jw list}, C{jw status}
        and C{jw exec} with exit 1, and a CI fan-out had to wrap each call
        in a loop of its own (new user round 41). Only a request that may
        be sent again (L{_mayAskAgain}); a 503 did nothing on the server.
        Said, once given up, with how often it was asked.
        """
        began = self.reactor.seconds()
        tries = 1
        while True:
            try:
                return await self._json(method, path, body, slow, shape)
            except ClientError as e:
                wait = e.retryAfter
                if (
                    e.status != UNAVAILABLE
                    or wait is None
                    or wait > BUSY_WAIT
                    or not _mayAskAgain(method, path)
                ):
                    raise
                if tries >= BUSY_TRIES or (
                    self.reactor.seconds() - began + wait > BUSY_FOR
                ):
                    if tries == 1:
                        raise
                    raise ClientError(
                        f"{e} (asked {tries} times)", e.status, e.body, e.retryAfter
                    ) from None
            await self.pause(wait)
            tries += 1

    async def createToken(self) -> dict[str, Any]:
        """C{POST /tokens}: a bearer token for this user, and its expiry."""
        result: dict[str, Any] = await self._ask("POST", "/tokens", shape=TOKEN_SHAPE)
        return result

    async def whoami(self) -> dict[str, Any]:
        """C{GET /whoami}: who the credentials sent are (and may do)."""
        result: dict[str, Any] = await self._ask("GET", "/whoami", shape={"user": str})
        return result

    async def createJob(
        self,
        command: str,
        args: list[str],
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        *,
        timeout: float | None = None,
        limits: dict[str, int] | None = None,
        fields: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """
        C{POST /jobs}: start a job, return its record. C{fields}: more of
        the request (C{name}, C{labels}, C{stdin}, ...) as the API names them.
        """
        body: dict[str, Any] = {"command": command, "args": args, **(fields or {})}
        if env:
            body["env"] = env
        if cwd is not None:
            body["cwd"] = cwd
        if timeout is not None:
            body["timeout_seconds"] = timeout
        if limits:
            body["limits"] = limits
        result: dict[str, Any] = await self._ask("POST", "/jobs", body, shape=JOB_SHAPE)
        return result

    async def listJobs(
        self,
        status: str | None = None,
        owner: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        *,
        name: str | None = None,
        labels: list[tuple[str, str]] | None = None,
        idPrefix: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """
        C{GET /jobs}: one page of jobs, newest first, and the next cursor.
        C{labels}: (name, value) pairs each job must have (a name given
        twice is asked twice: no job has both values).
        """
        params = [
            (key, str(value))
            for key, value in (
                ("status", status),
                ("owner", owner),
                ("name", name),
                ("id_prefix", idPrefix),
                ("limit", limit),
                ("cursor", cursor),
            )
            if value is not None
        ]
        params.extend(("label", f"{k}={v}") for k, v in labels or ())
        path = "/jobs" + (f"?{urlencode(params)}" if params else "")
        result = await self._ask("GET", path, shape=LIST_SHAPE)
        return result["jobs"], result.get("next_cursor")

    async def clean(
        self,
        status: str | None = None,
        owner: str | None = None,
        olderThan: float | None = None,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        """
        C{DELETE /jobs}: delete the ended jobs that match, in one request
        (from C{cursor}, the last one's C{next_cursor}).
        """
        params = [
            (key, str(value))
            for key, value in (
                ("status", status),
                ("owner", owner),
                ("older_than_seconds", None if olderThan is None else int(olderThan)),
                ("cursor", cursor),
            )
            if value is not None
        ]
        path = "/jobs" + (f"?{urlencode(params)}" if params else "")
        result: dict[str, Any] = await self._ask("DELETE", path, shape=CLEANED_SHAPE)
        return result

    async def deleteJob(self, jobId: str) -> None:
        """C{DELETE /jobs/ID}: remove an ended job and its output."""
        await self._ask("DELETE", f"/jobs/{segment(jobId)}", shape=DELETED_SHAPE)

    async def job(self, jobId: str, wait: float = 0) -> dict[str, Any]:
        """C{GET /jobs/ID}, waiting up to C{wait} seconds for the job to end."""
        query = f"?wait={wait:g}" if wait else ""
        result: dict[str, Any] = await self._ask(
            "GET", f"/jobs/{segment(jobId)}{query}", slow=wait, shape=JOB_SHAPE
        )
        return result

    async def drainState(self, wait: float = 0) -> dict[str, Any]:
        """
        C{GET /drain}: whether the server drains (since when, whose) and
        how many jobs run and wait; waiting up to C{wait} seconds (at most
        L{MAX_DRAIN_WAIT}) for none to run while it drains.
        """
        query = f"?wait={wait:g}" if wait else ""
        result: dict[str, Any] = await self._ask(
            "GET", f"/drain{query}", slow=wait, shape=DRAIN_SHAPE
        )
        return result

    async def startDrain(self) -> dict[str, Any]:
        """C{POST /drain}: take no new job, start no queued one (Admins)."""
        result: dict[str, Any] = await self._ask("POST", "/drain", shape=DRAIN_SHAPE)
        return result

    async def endDrain(self) -> dict[str, Any]:
        """C{DELETE /drain}: end the drain; queued jobs start again (Admins)."""
        result: dict[str, Any] = await self._ask("DELETE", "/drain", shape=DRAIN_SHAPE)
        return result

    async def stop(
        self, jobId: str, signal: str | None = None, grace: float | None = None
    ) -> dict[str, Any]:
        """
        C{POST /jobs/ID/stop}: returns the record once the job has ended.
        C{signal} (a name, C{TERM} by default) goes first; C{grace} seconds
        later, C{KILL} (the server's grace by default).
        """
        body: dict[str, Any] = {}
        if signal is not None:
            body["signal"] = signal
        if grace is not None:
            body["grace_seconds"] = grace
        result: dict[str, Any] = await self._ask(
            "POST",
            f"/jobs/{segment(jobId)}/stop",
            body or None,
            slow=MAX_GRACE if grace is None else grace,
            shape=JOB_SHAPE,
        )
        return result


#: What jw says of a server whose certificate its CA does not vouch for.
NOT_TRUSTED = (
    "the server's certificate is not trusted (check --ca / JW_CA; a jobworker "
    "server's own CA is tls/ca.pem in its state dir)"
)

#: The file of the CA jw trusted for the server at C{jw login}, when that is
#: the CA in use (set by the command line, L{trustedAtLogin}).
_trustedAtLogin: list[str] = []


def trustedAtLogin(path: str | None) -> None:
    """The CA in use is the one trusted at C{jw login}, in C{path} (None: not)."""
    _trustedAtLogin[:] = [] if path is None else [path]


def notTrusted() -> str:
    """
    What jw says of a server whose certificate its CA does not vouch for:
    with the CA trusted at C{jw login}, which file, and what to do (it
    said "check --ca / JW_CA", set nowhere, and jw login failed the same
    way: new user round 30).
    """
    if not _trustedAtLogin:
        return NOT_TRUSTED
    return (
        "the server's certificate is not signed by the CA trusted for it at jw "
        f"login ({_trustedAtLogin[0]}): if its CA was replaced, delete that file "
        "and run jw login again; if not, something may be in between"
    )


#: OpenSSL's verify codes of a certificate out of its validity period
#: (X509_V_ERR_CERT_NOT_YET_VALID, X509_V_ERR_CERT_HAS_EXPIRED), in words.
OUT_OF_DATE = {9: "is not yet valid", 10: "has expired"}


def outOfDate(server: str, code: int) -> str:
    """What either client says of a server certificate out of its dates."""
    return (
        f"cannot connect to {server}: the server's certificate "
        f"{OUT_OF_DATE[code]} (it must be renewed on the server, or a clock is "
        "wrong)"
    )


def handshakeTimedOut(server: str, seconds: float) -> str:
    """What either client says of a TLS handshake that did not end in time."""
    return (
        f"cannot connect to {server}: the TLS handshake timed out (the "
        f"port took the connection but nothing answered in {seconds:g} "
        "s: a stopped or hung server, or another service on that port?)"
    )


def handshakeCut(server: str) -> str:
    """
    What either client says of a connection the server closed before the
    TLS handshake was done: a jobworker server does so past its connection
    caps, its log says which (it was "TLS handshake failed").
    """
    return (
        f"cannot connect to {server}: the server closed the connection during "
        "the TLS handshake (a jobworker server does so past its connection "
        "caps, --max-connections-per-client and --max-connections: too many "
        "connections from this host? Its log says)"
    )


#: Seconds the second look at a port that did not answer in TLS takes at most.
NOT_TLS_PROBE = 2.0


def notTLS(server: str, reason: str) -> str | None:
    """
    What either client says of a handshake whose answer was no TLS at all
    (OpenSSL's C{wrong version number}: a plain-HTTP port, an ssh one):
    the port is asked once more, in plain HTTP, and one that answers so is
    said to (it was "TLS 1.3 handshake failed": new user round 39). None:
    C{reason} is another failure.
    """
    if "wrong version number" not in reason.lower():
        return None
    import socket

    parts = urlsplit(server)
    first = b""
    try:
        with socket.create_connection(
            (parts.hostname or "", parts.port or 443), timeout=NOT_TLS_PROBE
        ) as probe:
            probe.sendall(b"HEAD / HTTP/1.0\r\n\r\n")
            first = probe.recv(5)
    except OSError:
        pass
    if first == b"HTTP/":
        return (
            f"cannot connect to {server}: the server there answered in plain "
            "HTTP, not TLS: is it the right port?"
        )
    return (
        f"cannot connect to {server}: the server there does not speak TLS: is "
        "it the right port?"
    )


def unnamedPort(server: str) -> str:
    """
    A note for a connection failure when C{server}'s URL names no port
    (jw dialled 443), else "".
    """
    try:
        port = urlsplit(server).port
    except ValueError:
        return ""
    if port is not None:
        return ""
    return " (port 443: the URL names none; jobworker's default is 8443)"


def checkServer(server: str) -> None:
    """L{config.checkServer} for a client made without the CLI: a ClientError."""
    try:
        config.checkServer(server)
    except config.ConfigError as e:
        raise ClientError(str(e)) from None


def segment(jobId: str) -> str:
    return quote(jobId, safe="")


def stdinPath(jobId: str, eof: bool, offset: int | None) -> str:
    """
    The path of a write to a job's stdin; at C{offset} (where its bytes
    begin in the job's stdin), one the server takes once if sent again.
    """
    path = f"/jobs/{segment(jobId)}/stdin?eof={str(eof).lower()}"
    return path if offset is None else f"{path}&offset={offset}"


def eventsRequest(
    jobId: str,
    stream: str,
    follow: bool,
    tail: int | None,
    lastEventId: str | None,
    frames: bool,
) -> tuple[str, dict[str, str]]:
    """
    The path and headers of a log request as Server-Sent Events, or with
    C{frames} as binary frames (L{jobworker.framing}), resuming after
    C{lastEventId} if given: the same for both clients.
    """
    headers = {"Accept": FRAMES_TYPE if frames else "text/event-stream"}
    if lastEventId is not None:
        headers["Last-Event-ID"] = lastEventId
    path = logsPath(
        jobId,
        stream,
        follow,
        tail=tail,
        resuming=lastEventId is not None,
        form="frames" if frames else None,
    )
    return path, headers


def logsPath(
    jobId: str,
    stream: str,
    follow: bool,
    offset: int | None = None,
    tail: int | None = None,
    resuming: bool = False,
    form: str | None = None,
) -> str:
    """
    C{/jobs/ID/logs?...}: the last C{tail} lines (unless C{resuming} events
    after an id, which the server takes from C{Last-Event-ID}), else from
    C{offset} if given; in C{form} (C{frames}) if given.
    """
    params = {"stream": stream, "follow": str(follow).lower()}
    if form is not None:
        params["format"] = form
    if tail is not None and not resuming:
        params["tail"] = str(tail)
        if offset:  # the tail's lines from there on only (jw logs --offset --tail)
            params["offset"] = str(offset)
    elif offset is not None:
        params["offset"] = str(offset)
    return f"/jobs/{segment(jobId)}/logs?{urlencode(params)}"
