"""
Pipelined requests and a client that reads no answer: the server stops
reading requests while its answers wait to be sent, instead of answering
request after request into memory (attacker round 27: three connections of
20,000 pipelined C{GET /openapi.json} each, from a Reader, grew the server
to 3.8 GB).
"""

from __future__ import annotations

import os
import subprocess
import sys

import treq
from twisted.trial.unittest import TestCase

from .support import PASSWORDS, LiveServer, rssKiB, sleep

#: A client that opens C{count} TLS connections and sends each C{requests}
#: pipelined requests for C{path} (as far as the server takes them in 5 s),
#: reads nothing (a small receive buffer), prints "sent", and holds them
#: until its stdin closes. With "read" after its arguments, it then reads
#: each connection to its end (the last request asks the server to close)
#: and prints how many answers each had, and their statuses.
PIPELINER = r"""
import base64, re, socket, ssl, sys
port, count, requests, path, user, password = sys.argv[1:7]
reading = sys.argv[7:] == ["read"]
context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE
context.minimum_version = ssl.TLSVersion.TLSv1_3
auth = base64.b64encode(f"{user}:{password}".encode()).decode()
request = (
    f"GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Basic {auth}\r\n\r\n"
).encode()
held = []
for _ in range(int(count)):
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.connect(("127.0.0.1", int(port)))
    conn = context.wrap_socket(raw)
    conn.settimeout(5)
    try:
        for _ in range(int(requests) - 1):
            conn.sendall(request)
        conn.sendall(request.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
    except OSError:
        pass  # the server reads no more: what a bounded server does
    held.append(conn)
print("sent", flush=True)
if not reading:
    sys.stdin.read()
for conn in held:
    conn.settimeout(30)
    received = []
    while True:
        data = conn.recv(1 << 20)
        if not data:
            break
        received.append(data)
    statuses = re.findall(rb"HTTP/1.1 (\d+) ", b"".join(received))
    print(len(statuses), sorted(set(s.decode() for s in statuses)), flush=True)
"""


def pipeliner(server: LiveServer, connections: int, requests: int) -> list[str]:
    """The L{PIPELINER} command line, as rita (a Reader), for the API document."""
    return [
        sys.executable,
        "-c",
        PIPELINER,
        str(server.port),
        str(connections),
        str(requests),
        "/openapi.json",
        "rita",
        PASSWORDS["rita"],
    ]


class PipelinedRequestsTests(TestCase):
    timeout = 120

    async def test_unreadAnswersBounded(self) -> None:
        """
        Three connections, each 3,000 pipelined requests for the OpenAPI
        document (76 KB an answer: 228 MB each if all were answered), none
        read: the server holds a few answers per connection, not thousands,
        and goes on serving others.
        """
        server = LiveServer(self)
        response = await server.request("GET", "/openapi.json", "rita")
        size = len(await treq.content(response))
        self.assertGreater(size, 50_000)
        before = rssKiB(os.getpid())
        client = subprocess.Popen(
            pipeliner(server, 3, 3000),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )

        def release() -> None:
            if client.poll() is None:
                client.kill()
                client.wait()

        self.addCleanup(release)
        assert client.stdout is not None
        os.set_blocking(client.stdout.fileno(), False)
        line = b""
        grown = 0
        while not line:  # (this reactor, the server's, answers meanwhile)
            await sleep(0.1)
            grown = max(grown, rssKiB(os.getpid()) - before)
            if client.poll() is not None:
                self.fail("the pipelining client ended early")
            line = client.stdout.readline() or b""
        for _ in range(20):
            await sleep(0.1)
            grown = max(grown, rssKiB(os.getpid()) - before)
        self.assertLess(grown, 64 * 1024, f"{grown} KiB held for unread answers")
        response = await server.request("GET", "/openapi.json", "ada")
        self.assertEqual(len(await treq.content(response)), size)

    async def test_pipelinedAllAnswered(self) -> None:
        """
        A client that sends 300 pipelined requests before it reads any
        answer (the server waits while they cannot be sent) then gets every
        answer, on each of two connections.
        """
        server = LiveServer(self)
        client = subprocess.Popen(
            [*pipeliner(server, 2, 300), "read"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
        )
        self.addCleanup(lambda: client.poll() is None and client.kill())
        assert client.stdout is not None
        os.set_blocking(client.stdout.fileno(), False)
        output = b""
        while client.poll() is None:  # (this reactor, the server's, answers)
            await sleep(0.1)
            output += client.stdout.read() or b""
        output += client.stdout.read() or b""
        self.assertEqual(client.returncode, 0, output)
        self.assertEqual(output.splitlines(), [b"sent", b"300 ['200']", b"300 ['200']"])
