"""Logging in to the dashboard with a client certificate, in headless chromium."""

from __future__ import annotations

import json

from twisted.trial.unittest import TestCase

from jobworker.auth.issuecert import issue

from ..support import CA, CERTS, PASSWORDS
from .harness import Browser, requireBrowserRun, startTwistd

CA_KEY = f"{CERTS}/ca.key"
#: What the page says when the server took no certificate.
REFUSED = "No client certificate was accepted"


class CertificateLoginTests(TestCase):
    """
    The login form's certificate button, against a server with --client-ca
    (which asks for a certificate in each handshake but does not require one).
    """

    timeout = 120

    def setUp(self) -> None:
        requireBrowserRun()

    def token(self, b: Browser) -> dict[str, str] | None:
        """The token the page keeps in sessionStorage."""
        raw = b.driver.execute_script(
            "return sessionStorage.getItem('jobworker.token')"
        )
        return None if raw is None else json.loads(raw)  # type: ignore[no-any-return]

    async def test_certificateLogin(self) -> None:
        """
        A browser holding alice's certificate (just issued by the CA the
        server trusts) logs in with the button, by keyboard, with no name or
        password: the token is alice's and the jobs view shows her job. The
        password form still logs in whoever types a password (rita), the
        certificate notwithstanding.
        """
        server = await startTwistd(self, f"--client-ca={CA}")
        job = await server.createJob("sleep", "300", name="alices")
        browser = await Browser.start(
            self,
            clientCertificate=issue("alice", CA, CA_KEY),
            presentTo=server.url,
        )

        def scenario(b: Browser) -> None:
            from selenium.webdriver.common.keys import Keys

            b.driver.get(server.url + "/ui/")
            b.wait(lambda d: b.byId("login-certificate").is_displayed())
            self.assertIsNone(self.token(b))
            b.byId("login-certificate").send_keys(Keys.ENTER)
            b.wait(lambda d: b.byId("who").text == "alice (Developer)")
            self.assertFalse(b.byId("login").is_displayed())
            token = self.token(b)
            assert token is not None
            self.assertEqual(token["user"], "alice")
            self.assertEqual(b.byId("login-name").get_attribute("value"), "")
            row = f'tr[data-id="{job["id"]}"]'
            b.wait(lambda d: b.text(row) is not None)
            self.assertIn("alices", b.text(row))
            # Out, and in again as rita by password in the same browser.
            b.byId("logout").click()
            b.wait(lambda d: b.byId("login").is_displayed())
            self.assertIsNone(self.token(b))
            b.login(server.url, "rita", PASSWORDS["rita"])
            self.assertEqual(b.byId("who").text, "rita (Reader)")

        await browser.run(scenario)
        await server.json("POST", f"/jobs/{job['id']}/stop", "alice", {})

    async def test_noCertificate(self) -> None:
        """
        A browser with no client certificate completes the handshake (the
        certificate is optional), the button says no certificate was
        accepted, and the password form logs in as before.
        """
        server = await startTwistd(self, f"--client-ca={CA}")
        browser = await Browser.start(self)

        def scenario(b: Browser) -> None:
            b.driver.get(server.url + "/ui/")
            b.wait(lambda d: b.byId("login-certificate").is_displayed())
            b.byId("login-certificate").click()
            b.wait(lambda d: REFUSED in b.byId("login-message").text)
            self.assertTrue(b.byId("login").is_displayed())
            self.assertFalse(b.byId("who").is_displayed())
            self.assertIsNone(self.token(b))
            self.assertTrue(b.byId("login-certificate").is_enabled())
            b.login(server.url, "alice", PASSWORDS["alice"])
            self.assertEqual(b.byId("who").text, "alice (Developer)")

        await browser.run(scenario)
