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

from OpenSSL.SSL import Error, WantReadError
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

#: The most TLS input a connection may bring beyond the plaintext it
#: delivers (and an eighth of that): L{LargeWritesTLSProtocol._boundOverhead}.
OVERHEAD_MOST = 1 << 16

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

    #: TLS bytes received.
    _tlsIn = 0

    def dataReceived(self, bytes: bytes) -> None:
        self._tlsIn += len(bytes)
        if self._held is not None:  # (re-entered: still held)
            TLSMemoryBIOProtocol.dataReceived(self, bytes)
            return
        self._held = []
        self._heldBytes = 0
        try:
            TLSMemoryBIOProtocol.dataReceived(self, bytes)
        finally:
            self._release()
        self._boundOverhead()

    def _boundOverhead(self) -> None:
        """
        Abort a connection whose TLS input brings far more than the
        plaintext it delivers (L{OVERHEAD_MOST}, and an eighth of the
        plaintext): records that carry no data (KeyUpdates, 3,000 in a
        64 KiB read, 35 ms of the reactor each read) reach no HTTP limit,
        and a few connections of them stalled every request for seconds
        (attacker round 40). A client's records cost 22 bytes of 16 KiB,
        its handshake a few KiB.
        """
        plain = getattr(self.wrappedProtocol, "received", None)
        if not isinstance(plain, int) or self._aborted:
            return
        if self._tlsIn - plain > OVERHEAD_MOST + (plain >> 3):
            peer = self.transport.getPeer() if self.transport is not None else None
            log.warn(
                "closed a connection from {client}: {overhead} bytes of TLS "
                "records that carried no data (KeyUpdates?)",
                client=getattr(peer, "host", "?"),
                overhead=self._tlsIn - plain,
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
