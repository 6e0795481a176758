"""
The browser tests' tools: a real C{twistd -n jobworker --tls} child process
(L{startTwistd}); Debian's chromium, headless, driven by chromedriver through
selenium, trusting the test CA through an NSS database (no certificate errors
ignored); and a TCP relay between the browser and the twistd whose
connections a test can drop.

Selenium blocks, and the test's client of the server (and the relay) run on
this process's reactor: a scenario runs in a thread (L{Browser.run}) and
reaches the reactor with L{Browser.onReactor}.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Coroutine
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import blockingCallFromThread, deferToThread
from twisted.protocols.portforward import ProxyFactory, ProxyServer
from twisted.trial.unittest import SkipTest, TestCase

from ..support import CA, ROOT
from ..twistd import Twistd

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
DOCS = os.path.join(ROOT, "docs")
#: certutil's trust flags for a CA that issues TLS server certificates.
TRUST = ("-t", "C,,", "-i")


def requireBrowserRun() -> None:
    """
    Run only in C{tox -e browser} (JW_BROWSER=1), and there never skip: a
    missing chromium is a failure (C{.ci/run} installs it).
    """
    if os.environ.get("JW_BROWSER") != "1":
        reason = "the browser tests run in `tox -e browser` (JW_BROWSER=1)"
        print(f"\nSKIPPED browser test: {reason}")
        raise SkipTest(reason)
    missing = [
        path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)
    ]
    missing += [tool for tool in ("certutil", "pk12util") if shutil.which(tool) is None]
    if missing:
        raise AssertionError(
            f"missing {', '.join(missing)}: apt-get install -y chromium "
            "chromium-driver libnss3-tools (as .ci/run does)"
        )


async def startTwistd(testCase: TestCase, *extra: str) -> Twistd:
    """
    A real C{twistd -n jobworker --tls} with C{extra} options, listening;
    its jobs get 2 s between SIGTERM and SIGKILL. Stopped at cleanup, its log
    free of tracebacks (L{Twistd.cleanUp}).
    """
    return await Twistd(testCase).start("--stop-grace=2", *extra)


def trustingHome(folder: str, clientCertificate: tuple[bytes, bytes] | None) -> str:
    """
    A HOME whose NSS database (~/.pki/nssdb) trusts the test CA and, given
    C{clientCertificate} (certificate and key, PEM), holds that certificate
    with its key, as a person's browser would after importing it.
    """
    nssdb = os.path.join(folder, ".pki", "nssdb")
    os.makedirs(nssdb)
    database = f"sql:{nssdb}"
    subprocess.run(["certutil", "-d", database, "-N", "--empty-password"], check=True)
    subprocess.run(
        ["certutil", "-d", database, "-A", "-n", "jobworker-test-ca", *TRUST, CA],
        check=True,
    )
    if clientCertificate is not None:
        bundle = os.path.join(folder, "client.p12")
        with open(bundle, "wb") as f:
            f.write(pkcs12Bundle(*clientCertificate))
        # pk12util: the NSS database's password is empty (-K), the bundle's -W.
        subprocess.run(
            ["pk12util", "-i", bundle, "-d", database, "-K", "", "-W", BUNDLE_PASSWORD],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        os.unlink(bundle)
    return folder


#: The password of the PKCS#12 bundle a client certificate travels in to
#: pk12util (deleted once imported).
BUNDLE_PASSWORD = "jobworker-test"


def pkcs12Bundle(certificatePEM: bytes, keyPEM: bytes) -> bytes:
    """A certificate and its key as PKCS#12, the format pk12util imports."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import (
        BestAvailableEncryption,
        load_pem_private_key,
    )
    from cryptography.hazmat.primitives.serialization.pkcs12 import (
        serialize_key_and_certificates,
    )

    certificate = x509.load_pem_x509_certificate(certificatePEM)
    key = load_pem_private_key(keyPEM, password=None)
    return serialize_key_and_certificates(
        certificate.subject.rfc4514_string().encode(),
        key,  # type: ignore[arg-type]
        certificate,
        None,
        BestAvailableEncryption(BUNDLE_PASSWORD.encode()),
    )


def autoSelectCertificate(origin: str) -> dict[str, Any]:
    """
    Profile preferences that make chromium present a client certificate
    (issued by the test CA) to C{origin} without asking. The managed policy
    C{AutoSelectCertificateForUrls} sets the same content setting machine
    wide, from a file in /etc; the profile's own setting changes nothing
    outside the test's profile folder.
    """
    issuer = {"ISSUER": {"CN": "jobworker development CA"}}
    setting = {f"{origin},*": {"setting": {"filters": [issuer]}}}
    exceptions = {"auto_select_certificate": setting}
    return {"profile": {"content_settings": {"exceptions": exceptions}}}


class Browser:
    """One headless chromium session; quit at the test's cleanup."""

    def __init__(
        self,
        testCase: TestCase,
        width: int = 1280,
        height: int = 900,
        clientCertificate: tuple[bytes, bytes] | None = None,
        presentTo: str | None = None,
    ):
        """
        @param clientCertificate: a client certificate and its key (PEM) for
            the browser's certificate store.
        @param presentTo: an origin (C{https://host:port}) the browser sends
            that certificate to without asking.
        """
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        folder = os.path.abspath(testCase.mktemp())
        home = trustingHome(os.path.join(folder, "home"), clientCertificate)
        options = webdriver.ChromeOptions()
        if presentTo is not None:
            options.add_experimental_option("prefs", autoSelectCertificate(presentTo))
        options.binary_location = CHROMIUM
        options.add_argument("--headless=new")
        options.add_argument(f"--window-size={width},{height}")
        options.add_argument(f"--user-data-dir={folder}/profile")
        options.add_argument("--disable-dev-shm-usage")
        if os.getuid() == 0:
            # Chromium refuses to run as root inside its own sandbox; CI is root.
            options.add_argument("--no-sandbox")
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        service = Service(CHROMEDRIVER, env={**os.environ, "HOME": home})
        self.driver = webdriver.Chrome(options=options, service=service)
        self.driver.set_script_timeout(30)

    @classmethod
    async def start(cls, testCase: TestCase, **options: Any) -> Browser:
        browser: Browser = await deferToThread(cls, testCase, **options)
        testCase.addCleanup(deferToThread, browser.driver.quit)
        return browser

    @staticmethod
    def onReactor(
        function: Callable[..., Coroutine[Any, Any, Any]], *args: Any, **kw: Any
    ) -> Any:
        """From the scenario's thread: run a coroutine on the reactor, wait for it."""
        return blockingCallFromThread(
            reactor, lambda: Deferred.fromCoroutine(function(*args, **kw))
        )

    def run(self, scenario: Callable[[Browser], Any]) -> Deferred[Any]:
        """Run a blocking C{scenario(self)} in a thread; fires with its result."""
        return deferToThread(scenario, self)

    # -- helpers a scenario uses ----------------------------------------------

    def wait(self, condition: Callable[[Any], Any], timeout: float = 20.0) -> Any:
        from selenium.webdriver.support.ui import WebDriverWait

        return WebDriverWait(self.driver, timeout, poll_frequency=0.05).until(condition)

    def byId(self, element: str) -> Any:
        return self.driver.find_element("id", element)

    def login(self, url: str, user: str, password: str) -> None:
        """Log in with the page's form, by keyboard (Enter submits)."""
        from selenium.webdriver.common.keys import Keys

        self.driver.get(url + "/ui/")
        self.wait(lambda d: self.byId("login-name").is_displayed())
        self.byId("login-name").send_keys(user)
        self.byId("login-password").send_keys(password, Keys.ENTER)
        self.wait(lambda d: self.byId("who").text.startswith(user + " "))

    def text(self, selector: str) -> str:
        """The text content of the first element matching C{selector}."""
        return self.driver.execute_script(  # type: ignore[no-any-return]
            "const e = document.querySelector(arguments[0]);"
            "return e ? e.textContent : null;",
            selector,
        )

    def screenshot(self, name: str) -> None:
        """Save a screenshot in docs/ (the README shows two)."""
        self.driver.save_screenshot(os.path.join(DOCS, name))

    def console(self) -> list[str]:
        """The browser console's messages since the last call."""
        return [entry["message"] for entry in self.driver.get_log("browser")]


class _TrackedProxy(ProxyServer):
    def connectionMade(self) -> None:
        self.factory.relay.connections.add(self)  # type: ignore[attr-defined]
        self.factory.relay.accepted += 1  # type: ignore[attr-defined]
        super().connectionMade()

    def connectionLost(self, reason: Any) -> None:
        self.factory.relay.connections.discard(self)  # type: ignore[attr-defined]
        super().connectionLost(reason)


class Relay:
    """
    A plain TCP relay to the server's port (TLS stays end to end, from the
    browser to the twistd): the browser talks through it, and L{drop} cuts
    every connection at once, as a network failure would.
    """

    def __init__(self, testCase: TestCase, port: int) -> None:
        factory = ProxyFactory("127.0.0.1", port)
        factory.protocol = _TrackedProxy
        factory.relay = self  # type: ignore[attr-defined]
        self.connections: set[ProxyServer] = set()
        self.accepted = 0
        self._port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.url = f"https://localhost:{self._port.getHost().port}"
        testCase.addCleanup(self.close)

    def drop(self) -> int:
        """Abort every relayed connection; how many there were."""
        dropped = list(self.connections)
        for connection in dropped:
            connection.transport.abortConnection()  # type: ignore[union-attr]
            if connection.peer is not None and connection.peer.transport is not None:
                connection.peer.transport.abortConnection()
        return len(dropped)

    def close(self) -> Deferred[None]:
        self.drop()
        return self._port.stopListening()  # type: ignore[no-any-return]
