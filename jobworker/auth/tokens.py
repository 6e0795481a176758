"""Signed, expiring bearer tokens: checked with one HMAC, never bcrypt."""

from __future__ import annotations

import base64
import errno
import hashlib
import hmac
import json
import os
import secrets
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

from twisted.internet.interfaces import IReactorTime

from ..jobs.folders import openRegular

#: Tokens start with this, so a reader (and a secret scanner) knows them.
PREFIX = "jw1"
#: Size of a signing key, in bytes.
KEY_BYTES = 32
#: The most a key file may hold: more is no key (a file named by mistake).
MAX_KEY_BYTES = 64 << 10
#: The longest token accepted: a bigger header is refused before any work.
MAX_TOKEN_CHARS = 1024
#: How far ahead of the server's now a token's issue time may be (seconds):
#: a clock slewed back, or servers sharing a key a little apart. One issued
#: further ahead (the clock was stepped forward, then back) is refused: it
#: would live for the step and a ttl, and after a revocation.
MAX_CLOCK_SKEW = 60.0


class InvalidToken(Exception):
    """A token is malformed, forged, signed by another key or expired."""

    def __init__(self, message: str, user: str = "") -> None:
        super().__init__(message)
        #: Whose it is, once its signature holds (expired, revoked): ""
        #: before (a forged token's claims are the sender's words).
        self.user = user


@dataclass(frozen=True)
class TokenClaims:
    """What a valid token says (L{TokenSigner.claims}); never a secret."""

    #: Its user and the role it was issued for.
    user: str
    role: str
    #: When it was issued and when it expires (epoch seconds).
    issued: float
    expires: int
    #: The SHA-256 of the public key of the client CA whose certificate it
    #: was issued for (L{TokenSigner.trustCAs}), or None.
    ca: str | None = None
    #: The signer's key it verified under (L{TokenSigner.replaceKey}).
    key: int = 0


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def loadOrCreateKey(path: str) -> bytes:
    """
    The signing key in C{path}, made (0600, 32 random bytes) if absent.

    A new key is written to a temporary file in the same folder and
    fsynced before it gets its name (a hard link, which never replaces a
    key already there), then the folder is fsynced: a power cut never
    leaves an empty or partial key under the name, which would keep the
    server from starting.

    Replacing or deleting the file and restarting the server invalidates
    every token issued before.

    @raise OSError: the file cannot be read or made, or is no regular
        file.
    @raise ValueError: the file holds too short a key (or over
        L{MAX_KEY_BYTES}), or its group or others may use it.
    """
    if not os.path.lexists(path):
        key = secrets.token_bytes(KEY_BYTES)
        if _createDurably(path, key):
            return key
    # There already, or another start made it meanwhile: read it.
    with open(_openKey(path), "rb") as f:
        mode = stat.S_IMODE(os.fstat(f.fileno()).st_mode)
        if mode & 0o077:
            # With it and a user's line of the users file, whoever read
            # it could sign that user's tokens (ssh refuses such a key).
            raise ValueError(
                f"{path}: permissions {mode:04o} are too open, others could "
                f"sign tokens with it: run chmod 600 {path}"
            ) from None
        key = f.read(MAX_KEY_BYTES + 1)
    if len(key) < KEY_BYTES:
        raise ValueError(f"{path} holds under {KEY_BYTES} bytes") from None
    if len(key) > MAX_KEY_BYTES:
        raise ValueError(f"{path} holds over {MAX_KEY_BYTES} bytes: no key") from None
    return key


def _openKey(path: str) -> int:
    """
    The key file, open for reading: a regular file, never waited on (a FIFO
    there hung the start-up in open(2) for good, before the log began).
    A symlink is followed: the path is the operator's choice, and a secret
    mounted by an orchestrator or a service manager is often one.

    @raise OSError: it cannot be opened, or is no regular file.
    """
    return openRegular(path, os.O_RDONLY | os.O_CLOEXEC)


#: What link(2) says on a file system without hard links.
_NO_LINKS = (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS)


def _createDurably(path: str, data: bytes) -> bool:
    """
    Make C{path} (0600) holding C{data}, durably: a temporary file beside
    it (mkstemp: 0600 from the start), written and fsynced, hard-linked to
    C{path}, then the folder fsynced. False, and nothing changed, if
    C{path} exists already.
    """
    folder = os.path.dirname(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(
        prefix=f".{os.path.basename(path)}.", suffix=".new", dir=folder
    )
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            return False
        except OSError as e:
            # No hard links here (vfat, some FUSE file systems): a rename,
            # which would replace a key made since the check just above.
            if e.errno not in _NO_LINKS or os.path.lexists(path):
                raise
            os.rename(temporary, path)
    finally:
        if os.path.lexists(temporary):
            os.unlink(temporary)
    folderFd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(folderFd)
    finally:
        os.close(folderFd)
    return True


def fingerprint(token: str) -> str:
    """A short, non-secret name for a token, for the audit log."""
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()[:12]


def _unbound(name: str) -> bytes:
    return b""


def _noCAs() -> frozenset[str]:
    return frozenset()


class TokenSigner:
    """
    Issue and check bearer tokens for users.

    A token is C{jw1.<payload>.<mac>}: the payload (user, role, issue time,
    expiry, nonce) in base64url JSON, the mac an HMAC-SHA256 under the
    server's key of the payload I{and of the user's current credentials}
    (role and password hash, which the token does not reveal). The server
    keeps no list of tokens: a token is valid while its mac matches the
    current key and the user's current credentials, its expiry is in the
    future, and it was issued after any L{revoke} of its user. So a new
    password, a new role or the user's removal invalidates every earlier
    token, across restarts too. Checking one is one HMAC.
    """

    def __init__(self, key: bytes, clock: IReactorTime, ttl: float) -> None:
        self._key = key
        #: How many times the key was replaced (L{replaceKey}).
        self._keyNumber = 0
        self._clock = clock
        self.ttl = ttl
        self._credentials: Callable[[str], bytes | None] = _unbound
        self._trustedCAs: Callable[[], frozenset[str]] = _noCAs
        #: user name -> when its tokens were revoked (kept one ttl past it).
        self._revoked: dict[str, float] = {}
        #: user name -> the latest issue time of theirs stamped or accepted
        #: (one entry per user who logged in): ahead of now once the clock
        #: was stepped back.
        self._latestIssued: dict[str, float] = {}

    def bind(self, credentials: Callable[[str], bytes | None]) -> None:
        """
        Bind tokens to C{credentials(name)}: a user's current credentials,
        or None for a name that is not a user. (Unbound, every name has
        the same empty credentials.)
        """
        self._credentials = credentials

    def trustCAs(self, trusted: Callable[[], frozenset[str]]) -> None:
        """
        A token issued for a client certificate lives while its CA is one of
        C{trusted()} (the public keys' SHA-256 of the client CAs in force):
        removing a CA from --client-ca (there is no CRL) refused its
        certificates, but not the tokens they had been given (a dashboard
        login is one: attacker round 29).
        """
        self._trustedCAs = trusted

    def revoke(self, name: str) -> None:
        """
        Refuse every token of C{name} issued until now, even if the user's
        old credentials come back (a removed line put back, a password
        changed back). Remembered in memory for one token lifetime; the
        credentials in the mac are what holds across restarts.

        "Until now" is the latest issue time of the user's this signer has
        stamped or accepted if that is later (the clock was ahead, then
        stepped back): a token issued then is older than the revocation,
        though its issue time is not, and would work once the clock caught
        up. (The user's new tokens are refused until then too: they have
        Basic or a certificate meanwhile.)
        """
        now = self._clock.seconds()
        until = max(now, self._latestIssued.get(name, now))
        self._revoked = {
            other: when
            for other, when in self._revoked.items()
            if when > now - self.ttl
        }
        self._latestIssued = {
            other: when
            for other, when in self._latestIssued.items()
            if when > now - self.ttl
        }
        self._revoked[name] = until

    def replaceKey(self, key: bytes) -> bool:
        """
        Sign and verify with C{key} from now on (a SIGHUP after the key
        file was replaced: it took a restart, which stopped every running
        job: operator round 40); every token signed with the one before is
        refused, held responses included (L{recheck}). Whether it changed.
        """
        if hmac.compare_digest(key, self._key):
            return False
        self._key = key
        self._keyNumber += 1
        return True

    def _mac(self, payload: str, credentials: bytes) -> str:
        message = payload.encode("ascii") + b"." + credentials
        return _b64(hmac.digest(self._key, message, "sha256"))

    def issue(
        self,
        name: str,
        role: str,
        until: float | None = None,
        ca: str | None = None,
    ) -> tuple[str, int]:
        """
        A new token for C{name} holding C{role}, and its expiry (epoch s):
        L{ttl} from now, or C{until} if sooner (the client certificate it
        was asked with expires then: a token outlived it, attacker round
        27); for a client certificate of the CA C{ca} (its key's SHA-256),
        one that lives while that CA is trusted (L{trustCAs}). For a name
        that is not a user, a token that never verifies.
        """
        now = self._clock.seconds()
        expires = int(now + self.ttl if until is None else min(now + self.ttl, until))
        claims = {
            "u": name,
            "r": role,
            "i": now,
            "e": expires,
            "n": _b64(os.urandom(9)),
        }
        if ca is not None:
            claims["c"] = ca
        payload = _b64(json.dumps(claims, separators=(",", ":")).encode("utf-8"))
        credentials = self._credentials(name)
        if credentials is None:
            credentials = secrets.token_bytes(KEY_BYTES)
        else:
            self._latestIssued[name] = max(self._latestIssued.get(name, now), now)
        return f"{PREFIX}.{payload}.{self._mac(payload, credentials)}", expires

    def verify(self, token: str) -> tuple[str, str]:
        """
        The user name and role a valid token was issued for.

        @raise InvalidToken: forged, another key's, malformed, expired,
            issued more than L{MAX_CLOCK_SKEW} ahead of now, or its user
            was removed or changed since.
        """
        claims = self.claims(token)
        return claims.user, claims.role

    def claims(self, token: str) -> TokenClaims:
        """
        What a valid token says: L{verify}, with its issue time and expiry.

        @raise InvalidToken: as L{verify}.
        """
        if len(token) > MAX_TOKEN_CHARS:
            raise InvalidToken("token too long")
        prefix, _, rest = token.partition(".")
        payload, _, mac = rest.partition(".")
        if prefix != PREFIX or not payload or not mac or not token.isascii():
            raise InvalidToken("not a jobworker token")
        # The claims are read before the mac is checked, to know whose
        # credentials it covers; nothing in them is trusted until then.
        try:
            claims = json.loads(_unb64(payload))
            name, role = claims["u"], claims["r"]
            issued, expires = claims["i"], claims["e"]
            ca = claims.get("c")
        except (ValueError, KeyError, TypeError, AttributeError):
            raise InvalidToken("malformed token") from None
        if (
            not isinstance(name, str)
            or not isinstance(role, str)
            or not isinstance(issued, int | float)
            or isinstance(issued, bool)
            or not isinstance(expires, int)
            or isinstance(expires, bool)
            or not (ca is None or isinstance(ca, str))
        ):
            raise InvalidToken("malformed token")
        credentials = self._credentials(name)
        expected = self._mac(payload, b"" if credentials is None else credentials)
        if credentials is None:
            raise InvalidToken("no such user (removed?)")
        if not hmac.compare_digest(expected, mac):
            raise InvalidToken("bad signature, or its user's password or role changed")
        accepted = TokenClaims(name, role, issued, expires, ca, self._keyNumber)
        self.recheck(accepted)
        # Accepted: a revocation from now on must cover it (L{revoke}).
        if issued > self._latestIssued.get(name, issued - 1):
            self._latestIssued[name] = issued
        return accepted

    def recheck(self, claims: TokenClaims) -> None:
        """
        Check again a token whose signature held (L{claims}): its user's
        tokens were not revoked since it was issued, and it still lives.
        What a long response the token let in is held to (a log follower,
        at each users reload): cheap, no HMAC.

        @raise InvalidToken: revoked, expired, older than the ttl, or
            issued more than L{MAX_CLOCK_SKEW} ahead of now.
        """
        name, issued, expires = claims.user, claims.issued, claims.expires
        if claims.key != self._keyNumber:
            raise InvalidToken("signed with a token key replaced since", name)
        revoked = self._revoked.get(name)
        if revoked is not None and issued <= revoked:
            raise InvalidToken("issued before its user was changed or removed", name)
        if claims.ca is not None and not self._trustedCAs().issuperset(
            claims.ca.split(",")  # (every CA of its chain: review 37)
        ):
            raise InvalidToken(
                "the CA of the client certificate it was issued for is no longer "
                "trusted (--client-ca)",
                name,
            )
        now = self._clock.seconds()
        if expires <= now:
            raise InvalidToken("token expired", name)
        if now - issued > self.ttl:
            # Issued under a longer --token-ttl: the server's ttl now rules.
            raise InvalidToken("token older than the server's --token-ttl", name)
        if issued - now > MAX_CLOCK_SKEW:
            # Issued while the clock was ahead: refused, not counted from a
            # time that has not come (it would outlive the ttl by the step).
            # Its expiry needs no check of its own: a token verifies only
            # while its issue time is within a ttl back and the skew ahead.
            raise InvalidToken("token issued in the future (the clock was ahead)", name)

    def ends(self, claims: TokenClaims) -> float:
        """
        When a token stops working (epoch seconds): its expiry, or a
        C{ttl} after its issue if that is sooner (issued under a longer
        C{--token-ttl}).
        """
        return min(float(claims.expires), claims.issued + self.ttl)
