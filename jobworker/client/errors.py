"""Why a request of C{jw} failed, in one line a person can act on."""

from __future__ import annotations

from typing import Any


class ClientError(Exception):
    """
    A request failed; C{str()} is one line for a person.

    @ivar status: the HTTP status, or None if no response came.
    @ivar body: the decoded JSON error body, if any.
    @ivar retryAfter: the seconds the server's C{Retry-After} asked for
        (a 429, a 503), if it gave them.
    """

    def __init__(
        self,
        message: str,
        status: int | None = None,
        body: Any = None,
        retryAfter: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = body
        self.retryAfter = retryAfter


class NoAPIThere(ClientError):
    """
    The server answered a routing error (no such route, method not
    allowed): the URL's path has no jobworker API. The command's failure,
    not one id's.
    """


class HandshakeTimeout(TimeoutError):
    """The server took the connection but did not shake hands in time."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"no TLS handshake in {seconds:g} s")
        self.seconds = seconds


class HandshakeCut(ConnectionError):
    """The server closed the connection before the TLS handshake was done."""

    def __init__(self) -> None:
        super().__init__("the server closed the connection during the TLS handshake")


class CertificateOutOfDate(Exception):
    """
    The Twisted client's handshake failed on the server's certificate
    being out of its validity period (OpenSSL's verify result C{code}:
    L{OUT_OF_DATE<jobworker.client.calls.OUT_OF_DATE>}), not on its CA.
    """

    def __init__(self, code: int) -> None:
        super().__init__(f"certificate verify failed ({code})")
        self.code = code


class ServerUnreachable(ClientError):
    """
    A check of the connection, made before a prompt (L{probeServer
    <jobworker.client.quick.probeServer>}), failed: nothing was asked or
    sent. C{untrusted}: the handshake failed on the server's certificate,
    which the CA in use does not vouch for.
    """

    def __init__(self, message: str, untrusted: bool = False) -> None:
        super().__init__(message)
        self.untrusted = untrusted
