"""TLS built in code: a TLS 1.3-only server context, and the client's policy."""

from __future__ import annotations

import datetime
import hashlib
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
)
from OpenSSL.crypto import X509 as OpenSSLCertificate
from OpenSSL.crypto import X509Store, X509StoreContext, X509StoreContextError
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from .certificates import isCA
from .pemfiles import readPEM
from .tlserrors import TLSConfigError

if TYPE_CHECKING:
    # Named by optionsForClientTLS's signature; twisted.internet.ssl does
    # not export it.
    from twisted.internet._sslverify import IOpenSSLTrustRoot

__all__ = ["TLSConfigError"]

#: SHA-256 of the public key (SubjectPublicKeyInfo, DER) of the development
#: server certificate, certs/server.pem: its private key is in the repository.
DEVELOPMENT_SERVER_KEY_SHA256 = (
    "45727c9c214094f50d79c69a4a2c1df65bce18689f5467da55d59e994a2efd01"
)


#: The SHA-256 of the development CA's public key (certs/ca.pem), whose
#: private half (certs/ca.key) anyone can read.
DEVELOPMENT_CA_KEY_SHA256 = (
    "b1049f7ed6f1d5cc13301525a1cab4b7f481bae83f8b4a328d151fe0448b66e7"
)


def publicKeySHA256(certificate: x509.Certificate) -> str:
    """The SHA-256 (hex) of a certificate's public key, as DER SubjectPublicKeyInfo."""
    der = certificate.public_key().public_bytes(
        Encoding.DER, PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def isDevelopmentCertificate(certPath: str) -> bool:
    """
    Whether the certificate (the first in C{certPath}) has the development
    server key, whose private half anyone can read: wherever the files were
    copied to. False if the file cannot be read.
    """
    try:
        leaf = x509.load_pem_x509_certificates(readPEM(certPath, "certificate"))[0]
    except (TLSConfigError, ValueError):
        return False
    return publicKeySHA256(leaf) == DEVELOPMENT_SERVER_KEY_SHA256


def holdsDevelopmentCA(path: str) -> bool:
    """
    Whether the PEM bundle C{path} holds the development CA (by its public
    key: wherever it was copied to, under any name): anyone can sign a
    client certificate with it, for any user. False if it cannot be read.
    """
    try:
        certificates = x509.load_pem_x509_certificates(readPEM(path, "client CA"))
    except (TLSConfigError, ValueError):
        return False
    return any(publicKeySHA256(c) == DEVELOPMENT_CA_KEY_SHA256 for c in certificates)


def validityProblem(certPath: str) -> str | None:
    """
    Why the first certificate in C{certPath} is not valid now, in words
    ("expired on ...", "is not valid until ..."); None if it is (or cannot
    be read: L{serverOptions} says why).
    """
    try:
        leaf = x509.load_pem_x509_certificates(readPEM(certPath, "certificate"))[0]
    except (TLSConfigError, ValueError):
        return None
    now = datetime.datetime.now(datetime.UTC)
    if leaf.not_valid_after_utc < now:
        return f"expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC"
    if leaf.not_valid_before_utc > now:
        return f"is not valid until {leaf.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC"
    return None


#: The most certificates the server's chain may hold: a leaf and its
#: intermediates (150 made every handshake fail).
MAX_CHAIN = 10


def _caCertificates(path: str, what: str) -> list[OpenSSLCertificate]:
    """
    Every certificate in the PEM file C{path} (a bundle), not only the
    first; text around them (a comment) is no matter.

    @raise TLSConfigError: the file cannot be read or holds no PEM certificate.
    """
    data = readPEM(path, what)
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise TLSConfigError(f"{path} holds no PEM certificate") from None
    return [OpenSSLCertificate.from_cryptography(c) for c in certificates]


def _onlyCAs(path: str, certificates: list[OpenSSLCertificate]) -> None:
    """
    Refuse a client CA file holding a certificate that is no CA (a
    server's or a client's, given by mistake): no client certificate could
    ever be verified by it.

    @raise TLSConfigError: naming the file and the certificate's place.
    """
    for place, certificate in enumerate(certificates, 1):
        if not isCA(certificate.to_cryptography()):
            raise TLSConfigError(
                f"{path}: certificate {place} is not a CA (no basicConstraints "
                "CA:TRUE): --client-ca takes the CA that signs the clients' "
                "certificates"
            )


def serverOptions(
    certPath: str,
    keyPath: str,
    clientCAPath: str | None = None,
    requireClientCert: bool = False,
) -> ssl.CertificateOptions:
    """
    TLS options for the server: TLS 1.3 is the minimum.

    C{certPath} may hold the chain (leaf first). With C{clientCAPath},
    clients may present a certificate signed by a CA in that file (any of
    them: OpenSSL checks it, for client use); with C{requireClientCert} as
    well, a client without one fails the handshake.

    @raise TLSConfigError: if a file is missing, unreadable or not PEM, or the
        key does not match the certificate.
    """
    certData = readPEM(certPath, "certificate")
    keyData = readPEM(keyPath, "private key")
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
    if len(chain) > MAX_CHAIN:
        raise TLSConfigError(
            f"{certPath} holds {len(chain)} certificates: at most {MAX_CHAIN} "
            "(the server's and its intermediates)"
        )
    if chain[0].public_key() != key.public_key():
        raise TLSConfigError(f"{keyPath} does not match the certificate {certPath}")
    return _certificateOptions(
        key, chain[0], chain[1:], clientCAPath, requireClientCert
    )


def withClientCAs(
    served: ssl.CertificateOptions,
    clientCAPath: str | None,
    requireClientCert: bool = False,
) -> ssl.CertificateOptions:
    """
    The options C{served}, their certificate and key, with the client CAs
    of C{clientCAPath} now: a reload whose certificate failed still applies
    a CA's removal, the one way to revoke certificates (operator round 38).

    @raise TLSConfigError: as L{serverOptions}, of the client CA file.
    """
    return _certificateOptions(
        served.privateKey,
        served.certificate,
        served.extraCertChain,
        clientCAPath,
        requireClientCert,
    )


def _certificateOptions(
    key: Any,
    certificate: Any,
    extraChain: Any,
    clientCAPath: str | None,
    requireClientCert: bool,
) -> ssl.CertificateOptions:
    """L{serverOptions} of a loaded key and certificate (and its chain)."""
    clientCAs: list[Any] = []
    if clientCAPath is not None:
        clientCAs = _caCertificates(clientCAPath, "client CA certificate")
        _onlyCAs(clientCAPath, clientCAs)
    elif requireClientCert:
        raise TLSConfigError("a required client certificate needs a client CA")
    return ssl.CertificateOptions(
        privateKey=key,
        certificate=certificate,
        extraCertChain=extraChain,
        raiseMinimumTo=ssl.TLSVersion.TLSv1_3,
        verify=bool(clientCAs),
        caCerts=clientCAs or None,
        requireCertificate=requireClientCert,
    )


def clientAuthorities(path: str) -> X509Store:
    """
    An C{X509Store} of the client CAs in the PEM file C{path}: what a
    client certificate presented before a reload is verified against again.

    @raise TLSConfigError: the file cannot be read or holds no certificate.
    """
    store = X509Store()
    for authority in _caCertificates(path, "client CA certificate"):
        store.add_cert(authority)
    return store


def clientCAKeys(path: str) -> dict[str, x509.Certificate]:
    """
    The CAs of the PEM bundle C{path}, by their public key's SHA-256.

    @raise TLSConfigError: the file cannot be read or holds no certificate.
    """
    data = readPEM(path, "client CA certificate")
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise TLSConfigError(f"{path} holds no PEM certificate") from None
    return {publicKeySHA256(c): c for c in certificates}


def issuingCA(
    leaf: x509.Certificate,
    chain: list[x509.Certificate],
    authorities: dict[str, x509.Certificate],
) -> str | None:
    """
    Which of C{authorities} (L{clientCAKeys}) C{leaf} chains to, directly
    or through the certificates the peer sent (C{chain}): its key's SHA-256,
    or None.
    """
    current = leaf
    for _ in range(8):
        for key, authority in authorities.items():
            if _issued(authority, current):
                return key
        following = next(
            (c for c in chain if c != current and _issued(c, current)), None
        )
        if following is None:
            return None
        current = following
    return None


def _issued(issuer: x509.Certificate, certificate: x509.Certificate) -> bool:
    try:
        certificate.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def stillTrusted(
    store: X509Store, certificate: OpenSSLCertificate, chain: list[OpenSSLCertificate]
) -> list[OpenSSLCertificate] | None:
    """The chain C{certificate} (with the peer's C{chain}) verifies by
    against C{store} now, its dates included (the certificate first, the
    trusted CA last); None if it does not verify."""
    try:
        verified: list[OpenSSLCertificate] = X509StoreContext(
            store, certificate, chain or None
        ).get_verified_chain()
    except X509StoreContextError:
        return None
    return verified


def trustRootFromFile(caPath: str) -> IOpenSSLTrustRoot:
    """
    Every certificate in the PEM file C{caPath} (a bundle: one CA or
    several, in any order), as the standard-library client trusts them
    (L{jobworker.client.quick.tlsContext}).

    @raise TLSConfigError: the file cannot be read or holds no PEM certificate.
    """
    return _trustRoot(_caCertificates(caPath, "CA certificate"))


def _trustRoot(certificates: list[OpenSSLCertificate]) -> IOpenSSLTrustRoot:
    root: IOpenSSLTrustRoot = ssl.trustRootFromCertificates(
        [ssl.Certificate(ca) for ca in certificates]
    )
    return root


#: OpenSSL's verify codes of a certificate out of its validity period
#: (X509_V_ERR_CERT_NOT_YET_VALID, X509_V_ERR_CERT_HAS_EXPIRED).
NOT_YET_VALID, HAS_EXPIRED = 9, 10


def outOfDate(
    authorities: list[OpenSSLCertificate],
    chain: list[OpenSSLCertificate],
    now: datetime.datetime,
) -> int | None:
    """
    Why a server's C{chain} (its own certificate first) that failed
    verification did, if only because its certificate is out of its
    validity period at C{now}: L{NOT_YET_VALID} or L{HAS_EXPIRED}, when
    the chain verifies against C{authorities} as of a moment inside that
    period. None otherwise (another CA's certificate is "not trusted",
    whatever its dates, as OpenSSL says first).
    """
    if not chain:
        return None
    leaf = chain[0].to_cryptography()
    if now < leaf.not_valid_before_utc:
        code = NOT_YET_VALID
    elif now > leaf.not_valid_after_utc:
        code = HAS_EXPIRED
    else:
        return None
    store = X509Store()
    for authority in authorities:
        store.add_cert(authority)
    store.set_time(leaf.not_valid_before_utc.replace(tzinfo=None))
    try:
        X509StoreContext(store, chain[0], chain[1:]).verify_certificate()
    except X509StoreContextError:
        return None
    return code


@implementer(IPolicyForHTTPS)
class TrustRootPolicy:
    """
    Verify the server against the CA file (every certificate in it), host
    name included; TLS 1.3 only.
    With C{certPath} and C{keyPath}, present that client certificate.
    """

    def __init__(
        self, caPath: str, certPath: str | None = None, keyPath: str | None = None
    ) -> None:
        self._authorities = _caCertificates(caPath, "CA certificate")
        self._trustRoot = _trustRoot(self._authorities)
        self._clientCertificate: ssl.PrivateCertificate | None = None
        if certPath is not None or keyPath is not None:
            if certPath is None or keyPath is None:
                raise TLSConfigError("a client certificate needs both --cert and --key")
            certData = readPEM(certPath, "client certificate")
            keyData = readPEM(keyPath, "client key")
            try:
                self._clientCertificate = ssl.PrivateCertificate.loadPEM(
                    certData + b"\n" + keyData
                )
            except Exception:
                raise TLSConfigError(
                    f"{certPath} and {keyPath} are not a PEM certificate and "
                    "its unencrypted key"
                ) from None

    def outOfDate(self, chain: list[OpenSSLCertificate]) -> int | None:
        """L{outOfDate} of a server's C{chain} that failed, by this CA file."""
        return outOfDate(self._authorities, chain, datetime.datetime.now(datetime.UTC))

    def creatorForNetloc(
        self, hostname: bytes, port: int
    ) -> IOpenSSLClientConnectionCreator:
        return ssl.optionsForClientTLS(
            hostname.decode("ascii"),
            trustRoot=self._trustRoot,
            clientCertificate=self._clientCertificate,
            extraCertificateOptions={"raiseMinimumTo": ssl.TLSVersion.TLSv1_3},
        )
