"""
Defects the thirty-third session found.

Left open by the last session: a request without a body (a C{GET}) that
named a C{Content-Encoding} was refused with a 415, which the OpenAPI
document does not give those routes. A C{Content-Encoding} now matters only
where a route reads a body (C{POST} and C{DELETE}, whose operations list
the 415).
"""

from __future__ import annotations

from twisted.internet.threads import deferToThread

from .support import LiveServer
from .test_review32 import RawRequests, basicLine, exchange


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
