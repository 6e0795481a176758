"""
An operator's round: a server certificate out of its validity period was
served without a word, and jw blamed the CA ("not trusted", check --ca)
for what curl called "certificate has expired".
"""

from __future__ import annotations

import datetime
import os
import shutil
import signal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL.crypto import X509 as OpenSSLCertificate
from twisted.trial.unittest import SynchronousTestCase, TestCase

from jobworker.server.selfcert import SelfCertError, ensureServerCertificate
from jobworker.tls import (
    HAS_EXPIRED,
    MAX_CHAIN,
    NOT_YET_VALID,
    TLSConfigError,
    outOfDate,
    serverOptions,
    validityProblem,
)

from .support import runJW, sleep, writePEM
from .test_durability import listeningPort, sharedPath, startTwistd

DAY = datetime.timedelta(days=1)
#: A job id (none such: the connection fails first).
JOB = "0b5f6c1e-3d0a-4c8e-9a43-1f0e2d3c4b5a"


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def certified(folder: str, notBefore: datetime.datetime, days: int) -> dict[str, str]:
    """
    A CA and a server certificate for localhost by it, valid from
    C{notBefore} for C{days}, written to C{folder}: their paths.
    """
    caKey = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("validity test CA"))
        .issuer_name(_name("validity test CA"))
        .public_key(caKey.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - 1000 * DAY)
        .not_valid_after(now + 1000 * DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(caKey, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(notBefore)
        .not_valid_after(notBefore + days * DAY)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False
        )
        .sign(caKey, hashes.SHA256())
    )
    os.makedirs(folder, exist_ok=True)
    paths = {name: os.path.join(folder, name) for name in ("ca", "cert", "key")}
    pem = serialization.Encoding.PEM
    writePEM(paths["ca"], ca.public_bytes(pem))
    writePEM(paths["cert"], leaf.public_bytes(pem))
    writePEM(
        paths["key"],
        key.private_bytes(
            pem,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    return paths


class ValidityProblemTests(SynchronousTestCase):
    def test_expiredNotYetValidValid(self) -> None:
        now = datetime.datetime.now(datetime.UTC)
        folder = os.path.abspath(self.mktemp())
        expired = certified(os.path.join(folder, "old"), now - 400 * DAY, 397)
        self.assertRegex(validityProblem(expired["cert"]) or "", r"^expired on 20")
        future = certified(os.path.join(folder, "new"), now + DAY, 397)
        self.assertRegex(validityProblem(future["cert"]) or "", r"^is not valid until")
        valid = certified(os.path.join(folder, "ok"), now - DAY, 397)
        self.assertIsNone(validityProblem(valid["cert"]))
        self.assertIsNone(validityProblem(os.path.join(folder, "missing.pem")))


def _load(path: str) -> OpenSSLCertificate:
    with open(path, "rb") as f:
        return OpenSSLCertificate.from_cryptography(
            x509.load_pem_x509_certificate(f.read())
        )


class OutOfDateTests(SynchronousTestCase):
    """
    L{outOfDate}: what jw's Twisted client makes of a server certificate
    that failed verification (pyOpenSSL gives no verify code).
    """

    def setUp(self) -> None:
        self.now = datetime.datetime.now(datetime.UTC)
        self.folder = os.path.abspath(self.mktemp())

    def judged(self, notBefore: datetime.datetime, sameCA: bool = True) -> int | None:
        paths = certified(os.path.join(self.folder, "server"), notBefore, 397)
        ca = paths["ca"]
        if not sameCA:
            ca = certified(os.path.join(self.folder, "other"), self.now, 1)["ca"]
        return outOfDate([_load(ca)], [_load(paths["cert"])], self.now)

    def test_expired(self) -> None:
        self.assertEqual(self.judged(self.now - 400 * DAY), HAS_EXPIRED)

    def test_notYetValid(self) -> None:
        self.assertEqual(self.judged(self.now + DAY), NOT_YET_VALID)

    def test_inItsDates(self) -> None:
        """A certificate in its dates failed for another reason."""
        self.assertIsNone(self.judged(self.now - DAY))

    def test_expiredFromAnotherCA(self) -> None:
        """
        Expired, and by a CA the client does not trust: "not trusted", as
        OpenSSL (and the quick client) says first, not "renew it" (it said
        "expired" for what may be an impostor: a review).
        """
        self.assertIsNone(self.judged(self.now - 400 * DAY, sameCA=False))


class ExpiredCertificateTests(TestCase):
    async def test_saidByTheServerAndByJw(self) -> None:
        """
        The server's log says at start that its certificate has expired;
        jw says so too, not that the CA is not trusted.
        """
        now = datetime.datetime.now(datetime.UTC)
        paths = certified(os.path.abspath(self.mktemp()), now - 400 * DAY, 397)
        logPath = sharedPath(self)
        startTwistd(
            self,
            sharedPath(self),
            logPath,
            f"--cert={paths['cert']}",
            f"--key={paths['key']}",
        )
        port = await listeningPort(logPath)
        with open(logPath, "rb") as f:
            self.assertIn(
                b"certificate " + paths["cert"].encode() + b" expired on", f.read()
            )
        # jw list (the quick client) and jw stop (the Twisted client): both
        # said "not trusted" once; jw stop still did after jw list did not.
        for command in ("list", "stop", "rm"):
            args = [command] if command == "list" else [command, JOB]
            _, err, code = await runJW(
                f"https://localhost:{port}", *args, JW_CA=paths["ca"]
            )
            self.assertNotEqual(code, 0, command)
            self.assertIn(b"the server's certificate has expired", err, command)
            self.assertIn(b"renewed on the server", err, command)
            self.assertNotIn(b"not trusted", err, command)


class ReloadTests(TestCase):
    async def test_renewedCertificateTakenOnSIGHUP(self) -> None:
        """
        The certificate and key were read at start only: putting a renewed
        one in place took a restart, which stops every running local job.
        A SIGHUP reads them again: connections made after it get the new
        certificate; a job running meanwhile runs on. A reload that fails
        (a key that does not match) keeps the certificate served.
        """
        now = datetime.datetime.now(datetime.UTC)
        folder = os.path.abspath(self.mktemp())
        first = certified(os.path.join(folder, "first"), now - DAY, 397)
        second = certified(os.path.join(folder, "second"), now - DAY, 397)
        served = {name: os.path.join(folder, name) for name in ("cert", "key")}
        for name in ("cert", "key"):
            with open(first[name], "rb") as f:
                writePEM(served[name], f.read())
            os.chmod(served[name], 0o600)
        logPath = sharedPath(self)
        server = startTwistd(
            self,
            sharedPath(self),
            logPath,
            f"--cert={served['cert']}",
            f"--key={served['key']}",
        )
        port = await listeningPort(logPath)
        url = f"https://localhost:{port}"
        out, err, code = await runJW(
            url, "exec", "--", "sleep", "300", JW_CA=first["ca"]
        )
        self.assertEqual(code, 0, err)
        jobId = out.strip().decode()

        async def reloaded(count: int) -> None:
            for _ in range(200):
                with open(logPath, "rb") as f:
                    if f.read().count(b"TLS certificate") >= count:
                        return
                await sleep(0.05)
            self.fail("no reload in the log")

        # A key of another certificate: refused, the first one still served.
        with open(second["key"], "rb") as f:
            writePEM(served["key"], f.read())
        server.send_signal(signal.SIGHUP)
        await reloaded(1)
        with open(logPath, "rb") as f:
            self.assertIn(b"not reloaded", f.read())
        _, err, code = await runJW(url, "list", JW_CA=first["ca"])
        self.assertEqual(code, 0, err)
        with open(second["cert"], "rb") as f:
            writePEM(served["cert"], f.read())
        server.send_signal(signal.SIGHUP)
        await reloaded(2)
        _, err, code = await runJW(url, "list", JW_CA=second["ca"])
        self.assertEqual(code, 0, err)
        _, err, code = await runJW(url, "list", JW_CA=first["ca"])
        self.assertNotEqual(code, 0)
        out, err, code = await runJW(url, "status", jobId, JW_CA=second["ca"])
        self.assertIn(b"running", out)
        # An expired certificate (of the same CA), then a FIFO at --key (it
        # hung the server's thread for good): not reloaded, the second kept.
        expired = certified(os.path.join(folder, "old"), now - 400 * DAY, 397)
        for name in ("cert", "key"):
            with open(expired[name], "rb") as f:
                writePEM(served[name], f.read())
        server.send_signal(signal.SIGHUP)
        await reloaded(3)
        os.unlink(served["key"])
        os.mkfifo(served["key"], 0o600)
        server.send_signal(signal.SIGHUP)
        await reloaded(4)
        with open(logPath, "rb") as f:
            log = f.read()
        self.assertEqual(log.count(b"TLS certificate not reloaded"), 3, log)
        _, err, code = await runJW(url, "list", JW_CA=second["ca"])
        self.assertEqual(code, 0, err)
        await runJW(url, "stop", jobId, JW_CA=second["ca"])


class ReloadRefusalTests(SynchronousTestCase):
    """
    A fault round: what a reload (SIGHUP) put in place that no client could
    use, or hung the server on.
    """

    def test_aFifoOrADeviceIsNoCertificate(self) -> None:
        """A FIFO at --key hung the server's thread for good on a SIGHUP."""
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        fifo = os.path.join(folder, "key.pem")
        os.mkfifo(fifo)
        valid = certified(folder, datetime.datetime.now(datetime.UTC) - DAY, 397)
        for path in (fifo, "/dev/zero"):
            error = self.assertRaises(
                TLSConfigError, serverOptions, valid["cert"], path
            )
            self.assertIn("not a regular file", str(error))

    def test_aLongChainRefused(self) -> None:
        """150 certificates in --cert made every handshake fail."""
        folder = os.path.abspath(self.mktemp())
        valid = certified(folder, datetime.datetime.now(datetime.UTC) - DAY, 397)
        with open(valid["cert"], "rb") as f:
            leaf = f.read()
        with open(valid["ca"], "rb") as f:
            ca = f.read()
        writePEM(valid["cert"], leaf + ca * (MAX_CHAIN - 1))
        serverOptions(valid["cert"], valid["key"])
        writePEM(valid["cert"], leaf + ca * MAX_CHAIN)
        error = self.assertRaises(
            TLSConfigError, serverOptions, valid["cert"], valid["key"]
        )
        self.assertIn(f"holds {MAX_CHAIN + 1} certificates", str(error))

    def test_noNewCAOnAReload(self) -> None:
        """
        The state dir's tls folder removed, a SIGHUP made a new CA, which
        no client trusted, with an info line: a reload makes none.
        """
        folder = os.path.abspath(self.mktemp())
        ensureServerCertificate(folder, ["localhost"])
        shutil.rmtree(folder)
        error = self.assertRaises(
            SelfCertError, ensureServerCertificate, folder, ["localhost"], False
        )
        self.assertIn("is gone", str(error))
        self.assertFalse(os.path.exists(folder))
