"""
Pipelined requests and a client that reads no answer: the server stops
reading requests while its answers wait to be sent, instead of answering
request after request into memory (attacker round 27: three connections of
20,000 pipelined C{GET /openapi.json} each, from a Reader, grew the server
to 3.8 GB).
"""

from __future__ import annotations

import base64
import gc
import os
import socket
import ssl
import subprocess
import sys
import time
from typing import Any

import treq
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from jobworker.server.api import JobsAPI

from .support import PASSWORDS, LiveServer, rssKiB, sleep, waitUntil

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


def pipeliner(
    server: LiveServer, connections: int, requests: int, path: str = "/openapi.json"
) -> list[str]:
    """The L{PIPELINER} command line, as rita (a Reader), for C{path}."""
    return [
        sys.executable,
        "-c",
        PIPELINER,
        str(server.port),
        str(connections),
        str(requests),
        path,
        "rita",
        PASSWORDS["rita"],
    ]


def slowFollower(port: int, jobId: str, burst: int) -> None:
    """
    Follow a job's stdout on a small receive buffer, read nothing for 2 s
    (the server's transport fills), then C{burst} bytes, then leave.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.connect(("127.0.0.1", port))
    with context.wrap_socket(raw) as conn:
        auth = base64.b64encode(f"alice:{PASSWORDS['alice']}".encode()).decode()
        conn.sendall(
            f"GET /jobs/{jobId}/logs?stream=stdout&follow=true HTTP/1.1\r\n"
            f"Host: x\r\nAuthorization: Basic {auth}\r\n\r\n".encode()
        )
        time.sleep(2.0)
        conn.settimeout(10)
        got = 0
        while got < burst:
            data = conn.recv(1 << 20)
            if not data:
                break
            got += len(data)
        time.sleep(0.5)  # (the server's buffer drained: it resumed)


def logStreams(server: LiveServer) -> Any:
    """The server's open log streams (sized: len())."""
    for candidate in gc.get_objects():
        if isinstance(candidate, JobsAPI) and candidate._manager is server.manager:
            return candidate._logs
    raise AssertionError("no API of that server")


class PipelinedRequestsTests(TestCase):
    timeout = 120

    async def unreadGrowth(self, argv: list[str]) -> int:
        """
        Run the L{PIPELINER} C{argv} until it has sent its requests, and
        2 s more; return how much this process (the server's) grew, KiB.
        """
        before = rssKiB(os.getpid())
        client = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)

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
        return grown

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
        grown = await self.unreadGrowth(pipeliner(server, 3, 3000))
        self.assertLess(grown, 64 * 1024, f"{grown} KiB held for unread answers")
        response = await server.request("GET", "/openapi.json", "ada")
        self.assertEqual(len(await treq.content(response)), size)

    async def test_smallUnreadAnswersBounded(self) -> None:
        """
        The same with answers under 16 KiB (a page of 12 jobs, 9 KB), on 20
        connections: TLS holds such writes until the read they answer is
        done, so every request of one read was answered before the transport
        could say it was full (107 MB: a review).
        """
        server = LiveServer(self)
        for _ in range(12):
            await server.createJob("true", "x" * 500)
        response = await server.request("GET", "/jobs?limit=12", "rita")
        size = len(await treq.content(response))
        self.assertTrue(4096 < size < 16384, size)
        grown = await self.unreadGrowth(pipeliner(server, 20, 3000, "/jobs?limit=12"))
        self.assertLess(grown, 32 * 1024, f"{grown} KiB held for unread answers")

    async def test_followerLeavingSeen(self) -> None:
        """
        A follower whose stream filled the transport once, then caught up,
        then left while the job is quiet: the server sees it go, and lets
        the stream (and its slot) go at once, not at the job's next output
        (a review: reading stopped for good at the first back-pressure).
        """
        server = LiveServer(self)
        burst = 8 << 20
        job = await server.createJob("sh", "-c", f"head -c {burst} /dev/zero; sleep 60")
        self.addCleanup(server.json, "POST", f"/jobs/{job['id']}/stop")
        streams = logStreams(server)
        await deferToThread(slowFollower, server.port, job["id"], burst)
        await waitUntil(lambda: len(streams) == 0, timeout=5, what="the stream let go")

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
