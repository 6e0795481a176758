"""
The client-side tooling against hostile users (issue 14, findings 4, 9, 10):
the development CA is trusted for loopback names only, and the server will
not serve the public development key or users beyond loopback; job data
cannot write terminal escapes through C{jw}; C{jobworker-issue-cert} never
writes a key through a planted file or link.
"""

from __future__ import annotations

import errno
import io
import json
import os
import re
import socket
import ssl
import stat
import sys
import uuid
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.threads import deferToThread
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from jobworker.auth.issuecert import IssueError, issue
from jobworker.auth.issuecert import main as issueMain
from jobworker.auth.users import DEVELOPMENT_USERS
from jobworker.certificates import keyPEM
from jobworker.client import config as clientconfig
from jobworker.client.config import DEV_CA, ConfigError, Settings, resolve
from jobworker.server.options import Options
from jobworker.server.services import ListeningService
from jobworker.server.tap import makeService
from jobworker.tls import serverOptions

from .support import (
    CA,
    CERT,
    CERTS,
    FREE_UIDS,
    JW,
    KEY,
    LiveServer,
    jwEnvironment,
    runJW,
    selfSigned,
    sharedPath,
    writePEM,
)

CA_KEY = os.path.join(CERTS, "ca.key")

#: Any C0 control character, or DEL, but the newline that ends a line.
CONTROL = re.compile(rb"[\x00-\x09\x0b-\x1f\x7f]")

#: What a hostile user puts in a job's arguments: set the window title,
#: clear the screen, a fake line, and a right-to-left override.
HOSTILE = "\x1b]0;owned\x07\x1b[2J"
FAKE_LINE = "x\nFAKE ROW"
RTL = "\u202e"


def plainEnvironment(testCase: TestCase, server: str, **extra: str) -> dict[str, str]:
    """
    C{jw}'s environment with no CA configured anywhere: no C{JW_CA}, an
    empty config folder, and an empty state folder (the CA of a server this
    user ran with its default state dir would be trusted for localhost).
    """
    env = jwEnvironment(server, **extra)
    env.pop("JW_CA", None)
    env["XDG_CONFIG_HOME"] = os.path.abspath(testCase.mktemp())
    env["XDG_STATE_HOME"] = os.path.abspath(testCase.mktemp())
    return env


class Hangup(Protocol):
    """Close every connection at once."""

    def connectionMade(self) -> None:
        self.transport.loseConnection()  # type: ignore[union-attr]


class ConnectionCounter(Factory):
    """Count the TCP connections a listener accepted (and hang up)."""

    def __init__(self) -> None:
        self.connections = 0

    def buildProtocol(self, addr: Any) -> Protocol:
        self.connections += 1
        return Hangup()


class DevelopmentCAClientTests(TestCase):
    """Finding 4, client side: the public development CA stays on loopback."""

    async def listenOn(self, interface: str) -> tuple[ConnectionCounter, int]:
        counter = ConnectionCounter()
        port: IListeningPort = await TCP4ServerEndpoint(
            reactor, 0, interface=interface
        ).listen(counter)
        self.addCleanup(port.stopListening)
        return counter, port.getHost().port  # type: ignore[attr-defined]

    async def test_otherHostRefusedBeforeConnecting(self) -> None:
        """
        Without a CA configured, a server that is not localhost, 127.0.0.1 or
        ::1 is refused with one line naming --ca and JW_CA, exit 2, before
        any connection is made (127.0.0.2 is a listener here that counts).
        Only jw login connects, to fetch the CA for a person to trust (issue
        17), and sends nothing of the user's there.
        """
        counter, port = await self.listenOn("127.0.0.2")
        for server in (
            f"https://127.0.0.2:{port}",
            "https://example.invalid:8443",
            "https://[2001:db8::1]:8443",
            "https://localhost.example.com:8443",
        ):
            env = plainEnvironment(self, server)
            for verb in (["list"], ["status", "abcdef12"], ["exec", "--", "true"]):
                out, err, code = await getProcessOutputAndValue(
                    JW, verb, env=env, reactor=reactor
                )
                self.assertEqual(code, 2, (server, verb, out, err))
                self.assertEqual(out, b"")
                self.assertEqual(err.count(b"\n"), 1, err)
                self.assertTrue(err.startswith(b"jw: "), err)
                for name in (b"--ca", b"JW_CA"):
                    self.assertIn(name, err)
        self.assertEqual(counter.connections, 0)
        env = plainEnvironment(self, f"https://127.0.0.2:{port}")
        out, err, code = await getProcessOutputAndValue(
            JW, ["login"], env=env, reactor=reactor
        )
        self.assertEqual((out, code, err.count(b"\n")), (b"", 2, 1), err)
        for name in (b"--ca", b"JW_CA"):
            self.assertIn(name, err)
        # One connection, hung up during the handshake: nothing was sent.
        self.assertEqual(counter.connections, 1)

    async def test_loginToASilentPortGivesUp(self) -> None:
        """
        jw login for a server whose CA jw does not know, on a port that
        takes the connection and never answers (a stopped server, another
        service): the handshake that fetches its CA gets twice
        C{JW_KEEPALIVE}, as every command's, then one line, exit 2. It
        waited for ever (its socket was made blocking for the handshake).
        """
        silent = socket.socket()
        self.addCleanup(silent.close)
        silent.bind(("127.0.0.2", 0))
        silent.listen(8)  # the kernel takes connections; nothing answers
        env = plainEnvironment(
            self, f"https://127.0.0.2:{silent.getsockname()[1]}", JW_KEEPALIVE="1"
        )
        ran = getProcessOutputAndValue(JW, ["login"], env=env, reactor=reactor)
        out, err, code = await ran.addTimeout(30, reactor)
        self.assertEqual((out, code, err.count(b"\n")), (b"", 2, 1), err)
        self.assertIn(b"2 s", err)

    async def test_loopbackNamesNoLongerUseTheDevelopmentCA(self) -> None:
        """
        localhost and 127.0.0.1 with no CA configured (nor one this user's
        server made): refused as any other host, in one line naming jw
        login and --ca, nothing sent. The development CA's key is public:
        a job listening on the server's port on ::1 (the server on
        127.0.0.1 only; localhost is ::1 first on many systems), or on the
        port while the server was down, showed the development certificate
        and got the password of whoever ran jw login or jw list (attacker
        round 11). jw login asks about such a server's CA instead, or says
        to pass it.
        """
        server = LiveServer(self)
        for host in ("localhost", "127.0.0.1"):
            env = plainEnvironment(self, f"https://{host}:{server.port}")
            out, err, code = await getProcessOutputAndValue(
                JW, ["list"], env=env, reactor=reactor
            )
            self.assertEqual((code, out, err.count(b"\n")), (2, b"", 1), (host, err))
            for name in (b"jw login", b"--ca"):
                self.assertIn(name, err)
            out, err, code = await getProcessOutputAndValue(
                JW, ["login"], env=env, reactor=reactor
            )
            self.assertEqual((code, out, err.count(b"\n")), (2, b"", 1), (host, err))
            # (The development server sends no CA with its certificate: jw
            # says to get the CA file; another would be asked about.)
            self.assertIn(b"--ca", err)

    async def test_explicitCAIsUsedForAnyHost(self) -> None:
        """
        A CA given with --ca, JW_CA or the config file is used for any host,
        even the development CA: only the default is limited.
        """
        counter, port = await self.listenOn("127.0.0.2")
        server = f"https://127.0.0.2:{port}"
        env = plainEnvironment(self, server)
        _out, err, code = await getProcessOutputAndValue(
            JW, ["--ca", CA, "list"], env=env, reactor=reactor
        )
        self.assertNotEqual(code, 2, err)  # it connected, and the handshake failed
        self.assertEqual(counter.connections, 1, err)

    def test_trustedCA(self) -> None:
        """The rule itself, over every origin of the CA setting."""
        path = os.path.abspath(self.mktemp())
        # No CA from a login or from a server of this user's: not this
        # machine's, whatever its user has run.
        empty = os.path.abspath(self.mktemp())
        home = {"XDG_CONFIG_HOME": empty, "XDG_STATE_HOME": empty}

        def settingsFor(server: str, **environ: str) -> Settings:
            return resolve({"server": server}, environ, path)

        # Nor the development CA, even for loopback names: its key is public,
        # and a job that takes the server's port on the other loopback
        # (::1 where the server listens on 127.0.0.1), or the port while the
        # server is down, showed a certificate it vouched for and got the
        # password of every user whose jw had no CA of its own (attacker
        # round 11). Such a server is asked about at jw login instead.
        for host in (
            "localhost",
            "LOCALHOST",
            "127.0.0.1",
            "[::1]",
            "127.0.0.2",
            "localhost.",
            "example.com",
            "[::ffff:127.0.0.1]",
            "10.0.0.1",
        ):
            settings = settingsFor(f"https://{host}:8443")
            with self.assertRaises(ConfigError) as raised:
                clientconfig.trustedCA(settings, home)
            message = str(raised.exception)
            self.assertNotIn("\n", message)
            self.assertIn("--ca", message)
            # Where a server's own CA is (a new user followed the hint to
            # the development CA, which the quick start's server does not
            # use, and went in circles).
            self.assertIn("tls/ca.pem in its state dir", message)
        mine = settingsFor("https://jobs.example.com:8443", JW_CA="/etc/ca.pem")
        self.assertEqual(clientconfig.trustedCA(mine), "/etc/ca.pem")
        flagged = resolve(
            {"server": "https://jobs.example.com", "ca": DEV_CA}, {}, path
        )
        self.assertEqual(clientconfig.trustedCA(flagged), DEV_CA)

    async def test_configShowsTheLimit(self) -> None:
        """jw config says that no CA is known, and what to do."""
        env = plainEnvironment(self, "https://jobs.example.com:8443")
        out, err, code = await getProcessOutputAndValue(
            JW, ["config"], env=env, reactor=reactor
        )
        self.assertEqual(code, 0, err)
        self.assertIn(b"ca = (none)", out)
        self.assertIn(b"jw login --server https://jobs.example.com:8443", out)


def ownCertificate(directory: str) -> tuple[str, str]:
    """A self-signed server certificate that is not the development one."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "jobs.example.com")])
    certificate, key = selfSigned(name)
    os.makedirs(directory, exist_ok=True)
    certPath = os.path.join(directory, "server.pem")
    keyPath = os.path.join(directory, "server.key")
    writePEM(certPath, certificate.public_bytes(serialization.Encoding.PEM))
    writePEM(keyPath, keyPEM(key))
    return certPath, keyPath


class BothLoopbacksTests(TestCase):
    """
    A server on 127.0.0.1 left [::1]:PORT free: any job could listen there,
    and a client whose localhost is ::1 first (Debian's and Fedora's hosts
    files, RFC 6724) reached the job instead (attacker round 11). It
    listens on both loopbacks now, so the port is its own on each.
    """

    async def test_theOtherLoopbackIsTheServers(self) -> None:
        server = LiveServer(self)

        def healthz() -> bytes:
            context = ssl.create_default_context(cafile=CA)
            with socket.create_connection(("::1", server.port), timeout=10) as raw:
                with context.wrap_socket(raw, server_hostname="::1") as tls:
                    tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: [::1]\r\n\r\n")
                    return tls.recv(4096)

        answer = await deferToThread(healthz)
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 "), answer)
        squatter = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        self.addCleanup(squatter.close)
        with self.assertRaises(OSError) as taken:
            squatter.bind(("::1", server.port))
        self.assertEqual(taken.exception.errno, errno.EADDRINUSE)
        # Stopped with the server: the port is free again on both (a
        # closed connection may leave it in TIME_WAIT: SO_REUSEADDR).
        await server.stop()
        again = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        self.addCleanup(again.close)
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("::1", server.port))


class DevelopmentSecretsServerTests(TestCase):
    """Finding 4, server side: no public key or users beyond loopback."""

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        self.certPath, self.keyPath = ownCertificate(self.directory)
        self.usersPath = os.path.join(self.directory, "users.txt")
        with open(self.usersPath, "w", encoding="utf-8") as f:
            f.write(DEVELOPMENT_USERS)

    def start(self, *extra: str) -> tuple[Any, str]:
        """makeService with C{extra}: (the service or None, stderr)."""
        options = Options()
        options.parseOptions(
            [
                "--tls",
                "--port=0",
                f"--dynamic-uids={FREE_UIDS}",
                f"--state-dir={os.path.abspath(self.mktemp())}",
                *extra,
            ]
        )
        errors = io.StringIO()
        self.patch(sys, "stderr", errors)
        try:
            service = makeService(options, reactor)
        except SystemExit as e:
            self.assertEqual(e.code, 1)
            return None, errors.getvalue()
        for child in service:
            if isinstance(child, ListeningService):
                self.addCleanup(child._port.stopListening)  # type: ignore[attr-defined]
        return service, errors.getvalue()

    def assertRefused(self, *extra: str, naming: str) -> None:
        service, errors = self.start(*extra)
        self.assertIsNone(service, f"started with {extra}")
        self.assertEqual(errors.count("\n"), 1, errors)
        self.assertTrue(errors.startswith("jobworker: error: "), errors)
        self.assertIn(naming, errors)

    def test_developmentKeyRefusedBeyondLoopback(self) -> None:
        """
        The development certificate (its key is public) on a non-loopback
        interface is refused, naming --cert/--key; also when the files are
        copies somewhere else.
        """
        copies = []
        for original in (CERT, KEY):
            copy = os.path.join(self.directory, "copy-" + os.path.basename(original))
            with open(original, "rb") as source, open(copy, "wb") as target:
                target.write(source.read())
            copies.append(copy)
        for interface in ("0.0.0.0", "192.0.2.1", ""):
            for cert, key in ((CERT, KEY), copies):
                self.assertRefused(
                    f"--interface={interface}",
                    f"--cert={cert}",
                    f"--key={key}",
                    f"--users={self.usersPath}",
                    naming="--cert",
                )

    def test_developmentUsersRefusedBeyondLoopback(self) -> None:
        """The development users (no --users) beyond loopback: name --users."""
        self.assertRefused(
            "--interface=0.0.0.0",
            f"--cert={self.certPath}",
            f"--key={self.keyPath}",
            naming="--users",
        )

    def test_ownSecretsBeyondLoopback(self) -> None:
        """Own certificate and users file: it starts on any interface."""
        service, errors = self.start(
            "--interface=0.0.0.0",
            f"--cert={self.certPath}",
            f"--key={self.keyPath}",
            f"--users={self.usersPath}",
        )
        self.assertIsNotNone(service, errors)

    def test_developmentSecretsOnLoopback(self) -> None:
        """On loopback addresses the development defaults still start."""
        for interface in ("127.0.0.1", "127.0.0.2", "localhost"):
            service, errors = self.start(
                f"--interface={interface}", f"--cert={CERT}", f"--key={KEY}"
            )
            self.assertIsNotNone(service, (interface, errors))


class JobDataEscapedTests(TestCase):
    """Finding 9: job data cannot write terminal escapes through jw."""

    def assertInert(self, output: bytes, lines: int) -> None:
        """No control character but line ends, and exactly C{lines} lines."""
        self.assertIsNone(CONTROL.search(output), output)
        self.assertNotIn(RTL.encode("utf-8"), output)
        self.assertEqual(output.count(b"\n"), lines, output)

    async def hostileJob(self, server: LiveServer) -> dict[str, Any]:
        """bob's job with escapes in its command, arguments and cwd."""
        return await server.createJob(
            f"true{RTL}",
            HOSTILE,
            FAKE_LINE,
            user="bob",
            cwd=f"/no/such{HOSTILE}",
        )

    async def test_listEscapes(self) -> None:
        """jw list shows another user's escapes as text, one row per job."""
        server = LiveServer(self)
        await self.hostileJob(server)
        out, err, code = await runJW(server.url, "list", "--wide", user="ada")
        self.assertEqual(code, 0, err)
        self.assertInert(out, 2)
        self.assertIn(rb"$'true\u202e' $'\x1b]0;owned\x07\x1b[2J' $'x\nFAKE ROW'", out)

    async def test_statusEscapes(self) -> None:
        """jw status shows every field's escapes as text."""
        server = LiveServer(self)
        job = await self.hostileJob(server)
        await server.waitEnded(job["id"])
        out, err, code = await runJW(server.url, "status", job["id"], user="ada")
        self.assertEqual(code, 0, err)
        self.assertInert(out, len(re.findall(rb"(?m)^[a-z_]+: ", out)))
        self.assertRegex(out, rb"command: +\$'true\\u202e'")
        self.assertRegex(out, rb"cwd: +/no/such\\x1b\]0;owned\\x07\\x1b\[2J\n")

    async def test_stopEscapes(self) -> None:
        """jw stop prints the stopped job as inertly as jw status."""
        server = LiveServer(self)
        folder = sharedPath(self) + HOSTILE
        os.mkdir(folder, 0o755)
        job = await server.createJob(
            "sh", "-c", "sleep 30", HOSTILE, FAKE_LINE, user="bob", cwd=folder
        )
        out, err, code = await runJW(server.url, "stop", job["id"], user="ada")
        self.assertEqual(code, 0, err)
        self.assertInert(out, len(re.findall(rb"(?m)^[a-z_]+: ", out)))
        self.assertRegex(out, rb"status: +STOPPED")
        self.assertIn(rb"\x1b]0;owned\x07\x1b[2J", out.split(b"cwd: ")[1])

    async def test_jsonStaysExact(self) -> None:
        """--json carries the data exactly (JSON escapes are not terminal ones)."""
        server = LiveServer(self)
        job = await self.hostileJob(server)
        out, err, code = await runJW(server.url, "list", "--json", user="ada")
        self.assertEqual(code, 0, err)
        self.assertIsNone(CONTROL.search(out.rstrip(b"\n")), out)
        [listed] = json.loads(out)["jobs"]
        self.assertEqual(listed["command"], f"true{RTL}")
        self.assertEqual(listed["args"], [HOSTILE, FAKE_LINE])
        out, err, code = await runJW(
            server.url, "status", "--json", job["id"], user="ada"
        )
        self.assertEqual(code, 0, err)
        self.assertEqual(json.loads(out)["cwd"], f"/no/such{HOSTILE}")

    async def test_messagesEscape(self) -> None:
        """
        Error lines that quote what the server sent (an error body, a job's
        error) stay one inert line: a hostile server cannot break them.
        """
        hostile = HostileServer()
        port = await hostile.listen()
        self.addCleanup(port.stopListening)
        url = f"https://localhost:{port.getHost().port}"  # type: ignore[attr-defined]
        out, err, code = await runJW(url, "status", str(uuid.uuid4()))
        self.assertEqual(code, 1, err)
        self.assertEqual(out, b"")
        self.assertInert(err, 1)
        self.assertIn(rb"not found: gone\x1b[2J\nFAKE", err)
        out, err, code = await runJW(url, "exec", "--follow", "--", "true")
        self.assertEqual(code, 127, err)
        self.assertInert(err, 1)  # why it did not start (it never did)
        self.assertIn(rb"jw: job hostile\x1b[2K", err)
        self.assertIn(rb"cannot start\x1b]0;owned\x07", err)
        out, err, code = await runJW(url, "list")
        self.assertEqual(code, 0, err)
        self.assertInert(out, 2)
        self.assertIn(rb"ev\x1b[1Ail", out)


class HostileServer(Resource):
    """
    A server that answers with escapes everywhere: a 404 whose error says
    so, a job that could not start, a job owned by such a name.
    """

    isLeaf = True

    JOB = {
        "id": "hostile\x1b[2K",
        "command": "true",
        "args": [],
        "owner": "ev\x1b[1Ail",
        "status": "FAILED",
        "pid": None,
        "exit_code": None,
        "signal": None,
        "error": "cannot start\x1b]0;owned\x07\nFAKE",
        "created_at": "2024-01-01T00:00:00Z",
        "started_at": None,
        "ended_at": None,
        "stopped_by": None,
    }

    def listen(self) -> Deferred[IListeningPort]:
        endpoint = SSL4ServerEndpoint(
            reactor, 0, serverOptions(CERT, KEY), interface="127.0.0.1"
        )
        return endpoint.listen(Site(self))  # type: ignore[no-any-return]

    def render(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        path = request.path.decode()
        if path.endswith("/logs"):
            return b""
        if path == "/jobs" and request.method == b"GET":
            body: Any = {"jobs": [self.JOB], "next_cursor": None}
        elif path == "/jobs" or path.startswith("/jobs/hostile"):
            request.setResponseCode(201 if path == "/jobs" else 200)
            body = self.JOB
        else:
            request.setResponseCode(404)
            body = {"error": "gone\x1b[2J\nFAKE"}
        return json.dumps(body).encode("utf-8")


class IssueCertTests(SynchronousTestCase):
    """Finding 10: jobworker-issue-cert in a directory others can write."""

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.errors = io.StringIO()
        self.patch(sys, "stderr", self.errors)
        self.patch(sys, "stdout", io.StringIO())

    def issueInto(self, name: str) -> int:
        """Run the tool; its exit status (0 when it returned)."""
        try:
            issueMain(
                ["--ca", CA, "--ca-key", CA_KEY, "--out-dir", self.directory, name]
            )
        except SystemExit as e:
            return int(e.code or 0)
        return 0

    def assertOneLine(self, *expected: str) -> None:
        text = self.errors.getvalue()
        self.assertEqual(text.count("\n"), 1, text)
        self.assertTrue(text.startswith("jobworker-issue-cert: "), text)
        for part in expected:
            self.assertIn(part, text)

    def test_nameIsAUserName(self) -> None:
        """NAME follows the users file's rule for user names."""
        for name in (
            ".hidden",
            "a b",
            "tab\tname",
            "ev\x1bil",
            "-dash",
            "é",
            "a/b",
            "..",
            "x" * 65,
            "",
        ):
            with self.assertRaises(IssueError) as raised:
                issue(name, CA, CA_KEY)
            self.assertNotIn("\n", str(raised.exception))
        for name in ("alice", "a.b-c_d@example.com", "x" * 64, "0"):
            issue(name, CA, CA_KEY)
        self.assertNotEqual(self.issueInto(".hidden"), 0)
        self.assertOneLine("user name")
        self.assertEqual(os.listdir(self.directory), [])

    def test_plantedKeyFileRefused(self) -> None:
        """A NAME.key already there is left alone, and nothing is written."""
        planted = os.path.join(self.directory, "zoe.key")
        with open(planted, "w") as f:
            f.write("planted")
        os.chmod(planted, 0o644)
        self.assertNotEqual(self.issueInto("zoe"), 0)
        self.assertOneLine("zoe.key")
        with open(planted) as f:
            self.assertEqual(f.read(), "planted")
        self.assertEqual(os.listdir(self.directory), ["zoe.key"])

    def test_plantedLinkRefused(self) -> None:
        """A symlink at NAME.key (to a file or to nothing) is not followed."""
        elsewhere = os.path.abspath(self.mktemp())
        os.makedirs(elsewhere)
        existing = os.path.join(elsewhere, "existing")
        with open(existing, "w") as f:
            f.write("victim")
        missing = os.path.join(elsewhere, "missing")
        for target in (existing, missing):
            link = os.path.join(self.directory, "zoe.key")
            os.symlink(target, link)
            self.errors.truncate(0)
            self.errors.seek(0)
            self.assertNotEqual(self.issueInto("zoe"), 0)
            self.assertOneLine("zoe.key")
            os.unlink(link)
        self.assertEqual(sorted(os.listdir(elsewhere)), ["existing"])
        with open(existing) as f:
            self.assertEqual(f.read(), "victim")
        self.assertEqual(os.listdir(self.directory), [])

    def test_plantedCertificateRefused(self) -> None:
        """A NAME.pem already there (or a link) is refused; no key is left."""
        elsewhere = os.path.abspath(self.mktemp())
        os.makedirs(elsewhere)
        target = os.path.join(elsewhere, "victim")
        os.symlink(target, os.path.join(self.directory, "zoe.pem"))
        self.assertNotEqual(self.issueInto("zoe"), 0)
        self.assertOneLine("zoe.pem")
        self.assertEqual(os.listdir(self.directory), ["zoe.pem"])
        self.assertFalse(os.path.lexists(target))

    def test_keyIsCreatedExclusively(self) -> None:
        """
        The key is opened with O_CREAT|O_EXCL|O_NOFOLLOW and mode 0600, so
        even a permissive umask never exposes it.
        """
        opened: list[tuple[str, int, int]] = []
        realOpen = os.open

        def recordingOpen(path: str, flags: int, mode: int = 0o777) -> int:
            opened.append((path, flags, mode))
            return realOpen(path, flags, mode)

        self.patch(os, "open", recordingOpen)
        old = os.umask(0)
        try:
            self.assertEqual(self.issueInto("zoe"), 0, self.errors.getvalue())
        finally:
            os.umask(old)
        keyPath = os.path.join(self.directory, "zoe.key")
        [(flags, mode)] = [(f, m) for p, f, m in opened if p == keyPath]
        wanted = os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        self.assertEqual(flags & wanted, wanted)
        self.assertEqual(mode, 0o600)
        self.assertEqual(stat.S_IMODE(os.lstat(keyPath).st_mode), 0o600)


class PackagedCATests(SynchronousTestCase):
    """jw finds the development CA in a wheel install too (package data)."""

    def test_packagedCopyIsTheSourceTreeCA(self) -> None:
        from jobworker.client.config import DEV_CA

        with open(DEV_CA, "rb") as packaged, open(CA, "rb") as tree:
            self.assertEqual(packaged.read(), tree.read())
