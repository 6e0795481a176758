"""
Defects the thirty-third session found.

Left open by the last session: a request without a body (a C{GET}) that
named a C{Content-Encoding} was refused with a 415, which the OpenAPI
document does not give those routes. A C{Content-Encoding} now matters only
where a route reads a body (C{POST} and C{DELETE}, whose operations list
the 415).

The attacker's: a body over C{--max-body-bytes} was read to its end (and
decrypted) before its 413, on any route, without credentials too; and a
connection answered with a closing error kept being read and decrypted
until the idle timeout, as a TLS connection waits for the client's
C{close_notify}.
"""

from __future__ import annotations

import json
import socket
import ssl

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from jobworker.server.deadlines import LINGER_BYTES, LINGER_SECONDS

from . import test_wire
from .support import LiveServer
from .test_review32 import RawRequests, basicLine, exchange
from .test_wire import ALICE, parse


class BodylessContentEncodingTests(RawRequests):
    async def test_getWithGzipServed(self) -> None:
        server = LiveServer(self)
        code, _headers, answer = await deferToThread(
            exchange,
            server.port,
            b"GET /whoami HTTP/1.1\r\nHost: localhost\r\n"
            + basicLine("alice")
            + b"Content-Encoding: gzip\r\nConnection: close\r\n\r\n",
        )
        self.assertEqual(code, 200, answer)
        self.assertIn(b"alice", answer)

    async def test_deleteWithGzipRefused(self) -> None:
        """A route that reads a body still refuses one it cannot read."""
        server = LiveServer(self)
        code, _headers, answer = await deferToThread(
            exchange,
            server.port,
            b"DELETE /jobs?status=COMPLETED HTTP/1.1\r\nHost: localhost\r\n"
            + basicLine("alice")
            + b"Content-Encoding: gzip\r\nContent-Length: 2\r\n"
            + b"Connection: close\r\n\r\n{}",
        )
        self.assertEqual(code, 415, answer)


class BodyOverTheCapTests(SynchronousTestCase):
    """
    A body over C{--max-body-bytes} (1 KiB here) was read to its end, TLS
    decrypted on the reactor's thread, before its 413 (or a 401 without
    credentials, or a GET's 200): 1.5 s of the server's CPU for each GiB
    sent, again and again (attacker round 33). It is answered as soon as
    it is known to be over: at its headers for a C{Content-Length}, at the
    chunk that passes the cap for a chunked one. What the client goes on
    sending is read (not parsed) up to L{LINGER_BYTES} more, so that a
    client that sent it all reads its 413 rather than a reset connection;
    then the connection is closed.
    """

    setUp = test_wire.WireTests.setUp
    exchange = test_wire.WireTests.exchange
    request = test_wire.WireTests.request

    def test_lengthOverTheCap(self) -> None:
        for method, path, auth in (
            (b"POST", b"/jobs", b"Authorization: " + ALICE),
            (b"POST", b"/jobs", b"X-None: 1"),
            (b"GET", b"/healthz", b"X-None: 1"),
        ):
            raw = self.request(
                method,
                path,
                auth,
                b"Content-Type: application/json",
                b"Content-Length: 1000000000",
            )
            transport, _channel = self.exchange(raw + b"x" * 100)
            code, headers, body = parse(transport.value())
            self.assertEqual(code, 413, (method, path, transport.value()))
            self.assertEqual(headers[b"content-type"], b"application/json")
            self.assertIn("1024", json.loads(body)["error"])
        self.assertEqual(self.manager.page()[0], [])

    def test_chunkedOverTheCap(self) -> None:
        raw = self.request(
            b"POST",
            b"/jobs",
            b"Authorization: " + ALICE,
            b"Content-Type: application/json",
            b"Transfer-Encoding: chunked",
        )
        body = b'{"command": "true", "name": "' + b"x" * 2000 + b'"}'
        chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
        transport, channel = self.exchange(raw + chunked[:1500])
        code, _headers, _body = parse(transport.value())
        self.assertEqual(code, 413, transport.value())
        # Its end, when it comes, makes no job.
        channel.dataReceived(chunked[1500:])
        self.assertEqual(self.manager.page()[0], [])
        self.assertEqual(transport.value().count(b"HTTP/1.1"), 1)

    def test_lingersThenAborts(self) -> None:
        """
        A refused connection is closed at once (TLS: its C{close_notify}
        sent), and read on only up to L{LINGER_BYTES}, or for
        L{LINGER_SECONDS}: then aborted. (A TLS connection waits for the
        client's C{close_notify}, which a client that sends on never sends,
        and decrypted all it sent until the idle timeout, a minute, after
        every refusal: a 413, 431, 400 or 408.)
        """
        raw = self.request(
            b"POST", b"/jobs", b"Authorization: " + ALICE, b"Content-Length: 100000000"
        )
        transport, channel = self.exchange(raw)
        self.assertEqual(parse(transport.value())[0], 413)
        self.assertTrue(transport.disconnecting)
        self.assertFalse(transport.disconnected)
        sent = transport.value()
        channel.dataReceived(b"x" * (LINGER_BYTES - 1))
        self.assertFalse(transport.disconnected)
        channel.dataReceived(b"GET /healthz HTTP/1.1\r\n\r\n")
        self.assertTrue(transport.disconnected)
        self.assertEqual(transport.value(), sent)

        transport, channel = self.exchange(b"GET /" + b"x" * 20000 + b" HTTP/1.1\r\n")
        self.assertEqual(parse(transport.value())[0], 431)
        self.reactor.advance(LINGER_SECONDS - 0.1)
        self.assertFalse(transport.disconnected)
        self.reactor.advance(0.2)
        self.assertTrue(transport.disconnected)

    def test_underTheCapServed(self) -> None:
        body = b'{"command": "true"}'
        transport, _ = self.exchange(
            self.request(
                b"POST",
                b"/jobs",
                b"Authorization: " + ALICE,
                b"Content-Type: application/json",
                body=body,
            )
        )
        self.assertEqual(parse(transport.value())[0], 201, transport.value())


def sendTooMuch(port: int, head: bytes, size: int) -> tuple[int, bytes]:
    """Send C{head}, then up to C{size} bytes, over TLS 1.3, until the
    server closes; how many bytes were sent, and the first line of what it
    answered."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        with context.wrap_socket(raw) as conn:
            conn.sendall(head)
            try:
                while sent < size:
                    conn.sendall(b"x" * 65536)
                    sent += 65536
            except OSError:
                pass
            try:
                answer = conn.recv(200)
            except OSError as e:
                answer = repr(e).encode()
    return sent, answer.split(b"\r\n")[0]


class BodyOverTheCapLiveTests(TestCase):
    timeout = 60

    async def test_largeBodyCutShort(self) -> None:
        """Over real TLS: the 413 is read, and the server stops reading
        long before the 64 MiB are sent (it read them all)."""
        server = LiveServer(self)
        sent, line = await deferToThread(
            sendTooMuch,
            server.port,
            b"POST /jobs HTTP/1.1\r\nHost: localhost\r\n"
            + basicLine("alice")
            + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
            % (64 << 20),
            64 << 20,
        )
        self.assertIn(b" 413 ", line)
        self.assertLess(sent, 16 << 20)
