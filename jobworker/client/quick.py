"""
A client for short commands without Twisted: the standard library's
C{http.client} and C{ssl}, so that C{jw status} or C{jw list} costs a Python
start and one TLS 1.3 request, not the import of a reactor. The server is
verified as the Twisted client verifies it: against the same CA file, host
name included, TLS 1.3 at least, with the same client certificate.

The API's calls are L{ApiCalls}'; its coroutines never wait on anything
here (each request is made at once), so L{drive} runs them to their end
without an event loop.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import time
from collections.abc import Coroutine
from typing import Any
from urllib.parse import urlsplit

from ..tlserrors import TLSConfigError
from .calls import ApiCalls, checkServer, errorFor
from .errors import ClientError


class QuickClock:
    """The little of a reactor the short commands ask for: the time."""

    def seconds(self) -> float:
        return time.time()


class QuickClient(ApiCalls):
    """One keep-alive HTTPS connection to the server, blocking."""

    def __init__(
        self,
        server: str,
        context: ssl.SSLContext,
        user: str | None = None,
        password: str | None = None,
        token: str | None = None,
    ) -> None:
        checkServer(server)
        self.server = server.rstrip("/")
        self.reactor = QuickClock()
        parts = urlsplit(self.server)
        self._connection = http.client.HTTPSConnection(
            parts.hostname or "", parts.port or 443, context=context, timeout=300
        )
        self._headers: dict[str, str] = {}
        if user is not None and password is not None:
            import base64

            pair = f"{user}:{password}".encode()
            self._headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        elif token is not None:
            self._headers["Authorization"] = f"Bearer {token}"

    @classmethod
    def connect(
        cls,
        reactor: Any,
        server: str,
        caPath: str,
        user: str | None = None,
        password: str | None = None,
        *,
        token: str | None = None,
        certPath: str | None = None,
        keyPath: str | None = None,
    ) -> QuickClient:
        """As L{JobworkerClient.connect<jobworker.client.http.JobworkerClient>}."""
        checkServer(server)
        return cls(server, tlsContext(caPath, certPath, keyPath), user, password, token)

    async def _json(self, method: str, path: str, body: Any = None) -> Any:
        headers = dict(self._headers)
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
        if body is not None or method in ("POST", "DELETE"):
            headers["Content-Type"] = "application/json"
        try:
            self._connection.request(method, path, body=data, headers=headers)
            response = self._connection.getresponse()
            raw = response.read()
        except OSError as e:
            raise ClientError(describe(self.server, e)) from None
        except http.client.HTTPException as e:
            raise ClientError(f"connection to {self.server} failed: {e!r}") from None
        if response.status >= 400:
            raise errorFor(response.status, raw)
        return json.loads(raw)

    async def close(self) -> None:
        self._connection.close()


def tlsContext(
    caPath: str, certPath: str | None = None, keyPath: str | None = None
) -> ssl.SSLContext:
    """
    Verify the server against the CA in C{caPath} (and no other), host
    name included, TLS 1.3 only; present the client certificate if given.

    @raise TLSConfigError: a file that cannot be read or used.
    """
    try:
        with open(caPath, "rb") as f:
            ca = f.read().decode("ascii", "replace")
    except OSError as e:
        raise TLSConfigError(
            f"cannot read CA certificate {caPath}: {e.strerror}"
        ) from None
    # Not create_default_context(): it would trust the system's CAs too
    # (and reading them costs ~20 ms). PROTOCOL_TLS_CLIENT checks the
    # certificate and the host name.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    try:
        context.load_verify_locations(cadata=ca)
    except (ssl.SSLError, ValueError):
        raise TLSConfigError(f"{caPath} holds no PEM certificate") from None
    if certPath is not None or keyPath is not None:
        if certPath is None or keyPath is None:
            raise TLSConfigError("a client certificate needs both --cert and --key")
        try:
            context.load_cert_chain(certPath, keyPath)
        except OSError as e:
            raise TLSConfigError(
                f"cannot read client certificate {certPath}: {e.strerror}"
            ) from None
        except ssl.SSLError:
            raise TLSConfigError(
                f"{certPath} and {keyPath} are not a PEM certificate and its "
                "unencrypted key"
            ) from None
    return context


def describe(server: str, error: OSError) -> str:
    """One line for a request that got no answer (as the Twisted client says)."""
    if isinstance(error, ssl.SSLCertVerificationError):
        if "match" in str(error.verify_message or "") or "Hostname" in str(error):
            return (
                f"cannot connect to {server}: the server's certificate does not "
                "match its host name"
            )
        return (
            f"cannot connect to {server}: the server's certificate is not "
            "trusted (check --ca / JW_CA)"
        )
    if isinstance(error, ssl.SSLError):
        if "VERSION" in str(error) or "PROTOCOL" in str(error):
            return f"cannot connect to {server}: TLS 1.3 handshake failed"
        return f"cannot connect to {server}: TLS handshake failed"
    if isinstance(error, ConnectionRefusedError):
        return (
            f"cannot connect to {server}: connection refused (is the server running?)"
        )
    if isinstance(error, socket.gaierror):
        return f"cannot connect to {server}: unknown host"
    if isinstance(error, TimeoutError):
        return f"cannot connect to {server}: timed out"
    return f"cannot connect to {server}: {error.strerror or error}"


def drive(coroutine: Coroutine[Any, Any, int]) -> int:
    """
    Run a command's coroutine to its end at once: with L{QuickClient} it
    never waits (a coroutine that does is a bug, said as such).
    """
    try:
        coroutine.send(None)
    except StopIteration as done:
        return int(done.value)
    coroutine.close()
    raise RuntimeError("a short command waited on the reactor")
