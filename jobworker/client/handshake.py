"""
The Twisted client's HTTPS connections, each given a deadline for its TLS
handshake, as the quick client's are (L{jobworker.client.quick}): a server
that takes the connection but never answers (stopped, wedged, or another
service on the port) has the kernel answer for it, so nothing else would end
the wait. Each has TCP keepalive too (L{keepAlive}), as the quick client's:
a dead peer fails the request.
"""

from __future__ import annotations

import datetime
import socket
from typing import Any

from OpenSSL import SSL
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import (
    IDelayedCall,
    IOpenSSLClientConnectionCreator,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
    ITransport,
)
from twisted.internet.protocol import connectionDone
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.web.client import URI
from twisted.web.iweb import IAgentEndpointFactory, IPolicyForHTTPS
from zope.interface import implementer

from ..keepalive import keepAlive
from .errors import CertificateOutOfDate, HandshakeTimeout
from .quick import handshakeSeconds


@implementer(IAgentEndpointFactory)
class HandshakeDeadlineEndpoints:
    """
    What an C{Agent} connects to (C{Agent.usingEndpointFactory}): as its
    own endpoints for C{https} (TCP, then TLS as C{policy} says), but a
    handshake not done L{handshakeSeconds} of C{keepalive} after the
    connection is aborted with L{HandshakeTimeout}, and the connection has
    TCP keepalive after C{keepalive} silent seconds.
    """

    def __init__(self, reactor: Any, policy: IPolicyForHTTPS, keepalive: int) -> None:
        self._reactor = reactor
        self._policy = policy
        self._keepalive = keepalive

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        if uri.scheme != b"https":
            raise ValueError(f"not an https URL: {uri.toBytes()!r}")
        creator = self._policy.creatorForNetloc(uri.host, uri.port)
        tcp = HostnameEndpoint(self._reactor, uri.host, uri.port)
        return _DeadlineTLSEndpoint(tcp, creator, self._reactor, self._keepalive)


@implementer(IStreamClientEndpoint)
class _DeadlineTLSEndpoint:
    """TLS over C{tcp} (as C{wrapClientTLS}), with the handshake's deadline."""

    def __init__(
        self,
        tcp: IStreamClientEndpoint,
        creator: IOpenSSLClientConnectionCreator,
        reactor: IReactorTime,
        keepalive: int,
    ) -> None:
        self._tcp = tcp
        self._creator = creator
        self._reactor = reactor
        self._keepalive = keepalive

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        factory = _DeadlineTLSFactory(
            self._creator, protocolFactory, self._reactor, self._keepalive
        )
        connecting: Deferred[Any] = self._tcp.connect(factory)
        return connecting.addCallback(lambda tls: tls.wrappedProtocol)


class _DeadlineTLS(BufferingTLSTransport):
    """
    A client TLS connection whose handshake must be done L{seconds} after
    it connected, else it is aborted: the request on it fails with
    L{HandshakeTimeout}. Its one timer is cancelled once the handshake is
    done, or the connection lost.
    """

    factory: _DeadlineTLSFactory
    _deadline: IDelayedCall | None = None

    def makeConnection(self, transport: ITransport) -> None:
        # (Not connectionMade: the TLS wrapper runs it twice.)
        factory = self.factory
        self._deadline = factory.reactor.callLater(factory.seconds, self._expired)
        handle = getattr(transport, "getHandle", None)
        sock = handle() if handle is not None else None
        if isinstance(sock, socket.socket):
            keepAlive(sock, factory.keepalive)
        super().makeConnection(transport)  # type: ignore[no-untyped-call]

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)  # type: ignore[no-untyped-call]
        if self._deadline is not None and self._shaken():
            self._cancelDeadline()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancelDeadline()
        failed: Failure | None = self._reason
        if failed is not None and failed.check(SSL.Error):
            # "certificate verify failed" says nothing of why: an expired
            # certificate is no CA's fault (the quick client has OpenSSL's
            # verify code; pyOpenSSL does not give it: the dates say it).
            code = _outOfDate(self.getHandle())  # type: ignore[no-untyped-call]
            if code is not None and "certificate verify failed" in str(failed.value):
                self._reason = Failure(CertificateOutOfDate(code))
        super().connectionLost(reason)

    def _shaken(self) -> bool:
        """Has this side sent its Finished (the handshake is done)?"""
        connection = self.getHandle()  # type: ignore[no-untyped-call]
        return connection is not None and connection.get_finished() is not None

    def _cancelDeadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if not self._shaken():
            # The reason the application's protocol is given: its request
            # fails with it (failVerification is the one way to give it).
            timedOut = Failure(HandshakeTimeout(self.factory.seconds))
            self.failVerification(timedOut)  # type: ignore[no-untyped-call]


def _outOfDate(connection: SSL.Connection | None) -> int | None:
    """
    OpenSSL's verify code (L{OUT_OF_DATE}) for the server's certificate
    out of its validity period now, or None: it is not, or none came.
    """
    if connection is None:
        return None
    # (get_peer_certificate is None once the verification failed; the
    # chain the server sent, its own certificate first, is kept.)
    chain = connection.get_peer_cert_chain(as_cryptography=True)
    if not chain:
        return None
    certificate = chain[0]
    now = datetime.datetime.now(datetime.UTC)
    if now < certificate.not_valid_before_utc:
        return 9
    if now > certificate.not_valid_after_utc:
        return 10
    return None


class _DeadlineTLSFactory(TLSMemoryBIOFactory):
    """
    Client TLS connections that give their handshake L{handshakeSeconds}
    of C{keepalive}, with TCP keepalive after C{keepalive} seconds.
    """

    protocol = _DeadlineTLS

    def __init__(
        self,
        creator: IOpenSSLClientConnectionCreator,
        wrappedFactory: IProtocolFactory,
        reactor: IReactorTime,
        keepalive: int,
    ) -> None:
        super().__init__(creator, True, wrappedFactory, reactor)
        self.reactor = reactor
        self.keepalive = keepalive
        self.seconds = handshakeSeconds(keepalive)
