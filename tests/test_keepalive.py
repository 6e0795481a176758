"""
A network that dies without a word: TCP keepalive on both ends.

Each test runs a real twistd in a network namespace of its own (only its
loopback), and jw or a raw HTTPS client in the same namespace; taking that
loopback down drops every packet between them while both processes live on,
as a dead link or a forgetful NAT would. Root only (namespaces).
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, TestCase

from jobworker.client.config import ConfigError
from jobworker.client.quick import KEEPALIVE, keepAliveSeconds
from jobworker.keepalive import parseSeconds

from .support import CA, JW, PASSWORDS, jwEnvironment, sleep
from .twistd import Twistd

#: Runs twistd in a new network namespace whose loopback is up.
IN_NEW_NETWORK = (
    "unshare",
    "--net",
    "--",
    "sh",
    "-c",
    'ip link set lo up && exec "$@"',
    "jobworker-netns",
)

#: A follower that knows nothing of keepalive: prints the status of
#: GET argv[2] on https://localhost:argv[1], then (200) reads for ever.
RAW_FOLLOWER = r"""
import base64, http.client, ssl, sys
context = ssl.create_default_context(cafile=sys.argv[3])
connection = http.client.HTTPSConnection("localhost", int(sys.argv[1]), context=context)
auth = base64.b64encode(sys.argv[4].encode()).decode()
connection.request("GET", sys.argv[2], headers={"Authorization": "Basic " + auth})
response = connection.getresponse()
print(response.status, flush=True)
if response.status == 200:
    while response.read1(65536):
        pass
"""


class Child(ProcessProtocol):
    """A child's output, its first line and its end."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.err = bytearray()
        self.code: int | None = None
        self.ended: Deferred[None] = Deferred()
        self.firstLine: Deferred[bytes] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.out += data
        if b"\n" in self.out and not self.firstLine.called:
            self.firstLine.callback(bytes(self.out.split(b"\n")[0]))

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Failure) -> None:
        if isinstance(reason.value, ProcessDone | ProcessTerminated):
            self.code = reason.value.exitCode
        self.ended.callback(None)


class SettingTests(TestCase):
    """The keepalive settings: their defaults and their checks."""

    def test_clientSetting(self) -> None:
        """JW_KEEPALIVE: whole seconds from 1 to a day, else one line."""
        self.assertEqual(keepAliveSeconds({}), KEEPALIVE)
        self.assertEqual(keepAliveSeconds({"JW_KEEPALIVE": "7"}), 7)
        for bad in ("0", "-1", "1.5", "x", "32768", "86400"):
            # A setting: exit 2, as every bad setting (it was 1).
            with self.assertRaises(ConfigError) as caught:
                keepAliveSeconds({"JW_KEEPALIVE": bad})
            self.assertIn("JW_KEEPALIVE must be whole seconds", str(caught.exception))
        self.assertEqual(parseSeconds("32767", "x"), 32767)  # MAX_TCP_KEEPIDLE


class DeadNetworkTests(TestCase):
    """Both ends give a silently dead connection up, and say so."""

    timeout = 120

    def setUp(self) -> None:
        if os.getuid() != 0:
            raise SkipTest("network namespaces need root (CI runs these as root)")
        for tool in ("unshare", "nsenter", "ip"):
            if shutil.which(tool) is None:
                raise SkipTest(f"{tool} is not installed (.ci/run installs it)")

    async def server(self, *extra: str) -> Twistd:
        return await Twistd(self).start(*extra, prefix=IN_NEW_NETWORK)

    def inside(self, server: Twistd, *argv: str) -> list[str]:
        return ["nsenter", f"--net=/proc/{server.pid}/ns/net", "--", *argv]

    async def runInside(
        self, server: Twistd, *argv: str, **env: str
    ) -> tuple[int, bytes]:
        command = self.inside(server, *argv)
        out, err, code = await getProcessOutputAndValue(
            command[0], command[1:], env=jwEnvironment(server.url, **env)
        )
        return code, out + err

    def spawn(self, server: Twistd, *argv: str, **env: str) -> Child:
        child = Child()
        command = self.inside(server, *argv)
        transport = reactor.spawnProcess(  # type: ignore[attr-defined]
            child, command[0], command, env=jwEnvironment(server.url, **env)
        )
        self.addCleanup(self._kill, transport, child)
        return child

    async def _kill(self, transport: Any, child: Child) -> None:
        if child.code is None and not child.ended.called:
            transport.signalProcess("KILL")
            await child.ended

    async def network(self, server: Twistd, state: str) -> None:
        code, output = await self.runInside(server, "ip", "link", "set", "lo", state)
        self.assertEqual(code, 0, output)

    async def settled(self, server: Twistd, seconds: float = 10.0) -> None:
        """Wait until no connection in the server's namespace has unsent or
        unacknowledged bytes (C{ss}: every Send-Q is 0)."""
        deadline = time.monotonic() + seconds
        while True:
            code, output = await self.runInside(server, "ss", "-Htn")
            self.assertEqual(code, 0, output)
            queues = [line.split()[2] for line in output.decode().splitlines() if line]
            if all(queue == "0" for queue in queues):
                return
            self.assertLess(time.monotonic(), deadline, output)
            await sleep(0.1)

    async def quietJob(self, server: Twistd) -> str:
        code, output = await self.runInside(server, JW, "exec", "--", "sleep", "600")
        self.assertEqual(code, 0, output)
        jobId = output.decode().split()[0]
        self.assertRegex(jobId, r"^[0-9a-f-]{36}$")
        return jobId

    async def test_jwGivesUpADeadFollow(self) -> None:
        """jw following a quiet job over a link that dies: keepalive notices,
        the retries fail, and jw says so in one line and exits non-zero,
        instead of waiting for ever."""
        server = await self.server()
        self.addCleanup(self.network, server, "up")
        jobId = await self.quietJob(server)
        follower = self.spawn(server, JW, "logs", "-f", jobId, JW_KEEPALIVE="1")
        await sleep(1.5)
        self.assertFalse(follower.ended.called, follower.err)
        await self.network(server, "down")
        cut = time.monotonic()
        await follower.ended.addTimeout(60, reactor)
        waited = time.monotonic() - cut
        self.assertNotEqual(follower.code, 0)
        message = follower.err.decode().strip()
        self.assertEqual(len(message.splitlines()), 1, message)
        self.assertTrue(message.startswith("jw: "), message)
        # The retries' connection attempts time out (keepalive's user
        # timeout), or find no route to the loopback, depending on the kernel.
        self.assertRegex(message, "timed out|unreachable")
        self.assertNotIn("Traceback", message)
        self.assertLess(waited, 45)

    async def test_serverLetsAVanishedFollowerGo(self) -> None:
        """A follower that vanished (the link died; it never probes) held the
        user's only log-stream slot: the server's keepalive gives its
        connection up, and the user can follow again."""
        server = await self.server(
            "--keepalive", "1", "--max-log-streams-per-user", "1"
        )
        self.addCleanup(self.network, server, "up")
        jobId = await self.quietJob(server)
        path = f"/jobs/{jobId}/logs?follow=true"
        credentials = f"alice:{PASSWORDS['alice']}"
        raw = (sys.executable, "-c", RAW_FOLLOWER, str(server.port), path, CA)
        vanished = self.spawn(server, *raw, credentials)
        self.assertEqual(await vanished.firstLine.addTimeout(30, reactor), b"200")
        _, output = await self.runInside(server, *raw, credentials)
        self.assertEqual(output.split(b"\n")[0], b"429", output)
        # Keepalive probes an idle connection only: one whose last bytes
        # were still unacknowledged when the link died is retried for
        # minutes instead (tcp_retries2), and the test failed now and then.
        await self.settled(server)
        await self.network(server, "down")
        # 1 s of silence, 3 probes a second apart, and room for a loaded
        # machine (CI): the link must stay down until the probes have failed,
        # or the connection lives on (8 s once fell short there).
        await sleep(15)
        await self.network(server, "up")
        self.assertFalse(vanished.ended.called)
        follower = self.spawn(server, *raw, credentials)
        self.assertEqual(await follower.firstLine.addTimeout(30, reactor), b"200")


class SilentListenerTests(TestCase):
    """
    A server that accepts connections but never answers the TLS handshake
    (stopped with SIGSTOP, wedged, or another service on that port): the
    kernel answers the TCP handshake and keepalive's probes, so nothing
    failed, and `jw list` waited 5 minutes, `jw logs -f` for ever. A
    handshake now has twice JW_KEEPALIVE seconds.
    """

    timeout = 60

    def setUp(self) -> None:
        from twisted.internet.protocol import Factory, Protocol

        self.port = reactor.listenTCP(  # type: ignore[attr-defined]
            0, Factory.forProtocol(Protocol), interface="127.0.0.1"
        )
        self.addCleanup(self.port.stopListening)
        self.url = f"https://127.0.0.1:{self.port.getHost().port}"

    async def assertGivesUp(self, *argv: str) -> None:
        started = time.monotonic()
        child = Child()
        transport = reactor.spawnProcess(  # type: ignore[attr-defined]
            child, JW, [JW, *argv], env=jwEnvironment(self.url, JW_KEEPALIVE="1")
        )
        try:
            await child.ended.addTimeout(40, reactor)
        except DeferredTimeout:
            transport.signalProcess("KILL")
            await child.ended
            self.fail(f"jw {' '.join(argv)} still waited after 40 s")
        waited = time.monotonic() - started
        message = child.err.decode().strip()
        self.assertNotEqual(child.code, 0, message)
        self.assertEqual(len(message.splitlines()), 1, message)
        self.assertIn("TLS handshake", message)
        self.assertIn("timed out", message)
        self.assertLess(waited, 20)

    async def test_shortCommand(self) -> None:
        await self.assertGivesUp("list")

    async def test_follow(self) -> None:
        await self.assertGivesUp("logs", "-f", "0" * 8)
