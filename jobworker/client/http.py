"""A typed HTTPS client of the jobworker API (treq); it returns data, never prints."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, TypeVar
from urllib.parse import urlsplit

import treq
from hyperlink import EncodedURL, URLParseError
from treq.client import HTTPClient
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    FirstError,
    ensureDeferred,
    gatherResults,
    succeed,
)
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.web.client import (
    Agent,
    HTTPConnectionPool,
)
from twisted.web.iweb import IResponse

from ..tls import TrustRootPolicy
from .calls import (
    ApiCalls,
    Shape,
    checkServer,
    checkStreamType,
    errorFor,
    eventsRequest,
    exitStatusOf,
    jsonAnswer,
    logsPath,
    requestBody,
    stdinPath,
    streamType,
)
from .errors import ClientError
from .handshake import HandshakeDeadlineEndpoints
from .netfailures import describeConnectionFailure, isCancellation
from .quick import KEEPALIVE, TIMEOUT

__all__ = ["ClientError", "JobworkerClient", "exitStatusOf"]


T = TypeVar("T")


class _AsWritten(EncodedURL):
    """
    A URL treq sends as written: its C{to_uri} IDNA-encodes the host, and
    refused an IPv6 literal's (C{https://[::1]:8443}: "Codepoint U+003A not
    allowed"), and a name with an C{_} (C{web_1}, a compose service's), so
    C{jw stop}, C{rm} and C{login} could not reach a server the other verbs
    reach (code review round 32, the session's review). Only for an IP
    literal or a name in ASCII (nothing to encode): another keeps treq's
    encoding.
    """

    def to_uri(self) -> EncodedURL:
        return self


def _urlFor(text: str) -> str | EncodedURL:
    """C{text} as treq should take it (L{_AsWritten} for an IP literal or
    a name in ASCII)."""
    host = urlsplit(text).hostname or ""
    if not host.isascii():
        return text
    return _AsWritten.from_text(text)


class JobworkerClient(ApiCalls):
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
        checkServer(server)
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
        keepalive: int = KEEPALIVE,
    ) -> JobworkerClient:
        """
        A client over real HTTPS: the server verified against the CA in
        C{caPath} (TLS 1.3), with the client certificate C{certPath} and
        C{keyPath} presented in the handshake if given (used when no
        credentials are), and connections kept alive until L{close}. As
        the quick client's: a handshake not done in twice C{keepalive}
        seconds fails the request, and the connection has TCP keepalive
        after C{keepalive} silent seconds (L{HandshakeDeadlineEndpoints});
        an answer that does not come in L{TIMEOUT} seconds (more for a long
        poll or a stop) fails it too.

        @raise ClientError: C{server} is not an C{https://} URL.
        @raise TLSConfigError: the CA or client certificate cannot be used.
        """
        checkServer(server)  # before any file is read
        pool = HTTPConnectionPool(reactor, persistent=True)
        policy = TrustRootPolicy(caPath, certPath, keyPath)
        agent = Agent.usingEndpointFactory(
            reactor,
            HandshakeDeadlineEndpoints(reactor, policy, keepalive),
            pool=pool,
        )
        return cls(
            HTTPClient(agent),
            server,
            reactor=reactor,
            user=user,
            password=password,
            token=token,
            pool=pool,
        )

    def bearer(self) -> str | None:
        sent = self._headers.get(b"authorization", [b""])[0]
        return sent[7:].decode("ascii") if sent.startswith(b"Bearer ") else None

    def useToken(self, token: str) -> None:
        self._auth = None
        self._headers[b"authorization"] = [b"Bearer " + token.encode("ascii")]

    def another(self) -> JobworkerClient:
        """A client for work at the same time: this one (its pool has room)."""
        return self

    def pause(self, seconds: float) -> Deferred[None]:
        """A Deferred that fires C{seconds} later."""
        return deferLater(self.reactor, seconds, lambda: None)

    async def concurrently(
        self, works: list[Callable[[JobworkerClient], Coroutine[Any, Any, None]]]
    ) -> None:
        """
        Run C{works} (each given this client) at the same time until all
        have ended; the first failure is raised as itself, as it comes.
        """
        both = [ensureDeferred(work(self)) for work in works]
        try:
            await gatherResults(both, consumeErrors=True)
        except FirstError as e:
            e.subFailure.raiseException()

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
        """Send one request; its response, headers read, or a L{ClientError}."""
        headers = dict(self._headers)
        headers.update(extraHeaders or {})
        kwargs: dict[str, Any] = {"unbuffered": unbuffered, "headers": headers}
        if self._auth is not None:
            kwargs["auth"] = self._auth
        if body is not None:
            kwargs["data"] = requestBody(body)
        if raw is not None:
            kwargs["data"] = raw
            headers[b"content-type"] = [b"application/octet-stream"]
        elif body is not None or method in ("POST", "DELETE"):
            # The server refuses a state change without it (no HTML form
            # can send it: the CSRF defence).
            headers[b"content-type"] = [b"application/json"]
        try:
            response: IResponse = await self._http.request(
                method, _urlFor(self.server + path), **kwargs
            )
        except (ClientError, CancelledError):
            raise  # CancelledError: the user interrupted jw (or a deadline)
        except UnicodeError as e:
            # Twisted's TLS host check takes IDNA 2008 names only: one with
            # an "_" (a compose service's, web_1) is refused before any
            # connection; the stdlib's, of the other commands, takes it.
            raise ClientError(
                f"cannot reach {self.server} with this command: its TLS host "
                f"check refuses the host's name ({e}); name the server by "
                "its address, or by a name without it"
            ) from None
        except URLParseError:
            # Twisted's URL parser takes no IPv6 zone (fe80::1%eth0); the
            # stdlib's, of the other commands, takes it. It was said with a
            # Python repr in the line (new user round 38).
            raise ClientError(
                f"cannot reach {self.server} with this command: its URL parser "
                "refuses the host (an IPv6 zone, %...?); name the server by a host "
                "name or an address without a zone"
            ) from None
        except Exception as e:
            if isCancellation(e):
                raise CancelledError() from None
            raise ClientError(describeConnectionFailure(self.server, e)) from None
        if response.code >= 400:
            await self._raiseFor(response, path)
        return response

    async def _raiseFor(self, response: IResponse, path: str | None = None) -> None:
        retryAfter = response.headers.getRawHeaders(b"retry-after", [b""])[0]
        raise errorFor(
            response.code,
            await treq.content(response),
            retryAfter.decode("ascii", "replace"),
            path,
            server=self.server,
        )

    async def _json(
        self,
        method: str,
        path: str,
        body: Any = None,
        slow: float = 0.0,
        shape: Shape | None = None,
    ) -> Any:
        async def answer() -> Any:
            response = await self._request(method, path, body)
            raw = await treq.content(response)
            return jsonAnswer(
                self.server, response.code, _contentType(response), raw, shape
            )

        return await self._within(TIMEOUT + slow, answer())

    def _checkStream(self, response: IResponse, expected: str) -> None:
        """L{checkStreamType} of a log answer."""
        checkStreamType(self.server, response.code, _contentType(response), expected)

    async def _within(self, seconds: float, work: Coroutine[Any, Any, T]) -> T:
        """
        C{work}'s result, due in C{seconds} (its answer's body too), else a
        L{ClientError}: a network or server that stalled without closing
        anything, which keepalive cannot tell.
        """
        running = ensureDeferred(work)
        late: list[bool] = []

        def expire() -> None:
            late.append(True)
            running.cancel()

        timer = self.reactor.callLater(seconds, expire)
        try:
            return await running
        except CancelledError:
            if late:
                raise ClientError(
                    f"{self.server} sent no answer in {seconds:g} s (a stalled "
                    "network or server?)"
                ) from None
            raise
        finally:
            if timer.active():
                timer.cancel()

    async def sendStdin(
        self, jobId: str, data: bytes, eof: bool = False, offset: int | None = None
    ) -> None:
        """
        C{POST /jobs/ID/stdin}: bytes for the job's stdin (then EOF if
        C{eof}), at C{offset} in it if given (see L{stdinPath}).
        """
        response = await self._request("POST", stdinPath(jobId, eof, offset), raw=data)
        await treq.content(response)

    async def events(
        self,
        jobId: str,
        sink: Callable[[bytes], None],
        stream: str = "combined",
        follow: bool = True,
        tail: int | None = None,
        lastEventId: str | None = None,
        frames: bool = False,
        onStatus: Callable[[str], None] | None = None,
    ) -> None:
        """
        C{GET /jobs/ID/logs} as Server-Sent Events, or with C{frames} as
        binary frames (L{jobworker.framing}): hand the raw body to C{sink}
        (L{jobworker.client.events.EventParser} or
        L{jobworker.framing.FrameReader} reads it), resuming after
        C{lastEventId} if given. C{onStatus}: told the job's status as the
        answer came (C{X-Job-Status}; a followed job still in the queue is
        answered once it starts).
        """
        path, given = eventsRequest(jobId, stream, follow, tail, lastEventId, frames)
        headers = {
            name.lower().encode("ascii"): [value.encode("ascii", "replace")]
            for name, value in given.items()
        }
        response = await self._request(
            "GET", path, unbuffered=True, extraHeaders=headers
        )
        self._checkStream(response, streamType(frames))
        _tellStatus(response, onStatus)
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
        onStatus: Callable[[str], None] | None = None,
    ) -> None:
        """
        C{GET /jobs/ID/logs}: hand each chunk of output to C{sink}; tell
        C{onStart} the offset the server starts from (C{X-Output-Offset}),
        C{onStatus} the job's status as the answer came (C{X-Job-Status}).
        """
        response = await self._request(
            "GET", logsPath(jobId, stream, follow, offset, tail), unbuffered=True
        )
        _tellStatus(response, onStatus)
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


def _contentType(response: IResponse) -> str:
    """The answer's C{Content-Type}, or ""."""
    given: bytes = response.headers.getRawHeaders(b"content-type", [b""])[0]
    return given.decode("latin-1")


def _tellStatus(response: IResponse, onStatus: Callable[[str], None] | None) -> None:
    """Tell C{onStatus}, if any, the job's status a log answer carries."""
    status = response.headers.getRawHeaders(b"x-job-status", [b""])[0]
    if onStatus is not None and status:
        onStatus(status.decode("ascii", "replace"))
