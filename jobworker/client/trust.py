"""
Trust on first use, at C{jw login}: fetch the CA a server presents, show its
SHA-256 fingerprint (as ssh shows a host key) and keep it once the person
said yes. Imported only then (C{jw}'s other commands start without it).
"""

from __future__ import annotations

import hashlib
import os
import select
import socket
import time
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL

from ..certificates import isCA
from .calls import handshakeTimedOut

#: Seconds a connection to a server may take to be made.
FETCH_TIMEOUT = 10.0


class TrustError(Exception):
    """The server's CA could not be fetched or kept; the message says why."""


def fingerprint(pem: bytes) -> str:
    """The SHA-256 fingerprint of a PEM certificate, as C{AB:CD:...}."""
    der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


def fetchCA(server: str, seconds: float = FETCH_TIMEOUT) -> bytes:
    """
    The CA certificate (PEM) at the end of the chain C{server} presents,
    fetched WITHOUT verifying it: only to show its fingerprint for a person
    to compare with the one the server's operator gives. The connection
    gets L{FETCH_TIMEOUT}, the handshake C{seconds}.

    @raise TrustError: no connection, no handshake in time, no TLS 1.3, or
        no CA in the chain.
    """
    parts = urlsplit(server)
    host, port = parts.hostname or "", parts.port or 443
    context = SSL.Context(SSL.TLS_METHOD)
    context.set_min_proto_version(SSL.TLS1_3_VERSION)
    context.set_verify(SSL.VERIFY_NONE, lambda *args: True)
    try:
        raw = socket.create_connection((host, port), timeout=FETCH_TIMEOUT)
    except OSError as e:
        raise TrustError(f"cannot connect to {server}: {e.strerror or e}") from None
    try:
        connection = SSL.Connection(context, raw)
        connection.set_tlsext_host_name(host.encode("idna"))
        connection.set_connect_state()
        _handshake(connection, raw, seconds, server)
        chain = connection.get_peer_cert_chain() or []
    except (SSL.Error, OSError) as e:
        raise TrustError(f"TLS 1.3 handshake with {server} failed: {e}") from None
    finally:
        raw.close()
    if not chain:
        raise TrustError(f"{server} sent no certificate")
    last = chain[-1].to_cryptography()
    if not isCA(last):
        raise TrustError(
            f"{server} sends no CA certificate with its own: ask its operator "
            "for the CA file and pass it with --ca"
        )
    return last.public_bytes(serialization.Encoding.PEM)


def _handshake(
    connection: SSL.Connection, raw: socket.socket, seconds: float, server: str
) -> None:
    """
    Shake hands on C{raw} (not blocking) within C{seconds}: a port that
    takes the connection and never answers (a stopped server, another
    service) must not hold C{jw login} for ever.

    @raise TrustError: no handshake in that time.
    """
    raw.setblocking(False)
    deadline = time.monotonic() + seconds
    poll = select.poll()
    while True:
        try:
            connection.do_handshake()
            return
        except SSL.WantReadError:
            poll.register(raw, select.POLLIN)
        except SSL.WantWriteError:
            poll.register(raw, select.POLLOUT)
        left = deadline - time.monotonic()
        if left <= 0 or not poll.poll(left * 1000):
            raise TrustError(handshakeTimedOut(server, seconds))


def remember(path: str, pem: bytes) -> None:
    """Keep the CA trusted for a server (its folder 0700, the file 0644)."""
    folder = os.path.dirname(path)
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        temporary = path + ".new"
        with open(temporary, "wb") as f:
            f.write(pem)
        os.replace(temporary, path)
    except OSError as e:
        raise TrustError(f"cannot keep the CA in {path}: {e.strerror}") from None
