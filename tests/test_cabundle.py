"""
A CA file that holds several certificates (a bundle), over real TLS: jw's
two clients and the server's --client-ca trust every certificate in it.
"""

from __future__ import annotations

import os
from typing import Any

import treq
from treq.client import HTTPClient
from twisted.internet import reactor, ssl
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool, ResponseNeverReceived
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data

from jobworker.auth.issuecert import issue
from jobworker.client.netfailures import describeConnectionFailure
from jobworker.tls import TLSConfigError, TrustRootPolicy

from .support import CA, CERT, KEY, JWAssertions, LiveServer, basic, runJW, writePEM
from .test_mtls import clientCert, rogueCA, writePair


def readBytes(path: str) -> bytes:
    """The content of the file at C{path}."""
    with open(path, "rb") as f:
        return f.read()


def bundle(directory: str, *caPaths: str) -> str:
    """A CA file in C{directory} holding the certificates of C{caPaths}, in order."""
    path = os.path.join(directory, "bundle.pem")
    writePEM(path, b"".join(readBytes(ca) for ca in caPaths))
    return path


class ClientBundleTests(JWAssertions, TestCase):
    """
    The server's CA second in the file, after another: the Twisted client
    (C{jw stop}, the streams) trusts it as the standard-library one does.
    """

    timeout = 60

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        first, _key = rogueCA(os.path.join(self.directory, "first"))
        #: Another CA first, the server's CA second.
        self.bundle = bundle(self.directory, first, CA)

    def client(self, caPath: str) -> HTTPClient:
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        return HTTPClient(
            Agent(reactor, contextFactory=TrustRootPolicy(caPath), pool=pool)
        )

    async def connectionFailure(self, url: str, caPath: str) -> str:
        """The one line a request to C{url}, trusting C{caPath}, fails with."""
        try:
            response = await self.client(caPath).get(url + "/healthz")
        except Exception as e:
            return describeConnectionFailure(url, e)
        await treq.content(response)
        self.fail(f"expected no connection, got {response.code}")

    async def test_treqTrustsEveryCertificate(self) -> None:
        """A request of the Twisted client over TLS with the bundle is answered."""
        server = LiveServer(self)
        response = await self.client(self.bundle).get(
            server.url + "/jobs", headers=basic("bob")
        )
        self.assertEqual(response.code, 200, await treq.content(response))
        self.assertIn("jobs", await treq.json_content(response))

    async def test_jwStopWithBundle(self) -> None:
        """
        C{jw --ca bundle.pem stop ID} (the Twisted client) stops the job, as
        C{list} (the standard-library client) lists it.
        """
        server = LiveServer(self)
        job = await server.createJob("sleep", "300")
        listed = self.assertSucceeded(
            await runJW(server.url, "list", JW_CA=self.bundle)
        )
        self.assertIn(job["id"][:8].encode(), listed)
        self.assertSucceeded(
            await runJW(
                server.url, "--ca", self.bundle, "stop", job["id"], JW_CA=self.bundle
            )
        )
        self.assertEqual((await server.waitEnded(job["id"]))["status"], "STOPPED")

    async def test_bundleWithoutTheServersCA(self) -> None:
        """Two CAs that did not sign the server's certificate: not trusted."""
        server = LiveServer(self)
        job = await server.createJob("sleep", "300")
        second, _key = rogueCA(os.path.join(self.directory, "second"))
        others = bundle(
            os.path.join(self.directory, "second"),
            os.path.join(self.directory, "first", "rogue-ca.pem"),
            second,
        )
        self.assertIn("not trusted", await self.connectionFailure(server.url, others))
        result = await runJW(server.url, "stop", job["id"], JW_CA=others)
        self.assertOneLineFailure(result, b"not trusted")
        self.assertEqual(result[2], 1)

    async def test_bundleStillChecksTheHostName(self) -> None:
        """
        With the bundle, a certificate signed by its second CA must still
        name the host: the server reached as 127.0.0.2 is refused.
        """
        server = LiveServer(self, "--interface=127.0.0.2")
        url = f"https://127.0.0.2:{server.port}"
        failure = await self.connectionFailure(url, self.bundle)
        self.assertIn("does not match its host name", failure)
        result = await runJW(url, "stop", "0" * 32, JW_CA=self.bundle)
        self.assertOneLineFailure(result, b"does not match its host name")

    async def test_bundleStillNeedsTLS13(self) -> None:
        """With the bundle, a server that speaks at most TLS 1.2 is refused."""
        certificate = ssl.PrivateCertificate.loadPEM(
            readBytes(CERT) + b"\n" + readBytes(KEY)
        )
        options = ssl.CertificateOptions(
            privateKey=certificate.privateKey.original,
            certificate=certificate.original,
            lowerMaximumSecurityTo=ssl.TLSVersion.TLSv1_2,
        )
        root = Resource()
        root.putChild(b"healthz", Data(b"{}", "application/json"))
        port = reactor.listenSSL(  # type: ignore[attr-defined]
            0, Site(root), options, interface="127.0.0.1"
        )
        self.addCleanup(port.stopListening)
        url = f"https://localhost:{port.getHost().port}"
        failure = await self.connectionFailure(url, self.bundle)
        self.assertIn("TLS 1.3 handshake failed", failure)

    def test_noCertificateInTheFile(self) -> None:
        """
        A CA file with no certificate (empty, not text, a key) is the
        one-line "holds no PEM certificate", as before bundles were read; a
        comment before the certificates is no matter; a missing file is
        still an error.
        """
        for content in (
            b"",
            bytes(range(256)),
            "Société générale\n".encode(),
            readBytes(KEY),
        ):
            path = self.mktemp()
            writePEM(path, content)
            error = self.assertRaises(TLSConfigError, TrustRootPolicy, path)
            self.assertEqual(str(error), f"{path} holds no PEM certificate")
        path = self.mktemp()
        writePEM(path, "# Autorité de certification\n".encode() + readBytes(CA))
        TrustRootPolicy(path)
        self.assertRaises(TLSConfigError, TrustRootPolicy, self.mktemp())

    async def test_jwNoCertificateInTheFile(self) -> None:
        """jw stop and jw list say the same one line, exit 2, for such a file."""
        server = LiveServer(self)
        empty = os.path.join(self.directory, "empty.pem")
        writePEM(empty, b"not a certificate\n")
        expected = f"{empty} holds no PEM certificate".encode()
        for verb in (("stop", "0" * 32), ("list",)):
            result = await runJW(server.url, *verb, JW_CA=empty)
            self.assertOneLineFailure(result, expected)
            self.assertEqual(result[2], 2)


class ServerBundleTests(TestCase):
    """--client-ca with a bundle: a client certificate of any of its CAs."""

    timeout = 60

    async def ask(self, server: LiveServer, pair: tuple[str, str]) -> Any:
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        http = HTTPClient(
            Agent(reactor, contextFactory=TrustRootPolicy(CA, *pair), pool=pool)
        )
        response = await http.get(server.url + "/jobs")
        return response.code, await treq.json_content(response)

    async def test_everyCAOfTheBundle(self) -> None:
        """
        With another CA first and the development CA second, certificates
        of both are users; one of a CA not in the file fails the handshake.
        """
        directory = os.path.abspath(self.mktemp())
        first, firstKey = rogueCA(os.path.join(directory, "first"))
        server = LiveServer(self, f"--client-ca={bundle(directory, first, CA)}")
        code, body = await self.ask(server, clientCert("rita"))
        self.assertEqual(code, 200, body)
        bob = writePair(directory, "bob", issue("bob", first, firstKey))
        code, body = await self.ask(server, bob)
        self.assertEqual(code, 200, body)
        outsider, outsiderKey = rogueCA(os.path.join(directory, "outsider"))
        alice = writePair(directory, "alice", issue("alice", outsider, outsiderKey))
        with self.assertRaises(ResponseNeverReceived):
            await self.ask(server, alice)


class ClientCALeafTests(TestCase):
    """
    A --client-ca file holding a certificate that is no CA (a server's, a
    client's) was taken without a word, and no client certificate could
    ever be verified by it: it is refused at start-up, naming the file.
    """

    def test_leafRefused(self) -> None:
        from jobworker.tls import serverOptions

        error = self.assertRaises(TLSConfigError, serverOptions, CERT, KEY, CERT)
        self.assertIn(CERT, str(error))
        self.assertIn("not a CA", str(error))

    def test_bundleWithALeafRefused(self) -> None:
        from jobworker.tls import serverOptions

        bundle = self.mktemp()
        with open(CA, "rb") as ca, open(CERT, "rb") as leaf:
            writePEM(bundle, ca.read() + leaf.read())
        error = self.assertRaises(TLSConfigError, serverOptions, CERT, KEY, bundle)
        self.assertIn("certificate 2", str(error))

    def test_caAccepted(self) -> None:
        from jobworker.tls import serverOptions

        serverOptions(CERT, KEY, CA)
