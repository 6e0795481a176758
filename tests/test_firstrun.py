"""
Issue 17, finding 9: a first run from any folder. Without --cert/--key the
server makes its own CA and certificate in its state dir and reuses them;
jw on the same machine (same user) finds that CA; for another host name,
jw login shows the CA's fingerprint and keeps it once trusted; a built wheel
works from a temporary folder.
"""

from __future__ import annotations

import datetime
import os
import shutil
import stat
import subprocess
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from jobworker.server.selfcert import (
    SelfCertError,
    ServerCertificate,
    ensureServerCertificate,
)

from .support import CA, JW, ROOT, LiveServer, jwEnvironment, runJW, waitUntil
from .test_prompt import converse

HOSTS = ["testhost", "localhost", "127.0.0.1", "::1"]


def jwWith(env: dict[str, str], *argv: str) -> Deferred[tuple[bytes, bytes, int]]:
    """Run jw with exactly C{env}: (stdout, stderr, exit status)."""
    return getProcessOutputAndValue(  # type: ignore[no-any-return]
        JW, list(argv), env=env, reactor=reactor
    )


def signedByItsCA(served: ServerCertificate) -> None:
    """Raise unless the server certificate is signed by the CA beside it."""
    with open(served.ca, "rb") as f:
        ca = x509.load_pem_x509_certificate(f.read())
    with open(served.cert, "rb") as f:
        leaf = x509.load_pem_x509_certificates(f.read())[0]
    leaf.verify_directly_issued_by(ca)


class SelfCertTests(SynchronousTestCase):
    def test_madeOnceThenReused(self) -> None:
        """
        The CA and server certificate are made with private keys 0600,
        the chain holds the CA, and a second start reuses both.
        """
        folder = os.path.abspath(self.mktemp())
        first = ensureServerCertificate(folder, HOSTS)
        self.assertTrue(first.made)
        for name, mode in (
            ("ca.key", 0o600),
            ("server.key", 0o600),
            ("ca.pem", 0o644),
            ("server.pem", 0o644),
        ):
            self.assertEqual(
                stat.S_IMODE(os.stat(os.path.join(folder, name)).st_mode), mode, name
            )
        with open(first.cert, "rb") as f:
            leaf, ca = x509.load_pem_x509_certificates(f.read())
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        self.assertEqual(
            set(names.value.get_values_for_type(x509.DNSName)),
            {"testhost", "localhost"},
        )
        self.assertEqual(leaf.issuer, ca.subject)
        again = ensureServerCertificate(folder, HOSTS)
        self.assertFalse(again.made)
        self.assertEqual(again.fingerprint, first.fingerprint)

    def test_newHostRenewsTheLeafKeepsTheCA(self) -> None:
        """A host the certificate lacks: a new server certificate, the same CA."""
        folder = os.path.abspath(self.mktemp())
        first = ensureServerCertificate(folder, HOSTS)
        with open(first.cert, "rb") as f:
            before = f.read()
        second = ensureServerCertificate(folder, [*HOSTS, "10.1.2.3"])
        self.assertTrue(second.made)
        self.assertEqual(second.fingerprint, first.fingerprint)
        with open(second.cert, "rb") as f:
            self.assertNotEqual(f.read(), before)


class RotatedCATests(SynchronousTestCase):
    """
    An operator's round: the server's own certificate was kept when no
    client could verify it.
    """

    def test_newCANewLeaf(self) -> None:
        """
        C{ca.pem} and C{ca.key} removed (a CA rotated): a new CA was made,
        of the same name, and the old server certificate kept (its issuer
        compared by name only), which no client trusting the new CA could
        verify. The leaf is made anew, signed by the new CA.
        """
        folder = os.path.abspath(self.mktemp())
        first = ensureServerCertificate(folder, HOSTS)
        for name in ("ca.pem", "ca.key"):
            os.unlink(os.path.join(folder, name))
        again = ensureServerCertificate(folder, HOSTS)
        self.assertTrue(again.made)
        self.assertNotEqual(again.fingerprint, first.fingerprint)
        signedByItsCA(again)

    def test_notYetValidLeafMadeAnew(self) -> None:
        """
        A server certificate valid only from tomorrow (made while the
        clock was ahead) was kept, and refused by every client: made anew.
        """
        folder = os.path.abspath(self.mktemp())
        ensureServerCertificate(folder, HOSTS)
        with open(os.path.join(folder, "ca.key"), "rb") as f:
            caKey = serialization.load_pem_private_key(f.read(), None)
        with open(os.path.join(folder, "server.key"), "rb") as f:
            key = serialization.load_pem_private_key(f.read(), None)
        certPath = os.path.join(folder, "server.pem")
        with open(certPath, "rb") as f:
            leaf, ca = x509.load_pem_x509_certificates(f.read())
        tomorrow = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1)
        builder = (
            x509.CertificateBuilder()
            .subject_name(leaf.subject)
            .issuer_name(ca.subject)
            .public_key(key.public_key())  # type: ignore[arg-type]
            .serial_number(x509.random_serial_number())
            .not_valid_before(tomorrow)
            .not_valid_after(tomorrow + datetime.timedelta(days=365))
            .add_extension(
                leaf.extensions.get_extension_for_class(
                    x509.SubjectAlternativeName
                ).value,
                critical=False,
            )
        )
        future = builder.sign(caKey, hashes.SHA256())  # type: ignore[arg-type]
        with open(certPath, "wb") as f:
            f.write(future.public_bytes(serialization.Encoding.PEM))
            f.write(ca.public_bytes(serialization.Encoding.PEM))
        again = ensureServerCertificate(folder, HOSTS)
        self.assertTrue(again.made)
        with open(certPath, "rb") as f:
            leaf = x509.load_pem_x509_certificates(f.read())[0]
        self.assertLess(leaf.not_valid_before_utc, datetime.datetime.now(datetime.UTC))


class HalfMadeCATests(SynchronousTestCase):
    """
    A first start on a full disk wrote C{ca.key}, then failed on
    C{ca.pem}; once there was room, every start failed with "No such file
    or directory", naming no file (fault round 6). A crash between the two
    files left the same.
    """

    def test_certificateMadeAgainFromTheKey(self) -> None:
        """The CA's certificate never existed, so no client trusts it: it
        is made again, from the key that was written."""
        folder = os.path.abspath(self.mktemp())
        ensureServerCertificate(folder, HOSTS)
        with open(os.path.join(folder, "ca.key"), "rb") as f:
            key = f.read()
        for name in ("ca.pem", "server.pem", "server.key"):
            os.unlink(os.path.join(folder, name))
        again = ensureServerCertificate(folder, HOSTS)
        self.assertTrue(again.made)
        with open(os.path.join(folder, "ca.key"), "rb") as f:
            self.assertEqual(f.read(), key)
        signedByItsCA(again)

    def test_missingKeyNamed(self) -> None:
        """A certificate without its key cannot sign: the error names the file."""
        folder = os.path.abspath(self.mktemp())
        ensureServerCertificate(folder, HOSTS)
        os.unlink(os.path.join(folder, "ca.key"))
        os.unlink(os.path.join(folder, "server.pem"))
        error = self.assertRaises(SelfCertError, ensureServerCertificate, folder, HOSTS)
        self.assertIn(os.path.join(folder, "ca.key"), str(error))


class FirstRunTests(TestCase):
    timeout = 240

    async def test_jwFindsTheLocalServersCA(self) -> None:
        """
        A server without --cert/--key in this user's default state dir: jw
        with no CA setting trusts it (not the development CA) for localhost.
        """
        xdg = os.path.abspath(self.mktemp())
        server = LiveServer(
            self, stateDir=os.path.join(xdg, "jobworker"), ownCertificate=True
        )
        job = await server.createJob("true")
        env = jwEnvironment(server.url, XDG_STATE_HOME=xdg)
        del env["JW_CA"]
        out, err, code = await jwWith(env, "status", job["id"])
        self.assertEqual(code, 0, err)
        self.assertIn(job["id"].encode(), out)
        # The development CA alone does not verify this server.
        out, err, code = await runJW(server.url, "status", job["id"])
        self.assertEqual(code, 1)
        self.assertIn(b"not trusted", err)

    async def test_startUpLineSaysWhetherJwFindsTheCA(self) -> None:
        """
        The start-up line said "jw on this machine finds it" for any state
        dir, but jw looks only in its user's default one (new user round
        6): with another, the line names C{--ca} and the file.
        """
        seen: list[str] = []

        def observe(event: dict[str, object]) -> None:
            text = formatEvent(event)
            if text and text.startswith("TLS: the server's own"):
                seen.append(text)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        xdg = os.path.abspath(self.mktemp())
        self.patch(os, "environ", {**os.environ, "XDG_STATE_HOME": xdg})
        LiveServer(self, stateDir=os.path.join(xdg, "jobworker"), ownCertificate=True)
        other = LiveServer(self, ownCertificate=True)
        self.assertEqual(len(seen), 2, seen)
        self.assertIn("jw run by this user on this machine finds it", seen[0])
        self.assertIn(f"give jw --ca {other.ca} (or JW_CA)", seen[1])

    async def test_loginTrustsOnFirstUse(self) -> None:
        """
        For a host name without a known CA, jw login shows the CA's SHA-256
        fingerprint; "n" keeps nothing, "y" keeps it and later commands use it.
        """
        server = LiveServer(self, "--interface=127.0.0.2", ownCertificate=True)
        url = f"https://127.0.0.2:{server.port}"
        config = os.path.realpath(self.mktemp())
        env = jwEnvironment(url, XDG_CONFIG_HOME=config, HOME=config)
        del env["JW_CA"]
        _out, err, code = await jwWith(env, "list")
        self.assertEqual(code, 2, err)
        self.assertIn(b"jw login --server", err)
        with open(server.ca, "rb") as f:
            from jobworker.client.trust import fingerprint

            expected = fingerprint(f.read()).encode()
        code, seen = await deferToThread(
            converse, [JW, "login"], env, [(b"[y/N] ", b"n\n")]
        )
        self.assertNotEqual(code, 0, seen)
        self.assertIn(expected, seen)
        self.assertFalse(os.path.exists(os.path.join(config, "jobworker", "trusted")))
        code, seen = await deferToThread(
            converse, [JW, "login"], env, [(b"[y/N] ", b"y\n")]
        )
        self.assertEqual(code, 0, seen)
        self.assertIn(b"logged in to", seen)
        _out, err, code = await jwWith(env, "list")
        self.assertEqual(code, 0, err)

    async def test_loginSaysItIsNotYourOwnServer(self) -> None:
        """
        A localhost server whose CA is not the one this user's own server
        made: jw login asks, and says so (it was a plain question, whose "y"
        then trusted that CA before this user's own for that port).
        """
        server = LiveServer(self, ownCertificate=True)
        url = f"https://localhost:{server.port}"
        config = os.path.realpath(self.mktemp())
        env = jwEnvironment(url, XDG_CONFIG_HOME=config, HOME=config)
        del env["JW_CA"]
        env["XDG_STATE_HOME"] = os.path.realpath(self.mktemp())
        mine = os.path.join(env["XDG_STATE_HOME"], "jobworker", "tls", "ca.pem")
        os.makedirs(os.path.dirname(mine))
        shutil.copyfile(CA, mine)  # (not the server's: that one is its own)
        code, seen = await deferToThread(
            converse, [JW, "login"], env, [(b"[y/N] ", b"n\n")]
        )
        self.assertNotEqual(code, 0, seen)
        self.assertIn(b"NOT the CA of your own server", seen)

    async def test_wheelFromATemporaryFolder(self) -> None:
        """
        The built wheel, installed into a temporary folder, starts the
        server from another folder (no certs/ there) and jw talks to it.
        """
        work = os.path.realpath(self.mktemp())
        os.makedirs(work)
        wheels, target = os.path.join(work, "wheels"), os.path.join(work, "site")

        def build() -> None:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "wheel",
                    "-q",
                    "--no-deps",
                    "-w",
                    wheels,
                    ROOT,
                ],
                check=True,
                capture_output=True,
            )
            [wheel] = os.listdir(wheels)
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "install",
                    "-q",
                    "--no-deps",
                    "--target",
                    target,
                    os.path.join(wheels, wheel),
                ],
                check=True,
                capture_output=True,
            )

        await deferToThread(build)
        elsewhere = os.path.join(work, "elsewhere")
        os.makedirs(elsewhere)
        xdg = os.path.join(work, "state")
        env = {
            **os.environ,
            "PYTHONPATH": target,
            "XDG_STATE_HOME": xdg,
            "HOME": work,
        }
        server = subprocess.Popen(
            [sys.executable, "-m", "twisted", "jobworker", "--help"],
            cwd=elsewhere,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        server.wait(60)
        log = os.path.join(work, "server.log")
        with open(log, "wb") as logFile:
            server = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    "import sys; from twisted.scripts.twistd import run; "
                    "sys.argv = ['twistd', '-n', '--pidfile=', 'jobworker', "
                    "'--tls', '--port=0', '--dynamic-uids=70000-71999']; run()",
                ],
                cwd=elsewhere,
                env=env,
                stdout=logFile,
                stderr=subprocess.STDOUT,
            )
        self.addCleanup(server.wait)
        self.addCleanup(server.terminate)

        def port() -> int | None:
            with open(log, "rb") as f:
                text = f.read()
            marker = b"jobworker listening on https://127.0.0.1:"
            if marker not in text:
                self.assertIsNone(server.poll(), text)
                return None
            return int(text.split(marker)[1].split()[0])

        listening = await waitUntil(port, 60, "the server")
        mode = os.stat(os.path.join(xdg, "jobworker")).st_mode
        self.assertEqual(stat.S_IMODE(mode), 0o700, "the default state dir")
        url = f"https://localhost:{listening}"
        jwEnv = {
            "PATH": os.environ["PATH"],
            "PYTHONPATH": target,
            "XDG_STATE_HOME": xdg,
            "XDG_CONFIG_HOME": os.path.join(work, "config"),
            "HOME": work,
            "JW_SERVER": url,
            "JW_USER": "alice",
            "JW_PASSWORD": "alice-pass",
        }

        def jw(*argv: str) -> subprocess.CompletedProcess[bytes]:
            return subprocess.run(
                [
                    sys.executable,
                    "-c",
                    "from jobworker.client.cli import main; main()",
                    *argv,
                ],
                cwd=elsewhere,
                env=jwEnv,
                capture_output=True,
                timeout=60,
            )

        result = await deferToThread(jw, "exec", "-f", "--", "pwd")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertNotEqual(result.stdout.strip(), elsewhere.encode())
        self.assertTrue(os.path.exists(os.path.join(xdg, "jobworker", "tls", "ca.pem")))
        if os.getuid() == 0 and (shutil.which("cc") or shutil.which("gcc")):
            # The launcher's C source is in the wheel: the server built it.
            with open(log, "rb") as f:
                self.assertIn(b"sandboxed jobs start through the launcher", f.read())


class OpenStateDirTests(SynchronousTestCase):
    def test_stateDirMadePrivate(self) -> None:
        """
        The state dir is made 0700, as the README says, before the server's
        certificate folder is made in it (which would have made it 0755);
        test_wheelFromATemporaryFolder checks the server does so first.
        """
        from jobworker.server.tap import _stateDir

        stateDir = os.path.join(os.path.abspath(self.mktemp()), "jobworker")
        _stateDir(stateDir)
        ensureServerCertificate(os.path.join(stateDir, "tls"), HOSTS)
        self.assertEqual(stat.S_IMODE(os.stat(stateDir).st_mode), 0o700)

    def test_openStateDirSaidAtStart(self) -> None:
        """
        A state dir others may enter (made 0755 by an older first start) is
        named in a warning; a 0700 one is not; neither is changed.
        """
        from twisted.logger import globalLogPublisher

        from jobworker.server.tap import warnIfOpen

        events: list[dict[str, object]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        os.chmod(folder, 0o755)  # noqa: S103 (what an older first start left)
        self.assertTrue(warnIfOpen(folder))
        said = [e for e in events if e.get("path") == folder]
        self.assertEqual([e["mode"] for e in said], ["0755"])
        self.assertEqual(stat.S_IMODE(os.stat(folder).st_mode), 0o755)
        os.chmod(folder, 0o700)
        self.assertFalse(warnIfOpen(folder))
        self.assertEqual(len([e for e in events if e.get("path") == folder]), 1)

    def test_openStoreSaidAtStart(self) -> None:
        """
        A job store others may read (SQLite gives its -wal and -shm files
        the store's mode) is named in a warning, an operator's round found
        it taken without a word; a 0600 one is not.
        """
        from twisted.logger import globalLogPublisher

        from jobworker.server.tap import _store

        events: list[dict[str, object]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder, 0o700)
        path = os.path.join(folder, "jobs.sqlite3")
        _store(folder).close()
        os.chmod(path, 0o644)
        _store(folder).close()
        said = [e for e in events if e.get("path") == path]
        self.assertEqual([e["mode"] for e in said], ["0644"])
        os.chmod(path, 0o600)
        _store(folder).close()
        self.assertEqual(len([e for e in events if e.get("path") == path]), 1)
