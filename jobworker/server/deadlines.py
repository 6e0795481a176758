"""Read deadlines for HTTP requests: a slow client holds nothing for long."""

from __future__ import annotations

import fcntl
import json
import struct
import termios
import time
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel, _ChunkedTransferDecoder

from ..errors import TooManyRequests
from .peruser import PerUser


def _closingResponse(status: bytes, message: str, headers: bytes = b"") -> bytes:
    body = json.dumps({"error": message}, separators=(",", ":")).encode() + b"\n"
    return (
        b"HTTP/1.1 " + status + b"\r\n"
        b"content-type: application/json\r\n"
        b"connection: close\r\n"
        + headers
        + b"content-length: "
        + str(len(body)).encode("ascii")
        + b"\r\n\r\n"
        + body
    )


_TIMEOUT_RESPONSE = _closingResponse(
    b"408 Request Timeout", "request not received in time"
)
_TOO_LONG_RESPONSE = _closingResponse(
    b"431 Request Header Fields Too Large", "request line or header too long"
)
#: What a connection whose body was refused as too large still reads (and
#: throws away) before it is closed, and for how long at most: a client
#: still sending it reads the 413 rather than a reset connection.
LINGER_BYTES = 1 << 20
LINGER_SECONDS = 2.0
#: Then, while what was written to it has not left (L{unsent}), it is
#: looked at again this often, this long at most.
LINGER_LOOK = 0.25
LINGER_MOST = 60.0

_MALFORMED_RESPONSE = _closingResponse(
    b"400 Bad Request", "malformed HTTP request (request line, headers or chunks)"
)


#: The bytes of a chunked body's trailer taken (Twisted's: 64 KiB): it is
#: searched again at each record, and thrown away.
TRAILER_BYTES = 1024

#: What L{DeadlineChannel} relies on in Twisted's C{HTTPChannel} (and its
#: C{LineReceiver}) beyond its public methods: a test checks they are
#: still there, so that an upgrade of Twisted that renames one fails there
#: rather than quietly in the pipelining and deadline paths.
RELIED_ON = (
    "_buffer",
    "_transferDecoder",
    "line_mode",
    "_dataBuffer",
    "_handlingRequest",
    "_waitingForTransport",
    "_optimisticEagerReadSize",
    "_networkProducer",
    "_savedTimeOut",
    "_receivedHeaderSize",
    "_receivedHeaderCount",
    "_respondToBadRequestAndDisconnect",
    "requests",
    "persistent",
    "totalHeadersSize",
    "maxHeaders",
    "length",
)


class DeadlineChannel(HTTPChannel):
    """
    An HTTP channel with whole-request deadlines, where Twisted's own timeout
    is an idle timer that every byte restarts (a client sending one byte a
    second would hold the connection forever).

    From a request's first byte (the first request's: from the accept,
    its TLS handshake included), its headers must arrive within
    C{headerTimeout} seconds; from the end of the headers, its body within
    C{bodyTimeout}. A late client gets a 408 and the connection is closed.
    The request line and headers together are capped at C{totalHeadersSize}
    bytes (Twisted answers 400 past it), and at Twisted's 500 headers.
    """

    log = Logger()
    headerTimeout: float = 10.0
    bodyTimeout: float = 30.0
    _deadline: IDelayedCall | None = None
    _waitingForBody = False
    _closed = False
    _refused = False
    _closeWaiters: list[Deferred[None]] | None = None
    _lastActive = 0.0
    #: A request is done, but its answer waits to be sent: the requests
    #: pipelined behind it wait too (L{requestDone}).
    _nextWaits = False
    #: The next pipelined request's turn (L{_playNext}).
    _nextCall: IDelayedCall | None = None

    _host: Any = None

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        #: The pieces of a request or header line whose end has not come
        #: (L{dataReceived}).
        self._partialLine = bytearray()

    #: Whether a request of this connection has been answered.
    _served = False
    #: Whether a request of this connection has been authenticated (its
    #: credentials checked and taken: L{markAuthenticated}).
    authenticated = False

    def connectionMade(self) -> None:
        super().connectionMade()  # type: ignore[no-untyped-call]
        self._lastActive = self._acceptedAt = time.monotonic()
        # From the accept on (the TLS handshake included), not from a first
        # byte that may never come: sockets that sent nothing were each
        # kept for the idle timeout's minute, and 17 addresses held every
        # connection the server takes (attacker round 39).
        self._deadline = self.callLater(  # type: ignore[no-untyped-call, call-arg]
            self.headerTimeout, self._tooSlow, "headers"
        )

    def getHost(self) -> Any:
        """The local address, asked of the socket once: Twisted asks for it
        at every request (a getsockname each), and it never changes."""
        if self._host is None:
            self._host = HTTPChannel.getHost(self)
        return self._host

    def idleFor(self) -> float:
        """Seconds since this connection last received or answered anything
        (0 while a request is in progress); infinite once it is closed."""
        if self._closed:
            return float("inf")
        if self._handlingRequest and not self._nextWaits:
            return 0.0
        return time.monotonic() - self._lastActive

    _acceptedAt = 0.0

    def spareable(self, after: float) -> bool:
        """
        Has this connection, open C{after} seconds at least, nothing to
        lose if it is closed to make room: no request of it authenticated
        yet, and none being checked; or no request answered yet and none
        under way (bare connects, renewed before they were ever idle long,
        held every slot), or a request whose body comes with no
        credentials, which can only be refused (one byte of it every 2 s
        held the connection for C{--body-timeout}: the verifier of round
        39), nothing unsent.
        """
        if self._closed or self.transport is None or self._refused:
            return True  # (gone, or answered and closing: L{_refuse})
        if time.monotonic() - self._acceptedAt < after:
            return False
        if not self.authenticated:
            # Never a request authenticated: nothing of a user's to lose
            # (a GET /healthz every 3.5 s, or headers sent slowly, each
            # request within --header-timeout, held every slot with no
            # account: attacker round 40), but a request with credentials
            # whose body is on its way or that is being checked (a client
            # sends its headers at once; a body may take its time).
            if self.line_mode or not self.requests:
                return True
            if self._handlingRequest:
                # (Its credentials being checked; but a refusal only
                # delayed as long as a check, L{Authenticator._likeACheck},
                # has nothing to lose: code review 41.)
                return getattr(self.requests[-1], "refusalDecided", False) is True
            # A body on its way: spared if its credentials look good (a
            # made-up header, a byte of body every 4 s, held every slot:
            # attacker round 40, second wave).
            vouches = getattr(getattr(self, "site", None), "vouches", None)
            return vouches is None or vouches(self.requests[-1]) is None
        if unsent(self.transport):
            return False
        if not self.requests:
            return not (self._served or self._partialLine or self._buffer)
        request = self.requests[-1]
        if self._handlingRequest or self.line_mode:
            return False  # (handled, or its headers still coming)
        if request.requestHeaders.hasHeader(b"authorization"):
            return False
        return not self._certified()

    def _certified(self) -> bool:
        """Did the client present a (verified) certificate?"""
        peer = getattr(self.transport, "getPeerCertificate", None)
        return peer is not None and peer() is not None

    def evictableFor(self) -> float:
        """
        Seconds this connection has been idle and may be closed to make
        room for another (L{ConnectionsPerClient
        <jobworker.server.connections.ConnectionsPerClient>}): 0 while a
        request is under way (its headers or body arriving: a pause inside
        a body is within C{--body-timeout}), handled, or its answer not yet
        taken by the client (L{unsent}: a slow reader's page was cut,
        session review 39).
        """
        if self._closed:
            return float("inf")
        if (
            self.requests
            or self._handlingRequest
            or self._partialLine
            or self._buffer
            or not self.line_mode
            or self.transport is None
            or unsent(self.transport)
        ):
            return 0.0
        return time.monotonic() - self._lastActive

    # Pipelined requests wait while answers cannot be sent. Twisted stops
    # reading the connection then only if its transport filled between two
    # requests; filled while a request was handled, the connection was read
    # on, and each finished request parsed the next one at once. A client
    # that sent thousands of requests and read no answer had them all
    # answered into the server's memory (attacker round 27: 3.8 GB from
    # three connections). Reading goes on while a request is handled (a
    # follower that leaves is seen at once), what it brings is buffered.

    def rawDataReceived(self, data: bytes) -> None:
        if not self._handlingRequest:
            super().rawDataReceived(data)
            return
        # Kept behind the request being handled in one growing buffer:
        # Twisted's list of every record, summed at each new one, cost the
        # square of their number, sent a byte a record (attacker round 37:
        # 2.2 s a connection). At most _optimisticEagerReadSize, and (not
        # Twisted's) also while answers cannot be sent.
        kept = self._dataBuffer
        if kept and isinstance(kept[-1], bytearray):
            kept[-1] += data
        else:
            kept.append(bytearray(data))
        if sum(map(len, kept)) > self._optimisticEagerReadSize:
            self._networkProducer.pauseProducing()

    def requestDone(self, request: Any) -> None:
        self._lastActive = time.monotonic()
        self._served = True
        # Requests pipelined behind it: in this read still (Twisted parsed
        # them in the same loop), or buffered meanwhile.
        pipelined = self._buffer or self._dataBuffer
        if not (self.persistent and (pipelined or self._waitingForTransport)):
            super().requestDone(request)  # type: ignore[no-untyped-call]
            return
        # Twisted's requestDone, but the next request is parsed only once
        # the answers before it are sent (L{resumeProducing}), and in a
        # reactor turn of its own. Meanwhile what the client sends (the rest
        # of this read included: the connection stays in raw mode, and TLS
        # hands over each record of a read even when reading is paused) is
        # kept in order behind it, and the idle timeout runs.
        if request is not self.requests[0]:
            raise TypeError(request)
        del self.requests[0]
        self._nextWaits = True
        if self._savedTimeOut:
            self.setTimeout(self._savedTimeOut)  # type: ignore[no-untyped-call]
        if self._waitingForTransport:
            self._networkProducer.pauseProducing()
        else:
            self._playSoon()

    def resumeProducing(self) -> None:
        super().resumeProducing()  # type: ignore[no-untyped-call]
        if self._nextWaits:
            self._playSoon()

    def _playSoon(self) -> None:
        if self._nextCall is None:
            self._nextCall = self.callLater(0, self._playNext)  # type: ignore[no-untyped-call]

    def _playNext(self) -> None:
        """Parse the next pipelined request, if its turn has come."""
        self._nextCall = None
        if not self._nextWaits or self._closed or self._waitingForTransport:
            return  # (L{resumeProducing} plays it)
        self._nextWaits = False
        self._handlingRequest = False
        self._networkProducer.resumeProducing()
        data = b"".join(self._dataBuffer)
        self._dataBuffer = []
        self.setLineMode(data)  # type: ignore[no-untyped-call]

    def whenClosed(self) -> Deferred[None]:
        """Fires once the connection is closed (its last byte written)."""
        if self._closed:
            return succeed(None)
        if self._closeWaiters is None:
            self._closeWaiters = []
        d: Deferred[None] = Deferred()
        self._closeWaiters.append(d)
        return d

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            # Answered and closing: nothing more is parsed; what comes is
            # read (thrown away) a little while (L{_refuse}).
            if self._lingerLeft >= 0:
                self._lingerLeft -= len(data)
                if self._lingerLeft < 0:
                    self._endLinger()
            else:
                # (Reading stopped, resumed by Twisted's flow control.)
                self._networkProducer.pauseProducing()
            return
        self._lastActive = time.monotonic()
        if self._deadline is None and not self._handlingRequest:
            self._deadline = self.callLater(  # type: ignore[no-untyped-call, call-arg]
                self.headerTimeout, self._tooSlow, "headers"
            )
        if self.line_mode and not self._handlingRequest:
            # A line's pieces are kept apart until its end comes (or it is
            # over the cap): Twisted appended each to the whole line and
            # searched it again, the square of a line dribbled a byte a
            # record (attacker round 37; no credentials needed).
            # Only a CRLF ends a line here (a bare LF did not: records of
            # "\n" each had the whole line searched again: session review
            # 37), and each byte is looked at once.
            partial = self._partialLine
            if partial or b"\r\n" not in data:  # (else: a whole request, say)
                start = len(partial)
                partial += data
                if not self._lineEnds(start) and (
                    len(partial) + len(self._buffer) <= self.MAX_LENGTH
                ):
                    self.resetTimeout()  # type: ignore[no-untyped-call]
                    return
                data = bytes(partial)
                self._partialLine = bytearray()
        super().dataReceived(data)  # type: ignore[no-untyped-call]

    def _lineEnds(self, start: int) -> bool:
        """Does a CRLF end in L{_partialLine} past C{start} (its CR
        maybe the last byte before it, in Twisted's buffer)?"""
        partial = self._partialLine
        end = partial.find(b"\n", start)
        while end >= 0:
            if end and partial[end - 1] == 0x0D:
                return True
            if not end and self._buffer.endswith(b"\r"):
                return True
            end = partial.find(b"\n", end + 1)
        return False

    def allHeadersReceived(self) -> None:
        self._cancelDeadline()
        decoder = self._transferDecoder
        if isinstance(decoder, _ChunkedTransferDecoder):
            # A chunked body's trailer (thrown away) is searched again at
            # each record: 1 KiB of it, not Twisted's 64 (attacker round 37).
            decoder._maxTrailerHeadersSize = TRAILER_BYTES
        limit = getattr(self.requests[-1], "maxBodyBytes", None)
        if limit is not None and self.length is not None and self.length > limit:
            # Known over the cap: answered now, not once all of it has
            # been read, decrypted and thrown away (attacker round 33); a
            # client that asked first (C{Expect: 100-continue}) is told so
            # at once (RFC 9110 10.1.1), not invited to send it.
            self.refuseBody(limit)
            return
        if self.length != 0:
            if not self.authenticated and not self._countVouched():
                return
            self._deadline = self.callLater(  # type: ignore[no-untyped-call, call-arg]
                self.bodyTimeout, self._tooSlow, "body"
            )
        super().allHeadersReceived()  # type: ignore[no-untyped-call]

    def _countVouched(self) -> bool:
        """
        A body is coming whose credentials look good (L{spareable} spares
        it): the connection is the named user's from now, counted against
        --max-connections-per-user, not once a handler runs after the body
        (one Reader's slow bodies held every slot: attacker round 41). False
        if that user holds as many as one may: answered 429, closed.
        """
        vouches = getattr(getattr(self, "site", None), "vouches", None)
        name = vouches(self.requests[-1]) if vouches is not None else None
        if name is None:
            return True
        try:
            markAuthenticated(self.requests[-1], name)
        except TooManyRequests as e:
            path = getattr(self, "_path", None)
            method = getattr(self, "_command", None)
            self._refuse(
                _closingResponse(
                    b"429 Too Many Requests",
                    e.message,
                    b"retry-after: %d\r\n" % e.retryAfter,
                ),
                path if isinstance(path, bytes) else b"",
                method if isinstance(method, bytes) else None,
            )
            return False
        return True

    def allContentReceived(self) -> None:
        if self._refused:
            return  # (the end of a chunked body refused on its way)
        self._cancelDeadline()
        super().allContentReceived()  # type: ignore[no-untyped-call]

    #: The L{connectionsPerUser} this connection is counted in, and as
    #: whose (L{markAuthenticated}).
    _countedFor: tuple[PerUser, str] | None = None

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        counted, self._countedFor = self._countedFor, None
        if counted is not None:
            counted[0].release(counted[1])
        self._cancelDeadline()
        if self._nextCall is not None and self._nextCall.active():
            self._nextCall.cancel()
        self._nextCall = None
        self._closed = True
        super().connectionLost(reason)  # type: ignore[no-untyped-call]
        waiters, self._closeWaiters = self._closeWaiters or [], None
        for d in waiters:
            d.callback(None)

    def lineLengthExceeded(self, line: bytes) -> None:
        # Twisted's LineReceiver would just drop the connection, unanswered.
        self._refuse(_TOO_LONG_RESPONSE)

    def _respondToBadRequestAndDisconnect(self) -> None:
        # Twisted answers what its parser refuses (a NUL in a header, two
        # Content-Lengths, a bad chunk size, ...) with a bare 400 and no
        # body: the API's errors are JSON, this one too. Headers too large
        # in all, or too many (RFC 6585), are a 431, as a line too long is.
        large = (
            self._receivedHeaderSize > self.totalHeadersSize
            or self._receivedHeaderCount > self.maxHeaders
        )
        if large:
            self._refuse(_TOO_LONG_RESPONSE)
        else:
            self._refuse(_MALFORMED_RESPONSE)

    def refuseBody(self, limit: int) -> None:
        """Answer 413: the request's body is over C{limit} bytes (counted
        in the site's metrics, as the 413 of a body read to its end was:
        session review 33)."""
        if self._refused:
            return
        path = getattr(self, "_path", None)  # (the request line's, as parsed)
        method = getattr(self, "_command", None)
        self._refuse(
            _closingResponse(
                b"413 Request Entity Too Large", f"request body over {limit} bytes"
            ),
            path if isinstance(path, bytes) else b"",
            method if isinstance(method, bytes) else None,
        )

    #: What a refused connection may still read (L{LINGER_BYTES}), -1 once
    #: it is aborted.
    _lingerLeft = -1

    def _refuse(
        self, response: bytes, path: bytes = b"", method: bytes | None = None
    ) -> None:
        """
        Answer with C{response} and close; parse nothing more. Counted in
        the site's metrics as a request to C{path} (none: route C{other};
        the 408, 431 and 400 of a request never handed to a route were not
        counted, and a flood of them left no trace there: code review 35).

        A closing TLS connection reads on until the client's C{close_notify}
        (and a client that sends on never sends it), each record decrypted:
        until the idle timeout, a minute. What it still reads is thrown
        away, up to L{LINGER_BYTES} or for L{LINGER_SECONDS}, so that a
        client still sending a body reads its answer rather than a reset;
        then the connection is aborted (attacker round 33).
        """
        if self._refused:
            # (Twisted's parser goes on with the rest of a read after a
            # refusal: a malformed chunk after a body over the cap was a
            # second answer, and a second count: session review 35.)
            return
        self._refused = True
        self._cancelDeadline()
        metrics = getattr(getattr(self, "site", None), "metrics", None)
        if metrics is not None:
            metrics.request(path, int(response[9:12]), 0.0, method)
        self.lineReceived = self.rawDataReceived = _ignore  # type: ignore[method-assign]
        if self.transport is not None:
            self.transport.write(response)
            self.loseConnection()  # type: ignore[no-untyped-call]
            self._lingerLeft = LINGER_BYTES
            self._deadline = self.callLater(  # type: ignore[no-untyped-call]
                LINGER_SECONDS, self._endLinger
            )

    #: How many times L{_endLinger} looked.
    _lingerLooks = 0

    def _endLinger(self) -> None:
        """
        The linger is over: abort the connection, once what was written
        to it has left (an abort drops it: a log response pipelined before
        the refused request lost its last megabyte, the kernel's send
        queue; session review 33). Until then reading stops (nothing more
        is decrypted), and the channel looks again every L{LINGER_LOOK}
        seconds, for L{LINGER_MOST} at most.
        """
        self._lingerLeft = -1
        self._cancelDeadline()
        if self._closed or self.transport is None:
            return
        self._lingerLooks += 1
        if self._lingerLooks * LINGER_LOOK < LINGER_MOST and unsent(self.transport):
            self._networkProducer.pauseProducing()
            self._deadline = self.callLater(  # type: ignore[no-untyped-call]
                LINGER_LOOK, self._endLinger
            )
            return
        # (Every transport the server runs on has it: TCP, TLS and the
        # wrappers between; ITransport does not name it.)
        self.transport.abortConnection()  # type: ignore[attr-defined]

    def _cancelDeadline(self) -> None:
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

    def _tooSlow(self, part: str) -> None:
        self._deadline = None
        underWay = self._buffer or self._partialLine
        if part == "headers" and not self.requests and not underWay:
            if not self._served and self.transport is not None:
                # No request since the accept (no handshake, nothing after
                # it, or only blank lines: session review 39): closed, no
                # answer, no line.
                self.transport.abortConnection()  # type: ignore[attr-defined]
            # Else only the blank line Twisted lets a client send after a
            # request (no request begun, no line under way): idle, not a
            # 408, nor a request counted (late review 35).
            return
        peer = self.transport.getPeer() if self.transport is not None else None
        self.log.info(
            "closed a connection from {client}: request {part} not received in time",
            client=getattr(peer, "host", "?"),
            part=part,
        )
        self._refuse(_TIMEOUT_RESPONSE)


def unsent(transport: Any) -> int:
    """
    The bytes written to C{transport} that have not reached the client's
    side yet: in Twisted's buffers, down to the TCP transport, and in the
    kernel's send queue (not yet acknowledged: C{TIOCOUTQ}).
    """
    total = 0
    layer = transport
    for _ in range(8):  # (TLS, the connection's wrapper, TCP)
        if layer is None:
            break
        buffered = getattr(layer, "dataBuffer", None)
        if isinstance(buffered, bytes):
            total += len(buffered) - getattr(layer, "offset", 0)
            total += getattr(layer, "_tempDataLen", 0)
        sock = getattr(layer, "socket", None)
        if sock is not None:
            try:
                queued = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4)
                total += struct.unpack("i", queued)[0]
            except (OSError, ValueError):
                pass
            break
        layer = getattr(layer, "transport", None)
    return total


def _ignore(data: bytes) -> None:
    """What a refused connection does with what the client still sends."""


def channelWithDeadlines(
    headerTimeout: float, bodyTimeout: float, maxHeaderBytes: int = 16384
) -> type[DeadlineChannel]:
    """
    A L{DeadlineChannel} class with these deadlines and this cap on the
    request line and headers, for C{Site.protocol}.
    """
    return type(
        "DeadlineChannel",
        (DeadlineChannel,),
        {
            "headerTimeout": headerTimeout,
            "bodyTimeout": bodyTimeout,
            "totalHeadersSize": maxHeaderBytes,
            "MAX_LENGTH": maxHeaderBytes,
        },
    )


def connectionsPerUser(limit: int) -> PerUser:
    """
    The connections each user's requests hold (L{markAuthenticated}), at
    most C{limit} a user: one Reader's C{GET /whoami} every 3.5 s on each
    of 1,024 connections held every one, never idle (the verifier of round
    40). A connection past it is refused its request, and stays one that
    gives way at --max-connections (none of its requests authenticated).
    """
    return PerUser(
        limit, "connections", "use fewer (a kept-alive one takes many requests)"
    )


def markAuthenticated(request: Any, user: str) -> None:
    """
    C{request}'s credentials were taken, C{user}'s: its connection is a
    user's (L{DeadlineChannel.spareable}), counted as theirs by the site's
    L{connectionsPerUser} (if it has one) until it closes.

    @raise TooManyRequests: the user holds as many as one user may.
    """
    channel = getattr(request, "channel", None)
    if channel is None or getattr(channel, "authenticated", True):
        return
    perUser = getattr(getattr(channel, "site", None), "connectionsPerUser", None)
    if perUser is not None:
        perUser.take(user)
        channel._countedFor = (perUser, user)
    channel.authenticated = True
