"""Signed, expiring bearer tokens: checked with one HMAC, never bcrypt."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets

from twisted.internet.interfaces import IReactorTime

#: Tokens start with this, so a reader (and a secret scanner) knows them.
PREFIX = "jw1"
#: Size of a signing key, in bytes.
KEY_BYTES = 32
#: The longest token accepted: a bigger header is refused before any work.
MAX_TOKEN_CHARS = 1024


class InvalidToken(Exception):
    """A token is malformed, forged, signed by another key or expired."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def loadOrCreateKey(path: str) -> bytes:
    """
    The signing key in C{path}, made (0600, 32 random bytes) if absent.

    Replacing or deleting the file and restarting the server invalidates
    every token issued before.

    @raise OSError: the file cannot be read or made.
    @raise ValueError: the file holds too short a key.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        with open(path, "rb") as f:
            key = f.read()
        if len(key) < KEY_BYTES:
            raise ValueError(f"{path} holds under {KEY_BYTES} bytes") from None
        return key
    key = secrets.token_bytes(KEY_BYTES)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    return key


def fingerprint(token: str) -> str:
    """A short, non-secret name for a token, for the audit log."""
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()[:12]


class TokenSigner:
    """
    Issue and check bearer tokens for users.

    A token is C{jw1.<payload>.<mac>}: the payload (user, role, expiry) in
    base64url JSON, the mac an HMAC-SHA256 of it under the server's key. The
    server keeps no list of tokens: a token is valid while its mac matches
    the current key and its expiry is in the future; the caller also checks
    that the user still exists with the same role.
    """

    def __init__(self, key: bytes, clock: IReactorTime, ttl: float) -> None:
        self._key = key
        self._clock = clock
        self.ttl = ttl

    def _mac(self, payload: str) -> str:
        digest = hmac.digest(self._key, payload.encode("ascii"), "sha256")
        return _b64(digest)

    def issue(self, name: str, role: str) -> tuple[str, int]:
        """A new token for C{name} holding C{role}, and its expiry (epoch s)."""
        expires = int(self._clock.seconds() + self.ttl)
        claims = {"u": name, "r": role, "e": expires, "n": _b64(os.urandom(9))}
        payload = _b64(json.dumps(claims, separators=(",", ":")).encode("utf-8"))
        return f"{PREFIX}.{payload}.{self._mac(payload)}", expires

    def verify(self, token: str) -> tuple[str, str]:
        """
        The user name and role a valid token was issued for.

        @raise InvalidToken: forged, another key's, malformed or expired.
        """
        if len(token) > MAX_TOKEN_CHARS:
            raise InvalidToken("token too long")
        prefix, _, rest = token.partition(".")
        payload, _, mac = rest.partition(".")
        if prefix != PREFIX or not payload or not mac:
            raise InvalidToken("not a jobworker token")
        try:
            expected = self._mac(payload)
        except UnicodeEncodeError:
            raise InvalidToken("not a jobworker token") from None
        if not hmac.compare_digest(expected, mac):
            raise InvalidToken("bad signature")
        try:
            claims = json.loads(_unb64(payload))
            name, role, expires = claims["u"], claims["r"], claims["e"]
        except (ValueError, KeyError, TypeError):
            raise InvalidToken("malformed token") from None
        if not isinstance(name, str) or not isinstance(role, str):
            raise InvalidToken("malformed token")
        if not isinstance(expires, int) or expires <= self._clock.seconds():
            raise InvalidToken("token expired")
        return name, role
