"""
A client for short commands without Twisted: the standard library's
C{http.client} and C{ssl}, so that C{jw status} or C{jw list} costs a Python
start and one TLS 1.3 request, not the import of a reactor. The server is
verified as the Twisted client verifies it: against the same CA file, host
name included, TLS 1.3 at least, with the same client certificate.

The API's calls are L{ApiCalls}'; its coroutines never wait on anything
here (each request is made at once, blocking), so L{drive} runs them to
their end without an event loop. Following output (L{QuickClient.events},
L{QuickClient.logs}) blocks too; what must run at once runs in threads
(L{QuickClient.concurrently}, L{jobworker.client.workers}).
"""

from __future__ import annotations

import http.client
import io
import queue
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar
from urllib.parse import urlsplit

from ..keepalive import keepAlive, parseSeconds
from ..pemfiles import readPEM
from ..tlserrors import TLSConfigError, handshakeHint
from .bodies import bodyPieces
from .calls import (
    JOB_SHAPE,
    OUT_OF_DATE,
    ApiCalls,
    Shape,
    checkServer,
    checkStreamType,
    errorFor,
    eventsRequest,
    handshakeCut,
    handshakeTimedOut,
    jsonAnswer,
    logsPath,
    notTLS,
    notTrusted,
    outOfDate,
    requestBody,
    segment,
    stdinPath,
    streamType,
    unnamedPort,
)
from .config import ConfigError, readConfig
from .errors import ClientError, HandshakeCut, HandshakeTimeout, ServerUnreachable
from .readergone import ReaderWatch, readerGone
from .workers import startThread

T = TypeVar("T")

#: Seconds a request may wait for its connection or its answer (a long
#: poll asks for up to 60); also the deadline of a request/response answer
#: as a whole (L{Due}).
TIMEOUT = 300

#: Seconds a connection may be silent before its peer is probed (TCP
#: keepalive): a follow whose network died is so noticed in about a minute
#: and resumed, or given up, instead of waited on for ever. JW_KEEPALIVE.
KEEPALIVE = 30

#: Seconds between the heartbeats a server sends on an idle frames or SSE
#: stream (C{jobworker.server.sse.HEARTBEAT}, not imported: it needs
#: Twisted).
HEARTBEAT = 15.0

#: Seconds a heartbeat, or a long poll's answer, may come after it is due
#: (a loaded server, a retransmission) before its stream is taken for
#: stalled.
LATE = 5.0

#: The statuses of a job that has not ended.
_LIVE = ("PENDING", "RUNNING")


def keepAliveSeconds(environ: dict[str, str], path: str | None = None) -> int:
    """
    C{JW_KEEPALIVE}, else the C{keepalive} of the config file at C{path}
    (if given), else L{KEEPALIVE}.

    @raise ConfigError: not seconds, or a config file that is refused.
    """
    return keepAliveSetting(environ, path)[0]


def keepAliveSetting(environ: dict[str, str], path: str | None) -> tuple[int, str]:
    """L{keepAliveSeconds}, and where it comes from (as C{jw config} says)."""
    text = environ.get("JW_KEEPALIVE")
    if not text:
        configured = readConfig(path).get("keepalive")
        if configured is not None:
            assert path is not None
            return int(configured), path
        return KEEPALIVE, "default"
    try:
        return parseSeconds(text, "JW_KEEPALIVE"), "JW_KEEPALIVE"
    except ValueError as e:
        raise ConfigError(str(e)) from None


def handshakeSeconds(keepalive: int) -> float:
    """
    How long a TLS handshake may take, for either client: twice the
    keepalive (a server that takes the connection and never answers has
    the kernel answer the probes for it), never longer than L{TIMEOUT}.
    """
    return min(2 * keepalive, TIMEOUT)


def stallSeconds(keepalive: int) -> float:
    """
    How long a follow's stream may bring nothing before it is taken for
    stalled, and resumed: the network or the server stopped without
    closing anything (a proxy, a NAT or a middlebox that stops forwarding
    while its kernel still acknowledges, keepalive's probes included; a
    server stopped with SIGSTOP), which keepalive cannot notice. Twice the
    keepalive, as a dead connection fails; never less than a heartbeat and
    its lateness (L{HEARTBEAT} + L{LATE}: a stream that is alive is never
    that quiet), never more than L{TIMEOUT}.
    """
    return min(max(2.0 * keepalive, HEARTBEAT + LATE), float(TIMEOUT))


class Due:
    """
    When the answer of a request/response call is due whole: its headers
    and its body, within C{seconds} of the request (fault round 40). Its
    reads each waited up to L{TIMEOUT} for the next bytes: a server (or a
    middlebox) that sent a byte every few seconds held C{jw status} for as
    long as it went on. L{TIMEOUT} for the whole answer, as the Twisted
    client's (C{JobworkerClient._within}): a JSON answer of the API is
    small (a job's record is a few KiB, a list's page 4 MiB at most), so
    a network that carries it at all carries it in far less, and one that
    has not in five minutes has stalled, or is held by a peer that drips.
    A follow (C{logs -f}, C{exec -f}, C{wait}), whose answer may come in
    hours and whose stream lasts as long as its job, has none: it keeps
    its own bounds (the stall bound, the long poll beside it). Nor has a
    log's body (L{lift}).
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end: float | None = time.monotonic() + seconds
        #: Bytes of the answer come so far (headers included).
        self.received = 0

    def lift(self) -> None:
        """
        No deadline from now on: a log's body, which may be gigabytes
        (C{jw logs ID} of a chatty job over a slow link), is read as long
        as it keeps coming, each read bounded on its own.
        """
        self.end = None

    def bound(self, sock: socket.socket) -> None:
        """
        Before a read on C{sock}: its timeout is what is left.

        @raise TimeoutError: nothing is left.
        """
        if self.end is None:
            return
        left = self.end - time.monotonic()
        if left <= 0:
            raise TimeoutError("the answer is late")
        sock.settimeout(left)


class _DueReader(io.RawIOBase):
    """
    The raw bytes of an answer that is L{Due}: each read of C{sock} waits
    at most what is left. It reads through the socket's own file (as
    C{HTTPResponse}'s), which keeps the socket open for the answer's
    body after its connection lets go of it (C{Connection: close}).
    """

    def __init__(self, sock: socket.socket, due: Due) -> None:
        super().__init__()
        self._sock = sock
        self._raw = sock.makefile("rb", buffering=0)
        self._due = due

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int | None:
        self._due.bound(self._sock)
        count = self._raw.readinto(buffer)
        self._due.received += count or 0
        return count

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


class _DueResponse(http.client.HTTPResponse):
    """An C{HTTPResponse} read within its L{Due}, if it has one."""

    def __init__(self, sock: socket.socket, *args: Any, due: Due | None, **kwargs: Any):
        super().__init__(sock, *args, **kwargs)
        if due is not None:
            self.fp.close()
            self.fp = io.BufferedReader(_DueReader(sock, due))


class KeptAliveConnection(http.client.HTTPSConnection):
    """
    An HTTPS connection whose socket has TCP keepalive (L{keepAlive}) from
    before it connects: a connection attempt into a dead network fails as
    soon as a silent one does, not after L{TIMEOUT}.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        context: ssl.SSLContext,
        keepalive: int,
        **kwargs: Any,
    ) -> None:
        super().__init__(host, port, context=context, **kwargs)
        self.keepalive = keepalive
        self._tls = context
        self._create_connection = self._connectKeptAlive
        #: When the answer of the request in flight is due, if it is.
        self.due: Due | None = None

    def response_class(  # type: ignore[override]
        self, sock: socket.socket, *args: Any, **kwargs: Any
    ) -> http.client.HTTPResponse:
        """The answer of the request in flight, read within its L{due}."""
        return _DueResponse(sock, *args, due=self.due, **kwargs)

    def connect(self) -> None:
        """
        Connect, then shake hands within twice the keepalive: a server that
        accepts but never answers (stopped, wedged, or another service on
        the port) has the kernel answer for it, keepalive's probes
        included, so nothing else would end the wait.

        @raise HandshakeTimeout: no handshake in that time.
        """
        http.client.HTTPConnection.connect(self)
        raw = self.sock
        deadline = handshakeSeconds(self.keepalive)
        raw.settimeout(deadline)
        try:
            self.sock = self._tls.wrap_socket(raw, server_hostname=self.host)
        except TimeoutError:
            raw.close()
            self.sock = None
            raise HandshakeTimeout(deadline) from None
        except (ssl.SSLEOFError, ConnectionResetError, BrokenPipeError):
            # Closed by the server before it shook hands: not a failed one.
            raw.close()
            self.sock = None
            raise HandshakeCut() from None
        self.sock.settimeout(self.timeout)

    def _connectKeptAlive(
        self,
        address: tuple[str, int],
        timeout: float | None,
        source: tuple[str, int] | None = None,
    ) -> socket.socket:
        """C{socket.create_connection}, with keepalive set before C{connect}."""
        host, port = address
        error: OSError | None = None
        for family, kind, proto, _, where in socket.getaddrinfo(
            host, port, 0, socket.SOCK_STREAM
        ):
            sock = socket.socket(family, kind, proto)
            try:
                keepAlive(sock, self.keepalive)
                if timeout is not socket._GLOBAL_DEFAULT_TIMEOUT:  # type: ignore[attr-defined]
                    sock.settimeout(timeout)
                if source is not None:
                    sock.bind(source)
                sock.connect(where)
                return sock
            except OSError as e:
                sock.close()
                error = e
        raise error or OSError(f"{host} has no address")


#: Bytes asked for per read of a log stream: TLS hands over at most a
#: record (16 KiB) per read, but nothing smaller is asked for.
READ_SIZE = 256 * 1024

#: Seconds between the looks of L{QuickClient.concurrently} at the raw
#: streams its workers read (L{_Peers.look}).
LOOK = 1.0


class _RawRead:
    """
    A raw log stream being read: its socket, when it last brought bytes,
    and which stream it is (C{stdout}, C{stderr}; None if not known) and
    the offset of the next byte it brings.
    """

    def __init__(
        self, sock: socket.socket, stream: str | None = None, position: int = 0
    ) -> None:
        self.sock = sock
        self.last = time.monotonic()
        self.stream = stream
        self.position = position
        #: Handing bytes over (to a reader that may be slow: a paused
        #: pager): not waiting on the network, so its silence is not taken
        #: for a stall (a failed long poll still breaks it off).
        self.handing = False
        #: Why it was broken off (L{_Peers}), if it was.
        self.broken: str | None = None


class _Peers:
    """
    The connections of one L{QuickClient.concurrently}: the raw streams of
    a follow and the long poll of the job's end beside them. A raw stream
    has no heartbeat (a quiet job's is silent for hours), so the long poll
    is theirs: one that gets no answer in time, or no connection
    (L{lost}), breaks every raw stream being read, which resume on new
    connections (or give up). Until a long poll is answered again
    (L{answered}), and once it has the job's end (L{ended}), a raw stream
    still silent the stall bound later is broken too (L{look}): a long
    poll that gave up would watch nothing. So is one that trails the
    output the server held at an answer (its own connection stalled, the
    long poll's not: a middlebox that drops some flows). Breaking one
    shuts its socket down from this thread: the read blocked on it ends.
    """

    #: The long poll's answers kept (the output each said the server held).
    KEPT = 8

    def __init__(self, stall: float) -> None:
        self.stall = stall
        self._lock = threading.Lock()
        self._reads: set[_RawRead] = set()
        self._endedAt: float | None = None
        #: Since when the long poll has failed, and none was answered.
        self._failedAt: float | None = None
        #: The last answers: when each came, and the bytes of each stream
        #: the server held then.
        self._held: list[tuple[float, dict[str, int]]] = []

    def reading(
        self, sock: socket.socket, stream: str | None = None, position: int = 0
    ) -> _RawRead:
        """
        A raw stream is read on C{sock} from now on: C{stream}'s, from
        C{position} (the offset of the next byte it brings).
        """
        read = _RawRead(sock, stream, position)
        with self._lock:
            self._reads.add(read)
        return read

    def done(self, read: _RawRead) -> None:
        """C{read} ends: forgotten before its socket may be closed."""
        with self._lock:
            self._reads.discard(read)

    def lost(self, why: str, broken: bool = True) -> None:
        """
        The long poll failed (C{why}): with C{broken} (no answer, or no
        connection), break every raw read; and until one is answered
        again, watch them as after the job's end (L{look}).
        """
        with self._lock:
            if self._failedAt is None:
                self._failedAt = time.monotonic()
            if broken:
                for read in self._reads:
                    self._break(read, f"the long poll beside it {why}")

    def answered(self, job: dict[str, Any] | None = None) -> None:
        """
        A long poll was answered (with C{job}, the record): it watches the
        raw reads again; the bytes of output the server holds are kept,
        and the job's end (L{ended}).
        """
        self._failedAt = None
        if job is None:
            return
        held = {
            stream: count
            for stream in ("stdout", "stderr")
            if isinstance(count := job.get(f"{stream}_bytes"), int)
        }
        with self._lock:
            self._held = [*self._held[-(self.KEPT - 1) :], (time.monotonic(), held)]
        if job.get("status") not in _LIVE:
            self.ended()

    def ended(self) -> None:
        """The job has ended: its raw streams end soon, unless stalled."""
        if self._endedAt is None:
            self._endedAt = time.monotonic()

    def look(self) -> None:
        """
        Break the raw reads silent for the stall bound since the job ended,
        since the long poll failed (and none was answered), or since an
        answer said the server held more of their stream than they had.
        """
        since = self._endedAt
        if since is not None:
            why = "although the job had ended"
        else:
            since = self._failedAt
            why = "and the long poll beside it has failed since"
        now = time.monotonic()
        with self._lock:
            for read in self._reads:
                if read.handing:
                    continue
                if since is None:
                    # The first answer that said there was more for it.
                    at = next(
                        (
                            when
                            for when, held in self._held
                            if held.get(read.stream or "", 0) > read.position
                        ),
                        None,
                    )
                    if at is None:
                        continue
                    cause = "although the server had more of it"
                else:
                    at, cause = since, why
                if now - max(read.last, at) >= self.stall:
                    self._break(
                        read,
                        f"nothing came for {self.stall:g} s, {cause} (a stalled "
                        "network or server?)",
                    )

    def _break(self, read: _RawRead, why: str) -> None:
        if read.broken is not None:
            return
        read.broken = why
        try:
            # The socket's own shutdown: SSLSocket.shutdown would drop the
            # TLS state under the thread reading.
            socket.socket.shutdown(read.sock, socket.SHUT_RDWR)
        except OSError:
            pass  # closed by its end meanwhile


class QuickClock:
    """The little of a reactor the short commands ask for: the time."""

    def seconds(self) -> float:
        return time.time()


class QuickClient(ApiCalls):
    """
    One keep-alive HTTPS connection to the server, blocking. Following
    output uses more of them at once (L{another}, L{concurrently}), one per
    thread.
    """

    def __init__(
        self,
        server: str,
        context: ssl.SSLContext,
        user: str | None = None,
        password: str | None = None,
        token: str | None = None,
        keepalive: int = KEEPALIVE,
    ) -> None:
        checkServer(server)
        self.server = server.rstrip("/")
        self.reactor = QuickClock()
        self._context = context
        parts = urlsplit(self.server)
        #: The API's path on its host (a reverse proxy's prefix), or "".
        self._prefix = parts.path
        self._connection = KeptAliveConnection(
            parts.hostname or "",
            parts.port or 443,
            context=context,
            timeout=TIMEOUT,
            keepalive=keepalive,
        )
        #: How long a follow's answer or stream may bring nothing.
        self._stall = stallSeconds(keepalive)
        #: The connections this one works beside (L{concurrently}).
        self._peers = _Peers(self._stall)
        self._headers: dict[str, str] = {}
        #: The watch of our stdout's reader (L{watchReader}), if any.
        self.readerWatch: ReaderWatch | None = None
        if user is not None and password is not None:
            import base64

            pair = f"{user}:{password}".encode()
            self._headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        elif token is not None:
            self._headers["Authorization"] = f"Bearer {token}"

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
    ) -> QuickClient:
        """
        As L{JobworkerClient.connect<jobworker.client.http.JobworkerClient>},
        with TCP keepalive after C{keepalive} silent seconds.
        """
        checkServer(server)
        context = tlsContext(caPath, certPath, keyPath)
        return cls(server, context, user, password, token, keepalive)

    def another(self) -> QuickClient:
        """The same server, TLS and credentials on a connection of its own."""
        twin = QuickClient(
            self.server, self._context, keepalive=self._connection.keepalive
        )
        # The same dict: a login renewed by one of them is every one's.
        twin._headers = self._headers
        twin.renewal = self.renewal
        twin.givenToken = self.givenToken
        twin.readerWatch = self.readerWatch
        return twin

    def watchReader(self, fd: int | None) -> None:
        """
        Follow with C{fd}, our stdout (a pipe or a socket; None: nothing to
        watch), watched for its reader's going (L{ReaderWatch}): a follow
        read then fails at once as a write to it would (C{jw logs -f ID |
        grep -m1 ready} waited for the job's next write: new user round
        40). This client's twins (L{another}) share the watch.
        """
        if fd is not None and self.readerWatch is None:
            self.readerWatch = ReaderWatch(fd)

    def bearer(self) -> str | None:
        sent = self._headers.get("Authorization", "")
        return sent[7:] if sent.startswith("Bearer ") else None

    def useToken(self, token: str) -> None:
        self._headers["Authorization"] = f"Bearer {token}"

    async def pause(self, seconds: float) -> None:
        """Wait C{seconds} (this thread sleeps)."""
        time.sleep(seconds)

    async def concurrently(
        self, works: list[Callable[[QuickClient], Coroutine[Any, Any, None]]]
    ) -> None:
        """
        Run each of C{works} in a thread of its own, on a connection of its
        own (never this one: the caller may close it while they run), until
        all have ended. The first failure is raised as soon as it comes (the
        other threads, daemons, are left to the exit). Once all succeed,
        this client keeps one of their connections if it has none open, as
        a pool would (a server shutting down still answers on it). Their
        connections are peers (L{_Peers}): a long poll among them that gets
        no answer in time breaks the raw streams the others read, and this
        thread looks at those every L{LOOK} seconds meanwhile.
        """
        outcomes: queue.SimpleQueue[BaseException | QuickClient]
        outcomes = queue.SimpleQueue()
        peers = _Peers(self._stall)

        def run(work: Callable[[QuickClient], Coroutine[Any, Any, None]]) -> None:
            client = self.another()
            client._peers = peers
            try:
                drive(work(client))
            except BaseException as e:  # raised in the waiting thread
                client._connection.close()
                outcomes.put(e)
            else:
                outcomes.put(client)

        for work in works:
            startThread(run, work)
        done = []
        for _ in works:
            while True:
                try:
                    outcome = outcomes.get(timeout=LOOK)
                    break
                except queue.Empty:
                    peers.look()
            if isinstance(outcome, BaseException):
                raise outcome
            done.append(outcome)
        for other in done:
            if self._connection.sock is None and other._connection.sock is not None:
                self._connection, other._connection = (
                    other._connection,
                    self._connection,
                )
            other._connection.close()

    def _send(
        self,
        method: str,
        path: str,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
        patient: str | None = None,
        within: float | None = None,
        due: float | None = None,
    ) -> http.client.HTTPResponse:
        """
        Send one request; its response, headers read, or a L{ClientError}
        for a failed connection or an error status. A GET over a kept-alive
        connection that the server has closed meanwhile is sent again once.
        C{patient} (the job's path): the answer may take hours (a followed
        job still in the queue answers when it starts): one that has not
        come in the stall bound (L{stallSeconds}) is asked for again on a
        new connection, whose handshake fails in twice the keepalive if the
        network or the server stalled; nothing was received, so nothing is
        lost or repeated. Before it is, the job's record is asked for on
        that connection, due in the stall bound: a front that ends TLS
        shakes hands for a server stopped behind it. C{within}: the answer
        (a long poll's) is due in that many seconds, else the request
        failed. C{due}: the answer is due whole (L{Due}: its headers, and
        its body read through the response) that many seconds after the
        request, or it fails (fault round 40: a server that sent a byte
        every few seconds held C{jw status} as long as it went on).
        """
        allHeaders = {**self._headers, **(headers or {})}
        wait = self._stall if patient is not None else within
        deadline = None if due is None or patient is not None else Due(due)
        retried = False
        while True:
            self._connection.due = deadline
            reused = self._connection.sock is not None
            if reused and _dropped(self._connection.sock):
                # Closed by the server while idle (its --idle-timeout): a
                # request on it would fail, and a POST is not sent again.
                self._connection.close()
                reused = False
            sent = False
            try:
                if wait is not None:
                    if self._connection.sock is None:
                        self._connection.connect()
                    self._connection.sock.settimeout(wait)
                self._connection.request(
                    method, self._prefix + path, body=data, headers=allHeaders
                )
                sent = True
                response = self._connection.getresponse()
            except TimeoutError as e:
                self._connection.close()
                if not sent:
                    raise ClientError(describe(self.server, e)) from None
                if patient is not None:
                    # No answer yet: asked again, if the server answers.
                    self._body(self._send("GET", patient, within=self._stall))
                    continue
                if deadline is not None and deadline.received:
                    # (Its headers came in part: a byte every few seconds.)
                    raise ClientError(
                        midAnswer(self.server, deadline.seconds)
                    ) from None
                raise ClientError(
                    f"{self.server} sent no answer in "
                    f"{_waited(deadline, wait):g} s (a stalled network or "
                    "server?)"
                ) from None
            except (ConnectionResetError, BrokenPipeError) as e:
                # RemoteDisconnected is a ConnectionResetError. A request
                # not all sent cannot have been acted on: sent again too.
                self._connection.close()
                if not retried and reused and (method == "GET" or not sent):
                    retried = True
                    continue
                raise ClientError(describe(self.server, e)) from None
            except OSError as e:
                self._connection.close()
                raise ClientError(describe(self.server, e)) from None
            except http.client.HTTPException as e:
                self._connection.close()
                raise ClientError(
                    f"connection to {self.server} failed: {e!r}"
                ) from None
            if response.status >= 400:
                self._usualTimeout()
                raise errorFor(
                    response.status,
                    self._body(response),
                    response.getheader("Retry-After"),
                    path,
                    server=self.server,
                )
            return response

    def _usualTimeout(self) -> None:
        """
        The connection (if open) back to L{TIMEOUT}, after a request that
        waited otherwise (a long poll, a patient one, a stream).
        """
        sock = self._connection.sock
        # A handshake interrupted (Ctrl-C) leaves a socket already detached
        # (fd -1): its EBADF took the interrupt's place, "unexpected error",
        # exit 1 (new user round 36).
        if sock is not None and sock.fileno() != -1:
            sock.settimeout(TIMEOUT)

    def _body(self, response: http.client.HTTPResponse) -> bytes:
        """
        The body of C{response}, read to its end. A read that times out is
        said as what it is: the server answered, then stopped (fault round
        40: it was "cannot connect ...: timed out", as if no connection
        was made).
        """
        try:
            return response.read()
        except TimeoutError:
            deadline = self._connection.due
            sock = self._connection.sock
            quiet = sock.gettimeout() if sock is not None else None
            self._connection.close()
            if deadline is not None and deadline.end is not None:
                line = midAnswer(self.server, deadline.seconds)
            else:
                line = midAnswer(self.server, quiet or TIMEOUT, whole=False)
            raise ClientError(line) from None
        except OSError as e:
            self._connection.close()
            raise ClientError(describe(self.server, e)) from None
        except http.client.HTTPException as e:
            self._connection.close()
            raise ClientError(f"connection to {self.server} failed: {e!r}") from None

    async def _json(
        self,
        method: str,
        path: str,
        body: Any = None,
        slow: float = 0.0,
        shape: Shape | None = None,
    ) -> Any:
        headers = {}
        data = None
        if body is not None:
            data = requestBody(body)
        if body is not None or method in ("POST", "DELETE"):
            headers["Content-Type"] = "application/json"
        within = TIMEOUT + slow if slow else None
        try:
            return self._answer(
                self._send(
                    method, path, data, headers, within=within, due=TIMEOUT + slow
                ),
                shape,
            )
        finally:
            self._usualTimeout()

    def _answer(self, response: http.client.HTTPResponse, shape: Shape | None) -> Any:
        """The JSON object C{response} holds, of C{shape} (L{jsonAnswer})."""
        raw = self._body(response)
        contentType = response.getheader("Content-Type", "")
        return jsonAnswer(self.server, response.status, contentType, raw, shape)

    def _checkStream(self, response: http.client.HTTPResponse, expected: str) -> None:
        """L{checkStreamType} of a log answer."""
        contentType = response.getheader("Content-Type", "")
        try:
            checkStreamType(self.server, response.status, contentType, expected)
        except ClientError:
            self._connection.close()  # its body unread
            raise

    async def sendStdin(
        self, jobId: str, data: bytes, eof: bool = False, offset: int | None = None
    ) -> None:
        """
        C{POST /jobs/ID/stdin}: bytes for the job's stdin (then EOF if
        C{eof}). At an C{offset} the write may be sent again: one not
        answered in the stall bound (the job does not read) is, once the
        server answers for the job (C{_send}'s C{patient}).
        """
        try:
            response = self._send(
                "POST",
                stdinPath(jobId, eof, offset),
                data,
                {"Content-Type": "application/octet-stream"},
                patient=None if offset is None else f"/jobs/{segment(jobId)}",
            )
            self._body(response)
        finally:
            self._usualTimeout()

    async def job(self, jobId: str, wait: float = 0) -> dict[str, Any]:
        """
        C{GET /jobs/ID}; with C{wait}, a long poll of the job's end, asked
        for at most the stall bound less L{LATE} (so that it is answered at
        least that often) and failed if no answer comes by the stall bound:
        beside a follow's raw streams, which have no heartbeat, it is
        theirs (L{_Peers}).
        """
        if not wait:
            return await super().job(jobId)
        wait = min(wait, self._stall - LATE)
        try:
            response = self._send(
                "GET", f"/jobs/{segment(jobId)}?wait={wait:g}", within=wait + LATE
            )
            job: dict[str, Any] = self._answer(response, JOB_SHAPE)
        except ClientError as e:
            # No connection, no answer in time (its handshake's too): the
            # raw streams beside it may have stalled as well.
            self._peers.lost(f"failed: {e}", broken=e.status is None)
            raise
        finally:
            self._usualTimeout()
        self._peers.answered(job)
        return job

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
        As L{JobworkerClient.events<jobworker.client.http.JobworkerClient>}.
        The server sends a heartbeat every L{HEARTBEAT} seconds on these
        streams: one that brings nothing for the stall bound
        (L{stallSeconds}) has stalled, and fails as a broken one.
        """
        path, headers = eventsRequest(jobId, stream, follow, tail, lastEventId, frames)
        response = self._send(
            "GET",
            path,
            headers=headers,
            patient=_patience(jobId, follow),
            due=TIMEOUT,
        )
        self._liftDue()
        self._checkStream(response, streamType(frames))
        _tellStatus(response, onStatus)
        self._collect(response, lambda piece: sink(bytes(piece)), self._stall)

    async def logs(
        self,
        jobId: str,
        sink: Callable[[memoryview], None],
        stream: str = "stdout",
        offset: int = 0,
        follow: bool = False,
        tail: int | None = None,
        onStart: Callable[[int], None] | None = None,
        onStatus: Callable[[str], None] | None = None,
    ) -> None:
        """
        As L{JobworkerClient.logs<jobworker.client.http.JobworkerClient>},
        but C{sink} is handed views of a reused buffer (to write at once).
        A raw stream has no heartbeat: followed, it may be silent for hours,
        and only the long poll beside it (L{_Peers}) tells it stalled; else
        it brings everything at once, and nothing for L{TIMEOUT} seconds
        fails it; its headers are due in L{TIMEOUT} (L{Due}), not its body
        (L{_liftDue}).
        """
        response = self._send(
            "GET",
            logsPath(jobId, stream, follow, offset, tail),
            patient=_patience(jobId, follow),
            due=TIMEOUT,
        )
        self._liftDue()
        _tellStatus(response, onStatus)
        start = response.getheader("X-Output-Offset", "")
        if onStart is not None and start.isdigit():
            onStart(int(start))
        # Where it begins, for its peers (a tail's start, if said).
        position = int(start) if start.isdigit() else None if tail else offset
        self._collect(
            response,
            sink,
            None if follow else TIMEOUT,
            None if position is None else stream,
            position or 0,
        )

    def _liftDue(self) -> None:
        """
        A stream's headers came in time (a follow's have no deadline): its
        body is read as long as it keeps coming, each read bounded on its
        own (L{Due.lift}).
        """
        if self._connection.due is not None:
            self._connection.due.lift()

    def _collect(
        self,
        response: http.client.HTTPResponse,
        sink: Callable[[memoryview], None],
        quiet: float | None,
        stream: str | None = None,
        position: int = 0,
    ) -> None:
        """
        The body to C{sink} as it comes, each piece a view of one reused
        buffer (valid during the call only). Nothing for C{quiet} seconds
        fails it; with None (a followed raw stream: a job may say nothing
        for hours), its L{_Peers} may break it off (it is C{stream}'s,
        from C{position}, if known). A broken stream is a L{ClientError}
        with no status; a failing C{sink}, its own error. Broken off as our
        stdout's reader has gone (L{watchReader}), it is a
        C{BrokenPipeError}, as a write to it.
        """
        sock = self._connection.sock
        read = watch = None
        if sock is not None:
            sock.settimeout(quiet)
            watch = self._watchReading(sock)
            if quiet is None:
                read = self._peers.reading(sock, stream, position)
        pieces = bodyPieces(response, bytearray(READ_SIZE))
        try:
            while True:
                try:
                    piece = next(pieces, None)
                except (OSError, ValueError, http.client.HTTPException) as e:
                    if read is not None:
                        self._peers.done(read)  # before its socket is closed
                    self._readerDone(watch, sock)
                    self._connection.close()
                    if watch is not None and watch.gone:
                        raise readerGone() from None
                    if read is not None and read.broken is not None:
                        why: object = read.broken
                    elif isinstance(e, TimeoutError):
                        why = f"nothing came for {quiet:g} s (a stalled network?)"
                    else:
                        why = describe(self.server, e) if isinstance(e, OSError) else e
                    raise ClientError(
                        f"log stream from {self.server} broke off: {why}"
                    ) from None
                if piece is None:
                    if watch is not None and watch.gone:
                        # (A body read to the end its shutdown made.)
                        self._readerDone(watch, sock)
                        self._connection.close()
                        raise readerGone()
                    if read is not None and read.broken is not None:
                        # A body read to the connection's end: not all of it.
                        self._peers.done(read)
                        self._connection.close()
                        raise ClientError(
                            f"log stream from {self.server} broke off: {read.broken}"
                        )
                    response.close()  # read to its end: the connection is free
                    return
                if read is None:
                    sink(piece)
                    continue
                read.position += len(piece)
                read.handing = True
                try:
                    sink(piece)
                finally:
                    read.last = time.monotonic()
                    read.handing = False
        finally:
            if read is not None:
                self._peers.done(read)
            self._readerDone(watch, sock)
            self._usualTimeout()

    def _watchReading(self, sock: socket.socket) -> ReaderWatch | None:
        """
        The watch of our stdout's reader (L{watchReader}), if any, told
        that a follow's stream is read on C{sock}.

        @raise BrokenPipeError: the reader has gone already (the
            connection is closed, its body unread).
        """
        watch = self.readerWatch
        if watch is not None:
            try:
                watch.reading(sock)
            except BrokenPipeError:
                self._connection.close()
                raise
        return watch

    @staticmethod
    def _readerDone(watch: ReaderWatch | None, sock: socket.socket | None) -> None:
        """C{sock} is read no more: forgotten by C{watch}, if any."""
        if watch is not None and sock is not None:
            watch.done(sock)

    async def close(self) -> None:
        self._connection.close()

    def opened(self) -> None:
        """
        Open the connection now (its handshake done), if it is not: the
        next request is then sent at once. A failure is a request's.
        """
        sock = self._connection.sock
        if sock is not None and not _dropped(sock):
            return
        self._connection.close()
        try:
            self._connection.connect()
        except OSError as e:
            self._connection.close()
            raise ClientError(describe(self.server, e)) from None


def midAnswer(server: str, seconds: float, whole: bool = True) -> str:
    """
    One line for an answer that began to come, then stopped: with
    C{whole}, it was not all there C{seconds} after the request (L{Due});
    else nothing more came for C{seconds}. It was "cannot connect to
    SERVER: timed out", as if no connection was made (fault round 40).
    """
    if whole:
        why = f"the rest of its answer did not come within {seconds:g} s of the request"
    else:
        why = f"nothing more came for {seconds:g} s"
    return (
        f"{server} stopped answering mid-answer: {why} (a stalled network or server?)"
    )


def _waited(deadline: Due | None, wait: float | None) -> float:
    """How long a request waited for an answer that did not come."""
    if deadline is not None:
        return deadline.seconds
    return TIMEOUT if wait is None else wait


def _patience(jobId: str, follow: bool) -> str | None:
    """What a follow's L{QuickClient._send} asks before asking again."""
    return f"/jobs/{segment(jobId)}" if follow else None


def _dropped(sock: socket.socket) -> bool:
    """
    Has the other end closed (or written on) this idle kept-alive
    connection? Nothing is due on it between requests, so anything to
    read (its end, a TLS alert) says it cannot carry one more.
    """
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True
    poll = select.poll()
    try:
        poll.register(sock, select.POLLIN)
        return bool(poll.poll(0))
    except (OSError, ValueError):
        return True


def _tellStatus(
    response: http.client.HTTPResponse, onStatus: Callable[[str], None] | None
) -> None:
    """Tell C{onStatus}, if any, the job's status a log answer carries."""
    status = response.getheader("X-Job-Status", "")
    if onStatus is not None and status:
        onStatus(status)


def tlsContext(
    caPath: str, certPath: str | None = None, keyPath: str | None = None
) -> ssl.SSLContext:
    """
    Verify the server against the CA in C{caPath} (and no other), host
    name included, TLS 1.3 only; present the client certificate if given.

    @raise TLSConfigError: a file that cannot be read or used.
    """
    # PEM is ASCII; text around it need not be (a comment, say).
    ca = readPEM(caPath, "CA certificate").decode("ascii", "ignore")
    # Not create_default_context(): it would trust the system's CAs too
    # (and reading them costs ~20 ms). PROTOCOL_TLS_CLIENT checks the
    # certificate and the host name.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    try:
        context.load_verify_locations(cadata=ca)
    except (ssl.SSLError, ValueError, TypeError):
        raise TLSConfigError(f"{caPath} holds no PEM certificate") from None
    if certPath is not None or keyPath is not None:
        if certPath is None or keyPath is None:
            raise TLSConfigError("a client certificate needs both --cert and --key")
        # ssl reads them by name, unbounded, and waits on a FIFO: each is
        # checked as the CA is first (the Twisted client's reads them so).
        readPEM(certPath, "client certificate")
        readPEM(keyPath, "client key")
        try:
            context.load_cert_chain(certPath, keyPath)
        except OSError as e:
            raise TLSConfigError(
                f"cannot read client certificate {certPath}: {e.strerror}"
            ) from None
        except ssl.SSLError:
            raise TLSConfigError(
                f"{certPath} and {keyPath} are not a PEM certificate and its "
                "unencrypted key"
            ) from None
    return context


#: Seconds the check of a connection before a prompt may take.
PROBE_TIMEOUT = 30


def probeServer(server: str, caPath: str, keepalive: int = KEEPALIVE) -> None:
    """
    Connect to C{server} and shake hands (its certificate verified against
    the CA in C{caPath}, as every request's), then hang up: done before
    jw asks for a password, so that no one types one for a server jw
    cannot reach or does not trust.

    @raise ServerUnreachable: no connection, or no verified handshake.
    @raise TLSConfigError: the CA file cannot be used.
    """
    checkServer(server)
    context = tlsContext(caPath)
    parts = urlsplit(server)
    connection = KeptAliveConnection(
        parts.hostname or "",
        parts.port or 443,
        context=context,
        timeout=PROBE_TIMEOUT,
        keepalive=keepalive,
    )
    try:
        connection.connect()
    except OSError as e:
        line = describe(server, e)
        raise ServerUnreachable(line, line.endswith(notTrusted())) from None
    finally:
        connection.close()


def describe(server: str, error: OSError) -> str:
    """One line for a request that got no answer (as the Twisted client says)."""
    if isinstance(error, HandshakeCut):
        return handshakeCut(server)
    if isinstance(error, ssl.SSLCertVerificationError):
        verifyMessage = getattr(error, "verify_message", None) or ""
        if "match" in str(verifyMessage) or "Hostname" in str(error):
            return (
                f"cannot connect to {server}: the server's certificate does not "
                "match its host name"
            )
        code = getattr(error, "verify_code", None)
        if code in OUT_OF_DATE:
            return outOfDate(server, code)
        return f"cannot connect to {server}: {notTrusted()}"
    if isinstance(error, ssl.SSLError):
        hint = handshakeHint(str(error))
        if hint is not None:
            return f"cannot connect to {server}: {hint}"
        plain = notTLS(server, str(error))
        if plain is not None:
            return plain
        if "VERSION" in str(error) or "PROTOCOL" in str(error):
            return f"cannot connect to {server}: TLS 1.3 handshake failed"
        return f"cannot connect to {server}: TLS handshake failed"
    if isinstance(error, ConnectionRefusedError):
        return (
            f"cannot connect to {server}: connection refused (is the server "
            f"running?){unnamedPort(server)}"
        )
    if isinstance(error, socket.gaierror):
        return f"cannot connect to {server}: unknown host"
    if isinstance(error, HandshakeTimeout):
        return handshakeTimedOut(server, error.seconds)
    if isinstance(error, TimeoutError):
        return f"cannot connect to {server}: timed out{unnamedPort(server)}"
    return f"cannot connect to {server}: {error.strerror or error}"


def drive(coroutine: Coroutine[Any, Any, T]) -> T:
    """
    Run a command's coroutine to its end at once: with L{QuickClient} it
    never waits on an event loop (it blocks instead; a coroutine that waits
    is a bug, said as such).
    """
    try:
        coroutine.send(None)
    except StopIteration as done:
        result: T = done.value
        return result
    coroutine.close()
    raise RuntimeError("a short command waited on the reactor")
