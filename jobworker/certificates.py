"""
X.509 building blocks (EC P-256, SHA-256) shared by the server's own CA
(L{jobworker.server.selfcert}) and C{jobworker-issue-cert}
(L{jobworker.auth.issuecert}), and the CA test of the TLS settings and of
C{jw login}.
"""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def isCA(certificate: x509.Certificate) -> bool:
    """Whether C{certificate} says it is a CA (C{basicConstraints CA:TRUE})."""
    try:
        constraints = certificate.extensions.get_extension_for_class(
            x509.BasicConstraints
        )
    except x509.ExtensionNotFound:
        return False
    return constraints.value.ca


def newKey() -> ec.EllipticCurvePrivateKey:
    """A new P-256 private key."""
    return ec.generate_private_key(ec.SECP256R1())


def keyPEM(key: ec.EllipticCurvePrivateKey) -> bytes:
    """The key as unencrypted PKCS#8 PEM (for a 0600 file)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def keyUsage(ca: bool) -> x509.KeyUsage:
    """Signatures only; certificate and CRL signing too for a CA."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def certificateBuilder(
    subject: x509.Name,
    issuer: x509.Name,
    publicKey: ec.EllipticCurvePublicKey,
    days: float,
    backdate: datetime.timedelta = datetime.timedelta(minutes=5),
) -> x509.CertificateBuilder:
    """
    A certificate for C{subject}'s C{publicKey}, issued by C{issuer}, with a
    random serial, valid from C{backdate} ago (five minutes: clocks differ a
    little) for C{days}: its extensions and signature are the caller's.
    """
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(publicKey)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - backdate)
        .not_valid_after(now + datetime.timedelta(days=days))
    )


def leafCertificate(
    commonName: str,
    issuer: x509.Certificate,
    issuerKey: ec.EllipticCurvePrivateKey,
    publicKey: ec.EllipticCurvePublicKey,
    days: float,
    usage: x509.ObjectIdentifier,
    names: list[x509.GeneralName] | None = None,
    backdate: datetime.timedelta = datetime.timedelta(minutes=5),
) -> x509.Certificate:
    """
    An end-entity certificate for C{commonName} (and C{names} as subject
    alternative names), for one extended C{usage}, signed by C{issuer},
    valid from C{backdate} ago (L{certificateBuilder}).
    """
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, commonName)])
    builder = (
        certificateBuilder(subject, issuer.subject, publicKey, days, backdate)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        .add_extension(keyUsage(False), True)
        .add_extension(x509.ExtendedKeyUsage([usage]), False)
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), False)
    return builder.sign(issuerKey, hashes.SHA256())
