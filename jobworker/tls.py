"""TLS built in code: a TLS 1.3-only server context, and the client's policy."""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer


class TLSConfigError(ValueError):
    """A certificate or key cannot be used; the message says which and why."""


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise TLSConfigError(f"cannot read {what} {path}: {e.strerror}") from None


def serverOptions(certPath: str, keyPath: str) -> ssl.CertificateOptions:
    """
    TLS options for the server: TLS 1.3 is the minimum.

    C{certPath} may hold the chain (leaf first).

    @raise TLSConfigError: if a file is missing, unreadable or not PEM, or the
        key does not match the certificate.
    """
    certData = _read(certPath, "certificate")
    keyData = _read(keyPath, "private key")
    try:
        chain = x509.load_pem_x509_certificates(certData)
    except ValueError:
        raise TLSConfigError(f"{certPath} holds no PEM certificate") from None
    try:
        key = load_pem_private_key(keyData, password=None)
    except (ValueError, TypeError):
        raise TLSConfigError(
            f"{keyPath} is not an unencrypted PEM private key"
        ) from None
    if chain[0].public_key() != key.public_key():
        raise TLSConfigError(f"{keyPath} does not match the certificate {certPath}")
    return ssl.CertificateOptions(
        privateKey=key,  # type: ignore[arg-type]
        certificate=chain[0],  # type: ignore[arg-type]
        extraCertChain=chain[1:],  # type: ignore[arg-type]
        raiseMinimumTo=ssl.TLSVersion.TLSv1_3,
    )


@implementer(IPolicyForHTTPS)
class TrustRootPolicy:
    """Verify the server against one CA file, host name included; TLS 1.3 only."""

    def __init__(self, caPath: str) -> None:
        caData = _read(caPath, "CA certificate")
        try:
            self._trustRoot = ssl.Certificate.loadPEM(caData)
        except Exception:
            raise TLSConfigError(f"{caPath} holds no PEM certificate") from None

    def creatorForNetloc(
        self, hostname: bytes, port: int
    ) -> IOpenSSLClientConnectionCreator:
        return ssl.optionsForClientTLS(
            hostname.decode("ascii"),
            trustRoot=self._trustRoot,
            extraCertificateOptions={"raiseMinimumTo": ssl.TLSVersion.TLSv1_3},
        )
