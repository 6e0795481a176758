"""A typed HTTPS client of the jobworker API (treq); it returns data, never prints."""

from __future__ import annotations

import json
import signal as _signal
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import treq
from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.web.client import (
    Agent,
    HTTPConnectionPool,
)
from twisted.web.iweb import IResponse

from ..tls import TrustRootPolicy
from .errors import ClientError, describeConnectionFailure, isCancellation

#: What a job's end looks like in an exit status, for C{jw exec --follow}.
EXIT_CANNOT_START = 127


def exitStatusOf(job: dict[str, Any]) -> int:
    """The shell-style exit status of an ended job: its code, 128+signal, or 127."""
    if job.get("exit_code") is not None:
        return int(job["exit_code"])
    name = job.get("signal")
    if name:
        try:
            return 128 + int(_signal.Signals[name])
        except KeyError:
            return 128
    return EXIT_CANNOT_START


class JobworkerClient:
    """
    Talk to one jobworker server as one user, over any HTTP client; see
    L{connect} for the real one (TLS, kept-alive connections).

    @param http: sends the requests: treq's C{HTTPClient}, or in tests
        C{treq.testing.StubTreq} (which has its interface) over the API's
        resource, in memory.
    @param server: base URL, C{https://host:port}.
    @param reactor: the clock that waits between retries and polls.
    @param user: with C{password}, Basic credentials.
    @param token: else a bearer token (C{jw login}).
    @param pool: the connections that L{close} closes, if any.
    """

    def __init__(
        self,
        http: HTTPClient,
        server: str,
        *,
        reactor: IReactorTime,
        user: str | None = None,
        password: str | None = None,
        token: str | None = None,
        pool: HTTPConnectionPool | None = None,
    ) -> None:
        _checkServer(server)
        self.server = server.rstrip("/")
        self.reactor = reactor
        self._http = http
        self._auth: tuple[bytes, bytes] | None = None
        self._headers: dict[bytes, list[bytes]] = {}
        if user is not None and password is not None:
            self._auth = (user.encode("utf-8"), password.encode("utf-8"))
        elif token is not None:
            self._headers[b"authorization"] = [b"Bearer " + token.encode("ascii")]
        self._pool = pool

    @classmethod
    def connect(
        cls,
        reactor: Any,
        server: str,
        caPath: str,
        user: str | None = None,
        password: str | None = None,
        *,
        token: str | None = None,
        certPath: str | None = None,
        keyPath: str | None = None,
    ) -> JobworkerClient:
        """
        A client over real HTTPS: the server verified against the CA in
        C{caPath} (TLS 1.3), with the client certificate C{certPath} and
        C{keyPath} presented in the handshake if given (used when no
        credentials are), and connections kept alive until L{close}.

        @raise ClientError: C{server} is not an C{https://} URL.
        @raise TLSConfigError: the CA or client certificate cannot be used.
        """
        _checkServer(server)  # before any file is read
        pool = HTTPConnectionPool(reactor, persistent=True)
        policy = TrustRootPolicy(caPath, certPath, keyPath)
        agent = Agent(reactor, contextFactory=policy, pool=pool)
        return cls(
            HTTPClient(agent),
            server,
            reactor=reactor,
            user=user,
            password=password,
            token=token,
            pool=pool,
        )

    def close(self) -> Deferred[None]:
        """Close kept-alive connections, if any."""
        if self._pool is None:
            return succeed(None)
        return self._pool.closeCachedConnections()  # type: ignore[no-any-return]

    async def _request(
        self,
        method: str,
        path: str,
        body: Any = None,
        unbuffered: bool = False,
        extraHeaders: dict[bytes, list[bytes]] | None = None,
        raw: bytes | None = None,
    ) -> IResponse:
        headers = dict(self._headers)
        headers.update(extraHeaders or {})
        kwargs: dict[str, Any] = {"unbuffered": unbuffered, "headers": headers}
        if self._auth is not None:
            kwargs["auth"] = self._auth
        if body is not None:
            kwargs["data"] = json.dumps(body).encode("utf-8")
        if raw is not None:
            kwargs["data"] = raw
            headers[b"content-type"] = [b"application/octet-stream"]
        elif body is not None or method in ("POST", "DELETE"):
            # The server refuses a state change without it (no HTML form
            # can send it: the CSRF defence).
            headers[b"content-type"] = [b"application/json"]
        try:
            response: IResponse = await self._http.request(
                method, self.server + path, **kwargs
            )
        except (ClientError, CancelledError):
            raise  # CancelledError: the user interrupted jw
        except Exception as e:
            if isCancellation(e):
                raise CancelledError() from None
            raise ClientError(describeConnectionFailure(self.server, e)) from None
        if response.code >= 400:
            await self._raiseFor(response)
        return response

    async def _raiseFor(self, response: IResponse) -> None:
        raw = await treq.content(response)
        body: Any = None
        try:
            body = json.loads(raw)
            message = str(body["error"])
        except (ValueError, KeyError, TypeError):
            message = raw.decode("utf-8", "replace").strip()[:200] or "no details"
        prefix = {
            401: "authentication failed",
            403: "forbidden",
            404: "not found",
            409: "conflict",
        }.get(response.code, f"server answered {response.code}")
        raise ClientError(f"{prefix}: {message}", response.code, body)

    async def _json(self, method: str, path: str, body: Any = None) -> Any:
        response = await self._request(method, path, body)
        return json.loads(await treq.content(response))

    async def createToken(self) -> dict[str, Any]:
        """C{POST /tokens}: a bearer token for this user, and its expiry."""
        result: dict[str, Any] = await self._json("POST", "/tokens")
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
        result: dict[str, Any] = await self._json("POST", "/jobs", body)
        return result

    async def listJobs(
        self,
        status: str | None = None,
        owner: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        *,
        name: str | None = None,
        labels: dict[str, str] | None = None,
        idPrefix: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """C{GET /jobs}: one page of jobs, newest first, and the next cursor."""
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
        params.extend(("label", f"{k}={v}") for k, v in (labels or {}).items())
        path = "/jobs" + (f"?{urlencode(params)}" if params else "")
        result = await self._json("GET", path)
        return result["jobs"], result.get("next_cursor")

    async def clean(
        self,
        status: str | None = None,
        owner: str | None = None,
        olderThan: float | None = None,
    ) -> dict[str, Any]:
        """C{DELETE /jobs}: delete the ended jobs that match, in one request."""
        params = [
            (key, str(value))
            for key, value in (
                ("status", status),
                ("owner", owner),
                ("older_than_seconds", None if olderThan is None else int(olderThan)),
            )
            if value is not None
        ]
        path = "/jobs" + (f"?{urlencode(params)}" if params else "")
        result: dict[str, Any] = await self._json("DELETE", path)
        return result

    async def deleteJob(self, jobId: str) -> None:
        """C{DELETE /jobs/ID}: remove an ended job and its output."""
        await self._json("DELETE", f"/jobs/{_segment(jobId)}")

    async def job(self, jobId: str, wait: float = 0) -> dict[str, Any]:
        """C{GET /jobs/ID}, waiting up to C{wait} seconds for the job to end."""
        query = f"?wait={wait:g}" if wait else ""
        result: dict[str, Any] = await self._json(
            "GET", f"/jobs/{_segment(jobId)}{query}"
        )
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
        result: dict[str, Any] = await self._json(
            "POST", f"/jobs/{_segment(jobId)}/stop", body or None
        )
        return result

    async def sendStdin(self, jobId: str, data: bytes, eof: bool = False) -> None:
        """C{POST /jobs/ID/stdin}: bytes for the job's stdin (then EOF if C{eof})."""
        response = await self._request(
            "POST",
            f"/jobs/{_segment(jobId)}/stdin?eof={str(eof).lower()}",
            raw=data,
        )
        await treq.content(response)

    async def events(
        self,
        jobId: str,
        sink: Callable[[bytes], None],
        stream: str = "combined",
        follow: bool = True,
        tail: int | None = None,
        lastEventId: str | None = None,
    ) -> None:
        """
        C{GET /jobs/ID/logs} as Server-Sent Events: hand the raw event
        stream to C{sink} (L{jobworker.client.events.EventParser} reads it),
        resuming after C{lastEventId} if given.
        """
        params = {"stream": stream, "follow": str(follow).lower()}
        if tail is not None and lastEventId is None:
            params["tail"] = str(tail)
        headers = {b"accept": [b"text/event-stream"]}
        if lastEventId is not None:
            headers[b"last-event-id"] = [lastEventId.encode("ascii", "replace")]
        response = await self._request(
            "GET",
            f"/jobs/{_segment(jobId)}/logs?{urlencode(params)}",
            unbuffered=True,
            extraHeaders=headers,
        )
        await self._collect(response, sink)

    async def logs(
        self,
        jobId: str,
        sink: Callable[[bytes], None],
        stream: str = "stdout",
        offset: int = 0,
        follow: bool = False,
        tail: int | None = None,
        onStart: Callable[[int], None] | None = None,
    ) -> None:
        """
        C{GET /jobs/ID/logs}: hand each chunk of output to C{sink}; tell
        C{onStart} the offset the server starts from (C{X-Output-Offset}).
        """
        params = {"stream": stream, "follow": str(follow).lower()}
        if tail is not None:
            params["tail"] = str(tail)
        else:
            params["offset"] = str(offset)
        query = urlencode(params)
        response = await self._request(
            "GET", f"/jobs/{_segment(jobId)}/logs?{query}", unbuffered=True
        )
        start = response.headers.getRawHeaders(b"x-output-offset", [b""])[0]
        if onStart is not None and start.isdigit():
            onStart(int(start))
        await self._collect(response, sink)

    async def _collect(
        self, response: IResponse, sink: Callable[[bytes], None]
    ) -> None:
        """The body, chunk by chunk, to C{sink}; a broken stream a L{ClientError}."""
        sinkErrors: list[Exception] = []

        def deliver(data: bytes) -> None:
            try:
                sink(data)
            except Exception as e:  # our own output failed, not the network
                sinkErrors.append(e)
                raise

        try:
            await treq.collect(response, deliver)
        except CancelledError:
            raise  # the user interrupted jw
        except Exception as e:
            if sinkErrors:
                raise sinkErrors[0] from None
            raise ClientError(
                f"log stream from {self.server} broke off: "
                f"{describeConnectionFailure(self.server, e)}"
            ) from None


def _checkServer(server: str) -> None:
    parts = urlsplit(server)
    if parts.scheme != "https" or not parts.hostname:
        raise ClientError(f"server must be an https:// URL, not {server!r}")


def _segment(jobId: str) -> str:
    return quote(jobId, safe="")
