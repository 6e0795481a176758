"""
Twisted's TLS, with a large write encrypted in large pieces.

C{TLSMemoryBIOProtocol} hands OpenSSL a write 16 KiB at a time (one record)
and reads the result back 32 KiB at a time: a 1 GiB log costs 65,536 rounds
of Python, each copying its 16 KiB slice. Here a write of more than one
record goes to OpenSSL in pieces of L{PIECE} bytes, without copies (a
memoryview), and each piece's records are read back at once. OpenSSL makes
the same 16 KiB records of it; what reaches the socket is the same.
Everything else (small writes, the handshake, back-pressure, errors) is
Twisted's own.
"""

from __future__ import annotations

import time
from typing import Any

from OpenSSL.SSL import SSL_CB_ACCEPT_EXIT, Error, WantReadError
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure

log = Logger()

#: One TLS record's payload: writes up to this size go Twisted's way.
RECORD = 1 << 14
#: The most given to OpenSSL at once.
PIECE = 1 << 18
#: What one read of the send BIO asks for: a piece's records, with room
#: for their headers and tags.
DRAIN = PIECE + (1 << 16)

#: Handshake messages a connection may begin besides its handshake (its
#: KeyUpdates), and one more a minute of its age (L{LargeWritesTLSProtocol.
#: _tooManyHandshakes}).
HANDSHAKES_MOST = 64


def countHandshakes(connection: Any, where: int, ret: int) -> None:
    """
    OpenSSL's info callback of the server's contexts: tell the connection's
    protocol each time its handshake's state machine is left (its handshake,
    and each TLS 1.3 message after it: a KeyUpdate runs it again). Called
    on handshakes and alerts, never on application data.
    """
    if where == SSL_CB_ACCEPT_EXIT:
        ran = getattr(connection.get_app_data(), "handshakeRan", None)
        if ran is not None:
            ran()


#: The most small writes held (L{LargeWritesTLSProtocol}), in bytes: past
#: it they are sent, so that a transport that fills says so (pipelined
#: requests answered from one read were all held, then sent at once: a
#: review of attacker round 27).
HOLD_MOST = 1 << 16

#: What L{LargeWritesTLSProtocol} relies on in Twisted's class (a test
#: checks they are still there).
RELIED_ON = (
    "_lostTLSConnection",
    "_tlsConnection",
    "_bufferedWrite",
    "_producer",
    "_write",
    "_tlsShutdownFinished",
    "_aborted",
)


class LargeWritesTLSProtocol(TLSMemoryBIOProtocol):
    """
    C{TLSMemoryBIOProtocol}, with large writes in L{PIECE}s, and the small
    writes made while received data is handled sent together once it is
    (a response's head and body: one record, one C{SSL_write}, one
    C{bio_read}, one socket write instead of two of each).
    """

    #: While received data is handled: the small writes it made, in order
    #: (None: not handling, each write goes at once).
    _held: list[bytes] | None = None
    #: Their size.
    _heldBytes = 0

    #: Handshakes run on this connection (its first, and each message
    #: after it: a KeyUpdate, L{countHandshakes}), and when it was made.
    _handshakes = 0
    _madeAt: float | None = None

    def makeConnection(self, transport: Any) -> None:
        self._madeAt = time.monotonic()
        TLSMemoryBIOProtocol.makeConnection(self, transport)

    def handshakeRan(self) -> None:
        """OpenSSL ran a handshake, or a message after it (L{countHandshakes})."""
        self._handshakes += 1

    def dataReceived(self, bytes: bytes) -> None:
        if self._held is not None:  # (re-entered: still held)
            TLSMemoryBIOProtocol.dataReceived(self, bytes)
            return
        self._held = []
        self._heldBytes = 0
        try:
            TLSMemoryBIOProtocol.dataReceived(self, bytes)
        finally:
            self._release()
        if self._handshakes > HANDSHAKES_MOST:
            self._tooManyHandshakes()

    def _tooManyHandshakes(self) -> None:
        """
        Abort a connection past L{HANDSHAKES_MOST} handshake messages after
        its first (and one more a minute of its age): TLS 1.3 KeyUpdates
        carry no data and reach no HTTP limit; 3,000 in a 64 KiB read took
        the reactor 35 ms, and a few connections of them stalled every
        request for seconds (attacker round 40). Counted by OpenSSL's own
        callback: a count of bytes beside the plaintext cut ordinary
        clients, whose short requests' record framing added up (session
        review 40).
        """
        if self._aborted:
            return
        age = time.monotonic() - (self._madeAt or time.monotonic())
        if self._handshakes <= HANDSHAKES_MOST + age / 60:
            return
        peer = self.transport.getPeer() if self.transport is not None else None
        log.warn(
            "closed a connection from {client}: {count} TLS handshake messages "
            "(KeyUpdates) in {age:.0f} s",
            client=getattr(peer, "host", "?"),
            count=self._handshakes,
            age=age,
        )
        self.abortConnection()

    def _release(self) -> None:
        """Send the held writes, as one; write at once from now on."""
        held, self._held = self._held, None
        if held:
            self._send(b"".join(held) if len(held) > 1 else held[0])

    def _sendHeld(self) -> None:
        """Send the held writes now (past L{HOLD_MOST}); hold the next ones."""
        held = self._held
        assert held is not None
        self._send(b"".join(held))
        held.clear()
        self._heldBytes = 0

    def write(self, bytes: bytes) -> None:
        # Twisted's write, with the large ones sent our way: a small write
        # costs no more than it does in Twisted (the request path).
        if self.disconnecting and self._producer is None:
            return
        held = self._held
        if held is not None and len(bytes) <= RECORD and not self._lostTLSConnection:
            held.append(bytes)
            self._heldBytes += len(bytes)
            if self._heldBytes > HOLD_MOST:
                self._sendHeld()
            return
        self._release()  # what was held goes first
        self._send(bytes)

    def _send(self, bytes: bytes) -> None:
        if len(bytes) <= RECORD or self._lostTLSConnection:
            self._write(bytes)  # type: ignore[no-untyped-call]
        else:
            self._writeLarge(bytes)

    def loseConnection(self) -> None:
        self._release()  # before the close alert
        TLSMemoryBIOProtocol.loseConnection(self)

    def abortConnection(self) -> None:
        self._held = None  # an abort drops what was not sent
        TLSMemoryBIOProtocol.abortConnection(self)

    def _writeLarge(self, bytes: bytes) -> None:
        view = memoryview(bytes)
        sent = 0
        while sent < len(view):
            try:
                sent += self._tlsConnection.send(view[sent : sent + PIECE])
            except WantReadError:
                # As Twisted does: keep the rest until the peer has spoken.
                self._bufferedWrite(bytes[sent:])  # type: ignore[no-untyped-call]
                break
            except Error:
                self._tlsShutdownFinished(Failure())  # type: ignore[no-untyped-call]
                break
            self._drainSendBIO()

    def _drainSendBIO(self) -> None:
        """Write all the send BIO holds to the transport."""
        transport = self.transport
        assert transport is not None
        while True:
            try:
                data = self._tlsConnection.bio_read(DRAIN)
            except WantReadError:
                return
            transport.write(data)
            if len(data) < DRAIN:
                return


class LargeWritesTLSFactory(TLSMemoryBIOFactory):
    """C{TLSMemoryBIOFactory} whose connections are L{LargeWritesTLSProtocol}s."""

    protocol = LargeWritesTLSProtocol
