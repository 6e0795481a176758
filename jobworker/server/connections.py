"""Accepted connections: a cap per client address, and TCP keepalive."""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IAddress, ITransport
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory

from ..keepalive import keepAlive
from ..peers import clientKey


class KeptAlive(ProtocolWrapper):
    """The outermost protocol of a connection: turns on its TCP keepalive."""

    factory: ConnectionsPerClient

    def makeConnection(self, transport: ITransport) -> None:
        seconds = self.factory.keepalive
        if seconds is not None:
            # Probes only: the server mostly sends, and a live follower that
            # stops reading for a while (a paused pager) must not be cut.
            try:
                keepAlive(transport.getHandle(), seconds, userTimeout=False)  # type: ignore[attr-defined]
            except (OSError, AttributeError) as e:
                self.factory.log.warn(
                    "no TCP keepalive on a connection: {error}", error=e
                )
        super().makeConnection(transport)  # type: ignore[no-untyped-call]


class ConnectionsPerClient(WrappingFactory):
    """
    Refuse a connection when its client (L{clientKey}: all of loopback is
    one, an IPv6 address is its /64) already holds C{limit}
    (Twisted's own LimitConnectionsByPeer predates address objects), and
    probe every connection silent for C{keepalive} seconds (None: never):
    a client that vanished without a word (a follower of a quiet job, whom
    nothing is ever written to) so frees its connection and its log-stream
    slot in about twice that, instead of holding them for ever.
    """

    log = Logger()
    protocol = KeptAlive

    def __init__(
        self, wrappedFactory: Any, limit: int, keepalive: int | None = None
    ) -> None:
        super().__init__(wrappedFactory)  # type: ignore[no-untyped-call]
        self.keepalive = keepalive
        self._limit = limit
        self._counts: dict[str, int] = {}
        self._hosts: dict[ProtocolWrapper, str] = {}

    def buildProtocol(  # type: ignore[override]
        self, addr: IAddress | None
    ) -> ProtocolWrapper | None:
        address = str(getattr(addr, "host", addr))
        host = clientKey(address)
        count = self._counts.get(host, 0)
        if count >= self._limit:
            self.log.warn(
                "refused a connection from {client}: {count} already open",
                client=address if host == address else f"{address} ({host})",
                count=count,
            )
            return None
        protocol: ProtocolWrapper | None = super().buildProtocol(addr)
        if protocol is not None:
            self._counts[host] = count + 1
            self._hosts[protocol] = host
        return protocol

    def unregisterProtocol(self, protocol: ProtocolWrapper) -> None:
        super().unregisterProtocol(protocol)  # type: ignore[no-untyped-call]
        host = self._hosts.pop(protocol, None)
        if host is not None:
            remaining = self._counts[host] - 1
            if remaining:
                self._counts[host] = remaining
            else:
                del self._counts[host]
