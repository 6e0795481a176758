"""What a failed connection of the Twisted client was, in words (and cancels)."""

from __future__ import annotations

from OpenSSL import SSL
from twisted.internet.defer import CancelledError
from twisted.internet.error import (
    ConnectError,
    ConnectionRefusedError,
    DNSLookupError,
    TimeoutError,
)
from twisted.python.failure import Failure
from twisted.web.client import ResponseFailed, ResponseNeverReceived

from ..tlserrors import handshakeHint
from .calls import (
    handshakeCut,
    handshakeTimedOut,
    notTLS,
    notTrusted,
    outOfDate,
    unnamedPort,
)
from .errors import CertificateOutOfDate, HandshakeCut, HandshakeTimeout


def isCancellation(error: BaseException) -> bool:
    """Whether C{error} wraps (as the agent's failures do) a cancellation."""
    reasons = getattr(error, "reasons", None) or []
    return any(
        isinstance(reason, Failure) and reason.check(CancelledError)
        for reason in reasons
    )


def describeConnectionFailure(server: str, reason: BaseException) -> str:
    """One line for a request that got no response."""
    inner: list[BaseException] = [reason]
    if isinstance(reason, ResponseFailed | ResponseNeverReceived):
        inner = [f.value for f in getattr(reason, "reasons", [])] or inner
    for error in inner:
        if isinstance(error, HandshakeTimeout):
            return handshakeTimedOut(server, error.seconds)
        if isinstance(error, HandshakeCut):
            return handshakeCut(server)
        if isinstance(error, CertificateOutOfDate):
            return outOfDate(server, error.code)
        if isinstance(error, SSL.Error):
            text = str(error)
            hint = handshakeHint(text)
            if hint is not None:
                return f"cannot connect to {server}: {hint}"
            if "certificate verify failed" in text:
                return f"cannot connect to {server}: {notTrusted()}"
            plain = notTLS(server, text)
            if plain is not None:
                return plain
            if "version" in text or "protocol" in text:
                return f"cannot connect to {server}: TLS 1.3 handshake failed"
            return f"cannot connect to {server}: TLS handshake failed"
        if error.__class__.__name__ == "VerificationError":
            return (
                f"cannot connect to {server}: the server's certificate does not "
                "match its host name"
            )
        if isinstance(error, ConnectionRefusedError):
            return (
                f"cannot connect to {server}: connection refused "
                f"(is the server running?){unnamedPort(server)}"
            )
        if isinstance(error, DNSLookupError):
            return f"cannot connect to {server}: unknown host"
        if isinstance(error, TimeoutError):
            return f"cannot connect to {server}: timed out{unnamedPort(server)}"
        if isinstance(error, ConnectError):
            return f"cannot connect to {server}: {error.osError or error}"
    return f"connection to {server} failed: {inner[0]}"
