"""
Defects found in the thirty-eighth session's rounds, each reproduced here
before its fix.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import signal
import sqlite3
import ssl
import subprocess
import sys
import threading
from types import SimpleNamespace
from typing import Any

import treq
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.logger import capturedLogs, formatEvent
from twisted.python.usage import UsageError
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from jobworker.certificates import (
    certificateBuilder,
    keyPEM,
    keyUsage,
    leafCertificate,
    newKey,
)
from jobworker.errors import ServiceUnavailable
from jobworker.executors.local.process import JobProcess
from jobworker.executors.local.stalls import (
    LOOK_EVERY,
    UNSAID,
    WINDOW_SECONDS,
    StallWatch,
    abortFuseOf,
)
from jobworker.jobs.folders import removeTree
from jobworker.jobs.identity import parseRange
from jobworker.jobs.records import JobStatus
from jobworker.jobs.store import JobStore, StoreError
from jobworker.server import services, tap, tlssetup
from jobworker.server.options import Options
from jobworker.server.services import UsersReloadService
from jobworker.server.startup import StartupError
from jobworker.server.tlssetup import MAX_CHAIN_CAS
from jobworker.units import parseSize

from . import test_mtls, test_queue, test_review37
from .support import CA, CERT, KEY, LiveServer, sleep, writePEM
from .test_launcher import requireRoot
from .test_mtls import issue, writePair
from .test_review33 import storeRecord


def deepChain(directory: str, cas: int) -> tuple[str, list[bytes], tuple[str, str]]:
    """
    A root and C{cas} - 1 intermediates under it, bob's certificate by the
    lowest: (the bundle's path, holding them all; their PEMs, the lowest
    first; bob's pair, his certificate alone).
    """

    def name(text: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

    key = newKey()
    issuer = (
        certificateBuilder(name("root"), name("root"), key.public_key(), 30)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .add_extension(keyUsage(True), True)
        .sign(key, hashes.SHA256())  # type: ignore[arg-type]
    )
    pem = serialization.Encoding.PEM
    chain = [issuer.public_bytes(pem)]
    for level in range(1, cas):
        lowerKey = newKey()
        issuer = (
            certificateBuilder(
                name(f"intermediate {level}"), issuer.subject, lowerKey.public_key(), 30
            )
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .add_extension(keyUsage(True), True)
            .sign(key, hashes.SHA256())  # type: ignore[arg-type]
        )
        key = lowerKey
        chain.insert(0, issuer.public_bytes(pem))
    bobKey = newKey()
    bob = leafCertificate(
        "bob", issuer, key, bobKey.public_key(), 30, ExtendedKeyUsageOID.CLIENT_AUTH
    )
    os.makedirs(directory)
    bundle = os.path.join(directory, "bundle.pem")
    writePEM(bundle, b"".join(chain))
    pair = writePair(directory, "bob", (bob.public_bytes(pem), keyPEM(bobKey)))
    return bundle, chain, pair


class DeepChainTokenTests(TestCase):
    """
    Session 38: a client certificate's token named at most five CAs of the
    bundle its chain was verified through, the five nearest the root: with
    a deeper chain, the lowest intermediate removed from C{--client-ca}
    refused the certificate, and its token went on. A certificate verified
    through more CAs than a token names gets no token; one through as many
    gets one, which the removal of the lowest refuses.
    """

    timeout = 60
    kept = test_mtls.KeptConnectionTests.kept

    async def token(self, cas: int) -> tuple[LiveServer, int, dict, str, list[bytes]]:
        """A server trusting a chain of C{cas} CAs, and bob's ask for a
        token with his certificate: (server, code, answer, bundle, chain)."""
        bundle, chain, pair = deepChain(os.path.abspath(self.mktemp()), cas)
        server = LiveServer(self, f"--client-ca={bundle}")
        response = await self.kept(pair).request(
            "POST",
            server.url + "/tokens",
            headers={b"content-type": [b"application/json"]},
        )
        answer = json.loads(await treq.content(response))
        return server, response.code, answer, bundle, chain

    async def test_tooDeepRefused(self) -> None:
        _, code, answer, _, _ = await self.token(MAX_CHAIN_CAS + 2)
        self.assertEqual(code, 403, answer)
        self.assertIn(f"more than a token can name ({MAX_CHAIN_CAS})", answer["error"])

    async def test_lowestRemoved(self) -> None:
        server, code, answer, bundle, chain = await self.token(MAX_CHAIN_CAS)
        self.assertEqual(code, 201, answer)
        writePEM(bundle, b"".join(chain[1:]))
        reload = next(s for s in server.service if isinstance(s, UsersReloadService))
        await reload.hangUp()
        response = await server.http.request(
            "GET",
            server.url + "/whoami",
            headers={b"authorization": [f"Bearer {answer['token']}".encode()]},
        )
        await treq.content(response)
        self.assertEqual(response.code, 401)


class DefaultLimitWithoutItsControllerTests(SynchronousTestCase):
    """
    The operator round 37's refusal, its other branch: cgroups in use but
    without the controller a default limit needs (no C{pids} controller
    mounted, say): the server refuses to start, naming the option and what
    the machine's cgroups take.
    """

    def test_refused(self) -> None:
        options = Options()
        options.parseOptions(
            ["--tls", f"--cert={CERT}", f"--key={KEY}", "--default-pids=16"]
        )
        cgroups = SimpleNamespace(
            supported=frozenset({"memory_bytes", "cpu_millicores"})
        )
        error = self.assertRaises(StartupError, tap._defaultsApplied, options, cgroups)
        self.assertIn("--default-pids cannot be applied", str(error))
        self.assertIn("take only cpu_millicores, memory_bytes", str(error))

    def test_applied(self) -> None:
        options = Options()
        options.parseOptions(
            ["--tls", f"--cert={CERT}", f"--key={KEY}", "--default-memory=64M"]
        )
        cgroups = SimpleNamespace(supported=frozenset({"memory_bytes"}))
        self.assertIsNone(tap._defaultsApplied(options, cgroups))  # type: ignore[func-returns-value]


class IntermediateSentByTheClientTests(TestCase):
    """
    Attacker round 38: removing an intermediate CA from C{--client-ca}
    (the root kept, as other intermediates hang from it) did not revoke
    what it issued: a client that sent the intermediate itself verified
    up to the root, was let in, and minted a token tied to the root alone.
    A chain is trusted only through CAs of the bundle: a CA the client
    sends is never trusted for being sent. (Its holder was let through the
    handshake, and in with a password under C{--require-client-cert}:
    session review 38. The handshake refuses it.)
    """

    timeout = 60
    chain = test_review37.TokenTiedToTheVerifiedRootTests.chain

    async def ask(self, server: LiveServer, pair: tuple[str, str], path: str) -> Any:
        """A new connection of C{pair}'s, sending the chain of its file
        (leaf and intermediate; jw sends the leaf alone): (code, answer)
        of C{path} (POST for /tokens)."""

        def asked() -> tuple[int, Any]:
            context = ssl.create_default_context(cafile=CA)
            context.load_cert_chain(*pair)
            connection = http.client.HTTPSConnection(
                "127.0.0.1", server.port, context=context, timeout=10
            )
            try:
                connection.request("POST" if path == "/tokens" else "GET", path)
                response = connection.getresponse()
                return response.status, json.loads(response.read())
            finally:
                connection.close()

        return await deferToThread(asked)

    async def test_removedIntermediateSent(self) -> None:
        bundle, _, root, pair = self.chain(os.path.abspath(self.mktemp()))
        server = LiveServer(self, f"--client-ca={bundle}")
        code, answer = await self.ask(server, pair, "/whoami")
        self.assertEqual((code, answer["user"]), (200, "bob"))
        writePEM(bundle, root)
        reload = next(s for s in server.service if isinstance(s, UsersReloadService))
        await reload.hangUp()
        for path in ("/whoami", "/tokens"):
            refused = await ensureDeferred(self.ask(server, pair, path)).addErrback(
                lambda f: f.value
            )
            self.assertIsInstance(refused, ssl.SSLError, (path, refused))

    async def test_rootAloneFromTheStart(self) -> None:
        """A bundle of the root alone trusts no intermediate a client sends
        (README: list every CA of the chain)."""
        bundle, _, root, pair = self.chain(os.path.abspath(self.mktemp()))
        writePEM(bundle, root)
        server = LiveServer(self, f"--client-ca={bundle}", "--require-client-cert")
        tlssetup._refusedSaid.clear()
        with capturedLogs() as events:
            refused = await ensureDeferred(
                self.ask(server, pair, "/whoami")
            ).addErrback(lambda f: f.value)
        self.assertIsInstance(refused, ssl.SSLError, refused)
        said = " ".join(formatEvent(e) for e in events)
        self.assertIn("refused in the handshake", said)
        self.assertIn("CN=intermediate I", said)

    async def test_keptConnectionAfterTheRemoval(self) -> None:
        """A connection made while the intermediate was in the bundle: its
        next request after the reload is a 401, naming the CA."""
        bundle, _, root, pair = self.chain(os.path.abspath(self.mktemp()))
        server = LiveServer(self, f"--client-ca={bundle}")

        def twoRequests() -> list[tuple[int, Any]]:
            context = ssl.create_default_context(cafile=CA)
            context.load_cert_chain(*pair)
            connection = http.client.HTTPSConnection(
                "127.0.0.1", server.port, context=context, timeout=10
            )
            answers = []
            try:
                for _ in range(2):
                    connection.request("GET", "/whoami")
                    response = connection.getresponse()
                    answers.append((response.status, json.loads(response.read())))
                    if not answers[1:]:
                        removed.wait(10)
            finally:
                connection.close()
            return answers

        removed = threading.Event()
        asked = deferToThread(twoRequests)
        await sleep(0.5)
        writePEM(bundle, root)
        reload = next(s for s in server.service if isinstance(s, UsersReloadService))
        await reload.hangUp()
        removed.set()
        answers = await asked
        self.assertEqual(answers[0][0], 200, answers)
        self.assertEqual(answers[1][0], 401, answers)
        self.assertIn("not in --client-ca", answers[1][1]["error"])


class QueuedRequestCheckedAtOnceTests(TestCase):
    """
    Code review 38: a request refused at once when it could start (a
    sandboxed job's C{LD_PRELOAD}, a command named with C{=}) was taken,
    201 PENDING, when it had to wait (C{--max-running}, a dependency), and
    ended FAILED "cannot start" at its turn, its C{after_ok} jobs too. It
    is the same 400 either way.
    """

    timeout = 60

    async def test_refusedWhileQueued(self) -> None:
        requireRoot()
        server = LiveServer(self, "--max-running=1")
        blocker = await server.createJob("sleep", "30")
        self.addCleanup(server.json, "POST", f"/jobs/{blocker['id']}/stop")
        for body in (
            {"command": "true", "env": {"LD_PRELOAD": "/x.so"}},
            {"command": "FOO=1"},
            {
                "command": "true",
                "env": {"LD_PRELOAD": "/x.so"},
                "after": [blocker["id"]],
            },
        ):
            code, answer = await server.json("POST", "/jobs", "alice", body)
            self.assertEqual(code, 400, (body, answer))
        code, jobs = await server.json("GET", "/jobs?status=PENDING", "alice")
        self.assertEqual(jobs["jobs"], [], jobs)


class QueuedTimeoutSettledAtItsTurnTests(SynchronousTestCase):
    """
    Code review 38: a queued job kept the C{--default-timeout} of the server
    that queued it: one queued before a restart that set a default ran
    without a timeout (its limits are settled at its turn since late review
    35; its timeout was not). A job that asked for none gets the default of
    its turn; one that asked for one keeps it.
    """

    setUp = test_queue.ManagerQueueTests.setUp
    manager = test_queue.ManagerQueueTests.manager
    end = test_queue.ManagerQueueTests.end
    request = test_queue.ManagerQueueTests.request

    def test_defaultOfItsTurn(self) -> None:
        manager = self.manager(maxRunning=1)
        first = manager.create(self.request(), "alice")
        defaulted = manager.create(self.request(), "alice")
        asked = manager.create(self.request(timeout=60.0), "alice")
        # (The server restarted with --default-timeout 2s.)
        manager._policy = dataclasses.replace(manager._policy, defaultTimeout=2.0)
        self.end(manager, first.id)
        self.assertEqual(manager.record(defaulted.id).status, JobStatus.RUNNING)
        self.assertEqual(manager.record(defaulted.id).timeout_seconds, 2.0)
        self.end(manager, defaulted.id)
        self.assertEqual(manager.record(asked.id).timeout_seconds, 60.0)


#: A job's script: tries to read the totals of the jobs' cgroup folder, the
#: parent of its own, in each hierarchy it is in (v1 and v2 names).
CGROUP_TOTALS = """
import os
for line in open("/proc/self/cgroup"):
    _, controllers, path = line.rstrip("\\n").split(":", 2)
    folder = os.path.join("/sys/fs/cgroup", controllers, path.lstrip("/"), "..")
    if not controllers:
        folder = os.path.join("/sys/fs/cgroup", path.lstrip("/"), "..")
    for name in ("memory.usage_in_bytes", "memory.current", "memory.stat",
                 "pids.current", "cgroup.procs"):
        try:
            with open(os.path.join(folder, name)) as f:
                print("read", controllers, name, f.read(40).split()[:1])
        except FileNotFoundError:
            pass
        except PermissionError:
            print("denied", controllers, name)
"""


class CgroupTotalsHiddenTests(TestCase):
    """
    Attacker round 38 (from inside a job): the jobs' cgroup folder is 0711,
    but its own files were the kernel's 0644: a job read the totals of
    every running job there (memory use, C{memory.stat}, the process
    count, v2's C{cgroup.procs}), and by taking its own off, another's.
    The folder's own files are root's alone.
    """

    timeout = 60

    async def test_totalsUnreadable(self) -> None:
        requireRoot()
        server = LiveServer(self, "--default-memory=256M", "--default-pids=64")
        job = await server.createJob("/usr/bin/python3", "-c", CGROUP_TOTALS)
        ended = await server.waitEnded(job["id"])
        response = await server.request(
            "GET", f"/jobs/{job['id']}/logs?stream=combined"
        )
        output = (await treq.content(response)).decode()
        if ended["limits"] is None or ("denied" not in output and "read" not in output):
            raise SkipTest(f"no job cgroups here: {ended}, {output!r}")
        self.assertEqual(ended["status"], "COMPLETED", (ended, output))
        self.assertNotIn("read", output)
        self.assertIn("denied", output)


def storeAfter(
    case: SynchronousTestCase, script: str, end: str
) -> tuple[JobStore, str]:
    """
    The store a child process left, running C{script} with a new store's
    path and C{end} (it crashes, or closes the store): the store opened
    again, and what the child printed.
    """
    folder = os.path.abspath(case.mktemp())
    os.makedirs(folder)
    path = os.path.join(folder, "jobs.sqlite3")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    said = subprocess.run(
        [sys.executable, "-c", script, path, end],
        check=True,
        env=env,
        capture_output=True,
        text=True,
    ).stdout
    store = JobStore(path)
    case.addCleanup(store.close)
    return store, said


#: A server's store, its -shm removed and an outside TRUNCATE checkpoint run
#: (a backup tool's), then the server's look (L{JobStore.relink}) and more
#: jobs, then a crash; argv: the store's path, "look" or "no-look".
_SHM_CRASH = """
import os, sqlite3, sys
from jobworker.errors import ServiceUnavailable
from jobworker.jobs.store import JobStore, StoreError
from tests.test_review33 import storeRecord
path, look = sys.argv[1], sys.argv[2] == "look"
store = JobStore(path)
for n in range(10):
    store.insert(storeRecord(f"job-{n}"))
os.unlink(path + "-shm")
for n in range(10, 15):
    store.insert(storeRecord(f"job-{n}"))
outside = sqlite3.connect(path)
print(outside.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone())
outside.close()
for n in range(15, 20):
    store.insert(storeRecord(f"job-{n}"))
if look:
    print(store.relink())
for n in range(20, 25):
    store.insert(storeRecord(f"job-{n}"))
sys.stdout.flush()  # (os._exit writes out no buffer)
os._exit(0)
"""


class ShmRemovedTests(SynchronousTestCase):
    """
    Fault round 38: the store's C{-shm} removed while the server ran went
    unnoticed (its C{-wal}'s removal is noticed since fault round 33): the
    WAL's locks live there, so a backup tool's C{wal_checkpoint(TRUNCATE)}
    saw no reader nor writer and cut the WAL under the server, which wrote
    on past the cut, behind no header; a crash lost every job since. The
    server's look at its files notices it and writes the store anew, as
    for a removed WAL.
    """

    def test_everyJobAfterTheLook(self) -> None:
        store, said = storeAfter(self, _SHM_CRASH, "look")
        self.assertIn("-shm was removed", said)
        found = [n for n in range(25) if store.get(f"job-{n}") is not None]
        self.assertEqual(found, list(range(25)), said)


class RepeatedShortHoldsTests(SynchronousTestCase):
    """
    Attacker round 38 (from inside a job): a job kept each hold of its
    stdin pipe's lock (a read into memory slow to fault in) under the stall
    watch's second, and held the reactor's thread 4 s of every 10, every
    request with it, never killed: the watch timed each read alone. Each
    look that finds the thread waiting for a job's pipe counts against the
    job; a second's worth within 10 s kills it.
    """

    def setUp(self) -> None:
        self.now = 100.0
        self.killed: list[float] = []
        self.watch = StallWatch(
            waiting=lambda tid: True, now=lambda: self.now, watching=False
        )
        self.slot = self.watch.slot(1)

    def hold(self) -> None:
        """A new short hold of the job's pipe, found by the next look."""
        self.slot.reads += 1
        self.slot.stalled = self.killed.append
        self.watch.look()
        self.now += 0.4

    def test_addedUp(self) -> None:
        for _ in range(3):
            self.hold()
        self.assertEqual(self.killed, [])
        self.hold()
        self.assertEqual(self.killed, [4 * LOOK_EVERY])

    def test_unsaidNotAddedUp(self) -> None:
        """A kernel that does not say where the thread waits: D alone is no
        pipe's hold to add up (a fault of the server's own memory), though
        one long hold still kills (session review 38)."""
        self.watch._waiting = lambda tid: UNSAID
        for _ in range(10):
            self.hold()
        self.assertEqual(self.killed, [])
        self.slot.reads += 1
        for _ in range(5):
            self.watch.look()
            self.now += 0.25
        self.assertEqual(self.killed, [1.0])

    def test_aUsersJobsTakingTurns(self) -> None:
        """Session review 38: five jobs of one user, each found holding its
        pipe in turn, none a second's worth: their owner's holds add up."""
        killed: list[int] = []

        class Job:
            def __init__(self, n: int) -> None:
                self.n = n
                self.record = SimpleNamespace(owner="mallory")

            def killStalled(self, held: float) -> None:
                killed.append(self.n)

        jobs = [Job(n) for n in range(5)]
        for look in range(4):
            self.slot.reads += 1
            self.slot.stalled = jobs[look % 5].killStalled
            self.watch.look()
            self.now += 0.4
        self.assertEqual(killed, [3])
        # Counted afresh after a kill: the next one found is not killed at
        # once (nor the one killed, again, at each look while it dies).
        self.slot.reads += 1
        self.slot.stalled = jobs[4].killStalled
        self.watch.look()
        self.assertEqual(killed, [3])

    def test_withinItsWindow(self) -> None:
        """Holds further apart than the window do not add up."""
        for _ in range(3):
            self.hold()
            self.now += WINDOW_SECONDS / 3
        self.hold()
        self.assertEqual(self.killed, [])


class RelativePathsMadeAbsoluteTests(SynchronousTestCase):
    """
    Operator round 38: twistd's own C{--rundir} (C{-d}) changes the working
    folder after the service is built; a relative C{--state-dir}, C{--users},
    C{--cert}... then named other files: output and the store (taken for
    removed by its look, and written "again") went under the new folder,
    and a SIGHUP could not read the users file (a removed user kept his
    access). Every path option is made absolute as it is parsed.
    """

    def test_absolute(self) -> None:
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        self.addCleanup(os.chdir, os.getcwd())
        os.chdir(folder)
        names = ("state-dir", "users", "client-ca", "audit-log", "token-key")
        options = Options()
        options.parseOptions(
            ["--tls", "--cert=c.pem", "--key=k.pem"]
            + [f"--{name}=x/{name}" for name in names]
        )
        for name in names:
            self.assertEqual(options[name], os.path.join(folder, "x", name))
        self.assertEqual(options["cert"], os.path.join(folder, "c.pem"))
        self.assertEqual(options["key"], os.path.join(folder, "k.pem"))


class SignalsOfAServiceManagerTests(TestCase):
    """
    Operator round 38: under a service manager (the log to stdout, no
    C{--logfile}) twistd handles no SIGUSR1, which README gave for the log's
    rotation: its default action ended the server and every job it ran. A
    SIGHUP (C{systemctl reload}, logrotate) that came while the server was
    being built ended it too, exit 129, without a word.
    """

    timeout = 90

    async def test_usr1WithoutALogFile(self) -> None:
        from .twistd import Twistd

        server = await Twistd(self).start()
        job = await server.createJob("sleep", "30")
        os.kill(server.pid, signal.SIGUSR1)
        for _ in range(100):
            if "nothing to rotate" in server.protocol.log() or server.protocol.ended:
                break
            await sleep(0.05)
        self.assertFalse(server.protocol.ended, server.protocol.log())
        self.assertIn("nothing to rotate", server.protocol.log())
        code, running = await server.json("GET", f"/jobs/{job['id']}")
        self.assertEqual((code, running["status"]), (200, "RUNNING"))

    def test_hangUpWhileBuilt(self) -> None:
        before = signal.signal(signal.SIGHUP, signal.SIG_DFL)
        self.addCleanup(signal.signal, signal.SIGHUP, before)
        services.holdHangUps()
        os.kill(os.getpid(), signal.SIGHUP)  # (the server's build goes on)
        clock = Clock()
        reload = services.UsersReloadService(None, None, clock)  # type: ignore[arg-type]
        handled: list[bool] = []
        reload.hangUp = lambda: handled.append(True)  # type: ignore[method-assign,assignment,return-value]
        reload.startService()
        self.addCleanup(reload.stopService)
        clock.advance(0)
        self.assertEqual(handled, [True])


class TimeoutFloorsTests(SynchronousTestCase):
    """
    Operator round 38: C{--idle-timeout=1e-9} started a server that closed
    every connection before its handshake; C{--token-ttl=1e-9} one whose
    tokens were expired at their first use. Under a second is refused.
    """

    def test_refused(self) -> None:
        for name in ("idle-timeout", "header-timeout", "body-timeout", "token-ttl"):
            options = Options()
            error = self.assertRaises(
                UsageError,
                options.parseOptions,
                ["--tls", f"--cert={CERT}", f"--key={KEY}", f"--{name}=1e-9"],
            )
            self.assertIn(f"--{name} must be from 1", str(error))


def twoCABundle(directory: str) -> tuple[str, bytes, str, str]:
    """
    A bundle of the test CA and a CA of its own in C{directory}: (its
    path, the test CA's PEM, the other CA's certificate and key paths).
    """
    other, otherKey = test_mtls.rogueCA(directory)
    bundle = os.path.join(directory, "bundle.pem")
    with open(CA, "rb") as f:
        ours = f.read()
    with open(other, "rb") as f:
        writePEM(bundle, ours + f.read())
    return bundle, ours, other, otherKey


class ClientCARemovedWhileTheCertificateFailsTests(TestCase):
    """
    Operator round 38: a SIGHUP that removed a CA from C{--client-ca} and
    could not reload the server's certificate (its key replaced, the new
    certificate not yet written) kept the old options whole: the removed
    CA's certificates and tokens went on, and the log named the certificate
    alone. The client CAs are reloaded with the certificate served.
    """

    timeout = 60
    kept = test_mtls.KeptConnectionTests.kept
    ask = test_mtls.KeptConnectionTests.ask
    bearer = test_mtls.KeptConnectionTests.bearer

    async def test_removalApplied(self) -> None:
        directory = os.path.abspath(self.mktemp())
        bundle, ours, other, otherKey = twoCABundle(directory)
        cert, key = (os.path.join(directory, name) for name in ("s.pem", "s.key"))
        for source, copy in ((CERT, cert), (KEY, key)):
            with open(source, "rb") as f:
                writePEM(copy, f.read())
        server = LiveServer(
            self, f"--client-ca={bundle}", f"--cert={cert}", f"--key={key}"
        )
        pair = writePair(directory, "alice", issue("alice", other, otherKey))
        code, issued = await self.ask(self.kept(pair), server, "POST", "/tokens")
        self.assertEqual(code, 201, issued)
        writePEM(bundle, ours)
        writePEM(key, keyPEM(newKey()))  # (a renewal half done)
        reload = next(s for s in server.service if isinstance(s, UsersReloadService))
        with capturedLogs() as events:
            await reload.hangUp()
        said = " ".join(formatEvent(e) for e in events)
        self.assertIn("TLS certificate not reloaded", said)
        self.assertIn("client CAs reloaded", said)
        response = await self.bearer(server, issued["token"])
        await treq.content(response)
        self.assertEqual(response.code, 401)
        failure = await ensureDeferred(
            self.ask(self.kept(pair), server, "GET", "/whoami")
        ).addErrback(lambda f: f.value)
        self.assertIsInstance(failure, Exception, failure)  # (the handshake)
        code, whoami = await server.json("GET", "/whoami")  # (still served)
        self.assertEqual((code, whoami["user"]), (200, "alice"))


class DashboardAddressTests(TestCase):
    """
    New user round 38: the address the start-up log names
    (C{https://host:port}), opened in a browser, was a JSON 404; and
    C{/ui/jobs?limit=100} (jw's list, given the dashboard's address as its
    server) was "unknown query parameter 'limit'", not a 404.
    """

    async def test_rootLeadsToTheDashboard(self) -> None:
        server = LiveServer(self)
        response = await server.http.get(server.url + "/", allow_redirects=False)
        await treq.content(response)
        self.assertEqual(response.code, 308)
        self.assertEqual(response.headers.getRawHeaders(b"location"), [b"/ui/"])

    async def test_noSuchFileFirst(self) -> None:
        server = LiveServer(self)
        code, answer = await server.json("GET", "/ui/jobs?limit=100", None)
        self.assertEqual(code, 404, answer)


#: A server's store whose -wal another program cuts short in place: jobs,
#: the look, more jobs, the cut, more jobs, the look again, then a crash
#: ("crash") or a clean close ("close"); argv: the store's path, the end.
_WAL_CUT = """
import os, sys
from jobworker.jobs.store import JobStore, StoreError
from tests.test_review33 import storeRecord
path, end = sys.argv[1], sys.argv[2]
store = JobStore(path)
for n in range(10):
    store.insert(storeRecord(f"job-{n}"))
store.relink()
for n in range(10, 15):
    store.insert(storeRecord(f"job-{n}"))
os.truncate(path + "-wal", 0)
for n in range(15, 20):
    store.insert(storeRecord(f"job-{n}"))
try:
    print(store.relink())
except StoreError as e:
    print("refused:", e)
if end == "crash":
    sys.stdout.flush()  # (os._exit writes out no buffer)
    os._exit(0)
store.close()
"""


class WalCutShortTests(SynchronousTestCase):
    """
    Fault round 38: the store's C{-wal} cut short in place (C{truncate -s
    0}, a backup's copy over it: same inode) was never noticed: a crash lost
    every job the WAL held, on a young store every one, and a clean stop
    checkpointed the cut WAL's zeros into the store, which no server opened
    again. The look checkpoints the WAL into the store every 5 s, notices a
    cut (said, the store at risk), and checkpoints it no more: the store
    opens after either end, with the jobs up to the last look.
    """

    def check(self, end: str) -> None:
        store, said = storeAfter(self, _WAL_CUT, end)
        self.assertIn("was cut short", said)
        found = [n for n in range(20) if store.get(f"job-{n}") is not None]
        self.assertEqual(found[:10], list(range(10)), said)

    def test_crash(self) -> None:
        self.check("crash")

    def test_cleanClose(self) -> None:
        self.check("close")

    def test_modeKept(self) -> None:
        """The store's file put back is 0600 as it was (verifier 38: 0644)."""
        store, said = storeAfter(self, _WAL_CUT, "close")
        self.assertEqual(os.stat(store.path).st_mode & 0o777, 0o600, said)


class CreateTokenGivenBackTests(SynchronousTestCase):
    """
    Known since stop 54 (unverified then): a creation the store refused
    (503, "the job could not be recorded": a full disk) took one of its
    user's creation tokens (C{--create-rate}) all the same, so his retry
    was a 429. The server's trouble is not counted against the user, as a
    start it could not make is not.
    """

    setUp = test_queue.ManagerQueueTests.setUp
    manager = test_queue.ManagerQueueTests.manager
    request = test_queue.ManagerQueueTests.request

    def test_refunded(self) -> None:
        manager = self.manager(createRate=0.5)  # (a burst of one)
        store = manager._store
        insert = store.insert

        def full(record: object) -> None:
            raise StoreError("cannot store a job: database or disk is full")

        store.insert = full
        self.assertRaises(ServiceUnavailable, manager.create, self.request(), "alice")
        store.insert = insert
        self.assertEqual(manager.create(self.request(), "alice").owner, "alice")


class OutsideTruncateCheckpointTests(SynchronousTestCase):
    """
    Session review 38: a backup tool's C{wal_checkpoint(TRUNCATE)}, sound
    through the C{-shm} the server shares, empties the WAL; the look took
    it for a WAL cut short, said the store was at risk, and at the stop put
    the store's file back as it was before, every job since lost. A WAL
    begun again has its header: not a cut.
    """

    def test_notACut(self) -> None:
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        path = os.path.join(folder, "jobs.sqlite3")
        store = JobStore(path)
        for n in range(5):
            store.insert(storeRecord(f"job-{n}"))
        self.assertIsNone(store.relink())
        outside = sqlite3.connect(path)
        outside.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        outside.close()
        self.assertIsNone(store.relink())
        for n in range(5, 10):
            store.insert(storeRecord(f"job-{n}"))
        self.assertIsNone(store.relink())
        store.close()
        store = JobStore(path)
        self.addCleanup(store.close)
        found = [n for n in range(10) if store.get(f"job-{n}") is not None]
        self.assertEqual(found, list(range(10)))


class EmptyPathOptionTests(SynchronousTestCase):
    """
    Session review 38: an empty C{--audit-log=} (or C{--token-key=}) meant
    the default file; made absolute, it named the working folder, and the
    start was refused ("Is a directory"). It is kept empty.
    """

    def test_keptEmpty(self) -> None:
        options = Options()
        options.parseOptions(
            ["--tls", f"--cert={CERT}", f"--key={KEY}", "--audit-log=", "--token-key="]
        )
        self.assertEqual((options["audit-log"], options["token-key"]), ("", ""))


class SizeOfOtherDigitsTests(SynchronousTestCase):
    """
    Operator round 38: C{--max-log-bytes=²} was "invalid literal for int()
    with base 10" (Python's words: "²" is a digit to C{str.isdigit}).
    """

    def test_notASize(self) -> None:
        for text in ("²", "²M", "١٢"):
            error = self.assertRaises(ValueError, parseSize, text)
            self.assertIn("not a size", str(error))

    def test_notARange(self) -> None:
        error = self.assertRaises(ValueError, parseRange, "²-³")
        self.assertIn("not a uid range", str(error))


class ClientCAsReadWhenInForceTests(TestCase):
    """
    Operator round 38: the client CAs' keys were read from C{--client-ca}
    when first needed, not with the TLS options they go with: an edit of
    the file without a SIGHUP took effect in part (the handshake by the old
    file, the request's check by the new one). They are read together.
    """

    timeout = 60
    kept = test_mtls.KeptConnectionTests.kept
    ask = test_mtls.KeptConnectionTests.ask

    async def test_editWithoutAReload(self) -> None:
        directory = os.path.abspath(self.mktemp())
        bundle, ours, other, otherKey = twoCABundle(directory)
        server = LiveServer(self, f"--client-ca={bundle}")
        writePEM(bundle, ours)  # (no SIGHUP: not in force)
        pair = writePair(directory, "alice", issue("alice", other, otherKey))
        code, body = await self.ask(self.kept(pair), server, "GET", "/whoami")
        self.assertEqual((code, body.get("user")), (200, "alice"), body)


#: A store with ten jobs, closed; opened again (a server's start), its WAL
#: cut before the first look, which comes after more jobs; then a crash.
_EARLY_CUT = """
import os, sys
from jobworker.jobs.store import JobStore, StoreError
from tests.test_review33 import storeRecord
path = sys.argv[1]
store = JobStore(path)
for n in range(10):
    store.insert(storeRecord(f"job-{n}"))
store.close()
store = JobStore(path)
for n in range(10, 300):
    store.insert(storeRecord(f"job-{n}"))
os.truncate(path + "-wal", 0)
store.insert(storeRecord("job-300"))
try:
    print(store.relink())
except StoreError as e:
    print("refused:", e)
sys.stdout.flush()  # (os._exit writes out no buffer)
os._exit(0)
"""


class WalCutBeforeTheFirstLookTests(SynchronousTestCase):
    """
    Verifier 38: a WAL cut in the server's first 5 s, before its first
    look, had its zeros checkpointed into the store by that look: every
    job lost, the older ones too, and the store no server opened. A WAL
    with no header is never checkpointed.
    """

    def test_olderJobsKept(self) -> None:
        store, said = storeAfter(self, _EARLY_CUT, "crash")
        found = [n for n in range(20) if store.get(f"job-{n}") is not None]
        self.assertEqual(found[:10], list(range(10)), said)


def deepFolder(top: str, depth: int) -> None:
    """Folders C{depth} deep in C{top}, a file in each (made by descriptor:
    no path is that long)."""
    folder = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=folder)
            os.close(os.open("f", os.O_WRONLY | os.O_CREAT, dir_fd=folder))
            inner = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=folder)
            os.close(folder)
            folder = inner
    finally:
        os.close(folder)


class DeepOutputFolderTests(SynchronousTestCase):
    """
    Slurm user round 38: a Slurm job's output folder is its account's, and
    a job nested 1,500 folders in it: removing it raised C{RecursionError}
    (C{shutil.rmtree} recurses), not an C{OSError}: C{jw rm} was a 500 with
    the record gone and the folder left, and C{jw clean} stopped at it, for
    every user, at every round. A folder is removed without recursion,
    never through a symbolic link.
    """

    setUp = test_queue.ManagerQueueTests.setUp
    manager = test_queue.ManagerQueueTests.manager
    request = test_queue.ManagerQueueTests.request
    end = test_queue.ManagerQueueTests.end

    def test_deepRemoved(self) -> None:
        top = os.path.abspath(self.mktemp())
        os.makedirs(top)
        deepFolder(top, 3000)
        removeTree(top)
        self.assertFalse(os.path.lexists(top))

    def test_linksNotFollowed(self) -> None:
        top = os.path.abspath(self.mktemp())
        outside = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(top, "a"))
        os.makedirs(outside)
        with open(os.path.join(outside, "keep"), "w") as f:
            f.write("x")
        os.symlink(outside, os.path.join(top, "a", "link"))
        os.symlink(os.path.join(outside, "keep"), os.path.join(top, "file"))
        removeTree(top)
        self.assertFalse(os.path.lexists(top))
        self.assertTrue(os.path.exists(os.path.join(outside, "keep")))

    def test_goneIsFine(self) -> None:
        removeTree(os.path.abspath(self.mktemp()))

    def test_deleteOfADeepFolder(self) -> None:
        """Through the manager's delete: the record and the folder gone."""
        manager = self.manager()
        record = manager.create(self.request(), "alice")
        self.end(manager, record.id)
        folder = manager._executor.outputDir(record.id)
        os.makedirs(folder, exist_ok=True)
        deepFolder(folder, 1500)
        manager.delete(record.id)
        self.assertFalse(os.path.lexists(folder))


#: A job's mount table: FUSE file systems it made (one as a root of its own
#: user namespace), one the host has (another uid's), the host's others.
MOUNTINFO = """\
22 1 8:1 / / rw,relatime - ext4 /dev/root rw
40 22 0:45 / /tmp/job/m rw,nosuid,nodev - fuse /dev/fuse rw,user_id=72001,group_id=72001
41 22 0:46 / /home/o/m rw,nosuid - fuse.sshfs host: rw,user_id=1000,group_id=1000
42 22 0:47 / /tmp/job/n rw,nosuid,nodev - fuse.mine src rw,user_id=72001,group_id=72001
43 22 0:48 / /tmp/job/fusemnt rw,nosuid,nodev - fuse jw rw,user_id=0,group_id=0
44 22 8:2 / /mnt rw - fuseblk /dev/sdb1 rw,user_id=72001,group_id=0
"""

#: The server's own mount table: the host's.
SERVERS_MOUNTINFO = """\
22 1 8:1 / / rw,relatime - ext4 /dev/root rw
41 22 0:46 / /home/o/m rw,nosuid - fuse.sshfs host: rw,user_id=1000,group_id=1000
"""


class FuseAbortedTests(SynchronousTestCase):
    """
    Attacker round 38 from inside a job: a job read its stdin into a page
    of a FUSE file its own thread never serves; the kill did not end that
    wait, and the server's write to that stdin waited in the kernel for
    good. Found holding the lock still after its kill, the job's uid's FUSE
    connections are aborted; nobody else's, never root's.
    """

    def tables(self) -> tuple[str, str]:
        proc = os.path.abspath(self.mktemp())
        connections = os.path.abspath(self.mktemp())
        for pid, table in (("1234", MOUNTINFO), ("self", SERVERS_MOUNTINFO)):
            os.makedirs(os.path.join(proc, pid))
            with open(os.path.join(proc, pid, "mountinfo"), "w") as f:
                f.write(table)
        for connection in (45, 46, 47, 48):
            os.makedirs(os.path.join(connections, str(connection)))
            open(os.path.join(connections, str(connection), "abort"), "w").close()
        return proc, connections

    def aborted(self, connections: str) -> list[str]:
        found = []
        for connection in sorted(os.listdir(connections)):
            with open(os.path.join(connections, connection, "abort")) as f:
                if f.read() == "1":
                    found.append(connection)
        return found

    def test_theJobsOwn(self) -> None:
        proc, connections = self.tables()
        said = abortFuseOf([1234, 999], proc=proc, connections=connections)
        self.assertEqual(said, [45, 47, 48])
        self.assertEqual(self.aborted(connections), ["45", "47", "48"])

    def test_neverTheServers(self) -> None:
        """A FUSE file system the server's table has too is the host's."""
        proc, connections = self.tables()
        said = abortFuseOf([1234], proc=proc, connections=connections)
        self.assertNotIn(46, said)
        self.assertNotIn("46", self.aborted(connections))

    def test_atTheSecondKill(self) -> None:
        """The first kill alone; found holding still, its FUSE aborted."""
        calls: list[int] = []
        job = SimpleNamespace(
            _stalledFor=None,
            _uid=72001,
            _pgid=None,
            _exit=None,
            cgroup=SimpleNamespace(kill=lambda: True),
            _abortFuse=calls.append,
        )
        JobProcess.killStalled(job, 1.0)  # type: ignore[arg-type]
        self.assertEqual(calls, [])
        JobProcess.killStalled(job, 1.0)  # type: ignore[arg-type]
        self.assertEqual(calls, [72001])
