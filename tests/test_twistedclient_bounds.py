"""
The Twisted client (C{jw stop}, C{jw rm}, C{jw login} and the shell
completion's C{jw _ids} run on it) against a network or server that stalls
after the TLS handshake: its requests had no bound at all (no keepalive, no
deadline for the answer), and these commands waited for ever where the
quick client's gave up (a round on jw's hangs).
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import reactor
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase
from twisted.web.client import URI

from jobworker.client import http as clienthttp
from jobworker.client.calls import MAX_GRACE
from jobworker.client.errors import ClientError
from jobworker.client.handshake import HandshakeDeadlineEndpoints
from jobworker.client.http import JobworkerClient
from jobworker.jobs import stopping
from jobworker.tls import TrustRootPolicy, serverOptions

from .support import CA, CERT, KEY


class Silent(Protocol):
    """Shakes hands (TLS does), reads every request, never answers."""

    def dataReceived(self, data: bytes) -> None:
        pass


class HalfAnswer(Protocol):
    """Answers the first request's headers and part of its body, then stalls."""

    #: The connections open (the test aborts them at its end).
    open: list[Any] = []
    answered = False

    def connectionMade(self) -> None:
        self.open.append(self.transport)

    def dataReceived(self, data: bytes) -> None:
        if not self.answered and self.transport is not None:
            self.answered = True
            self.transport.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                b'content-length: 100\r\n\r\n{"id": '
            )


class BoundsTests(TestCase):
    timeout = 60

    async def silentServer(self, protocol: type[Protocol] = Silent) -> int:
        endpoint = SSL4ServerEndpoint(
            reactor, 0, serverOptions(CERT, KEY), interface="127.0.0.1"
        )
        port = await endpoint.listen(Factory.forProtocol(protocol))
        self.addCleanup(port.stopListening)
        return port.getHost().port  # type: ignore[no-any-return]

    async def clientOf(self, protocol: type[Protocol]) -> JobworkerClient:
        """A Twisted client of a C{protocol} server, its bound 1 s."""
        self.patch(clienthttp, "TIMEOUT", 1)
        port = await self.silentServer(protocol)
        client = JobworkerClient.connect(
            reactor, f"https://localhost:{port}", CA, "alice", "alice-pass"
        )
        self.addCleanup(client.close)
        return client

    async def test_anAnswerThatNeverComes(self) -> None:
        """
        A request whose answer never comes fails in one line after the
        bound (L{clienthttp.TIMEOUT}, short here), as the quick client's;
        a stop's bound has the grace on top.
        """
        client = await self.clientOf(Silent)
        with self.assertRaises(ClientError) as raised:
            await client.deleteJob("0123abcd")
        self.assertIn("sent no answer in 1 s", str(raised.exception))
        self.assertIsNone(raised.exception.status)
        began = reactor.seconds()  # type: ignore[attr-defined]
        with self.assertRaises(ClientError) as raised:
            await client.stop("0123abcd", grace=1)
        self.assertIn("sent no answer in 2 s", str(raised.exception))
        self.assertGreaterEqual(reactor.seconds() - began, 1.9)  # type: ignore[attr-defined]

    async def test_aBodyThatNeverEnds(self) -> None:
        """The answer's body is due within the bound too (a review)."""
        client = await self.clientOf(HalfAnswer)

        def abort() -> None:
            for transport in HalfAnswer.open:
                transport.abortConnection()

        self.addCleanup(abort)
        with self.assertRaises(ClientError) as raised:
            await client.deleteJob("0123abcd")
        self.assertIn("sent no answer in 1 s", str(raised.exception))

    def test_theLongestGraceIsTheServers(self) -> None:
        """A stop with the server's grace waits as long as it may take."""
        self.assertEqual(MAX_GRACE, stopping.MAX_GRACE)

    async def test_keepAliveOnEachConnection(self) -> None:
        """The connection has TCP keepalive after C{keepalive} seconds."""
        port = await self.silentServer()
        endpoints = HandshakeDeadlineEndpoints(reactor, TrustRootPolicy(CA), 7)
        endpoint = endpoints.endpointForURI(
            URI.fromBytes(f"https://localhost:{port}".encode())
        )
        protocol: Any = await endpoint.connect(Factory.forProtocol(Protocol))
        self.addCleanup(protocol.transport.abortConnection)
        sock = protocol.transport.transport.getHandle()
        self.assertEqual(sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE), 1)
        self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE), 7)
