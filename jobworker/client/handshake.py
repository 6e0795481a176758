"""
The Twisted client's HTTPS connections, each given a deadline for its TLS
handshake, as the quick client's are (L{jobworker.client.quick}): a server
that takes the connection but never answers (stopped, wedged, or another
service on the port) has the kernel answer for it, so nothing else would end
the wait. Each has TCP keepalive too (L{keepAlive}), as the quick client's:
a dead peer fails the request.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from OpenSSL import SSL
from service_identity.hazmat import DNS_ID
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost
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
from .errors import CertificateOutOfDate, ClientError, HandshakeCut, HandshakeTimeout
from .quick import handshakeSeconds

#: A policy's judgement of a server's certificate chain that failed its
#: verification (L{jobworker.tls.TrustRootPolicy.outOfDate}): OpenSSL's
#: verify code if it is trusted but out of its dates, else None.
OutOfDate = Callable[[list[Any]], "int | None"]


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
        _checkableHost(uri.host.decode("ascii"))
        tcp = HostnameEndpoint(self._reactor, uri.host, uri.port)
        return _DeadlineTLSEndpoint(
            tcp,
            creator,
            self._reactor,
            self._keepalive,
            getattr(self._policy, "outOfDate", None),
        )


def _checkableHost(host: str) -> None:
    """
    Refuse a C{host} that Twisted's TLS host check would take for a name
    and L{service_identity} refuse as one (digits only, as C{2130706433}):
    that check raises on the reactor as the connection is made, and the
    request was never answered (jw hung, after two tracebacks: new user
    round 34). C{checkServer} refuses such hosts first; this is the
    backstop of every request.

    @raise ClientError: such a host.
    """
    if isIPAddress(host) or isIPv6Address(host):
        return
    try:
        DNS_ID(host)
    except ValueError:
        raise ClientError(
            f"cannot reach a server named {host!r}: the TLS host check "
            "takes it for neither a host name nor an address; name the "
            "server by a host name, or by its address (1.2.3.4)"
        ) from None


@implementer(IStreamClientEndpoint)
class _DeadlineTLSEndpoint:
    """TLS over C{tcp} (as C{wrapClientTLS}), with the handshake's deadline."""

    def __init__(
        self,
        tcp: IStreamClientEndpoint,
        creator: IOpenSSLClientConnectionCreator,
        reactor: IReactorTime,
        keepalive: int,
        outOfDate: OutOfDate | None = None,
    ) -> None:
        self._tcp = tcp
        self._creator = creator
        self._reactor = reactor
        self._keepalive = keepalive
        self._outOfDate = outOfDate

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        factory = _DeadlineTLSFactory(
            self._creator,
            protocolFactory,
            self._reactor,
            self._keepalive,
            self._outOfDate,
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
        if (
            self._reason is None
            and reason.check(ConnectionDone, ConnectionLost)
            and not reason.check(ConnectionAborted)  # (ours: cancelled)
            and not self._shaken()
        ):
            # Closed by the server before it shook hands (a jobworker
            # server past its connection caps): not a failed handshake.
            self._reason = Failure(HandshakeCut())
        failed: Failure | None = self._reason
        judge = self.factory.outOfDate
        if (
            judge is not None
            and failed is not None
            and failed.check(SSL.Error)
            and "certificate verify failed" in str(failed.value)
        ):
            # That says nothing of why: an expired certificate is no CA's
            # fault (the quick client has OpenSSL's verify code; pyOpenSSL
            # does not give it: the chain the server sent says it).
            try:
                connection = self.getHandle()  # type: ignore[no-untyped-call]
                code = judge(connection.get_peer_cert_chain() or [])
            except Exception:
                code = None  # (the request fails all the same)
            if code is not None:
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


class _DeadlineTLSFactory(TLSMemoryBIOFactory):
    """
    Client TLS connections that give their handshake L{handshakeSeconds}
    of C{keepalive}, with TCP keepalive after C{keepalive} seconds; a
    verification that failed is asked of C{outOfDate} (the policy's: the
    server's chain, trusted but out of its dates?).
    """

    protocol = _DeadlineTLS

    def __init__(
        self,
        creator: IOpenSSLClientConnectionCreator,
        wrappedFactory: IProtocolFactory,
        reactor: IReactorTime,
        keepalive: int,
        outOfDate: OutOfDate | None = None,
    ) -> None:
        super().__init__(creator, True, wrappedFactory, reactor)
        self.reactor = reactor
        self.keepalive = keepalive
        self.seconds = handshakeSeconds(keepalive)
        self.outOfDate = outOfDate
