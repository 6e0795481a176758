"""
The server's own CA and certificate, made on first start when no C{--cert}
and C{--key} are given, and reused after: a server that works from any
folder, with a CA that C{jw} can be told to trust (or finds by itself on the
same machine).

Layout, in C{<state-dir>/tls/}: C{ca.pem} (0644) and C{ca.key} (0600), the
CA; C{server.pem} (0644: the server's certificate, then the CA's) and
C{server.key} (0600). The server certificate is made anew, by the same CA,
when it has less than L{RENEW_BEFORE} left or does not name every host it
must; the CA is kept (clients that trust it go on trusting).
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..certificates import (
    certificateBuilder,
    keyPEM,
    keyUsage,
    leafCertificate,
    newKey,
)

#: How long the CA and the server certificate are valid.
CA_DAYS = 3650
#: How far back the validity of the CA and of the server certificate it
#: signs starts (L{_makeCA}, L{_makeServer}).
CA_BACKDATE = datetime.timedelta(days=2)
#: How long the server certificate lasts from its making: 397 days of
#: validity in all, its two backdated days (L{CA_BACKDATE}) included (what
#: browsers take of a certificate at most, 398 days).
SERVER_DAYS = 397 - CA_BACKDATE.days
#: A server certificate with less than this left is made anew at start.
RENEW_BEFORE = datetime.timedelta(days=30)


class SelfCertError(Exception):
    """The certificate folder cannot be used; the message says why."""


@dataclass(frozen=True)
class ServerCertificate:
    """Where the server's own TLS files are, and the CA's fingerprint."""

    cert: str
    key: str
    ca: str
    fingerprint: str
    made: bool
    #: Why every client refuses the CA now (L{caProblem}), if it does.
    caProblem: str | None = None


def caProblem(ca: x509.Certificate) -> str | None:
    """
    Why the server's own CA C{ca} is out of its dates now, in words, with
    what to do: no renewal of the leaf it signs helps (fault round 40).
    """
    return datesProblem(ca.not_valid_before_utc, ca.not_valid_after_utc)


def outOfDates(start: datetime.datetime, end: datetime.datetime) -> str | None:
    """How a certificate valid from C{start} to C{end} is out of its dates
    now ("is not valid until ...", "expired on ..."), or None."""
    now = datetime.datetime.now(datetime.UTC)
    if start > now:
        return f"is not valid until {start:%Y-%m-%d %H:%M:%S} UTC"
    if end < now:
        return f"expired on {end:%Y-%m-%d %H:%M:%S} UTC"
    return None


def datesProblem(start: datetime.datetime, end: datetime.datetime) -> str | None:
    """L{caProblem} of a CA valid from C{start} to C{end}, now."""
    when = outOfDates(start, end)
    if when is None:
        return None
    return (
        f"the server's own CA {when}: every client refuses it (the clock was "
        "wrong when it was made, or is wrong now); if this machine's clock is "
        "right, remove ca.pem and ca.key of the state dir's tls folder and "
        "restart: a new CA is made, which clients must trust again (jw login)"
    )


def fingerprint(certificate: x509.Certificate) -> str:
    """The SHA-256 of the certificate (DER), as C{AB:CD:...}, as browsers show."""
    digest = hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER))
    return ":".join(f"{b:02X}" for b in digest.digest())


def _names(hosts: list[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _makeCA(
    hostname: str, key: ec.EllipticCurvePrivateKey | None = None
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A new CA certificate, of a new key or of C{key}."""
    if key is None:
        key = newKey()
    name = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, f"jobworker CA of {hostname}")]
    )
    ca = (
        # Valid from two days back: made while the clock was ahead (an RTC
        # in local time, NTP not synced yet at boot), a CA five minutes
        # back was "not yet valid" to every client for hours once the
        # clock was right, and no renewal of the leaf helped (fault round
        # 40). (A CA's start before its making gives nothing away.)
        certificateBuilder(name, name, key.public_key(), CA_DAYS, backdate=CA_BACKDATE)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
        .add_extension(keyUsage(True), True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False
        )
        .sign(key, hashes.SHA256())
    )
    return ca, key


def _makeServer(
    ca: x509.Certificate, caKey: ec.EllipticCurvePrivateKey, hosts: list[str]
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = newKey()
    # From two days back, as the CA (L{_makeCA}): made while the clock was
    # ahead, it was "not yet valid" to every client once the clock was set
    # right (fault round 41).
    certificate = leafCertificate(
        hosts[0],
        ca,
        caKey,
        key.public_key(),
        SERVER_DAYS,
        ExtendedKeyUsageOID.SERVER_AUTH,
        _names(hosts),
        backdate=CA_BACKDATE,
    )
    return certificate, key


def _write(path: str, data: bytes, mode: int) -> None:
    """Write a whole file, C{mode} from the start, replacing it atomically."""
    temporary = f"{path}.new"
    try:
        os.unlink(temporary)
    except FileNotFoundError:
        pass
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)


def _current(
    certPath: str, keyPath: str, ca: x509.Certificate, hosts: list[str]
) -> bool:
    """
    Whether the server certificate there is the CA's (signed by it: a CA
    made anew has the same name), names C{hosts}, is valid now and lasts.
    """
    try:
        with open(certPath, "rb") as f:
            leaf = x509.load_pem_x509_certificates(f.read())[0]
        with open(keyPath, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), None)
    except (OSError, ValueError):
        return False
    if leaf.issuer != ca.subject or leaf.public_key() != key.public_key():
        return False
    try:
        leaf.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    now = datetime.datetime.now(datetime.UTC)
    if leaf.not_valid_before_utc > now:
        return False  # made while the clock was ahead: refused until then
    if leaf.not_valid_after_utc - now < RENEW_BEFORE:
        return False
    try:
        named = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return False
    return set(_names(hosts)) <= set(named.value)


def _caKey(path: str) -> ec.EllipticCurvePrivateKey:
    """The CA's key in C{path}.

    @raise ValueError: it is not one."""
    with open(path, "rb") as f:
        loaded = serialization.load_pem_private_key(f.read(), None)
    if not isinstance(loaded, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path} is not an elliptic-curve private key")
    return loaded


def ensureServerCertificate(
    folder: str, hosts: list[str], makeCA: bool = True
) -> ServerCertificate:
    """
    The server's own CA and certificate for C{hosts} in C{folder}: made if
    absent, the server certificate renewed if it is old or misses a host.
    Without C{makeCA} (a reload), a CA that is gone is not made anew: every
    client trusts the one it had.

    @raise SelfCertError: the folder or its files cannot be used.
    """
    caPath = os.path.join(folder, "ca.pem")
    caKeyPath = os.path.join(folder, "ca.key")
    certPath = os.path.join(folder, "server.pem")
    keyPath = os.path.join(folder, "server.key")
    made = False
    try:
        if not makeCA and not os.path.exists(caPath):
            raise SelfCertError(
                f"the server's CA {caPath} is gone: a new CA, which no client "
                "trusts yet, is made only at a start"
            )
        os.makedirs(folder, mode=0o755, exist_ok=True)
        if not os.path.exists(caPath):
            # With the key alone, a start was cut short between the two
            # files (a full disk, a crash): the certificate never existed,
            # so no client trusts it. It is made again, of that key.
            key = _caKey(caKeyPath) if os.path.exists(caKeyPath) else None
            ca, caKey = _makeCA(hosts[0], key)
            if key is None:
                _write(caKeyPath, keyPEM(caKey), 0o600)
            _write(caPath, ca.public_bytes(serialization.Encoding.PEM), 0o644)
            made = True
        with open(caPath, "rb") as f:
            ca = x509.load_pem_x509_certificate(f.read())
        loaded = _caKey(caKeyPath)
        if loaded.public_key() != ca.public_key():
            raise SelfCertError(f"{caKeyPath} is not the key of {caPath}")
        if not _current(certPath, keyPath, ca, hosts):
            leaf, key = _makeServer(ca, loaded, hosts)
            _write(keyPath, keyPEM(key), 0o600)
            chain = leaf.public_bytes(serialization.Encoding.PEM)
            chain += ca.public_bytes(serialization.Encoding.PEM)
            _write(certPath, chain, 0o644)
            made = True
    except OSError as e:
        what = f"{e.filename}: {e.strerror}" if e.filename else e.strerror
        raise SelfCertError(
            f"cannot make the server's certificate in {folder}: {what}"
        ) from None
    except ValueError as e:
        raise SelfCertError(
            f"cannot use the certificate files in {folder}: {e}"
        ) from None
    return ServerCertificate(
        certPath, keyPath, caPath, fingerprint(ca), made, caProblem(ca)
    )
