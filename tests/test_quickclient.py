"""
The standard-library client of C{jw} (L{jobworker.client.quick}) and the
commands that run on it, checked over real TLS against a live server.
"""

from __future__ import annotations

import ssl

from twisted.trial.unittest import SynchronousTestCase

from jobworker.client.quick import tlsContext

from .support import CA


class TrustTests(SynchronousTestCase):
    """The server is verified as the Twisted client verifies it."""

    def test_onlyTheConfiguredCA(self) -> None:
        """
        The context trusts the CA file it is given and nothing else (not
        the system's CAs, which ssl.create_default_context would load
        too); it checks the host name and refuses below TLS 1.3.
        """
        context = tlsContext(CA)
        with open(CA, encoding="ascii") as f:
            expected = ssl.PEM_cert_to_DER_cert(f.read())
        self.assertEqual(context.get_ca_certs(binary_form=True), [expected])
        self.assertEqual(context.verify_mode, ssl.CERT_REQUIRED)
        self.assertTrue(context.check_hostname)
        self.assertEqual(context.minimum_version, ssl.TLSVersion.TLSv1_3)
