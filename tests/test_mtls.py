"""Client certificates (mTLS) over real TLS, and the certificate tooling."""

from __future__ import annotations

import datetime
import json
import os
import stat
import time
from typing import Any

import treq
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from treq.client import HTTPClient
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from jobworker.auth.issuecert import IssueError, issue
from jobworker.auth.issuecert import main as issueMain
from jobworker.certificates import keyPEM
from jobworker.server.services import UsersReloadService
from jobworker.tls import TLSConfigError, TrustRootPolicy

from .support import (
    BIN,
    CA,
    CERT,
    CERTS,
    JW,
    KEY,
    LiveServer,
    basic,
    selfSigned,
    writePEM,
)

CA_KEY = os.path.join(CERTS, "ca.key")
CLIENTS = os.path.join(CERTS, "clients")


def clientCert(user: str) -> tuple[str, str]:
    """The development client certificate and key of C{user}."""
    return os.path.join(CLIENTS, f"{user}.pem"), os.path.join(CLIENTS, f"{user}.key")


def rogueCA(directory: str) -> tuple[str, str]:
    """A CA the server does not trust: (cert path, key path)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rogue CA")])
    certificate, key = selfSigned(name, ca=True)
    os.makedirs(directory, exist_ok=True)
    certPath = os.path.join(directory, "rogue-ca.pem")
    keyPath = os.path.join(directory, "rogue-ca.key")
    writePEM(certPath, certificate.public_bytes(serialization.Encoding.PEM))
    writePEM(keyPath, keyPEM(key))
    return certPath, keyPath


def writePair(directory: str, name: str, pair: tuple[bytes, bytes]) -> tuple[str, str]:
    """Write an issued (certificate, key) pair; their paths."""
    os.makedirs(directory, exist_ok=True)
    certPath = os.path.join(directory, f"{name}.pem")
    keyPath = os.path.join(directory, f"{name}.key")
    with open(certPath, "wb") as f:
        f.write(pair[0])
    with open(keyPath, "wb") as f:
        f.write(pair[1])
    return certPath, keyPath


class MutualTLSTests(TestCase):
    """A server with --client-ca, and clients with and without certificates."""

    timeout = 60

    def client(self, certPath: str | None, keyPath: str | None) -> HTTPClient:
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        policy = TrustRootPolicy(CA, certPath, keyPath)
        return HTTPClient(Agent(reactor, contextFactory=policy, pool=pool))

    async def ask(
        self,
        server: LiveServer,
        pair: tuple[str, str] | None,
        method: str = "GET",
        path: str = "/jobs",
        body: Any = None,
        headers: dict[bytes, list[bytes]] | None = None,
    ) -> tuple[int, Any]:
        http = self.client(*(pair or (None, None)))
        data = None if body is None else json.dumps(body).encode()
        allHeaders = dict(headers or {})
        if data is not None or method in ("POST", "DELETE"):
            allHeaders[b"content-type"] = [b"application/json"]
        response = await http.request(
            method, server.url + path, data=data, headers=allHeaders
        )
        return response.code, json.loads(await treq.content(response))

    async def refused(
        self,
        server: LiveServer,
        pair: tuple[str, str] | None,
        headers: dict[bytes, list[bytes]] | None = None,
    ) -> None:
        """The request fails in TLS: no HTTP answer at all."""
        try:
            code, body = await self.ask(server, pair, headers=headers)
        except Exception:
            return
        self.fail(f"expected a TLS failure, got {code} {body}")

    async def test_certificateIsTheUser(self) -> None:
        """alice's certificate alone creates a job owned by alice."""
        server = LiveServer(self, f"--client-ca={CA}")
        code, job = await self.ask(
            server, clientCert("alice"), "POST", "/jobs", {"command": "true"}
        )
        self.assertEqual(code, 201, job)
        self.assertEqual(job["owner"], "alice")

    async def test_certificateGetsAToken(self) -> None:
        """POST /tokens with a certificate alone gives a token for its user."""
        server = LiveServer(self, f"--client-ca={CA}")
        code, body = await self.ask(server, clientCert("rita"), "POST", "/tokens")
        self.assertEqual(code, 201, body)
        self.assertEqual(body["user"], "rita")
        bearer = {b"authorization": [f"Bearer {body['token']}".encode()]}
        code, _ = await self.ask(server, None, headers=bearer)
        self.assertEqual(code, 200)

    async def test_certificateCarriesTheRole(self) -> None:
        """rita (Reader) by certificate may list but not create."""
        server = LiveServer(self, f"--client-ca={CA}")
        code, _ = await self.ask(server, clientCert("rita"))
        self.assertEqual(code, 200)
        code, body = await self.ask(
            server, clientCert("rita"), "POST", "/jobs", {"command": "true"}
        )
        self.assertEqual(code, 403, body)

    async def test_unknownUserCertificate(self) -> None:
        """A genuine certificate for a name not in the users file is 401."""
        server = LiveServer(self, f"--client-ca={CA}")
        pair = writePair(self.mktemp(), "mallory", issue("mallory", CA, CA_KEY))
        code, body = await self.ask(server, pair)
        self.assertEqual(code, 401, body)

    async def test_otherCARefused(self) -> None:
        """A certificate named alice from another CA fails the handshake."""
        server = LiveServer(self, f"--client-ca={CA}")
        directory = self.mktemp()
        rogueCert, rogueKey = rogueCA(directory)
        pair = writePair(directory, "alice", issue("alice", rogueCert, rogueKey))
        await self.refused(server, pair)

    async def test_serverCertificateIsNoClientCertificate(self) -> None:
        """The server's own certificate (serverAuth only) is refused as a client's."""
        server = LiveServer(self, f"--client-ca={CA}")
        await self.refused(server, (CERT, KEY))

    async def test_basicStillWorksWithoutRequire(self) -> None:
        """With --client-ca alone, Basic without a certificate still works."""
        server = LiveServer(self, f"--client-ca={CA}")
        code, _ = await self.ask(server, None, headers=basic("bob"))
        self.assertEqual(code, 200)
        code, _ = await self.ask(server, None)
        self.assertEqual(code, 401)

    async def test_requiredCertificate(self) -> None:
        """--require-client-cert: Basic alone fails in TLS; a certificate works."""
        server = LiveServer(self, f"--client-ca={CA}", "--require-client-cert")
        await self.refused(server, None, headers=basic("alice"))
        code, _ = await self.ask(server, clientCert("bob"))
        self.assertEqual(code, 200)

    async def test_certificateIgnoredWithoutClientCA(self) -> None:
        """Without --client-ca no certificate is asked for, so none counts."""
        server = LiveServer(self)
        code, _ = await self.ask(server, clientCert("alice"))
        self.assertEqual(code, 401)

    async def test_jwWithCertificateNoPassword(self) -> None:
        """jw --cert/--key and JW_CERT/JW_KEY log in with no password or tty."""
        server = LiveServer(self, f"--client-ca={CA}")
        cert, key = clientCert("ada")
        env = {
            "PATH": os.environ.get("PATH", "") + ":" + BIN,
            "JW_SERVER": server.url,
            "JW_CA": CA,
            "XDG_CONFIG_HOME": os.path.abspath(self.mktemp()),
        }
        out, err, code = await getProcessOutputAndValue(
            JW,
            ["--cert", cert, "--key", key, "exec", "--json", "--", "true"],
            env=env,
            reactor=reactor,
        )
        self.assertEqual(code, 0, err)
        self.assertEqual(json.loads(out)["owner"], "ada")
        out, err, code = await getProcessOutputAndValue(
            JW,
            ["list", "--json"],
            env={**env, "JW_CERT": cert, "JW_KEY": key},
            reactor=reactor,
        )
        self.assertEqual(code, 0, err)
        self.assertIn("jobs", json.loads(out))


class JwCertificateHintTests(TestCase):
    """
    jw said only "TLS handshake failed" when the server wanted a client
    certificate and got none, or refused the one it got: nothing to act on.
    """

    async def jw(self, server: LiveServer, *argv: str, verb: str = "list") -> str:
        env = {
            "PATH": os.environ.get("PATH", "") + ":" + BIN,
            "JW_SERVER": server.url,
            "JW_CA": CA,
            "JW_USER": "alice",
            "JW_PASSWORD": "alice-pass",
            "XDG_CONFIG_HOME": os.path.abspath(self.mktemp()),
            "XDG_STATE_HOME": os.path.abspath(self.mktemp()),
        }
        out, err, code = await getProcessOutputAndValue(
            JW, [*argv, *verb.split()], env=env, reactor=reactor
        )
        self.assertEqual(code, 1, (out, err))
        lines = err.decode().strip().splitlines()
        self.assertEqual(len(lines), 1, err)
        return lines[0]

    async def test_certificateRequired(self) -> None:
        server = LiveServer(self, f"--client-ca={CA}", "--require-client-cert")
        for verb in ("list", "stop 0123abcd"):  # jw's two clients
            line = await self.jw(server, verb=verb)
            self.assertIn("the server requires a client certificate", line)
            self.assertIn("--cert", line)

    async def test_certificateRefused(self) -> None:
        server = LiveServer(self, f"--client-ca={CA}")
        directory = self.mktemp()
        rogueCert, rogueKey = rogueCA(directory)
        cert, key = writePair(directory, "alice", issue("alice", rogueCert, rogueKey))
        line = await self.jw(server, "--cert", cert, "--key", key)
        self.assertIn("the server refused the client certificate", line)


class IssueCertTests(SynchronousTestCase):
    """C{jobworker-issue-cert}."""

    def test_issuedCertificate(self) -> None:
        """CN is the user, signed by the CA, client use only, key 0600 on disk."""
        directory = self.mktemp()
        issueMain(["--ca", CA, "--ca-key", CA_KEY, "--out-dir", directory, "zoe"])
        with open(os.path.join(directory, "zoe.pem"), "rb") as f:
            certificate = x509.load_pem_x509_certificate(f.read())
        with open(CA, "rb") as f:
            ca = x509.load_pem_x509_certificate(f.read())
        certificate.verify_directly_issued_by(ca)
        self.assertEqual(
            certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value,
            "zoe",
        )
        usage = certificate.extensions.get_extension_for_class(
            x509.ExtendedKeyUsage
        ).value
        self.assertEqual(list(usage), [x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH])
        mode = stat.S_IMODE(os.stat(os.path.join(directory, "zoe.key")).st_mode)
        self.assertEqual(mode, 0o600)

    def test_badInputs(self) -> None:
        """A mismatched CA key or an unusable name is a one-line error."""
        self.assertRaises(IssueError, issue, "zoe", CA, KEY)
        self.assertRaises(IssueError, issue, "a:b", CA, CA_KEY)
        self.assertRaises(IssueError, issue, "zoe", "/nonexistent", CA_KEY)
        with self.assertRaises(SystemExit) as raised:
            issueMain(["--ca", CA, "--ca-key", KEY, "zoe"])
        self.assertEqual(raised.exception.code, 1)

    def test_clientPolicyNeedsBoth(self) -> None:
        """jw with --cert but no --key (or a mismatched pair) says so."""
        cert, _key = clientCert("alice")
        self.assertRaises(TLSConfigError, TrustRootPolicy, CA, cert, None)
        self.assertRaises(TLSConfigError, TrustRootPolicy, CA, cert, KEY)


def shortLived(directory: str, user: str, seconds: float) -> tuple[str, str]:
    """A client certificate of C{user} by the development CA that expires
    C{seconds} from now: (cert path, key path)."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, user)])
    return certificateOf(directory, user, subject, seconds)


def certificateOf(
    directory: str,
    name: str,
    subject: x509.Name,
    seconds: float = 3600.0,
    notBefore: float = -60.0,
) -> tuple[str, str]:
    """A client certificate of C{subject} by the development CA that expires
    C{seconds} from now, valid from C{notBefore} seconds from now (a minute
    back), written as C{name}.pem and .key: their paths. For C{localhost}
    and client and server use."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID

    from jobworker.certificates import newKey

    with open(CA_KEY, "rb") as f:
        caKey = serialization.load_pem_private_key(f.read(), None)
    with open(CA, "rb") as f:
        ca = x509.load_pem_x509_certificate(f.read())
    key = newKey()
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + datetime.timedelta(seconds=notBefore))
        .not_valid_after(now + datetime.timedelta(seconds=seconds))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
            ),
            False,
        )
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), False)
        .sign(caKey, hashes.SHA256())  # type: ignore[arg-type]
    )
    return writePair(
        directory,
        name,
        (certificate.public_bytes(serialization.Encoding.PEM), keyPEM(key)),
    )


class KeptConnectionTests(TestCase):
    """
    A client certificate is held to its dates and to the client CAs at
    every request, not only at the handshake: a connection kept busy went
    on as its user after its certificate expired, or after its CA was
    removed and the server reloaded, and minted tokens of a full
    --token-ttl all the while (attacker round 27).
    """

    timeout = 60

    def kept(self, pair: tuple[str, str]) -> HTTPClient:
        """A client whose requests share one kept-alive connection."""
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = 1
        self.addCleanup(pool.closeCachedConnections)
        policy = TrustRootPolicy(CA, *pair)
        return HTTPClient(Agent(reactor, contextFactory=policy, pool=pool))

    async def ask(
        self, http: HTTPClient, server: LiveServer, method: str, path: str
    ) -> tuple[int, Any]:
        headers = {b"content-type": [b"application/json"]} if method == "POST" else {}
        response = await http.request(method, server.url + path, headers=headers)
        return response.code, json.loads(await treq.content(response))

    async def test_expiredOnAKeptConnection(self) -> None:
        """
        Expired while its connection is kept: refused (401) at the next
        request; a token minted before expires with the certificate.
        """
        server = LiveServer(self, f"--client-ca={CA}")
        pair = shortLived(os.path.abspath(self.mktemp()), "alice", 4)
        with open(pair[0], "rb") as f:
            ends = x509.load_pem_x509_certificate(f.read()).not_valid_after_utc
        http = self.kept(pair)
        code, body = await self.ask(http, server, "GET", "/whoami")
        self.assertEqual((code, body["user"]), (200, "alice"))
        code, token = await self.ask(http, server, "POST", "/tokens")
        self.assertEqual(code, 201, token)
        expires = datetime.datetime.fromisoformat(token["expires_at"])
        self.assertLessEqual(expires, ends)
        await deferLater(reactor, ends.timestamp() - time.time() + 1.5)
        code, body = await self.ask(http, server, "GET", "/whoami")
        self.assertEqual(code, 401, body)
        self.assertIn("expired", body["error"])

    def secondCA(self) -> tuple[LiveServer, HTTPClient, Any]:
        """
        A server whose --client-ca is a bundle of two CAs; a kept client of
        alice's certificate by the second; what removes that CA and reloads.
        """
        directory = os.path.abspath(self.mktemp())
        other, otherKey = rogueCA(directory)
        bundle = os.path.join(directory, "bundle.pem")
        with open(CA, "rb") as f:
            ours = f.read()
        with open(other, "rb") as f:
            writePEM(bundle, ours + f.read())
        server = LiveServer(self, f"--client-ca={bundle}")
        http = self.kept(writePair(directory, "alice", issue("alice", other, otherKey)))

        def removeCA() -> Any:
            writePEM(bundle, ours)
            services = server.service
            reload = next(s for s in services if isinstance(s, UsersReloadService))
            return reload.hangUp()

        return server, http, removeCA

    async def test_caRemovedOnAKeptConnection(self) -> None:
        """
        Its CA removed from --client-ca and the server reloaded (SIGHUP):
        the kept connection is refused (401) at its next request.
        """
        server, http, removeCA = self.secondCA()
        code, body = await self.ask(http, server, "GET", "/whoami")
        self.assertEqual((code, body["user"]), (200, "alice"))
        await removeCA()
        code, body = await self.ask(http, server, "GET", "/whoami")
        self.assertEqual(code, 401, body)
        self.assertIn("not signed by a CA of --client-ca", body["error"])

    async def test_caRemovedEndsItsStream(self) -> None:
        """
        A log stream a certificate let in ends once a reload removed its CA
        (it read on).
        """
        server, http, removeCA = self.secondCA()
        job = await server.createJob("sh", "-c", "echo up; sleep 30")
        self.addCleanup(server.json, "POST", f"/jobs/{job['id']}/stop")
        response = await http.get(
            server.url + f"/jobs/{job['id']}/logs?follow=true&stream=stdout"
        )
        self.assertEqual(response.code, 200)
        body = treq.content(response)
        await removeCA()
        ended = await body.addTimeout(10, reactor).addErrback(lambda f: f.type)
        self.assertNotEqual(ended, defer.TimeoutError)

    async def bearer(
        self, server: LiveServer, token: str, path: str = "/whoami"
    ) -> Any:
        return await server.request(
            "GET", path, None, headers={b"authorization": [f"Bearer {token}".encode()]}
        )

    async def test_tokenOfARemovedCA(self) -> None:
        """
        A token issued for a certificate lives while its CA is trusted: once
        a reload removed the CA (no CRL: the operator's one way to revoke),
        the token is refused too (it worked on for its 12 h: attacker round
        29). A token issued for a password is not touched.
        """
        server, http, removeCA = self.secondCA()
        code, issued = await self.ask(http, server, "POST", "/tokens")
        self.assertEqual(code, 201, issued)
        _, byPassword = await server.json("POST", "/tokens")
        for token in (issued["token"], byPassword["token"]):
            self.assertEqual((await self.bearer(server, token)).code, 200)
        await removeCA()
        response = await self.bearer(server, issued["token"])
        self.assertEqual(response.code, 401)
        await treq.content(response)
        response = await self.bearer(server, byPassword["token"])
        self.assertEqual(response.code, 200)
        await treq.content(response)

    async def test_tokenOfARemovedCAEndsItsStream(self) -> None:
        """A log stream such a token let in ends with the CA's removal."""
        server, http, removeCA = self.secondCA()
        code, issued = await self.ask(http, server, "POST", "/tokens")
        self.assertEqual(code, 201, issued)
        job = await server.createJob("sh", "-c", "echo up; sleep 30")
        self.addCleanup(server.json, "POST", f"/jobs/{job['id']}/stop")
        response = await self.bearer(
            server,
            issued["token"],
            f"/jobs/{job['id']}/logs?follow=true&stream=stdout",
        )
        self.assertEqual(response.code, 200)
        body = treq.content(response)
        await removeCA()
        ended = await body.addTimeout(10, reactor).addErrback(lambda f: f.type)
        self.assertNotEqual(ended, defer.TimeoutError)

    async def test_expiryEndsItsStream(self) -> None:
        """A log stream a certificate let in ends when the certificate
        expires (it read on)."""
        server = LiveServer(self, f"--client-ca={CA}")
        job = await server.createJob("sh", "-c", "echo up; sleep 30")
        self.addCleanup(server.json, "POST", f"/jobs/{job['id']}/stop")
        http = self.kept(shortLived(os.path.abspath(self.mktemp()), "alice", 3))
        response = await http.get(
            server.url + f"/jobs/{job['id']}/logs?follow=true&stream=stdout"
        )
        self.assertEqual(response.code, 200)
        body = treq.content(response)
        ended = await body.addTimeout(15, reactor).addErrback(lambda f: f.type)
        self.assertNotEqual(ended, defer.TimeoutError)
