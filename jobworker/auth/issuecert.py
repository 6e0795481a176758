"""C{jobworker-issue-cert}: issue a client certificate for a user from a CA."""

from __future__ import annotations

import argparse
import datetime
import os
import sys

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from ..certificates import isCA, keyPEM, leafCertificate, newKey
from .names import USER_NAME

USAGE_EXAMPLE = """\
example:
  jobworker-issue-cert --ca certs/ca.pem --ca-key certs/ca.key --out-dir ~/jw alice
  jw --cert ~/jw/alice.pem --key ~/jw/alice.key list

The server accepts it with --client-ca certs/ca.pem; the user (the common
name) must be in its users file, which gives the role.
"""


class IssueError(Exception):
    """The certificate cannot be issued; the message is one line."""


def _load(caPath: str, caKeyPath: str) -> tuple[x509.Certificate, object]:
    try:
        with open(caPath, "rb") as f:
            ca = x509.load_pem_x509_certificate(f.read())
        with open(caKeyPath, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
    except OSError as e:
        raise IssueError(f"cannot read {e.filename}: {e.strerror}") from None
    except (ValueError, TypeError):
        raise IssueError(
            f"{caPath} / {caKeyPath}: not a PEM certificate and unencrypted key"
        ) from None
    if ca.public_key() != key.public_key():
        raise IssueError(f"{caKeyPath} is not the key of {caPath}")
    return ca, key


def issue(
    name: str, caPath: str, caKeyPath: str, days: int = 365
) -> tuple[bytes, bytes]:
    """
    A new client certificate (PEM) for user C{name}, signed by the CA, and
    its new P-256 private key (PEM, unencrypted).

    @raise IssueError: unusable CA files or name.
    """
    if not USER_NAME.fullmatch(name):
        raise IssueError(
            f"not a user name: {name!r} (as in the users file: up to 64 "
            "letters, digits, '.', '_', '@' or '-', the first a letter or digit)"
        )
    ca, caKey = _load(caPath, caKeyPath)
    if not isCA(ca):
        # (It signed "client certificates" the server would never take:
        # attacker round 33.)
        raise IssueError(f"{caPath} is not a CA certificate (no CA:TRUE)")
    # Not past the CA's own end: the certificate would stop at it all the
    # same, later than its dates say (attacker round 33).
    left = ca.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    if left.total_seconds() <= 0:
        raise IssueError(f"{caPath} has expired ({ca.not_valid_after_utc:%Y-%m-%d})")
    key = newKey()
    certificate = leafCertificate(
        name,
        ca,
        caKey,  # type: ignore[arg-type]
        key.public_key(),
        min(float(days), left.total_seconds() / 86400),
        ExtendedKeyUsageOID.CLIENT_AUTH,
    )
    return certificate.public_bytes(serialization.Encoding.PEM), keyPEM(key)


def _create(path: str, mode: int) -> int:
    """
    A new file, opened for writing: never an existing file, nor one a
    symlink planted there points to (the folder may be shared).

    @raise IssueError: something is already at C{path}.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    except FileExistsError:
        raise IssueError(
            f"{path} already exists (a file or a link): remove it first"
        ) from None
    os.fchmod(fd, mode)  # exactly C{mode}, whatever the umask
    return fd


def _write(fd: int, data: bytes) -> None:
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _createBoth(keyPath: str, certPath: str) -> tuple[int, int]:
    """Create the key (0600) and certificate (0644) files, both or neither."""
    keyFile = _create(keyPath, 0o600)
    try:
        certFile = _create(certPath, 0o644)
    except BaseException:
        os.close(keyFile)
        os.unlink(keyPath)
        raise
    return keyFile, certFile


def main(argv: list[str] | None = None) -> None:
    """Entry point of C{jobworker-issue-cert}."""
    parser = argparse.ArgumentParser(
        prog="jobworker-issue-cert",
        description="Issue a client certificate (CN = user name) from a CA; "
        "writes NAME.pem (mode 0644) and NAME.key (mode 0600), both new files: "
        "it never overwrites one, nor follows a symlink.",
        epilog=USAGE_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("name", help="the user name, as in the users file")
    parser.add_argument("--ca", required=True, help="CA certificate (PEM)")
    parser.add_argument("--ca-key", required=True, help="CA private key (PEM)")
    parser.add_argument("--out-dir", default=".", help="where to write (default .)")
    parser.add_argument(
        "--days",
        type=int,
        default=365,
        help="validity (default 365; never past the CA's own end)",
    )
    options = parser.parse_args(argv)
    if not 1 <= options.days <= 3650:
        print("jobworker-issue-cert: --days must be 1..3650", file=sys.stderr)
        raise SystemExit(2)
    try:
        certificate, key = issue(options.name, options.ca, options.ca_key, options.days)
        os.makedirs(options.out_dir, exist_ok=True)
        certPath = os.path.join(options.out_dir, f"{options.name}.pem")
        keyPath = os.path.join(options.out_dir, f"{options.name}.key")
        keyFile, certFile = _createBoth(keyPath, certPath)
        _write(keyFile, key)
        _write(certFile, certificate)
    except IssueError as e:
        print(f"jobworker-issue-cert: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    except OSError as e:
        print(f"jobworker-issue-cert: cannot write: {e.strerror}", file=sys.stderr)
        raise SystemExit(1) from None
    ends = x509.load_pem_x509_certificate(certificate).not_valid_after_utc
    print(f"wrote {certPath} and {keyPath} (valid until {ends:%Y-%m-%d %H:%M} UTC)")
