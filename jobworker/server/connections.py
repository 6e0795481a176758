"""A cap on concurrent connections per client address."""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IAddress
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory


class ConnectionsPerClient(WrappingFactory):
    """
    Refuse a connection when its client address already holds C{limit}
    (Twisted's own LimitConnectionsByPeer predates address objects).
    """

    log = Logger()

    def __init__(self, wrappedFactory: Any, limit: int) -> None:
        super().__init__(wrappedFactory)  # type: ignore[no-untyped-call]
        self._limit = limit
        self._counts: dict[str, int] = {}
        self._hosts: dict[ProtocolWrapper, str] = {}

    def buildProtocol(  # type: ignore[override]
        self, addr: IAddress | None
    ) -> ProtocolWrapper | None:
        host = str(getattr(addr, "host", addr))
        count = self._counts.get(host, 0)
        if count >= self._limit:
            self.log.warn(
                "refused a connection from {client}: {count} already open",
                client=host,
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
