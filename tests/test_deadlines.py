"""Slow clients (slowloris): request read deadlines, on a Clock and for real."""

from __future__ import annotations

import json
import sys

import treq
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data

from jobworker.server.deadlines import RELIED_ON, channelWithDeadlines

from .support import LiveServer


def _site(clock: Clock) -> Site:
    root = Resource()
    root.putChild(b"ok", Data(b"fine", "text/plain"))
    site = Site(root, reactor=clock)  # type: ignore[no-untyped-call]
    site.protocol = channelWithDeadlines(10.0, 30.0)  # type: ignore[method-assign, assignment]
    return site


class DeadlineChannelTests(SynchronousTestCase):
    """L{DeadlineChannel} on a fake clock and transport."""

    def setUp(self) -> None:
        self.clock = Clock()
        site = _site(self.clock)
        self.channel = site.buildProtocol(None)  # type: ignore[no-untyped-call]
        self.transport = StringTransport()
        self.channel.makeConnection(self.transport)

    def test_twistedsPartsStillThere(self) -> None:
        """
        What the channel relies on in Twisted's HTTPChannel beyond its
        public methods is still there (an upgrade that renamed one would
        quietly break the pipelining and deadline paths).
        """
        for name in RELIED_ON:
            self.assertTrue(hasattr(self.channel, name), name)

    def test_dribbledHeadersCut(self) -> None:
        """One header byte a second does not keep the connection: 408 at 10 s."""
        self.channel.dataReceived(b"GET /ok HTTP/1.1\r\n")
        for _ in range(9):
            self.clock.advance(1)
            self.channel.dataReceived(b"X")
            self.assertFalse(self.transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(self.transport.disconnecting)
        self.assertTrue(self.transport.value().startswith(b"HTTP/1.1 408 "))
        body = self.transport.value().split(b"\r\n\r\n", 1)[1]
        self.assertEqual(json.loads(body), {"error": "request not received in time"})

    def test_slowBodyCut(self) -> None:
        """Headers in time, then a body dribbled: 408 once the body deadline passes."""
        self.channel.dataReceived(
            b"POST /ok HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
        )
        for _ in range(29):
            self.clock.advance(1)
            self.channel.dataReceived(b"a")
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(self.transport.disconnecting)
        self.assertIn(b"408 Request Timeout", self.transport.value())

    def test_promptRequestsUnaffected(self) -> None:
        """Requests in time are answered, and no timer is left behind."""
        for _ in range(3):
            self.channel.dataReceived(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
            self.clock.advance(5)
        self.assertFalse(self.transport.disconnecting)
        self.assertEqual(self.transport.value().count(b"HTTP/1.1 200 OK"), 3)
        self.assertNotIn(b"408", self.transport.value())
        # Idle between requests is the idle timeout's business, not ours.
        self.clock.advance(100)
        self.assertNotIn(b"408", self.transport.value())

    def test_closeCancelsDeadline(self) -> None:
        """A connection lost mid-request leaves no pending call."""
        self.channel.dataReceived(b"GET /ok HT")
        self.channel.connectionLost(None)
        self.assertEqual(self.clock.getDelayedCalls(), [])


#: A slow client: TLS connect, send a request start, then one byte every
#: 0.2 s for up to 20 s; print how long the server kept it and what it said.
SLOW_CLIENT = r"""
import socket, ssl, sys, time
port, ca, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3]
context = ssl.create_default_context(cafile=ca)
conn = context.wrap_socket(socket.create_connection(("localhost", port)),
                           server_hostname="localhost")
if mode == "headers":
    conn.sendall(b"GET /jobs HTTP/1.1\r\nHost: localhost\r\n")
else:
    conn.sendall(b"POST /jobs HTTP/1.1\r\nHost: localhost\r\n"
                 b"Content-Type: application/json\r\nContent-Length: 500\r\n\r\n")
conn.settimeout(0.2)
start = time.monotonic()
received = b""
while time.monotonic() - start < 20:
    try:
        conn.sendall(b"X-Slow: 1\r\n" if mode == "headers" else b" ")
    except OSError:
        break
    try:
        data = conn.recv(65536)
    except socket.timeout:
        continue
    except OSError:
        break
    if not data:
        break
    received += data
print(round(time.monotonic() - start, 1))
print(received.split(b"\r\n")[0].decode())
"""


class SlowClientTests(TestCase):
    """A real slow client over real TLS is cut off at the deadline."""

    timeout = 60

    async def _slow(self, mode: str) -> tuple[float, str]:
        from .support import CA

        server = LiveServer(self, "--header-timeout=1", "--body-timeout=1")
        out, err, code = await getProcessOutputAndValue(
            sys.executable,
            ["-c", SLOW_CLIENT, str(server.port), CA, mode],
            reactor=reactor,
        )
        self.assertEqual(code, 0, err)
        held, status = out.decode().splitlines()
        return float(held), status

    async def test_slowHeaders(self) -> None:
        """Headers dribbled for 20 s: closed with a 408 long before."""
        held, status = await self._slow("headers")
        self.assertEqual(status, "HTTP/1.1 408 Request Timeout")
        self.assertLess(held, 15)

    async def test_slowBody(self) -> None:
        """A body dribbled for 20 s: closed with a 408 long before."""
        held, status = await self._slow("body")
        self.assertEqual(status, "HTTP/1.1 408 Request Timeout")
        self.assertLess(held, 15)


class RequestCapTests(TestCase):
    """--max-body-bytes and --max-header-bytes, over real TLS."""

    async def test_caps(self) -> None:
        """A body or headers past their caps are refused; just under passes."""
        server = LiveServer(self, "--max-body-bytes=2K", "--max-header-bytes=4K")
        command = {"command": "true", "args": []}
        small = json.dumps({**command, "cwd": "/" + "a" * 1900}).encode()
        big = json.dumps({**command, "cwd": "/" + "a" * 2100}).encode()
        response = await server.request(
            "POST", "/jobs", raw=big, headers={b"content-type": [b"application/json"]}
        )
        self.assertEqual(response.code, 413)
        self.assertIn(b"2048", await treq.content(response))
        response = await server.request(
            "POST", "/jobs", raw=small, headers={b"content-type": [b"application/json"]}
        )
        # Under the cap: accepted (the job then fails: no such directory).
        self.assertEqual(response.code, 201)
        self.assertIn(b"/aaaa", await treq.content(response))
        response = await server.request(
            "GET", "/jobs", headers={b"x-pad": [b"p" * 5000]}
        )
        self.assertEqual(response.code, 431)
        self.assertIn(b"too long", await treq.content(response))
        many = {f"x-pad-{n}".encode(): [b"p" * 100] for n in range(50)}
        response = await server.request("GET", "/jobs", headers=many)
        # Too large in all (no line alone too long): a 431 too (RFC 6585).
        self.assertEqual(response.code, 431)
        response = await server.request(
            "GET", "/jobs", headers={b"x-pad": [b"p" * 3000]}
        )
        self.assertEqual(response.code, 200)
        await treq.content(response)
