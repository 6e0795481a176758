"""
Fault round 8: a log stream holds up to three of the server's descriptors
besides its connection (stdout, stderr, the order file), which no budget
counted. One user's followers then took the descriptors the server keeps
for jobs, and another user's running job lost its output (its spool files
could not be made). Log streams now count four descriptors each in the
connections' half of the limit: C{--max-log-streams} is lowered to what
it holds, and the connections' cap leaves room for them.
"""

from __future__ import annotations

import socket
import ssl
import time
from typing import Any

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from jobworker.server import descriptors

from .support import CA, basic
from .twistd import Twistd


class CapTests(SynchronousTestCase):
    def test_streamsCountFourEach(self) -> None:
        """Half the limit less the reserve, four descriptors a stream; the
        connections get what the streams' files leave."""
        self.assertEqual(descriptors.logStreamsCap(1000, soft=1024), (512 - 64) // 4)
        self.assertEqual(descriptors.logStreamsCap(10, soft=1024), 10)
        self.assertEqual(descriptors.logStreamsCap(1000, soft=65536), 1000)
        self.assertEqual(descriptors.connectionCap(10000, soft=1024, streams=112), 112)
        self.assertEqual(
            descriptors.connectionCap(10000, soft=65536, streams=1000), 10000
        )
        self.assertEqual(descriptors.connectionCap(100, soft=1024, streams=0), 100)


def follow(port: int, path: str, user: str, count: int) -> list[Any]:
    """Open up to C{count} follow requests, each on a connection of its own;
    the sockets that got an answer's first bytes."""
    context = ssl.create_default_context(cafile=CA)
    [header] = basic(user)[b"authorization"]
    opened = []
    for _ in range(count):
        try:
            raw = socket.create_connection(("localhost", port), timeout=5)
            tls = context.wrap_socket(raw, server_hostname="localhost")
            tls.sendall(
                f"GET {path} HTTP/1.1\r\nHost: localhost\r\n"
                f"Authorization: {header.decode()}\r\n\r\n".encode()
            )
            tls.recv(4096)
        except OSError:
            continue
        opened.append(tls)
    return opened


class FollowersTests(TestCase):
    timeout = 120

    async def test_followersLeaveJobsTheirDescriptors(self) -> None:
        """Under a limit of 256 descriptors, alice opens 60 followers:
        bob's job, which prints after they are open, keeps every byte."""
        server = await Twistd(self).start(
            "--max-connections-per-client=1000",
            prefix=("prlimit", "--nofile=256:256", "--"),
        )
        bobs = await server.createJob(
            "sh", "-c", "sleep 4; seq 1 5; echo done >&2", user="bob"
        )
        hers = await server.createJob("sh", "-c", "echo out; echo err >&2; sleep 60")
        path = f"/jobs/{hers['id']}/logs?stream=combined&follow=true"
        sockets = await deferToThread(follow, server.port, path, "alice", 60)
        self.addCleanup(lambda: [s.close() for s in sockets])
        deadline = time.monotonic() + 30
        while True:
            _, record = await server.json("GET", f"/jobs/{bobs['id']}", "ada")
            if record["status"] not in ("RUNNING", "PENDING"):
                break
            self.assertLess(time.monotonic(), deadline)
            await deferToThread(time.sleep, 0.2)
        self.assertEqual(
            (
                record["status"],
                record["output_lost"],
                record["stdout_bytes"],
                record["stderr_bytes"],
            ),
            ("COMPLETED", 0, 10, 5),
            record,
        )
        # The streams' cap (16 under 256) held: not all 60 were served.
        self.assertLessEqual(len(sockets), 16)
