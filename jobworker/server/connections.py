"""Accepted connections: a cap per client address, and TCP keepalive."""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IAddress, IReactorTime, ITransport
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory

from ..keepalive import keepAlive
from ..metrics import Metrics
from ..peers import clientKey

#: What refused a connection: the client's own cap, or the server's in all;
#: or an idle connection closed at the server's cap to make room ("idle").
CAPS = ("client", "server", "idle")

#: At the server's cap, a new connection takes the place of the one idle
#: longest, if it has been idle this long (seconds): no request in
#: progress, no answer being sent.
EVICT_IDLE = 5.0
#: After a look for such a connection found none, the next in so many seconds.
EVICT_LOOK_AGAIN = 1.0
#: Else a connection open this long with nothing to lose (no request yet,
#: or a body coming with no credentials) gives way, of the client that
#: holds the most (L{DeadlineChannel.spareable
#: <jobworker.server.deadlines.DeadlineChannel.spareable>}).
EVICT_SILENT = 1.0


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
    one, an IPv6 address is its /64) already holds C{limit}, or when the
    server holds C{total} in all (Twisted's own LimitConnectionsByPeer
    predates address objects), and probe every connection silent for
    C{keepalive} seconds (None: never): a client that vanished without a
    word (a follower of a quiet job, whom nothing is ever written to) so
    frees its connection and its log-stream slot in about twice that,
    instead of holding them for ever.

    Refusals are logged at most once a second per cap, with the count of
    those not logged: a flood of them must not fill the disk.
    """

    log = Logger()
    protocol = KeptAlive

    def __init__(
        self,
        wrappedFactory: Any,
        limit: int,
        keepalive: int | None = None,
        total: int | None = None,
        metrics: Metrics | None = None,
        clock: IReactorTime | None = None,
    ) -> None:
        super().__init__(wrappedFactory)  # type: ignore[no-untyped-call]
        self.keepalive = keepalive
        self._limit = limit
        self._total = total
        self._counts: dict[str, int] = {}
        self._hosts: dict[ProtocolWrapper, str] = {}
        self._refusals = (
            {cap: metrics.connectionsRefused.labels(cap) for cap in CAPS}
            if metrics is not None
            else {}
        )
        self._clock = clock
        #: Per cap: when a refusal was last logged, and those since.
        self._quiet: dict[str, tuple[float, int]] = {}
        #: Connections closed to make room, not yet gone.
        self._evicted: set[ProtocolWrapper] = set()
        #: When a look for an idle connection last found none: the next
        #: look waits L{EVICT_LOOK_AGAIN} (each look reads every connection).
        self._foundNoneAt: float | None = None

    def buildProtocol(  # type: ignore[override]
        self, addr: IAddress | None
    ) -> ProtocolWrapper | None:
        address = str(getattr(addr, "host", addr))
        host = clientKey(address)
        count = self._counts.get(host, 0)
        if count >= self._limit:
            self._refused("client", address, host, count)
            return None
        held = len(self._hosts) - len(self._evicted)
        if self._total is not None and held >= self._total:
            # Connections kept idle (a client's kept-alive pool, or one that
            # never says a word: attacker round 39) give way to a new one.
            idle = self._anIdleOne()
            if idle is None:
                self._refused("server", address, host, held)
                return None
            self._evicted.add(idle)
            self._refused("idle", address, host, held)
            if idle.transport is not None:
                idle.transport.abortConnection()  # type: ignore[attr-defined]
        protocol: ProtocolWrapper | None = super().buildProtocol(addr)
        if protocol is not None:
            self._counts[host] = count + 1
            self._hosts[protocol] = host
        return protocol

    def _refused(self, cap: str, address: str, host: str, count: int) -> None:
        counter = self._refusals.get(cap)
        if counter is not None:
            counter.inc()
        now = self._clock.seconds() if self._clock is not None else None
        last, unlogged = self._quiet.get(cap, (None, 0))
        if now is not None and last is not None and now - last < 1.0:
            self._quiet[cap] = (last, unlogged + 1)
            return
        if now is not None:
            self._quiet[cap] = (now, 0)
        self.log.warn(
            "{what} {client}: {count} already open {where}{unlogged}",
            what="closed an idle connection to take one from"
            if cap == "idle"
            else "refused a connection from",
            client=address if host == address else f"{address} ({host})",
            count=count,
            where="from it" if cap == "client" else "in all",
            unlogged=f" ({unlogged} more refused since the last line)"
            if unlogged
            else "",
            cap=cap,
        )

    def _anIdleOne(self) -> ProtocolWrapper | None:
        """
        The oldest connection idle L{EVICT_IDLE} at least (L{DeadlineChannel.
        evictableFor<jobworker.server.deadlines.DeadlineChannel.evictableFor>}),
        if any. A look that finds none is not made again for
        L{EVICT_LOOK_AGAIN} seconds: each reads every connection (0.5-0.9 ms
        with 1,024), and a flood of connects at the cap must not make each
        of them one (session review 39).
        """
        now = self._clock.seconds() if self._clock is not None else None
        last = self._foundNoneAt
        if now is not None and last is not None and 0 <= now - last < EVICT_LOOK_AGAIN:
            return None
        silent, most = None, 0
        for wrapper, host in self._hosts.items():  # (oldest first)
            if wrapper in self._evicted:
                continue
            channel = _channelOf(wrapper)
            if channel is None:
                continue
            idle = channel.evictableFor()
            if idle >= EVICT_IDLE:
                self._foundNoneAt = None
                return wrapper
            held = self._counts.get(host, 0)
            if held > most and channel.spareable(EVICT_SILENT):
                silent, most = wrapper, held
        # None idle that long: one with nothing to lose (no request yet, or
        # a body with no credentials), of the client holding the most.
        if silent is None:
            self._foundNoneAt = now
        return silent

    def unregisterProtocol(self, protocol: ProtocolWrapper) -> None:
        super().unregisterProtocol(protocol)  # type: ignore[no-untyped-call]
        self._evicted.discard(protocol)
        host = self._hosts.pop(protocol, None)
        if host is not None:
            remaining = self._counts[host] - 1
            if remaining:
                self._counts[host] = remaining
            else:
                del self._counts[host]


def _channelOf(wrapper: Any) -> Any:
    """The HTTP channel inside a connection's wrappers (TLS), if found."""
    layer = wrapper
    for _ in range(4):
        layer = getattr(layer, "wrappedProtocol", None)
        if layer is None or hasattr(layer, "evictableFor"):
            return layer
    return None
