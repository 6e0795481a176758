"""Authentication through twisted.cred: Basic credentials, bcrypt off the reactor."""

from __future__ import annotations

import hashlib
import math
import os
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

import bcrypt
from cryptography.x509.oid import NameOID
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import LoginFailed, UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.web.guard import BasicCredentialFactory
from twisted.web.iweb import IRequest
from zope.interface import Interface, implementer

from ..errors import (
    Forbidden,
    JobworkerError,
    ServiceUnavailable,
    TooManyRequests,
    Unauthorized,
)
from .audit import AuditLog
from .permissions import Permission, User, authorize
from .throttle import LoginThrottle
from .tokens import InvalidToken, TokenClaims, TokenSigner, fingerprint
from .users import UserDatabase, UserEntry

#: Runs a blocking callable off the reactor thread and returns a Deferred of
#: its result (C{deferToThreadPool} in the server, a synchronous call in tests).
ThreadRunner = Callable[..., "Deferred[Any]"]

REALM = "jobworker"
_T = TypeVar("_T")

#: bcrypt reads at most 72 bytes; bcrypt 5 refuses longer passwords.
MAX_PASSWORD_BYTES = 72


class IJobworkerUser(Interface):
    """The avatar interface: an authenticated L{User}."""


def _checkPassword(password: bytes, hashed: bytes, *padding: bytes) -> bool:
    """
    Whether C{password} matches C{hashed} (bcrypt: run it off the reactor).
    After a mismatch C{password} is also checked against each C{padding}
    hash, answers ignored, so that every failure costs the same work
    (L{UserDatabase.padding}).
    """
    try:
        ok = bcrypt.checkpw(password, hashed)
    except ValueError:
        ok = False
    if not ok:
        for extra in padding:
            try:
                bcrypt.checkpw(password, extra)
            except ValueError:
                pass
    return ok


class VerifiedCredentials:
    """
    A bounded, expiring memory of credentials bcrypt has already accepted, so
    a client repeating the same Basic credentials does not pay bcrypt on
    every request.

    Entries are keyed by a MAC (keyed BLAKE2b, a per-process random key) of
    name and password: the password itself is never stored. Only successes
    are kept, so failures cannot fill it. A new users database gets a new
    cache.
    """

    def __init__(
        self, clock: IReactorTime, ttl: float = 300.0, maxEntries: int = 4096
    ) -> None:
        self._clock = clock
        self._ttl = ttl
        self._maxEntries = maxEntries
        self._key = os.urandom(32)
        #: digest -> (when it expires, the user's name).
        self._entries: OrderedDict[bytes, tuple[float, bytes]] = OrderedDict()
        #: Bumped by L{clear}: a check begun before a users-file reload must
        #: not add its (old) verdict afterwards.
        self.generation = 0

    def digest(self, name: bytes, password: bytes) -> bytes:
        """The key these credentials are remembered by (never the password)."""
        return self._digest(name, password)

    def _digest(self, name: bytes, password: bytes) -> bytes:
        message = len(name).to_bytes(4, "big") + name + password
        # Keyed BLAKE2b is a MAC (as HMAC-SHA256 is), computed without
        # OpenSSL's per-call digest fetch: once per authenticated request.
        return hashlib.blake2b(message, key=self._key, digest_size=32).digest()

    def __contains__(self, credentials: tuple[bytes, bytes]) -> bool:
        digest = self._digest(*credentials)
        entry = self._entries.get(digest)
        if entry is None:
            return False
        if entry[0] <= self._clock.seconds():
            del self._entries[digest]
            return False
        return True

    def add(self, name: bytes, password: bytes, generation: int | None = None) -> None:
        """
        Remember that C{name} and C{password} were verified (by a check that
        began in C{generation}: ignored if the cache was cleared since).
        """
        if generation is not None and generation != self.generation:
            return
        digest = self._digest(name, password)
        self._entries[digest] = (self._clock.seconds() + self._ttl, name)
        self._entries.move_to_end(digest)
        while len(self._entries) > self._maxEntries:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        """Forget everything (the users changed)."""
        self._entries.clear()
        self.generation += 1

    def keepOnly(self, names: set[bytes]) -> None:
        """
        Forget the credentials of every user but C{names} (a reload: those
        whose password is unchanged). A check begun before is not kept.
        """
        for digest, (_, name) in list(self._entries.items()):
            if name not in names:
                del self._entries[digest]
        self.generation += 1


@implementer(ICredentialsChecker)
class BcryptChecker:
    """
    Check user name and password against the users' bcrypt hashes.

    Every refusal costs one check at the highest cost in the users file: an
    unknown name is checked against a dummy hash of that cost, and a wrong
    password for a user whose hash costs less is padded up to it, so timing
    does not tell which names exist. With a L{VerifiedCredentials} cache,
    credentials verified recently are accepted without bcrypt.
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(
        self,
        users: UserDatabase,
        runInThread: ThreadRunner,
        cache: VerifiedCredentials | None = None,
    ) -> None:
        self._users = users
        self._runInThread = runInThread
        self._cache = cache
        #: bcrypt checks queued or running: counted until the thread's work
        #: has ended, whether or not whoever asked is still waiting (a
        #: client that hangs up cancels its request, not the queued call).
        self.inFlight = 0

    def requestAvatarId(self, credentials: Any) -> Deferred[bytes | tuple[()]]:
        """Fire with the user name, or fail with L{UnauthorizedLogin}."""
        password = bytes(credentials.password)
        if not password or len(password) > MAX_PASSWORD_BYTES:
            return fail(UnauthorizedLogin())
        try:
            name = bytes(credentials.username).decode("utf-8")
        except UnicodeDecodeError:
            return fail(UnauthorizedLogin())
        entry = self._users.lookup(name)
        cache = self._cache
        nameBytes = name.encode("utf-8")
        if entry is not None and cache is not None and (nameBytes, password) in cache:
            return succeed(nameBytes)
        if entry is not None:
            hashed, padding = entry.passwordHash, self._users.padding(entry)
        else:
            hashed, padding = self._users.dummyHash, ()
        generation = cache.generation if cache is not None else None
        self.inFlight += 1
        try:
            work: Deferred[bool] = self._runInThread(
                _checkPassword, password, hashed, *padding
            )
        except BaseException:
            self.inFlight -= 1
            raise
        # The answer goes out on a Deferred of its own: cancelling it (the
        # client hung up) leaves the check queued or running, and counted
        # until it has ended.
        d: Deferred[bool] = Deferred()
        work.addBoth(self._checkEnded).addCallbacks(d.callback, d.errback)

        def verdict(ok: bool) -> Any:
            # The users file may have been reloaded while bcrypt ran: a
            # password is right only if it is still the user's.
            if ok and entry is not None:
                if self._stillHolds(name, entry):
                    if cache is not None:
                        cache.add(nameBytes, password, generation)
                    return nameBytes
                # Its hash changed meanwhile (the same password hashed
                # again, or another): checked against the new one, not
                # refused (every login in flight at such a reload was a
                # "bad password": fault round 28b).
                return self.requestAvatarId(credentials)
            raise UnauthorizedLogin()

        result: Deferred[bytes | tuple[()]] = d.addCallback(verdict)
        return result

    def _checkEnded(self, result: _T) -> _T:
        self.inFlight -= 1
        return result

    def _stillHolds(self, name: str, entry: UserEntry) -> bool:
        """Whether C{entry}'s password is still C{name}'s in the users now."""
        current = self._users.lookup(name)
        return current is not None and current.passwordHash == entry.passwordHash


@implementer(IRealm)
class UserRealm:
    """Turn an authenticated name into its L{User} (name and role)."""

    def __init__(self, users: UserDatabase) -> None:
        self._users = users

    def requestAvatar(
        self, avatarId: bytes | tuple[()], mind: object, *interfaces: Any
    ) -> tuple[Any, User, Callable[[], None]]:
        if IJobworkerUser not in interfaces or not isinstance(avatarId, bytes):
            raise NotImplementedError("only IJobworkerUser avatars")
        entry = self._users.lookup(avatarId.decode("utf-8"))
        if entry is None:
            raise UnauthorizedLogin()
        return IJobworkerUser, entry.user, lambda: None


def makePortal(
    users: UserDatabase,
    runInThread: ThreadRunner,
    cache: VerifiedCredentials | None = None,
) -> Portal:
    """The portal the API logs requests in through."""
    return Portal(UserRealm(users), [BcryptChecker(users, runInThread, cache)])


def replaceUsers(portal: Portal, users: UserDatabase) -> None:
    """
    Swap the user database of a portal made by L{makePortal} (a reloaded
    users file); remembered credentials are forgotten, but those of users
    whose password hash is the same (a reload of an unchanged file forgot
    all: parallel correct logins then went to bcrypt, counted as failures
    while in flight, and some got a 429: fault round 27).
    """
    realm = portal.realm
    assert isinstance(realm, UserRealm)
    old = realm._users
    realm._users = users
    unchanged = set()
    for name in users.names():
        before, after = old.lookup(name), users.lookup(name)
        if before is not None and after is not None:
            if before.passwordHash == after.passwordHash:
                unchanged.add(name.encode("utf-8"))
    for checker in portal.checkers.values():
        assert isinstance(checker, BcryptChecker)
        checker._users = users
        if checker._cache is not None:
            checker._cache.keepOnly(unchanged)


class Grant:
    """
    What a long response (a log follower, which may stay for days) was let
    in on, kept to be checked again while it runs: L{user}, L{permission}
    on a job of L{owner}'s, and what they proved it with: a bearer token
    (its claims, and when it L{expires}), or a password (its hash then),
    or a certificate. Made by L{Authenticator.grant}; once L{watch}ed,
    every users reload checks it again against the new users
    (L{Authenticator.replaceUsers}) until it is L{release}d, and
    L{withdraw} ends it from outside (its token expired).
    """

    def __init__(
        self,
        authenticator: Authenticator,
        user: str,
        permission: Permission,
        owner: str | None,
        client: str,
        fields: dict[str, Any],
        token: TokenClaims | None = None,
        expires: float | None = None,
        passwordHash: bytes | None = None,
        certificate: tuple[Any, Any] | None = None,
    ) -> None:
        self._authenticator = authenticator
        #: The connection and client certificate it came with, if it did.
        self.certificate = certificate
        self.user = user
        self.permission = permission
        self.owner = owner
        #: The client's address, and what the audit line names (the job,
        #: the token's fingerprint): never a secret.
        self.client = client
        self.fields = fields
        self.token = token
        #: When the token (or the client certificate) it came with stops
        #: working (epoch seconds); None without either.
        self.expires = expires
        self.passwordHash = passwordHash
        #: The withdrawal at the token's expiry, once L{watch}ed with a clock.
        self._expiry: IDelayedCall | None = None

    def watch(
        self,
        lost: Callable[[JobworkerError], object],
        clock: IReactorTime | None = None,
    ) -> None:
        """
        Check it again at each users reload; if it no longer holds, or is
        L{withdraw}n, call C{lost} (once) with the error saying why. With a
        C{clock}, it is also withdrawn when its token L{expires}.
        """
        self._authenticator._grants[self] = lost
        if clock is not None and self.expires is not None:
            self._expiry = clock.callLater(
                max(0.0, self.expires - clock.seconds()),
                self.withdraw,
                Unauthorized(
                    "access revoked: the "
                    + ("token" if self.certificate is None else "client certificate")
                    + " expired"
                ),
            )

    def release(self) -> None:
        """Stop watching it (its response has ended), its expiry too."""
        self._authenticator._grants.pop(self, None)
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        self._expiry = None

    def withdraw(self, error: JobworkerError) -> None:
        """End it now for C{error}'s reason: audited, and C{lost} told."""
        self._authenticator._withdraw(self, error)


def commonNames(certificate: Any) -> list[str]:
    """
    The common names of a (pyOpenSSL) certificate's subject, decoded as
    their string types say; one that is no text is "" (no user's).
    """
    try:
        attributes = certificate.to_cryptography().subject.get_attributes_for_oid(
            NameOID.COMMON_NAME
        )
    except ValueError:
        return [""]
    return [a.value if isinstance(a.value, str) else "" for a in attributes]


class Authenticator:
    """
    Find out who a request comes from: C{Authorization: Basic} (bcrypt, or
    the verified-credential cache), C{Authorization: Bearer} (a signed token,
    one HMAC) or, with no header, the client certificate the TLS layer
    verified (its common name is the user).

    Only Basic credentials are throttled: a password check is counted by
    the L{LoginThrottle} before it runs. A valid token or certificate is
    never refused for failures from its address.
    """

    log = Logger()

    def __init__(
        self,
        portal: Portal,
        onFailure: Callable[[], object] | None = None,
        throttle: LoginThrottle | None = None,
        audit: AuditLog | None = None,
        tokens: TokenSigner | None = None,
        certificates: bool = False,
        maxChecks: int | None = None,
    ) -> None:
        self._portal = portal
        #: Password checks (bcrypt) in flight at most, whoever asks: past
        #: it a check is refused at once (None: no bound).
        self.maxChecks = maxChecks
        self._basic = BasicCredentialFactory(REALM)
        self._onFailure = onFailure
        #: Told each attempt the throttle refuses (no check made): the
        #: failures' count stopped at the throttle's threshold, and a
        #: brute-force alert on it saw the first few alone (operator
        #: round 40).
        self.onThrottled: Callable[[], object] = lambda: None
        self._throttle = throttle
        self._audit = audit
        self._certificates = certificates
        realm = portal.realm
        assert isinstance(realm, UserRealm)
        self._realm = realm
        self._tokens: TokenSigner | None = None
        self.tokens = tokens
        # The portal's own cache of verified credentials: checked here first,
        # so a hit costs no Deferred chain at all.
        checker = portal.checkers.get(IUsernamePassword)
        self._checker = checker if isinstance(checker, BcryptChecker) else None
        self._cache = checker._cache if isinstance(checker, BcryptChecker) else None
        #: How long a password check takes, lately (seconds; a moving
        #: average): a throttled attempt is answered after as long.
        self._checkSeconds = 0.0
        #: The password checks running (by L{VerifiedCredentials.digest} of
        #: their credentials, and the users' generation they came in), each
        #: with the requests of the same credentials waiting for its verdict
        #: (L{_awaitShared}).
        self._checking: dict[tuple[bytes, int], list[Deferred[bool | None]]] = {}
        #: The L{Grant}s of the long responses running, and what to call
        #: when one is withdrawn.
        self._grants: dict[Grant, Callable[[JobworkerError], object]] = {}
        #: Why a connection's client certificate no longer lets in (None:
        #: it does), asked at each request that comes with one: the served
        #: TLS's L{certificateProblem
        #: <jobworker.server.tlssetup.ServedTLS.certificateProblem>}.
        self.certificateProblem: Callable[[Any, Any], str | None] | None = None
        #: TLS's L{certificateCA
        #: <jobworker.server.tlssetup.ServedTLS.certificateCA>}: which client
        #: CA a certificate chains to (a token issued for it lives with it).
        self.certificateCA: Callable[[Any, Any], str | None] | None = None

    @property
    def tokens(self) -> TokenSigner | None:
        """
        The signer of bearer tokens (None: tokens are off). Setting one
        binds its tokens to the credentials of the users here.
        """
        return self._tokens

    @tokens.setter
    def tokens(self, signer: TokenSigner | None) -> None:
        if signer is not None:
            signer.bind(self._credentialsOf)
        self._tokens = signer

    def _credentialsOf(self, name: str) -> bytes | None:
        entry = self._realm._users.lookup(name)
        return None if entry is None else entry.credentials

    def user(self, name: str) -> User | None:
        """The user C{name} as the users file says now (None: no such user)."""
        entry = self._realm._users.lookup(name)
        return None if entry is None else entry.user

    @property
    def users(self) -> UserDatabase:
        """The users in force (the users file as last read)."""
        return self._realm._users

    def replaceUsers(self, users: UserDatabase) -> None:
        """
        Use a new users database (a reloaded users file): remembered
        credentials are forgotten (but of users whose password hash is the
        same), and the tokens of users removed, or whose
        password or role changed, stop working for good (restoring the old
        line does not revive them). Every watched L{Grant} that no longer
        holds is withdrawn (audited C{access.revoked}; its response ends).
        """
        old = self._realm._users
        replaceUsers(self._portal, users)
        if self._tokens is not None:
            for name in old.names():
                before, after = old.lookup(name), users.lookup(name)
                assert before is not None
                if after is None or after.credentials != before.credentials:
                    self._tokens.revoke(name)
        # The long responses running (log followers) are held to the new
        # users too: a user removed or demoted kept reading (attacker
        # round 9).
        self.recheck()

    def recheck(self) -> None:
        """
        Withdraw every watched L{Grant} that no longer holds: after a users
        reload, and after a TLS one (a client CA removed: a follower let in
        by its certificate read on, attacker round 27).
        """
        for grant in list(self._grants):
            error = self._standing(grant)
            if error is not None:
                self._withdraw(grant, error)

    def grant(
        self,
        request: IRequest,
        user: User,
        permission: Permission,
        owner: str | None = None,
        job: str | None = None,
    ) -> Grant:
        """
        What C{request}, authenticated as C{user} and authorised for
        C{permission} on a job of C{owner}'s (C{job}), was let in on: a
        L{Grant} to L{watch<Grant.watch>} while its response runs. Its
        token's claims are read again (one HMAC, once per response).

        @raise Unauthorized: its token no longer verifies.
        """
        fields: dict[str, Any] = {} if job is None else {"job": job}
        header = request.getHeader(b"authorization")
        scheme, _, response = (header or b"").partition(b" ")
        held: dict[str, Any] = {}
        if header is None:
            # A client certificate: its user must stay in the users file, and
            # it must still verify, in its dates and against the client CAs.
            certified = peerCertificate(request)
            if certified is not None:
                held = {
                    "certificate": certified,
                    "expires": chainEnds(*certified),
                }
        elif scheme.lower() == b"bearer" and self._tokens is not None:
            token = response.strip().decode("ascii", "replace")
            try:
                claims = self._tokens.claims(token)
            except InvalidToken:
                raise Unauthorized("invalid or expired token") from None
            fields["token"] = fingerprint(token)
            held = {"token": claims, "expires": self._tokens.ends(claims)}
        else:
            # A password: it must stay the user's.
            entry = self._realm._users.lookup(user.name)
            held = {"passwordHash": None if entry is None else entry.passwordHash}
        return Grant(
            self, user.name, permission, owner, clientAddress(request), fields, **held
        )

    def _standing(self, grant: Grant) -> JobworkerError | None:
        """
        Why C{grant} no longer holds under the users now, or None if it
        does: its user is still one, with the same password if one let it
        in, its token not revoked (nor expired), and the permission table
        still lets the user's role do it.
        """
        entry = self._realm._users.lookup(grant.user)
        if entry is None:
            return Unauthorized(
                f"access revoked: {grant.user} is no longer a user of this server"
            )
        if grant.token is not None:
            if self._tokens is None:
                return Unauthorized("access revoked: tokens are off")
            try:
                self._tokens.recheck(grant.token)
            except InvalidToken as e:
                return Unauthorized(f"access revoked (token): {e}")
            if grant.token.role != entry.user.role.value:
                return Unauthorized("access revoked: the token's role changed")
        elif grant.certificate is not None and self.certificateProblem is not None:
            problem = self.certificateProblem(*grant.certificate)
            if problem is not None:
                return Unauthorized(f"access revoked: the client certificate {problem}")
        elif grant.passwordHash is not None and grant.passwordHash != (
            entry.passwordHash
        ):
            return Unauthorized(
                "access revoked: the password it was opened with is no longer "
                f"{grant.user}'s"
            )
        try:
            authorize(entry.user, grant.permission, grant.owner)
        except Forbidden as e:
            return Forbidden(f"access revoked: {e.message}")
        return None

    def _withdraw(self, grant: Grant, error: JobworkerError) -> None:
        """End a watched C{grant}: audited, then its response told."""
        lost = self._grants.pop(grant, None)
        if lost is None:
            return  # released, or withdrawn already
        if self._audit is not None:
            self._audit.record(
                "access.revoked",
                grant.user,
                grant.client,
                "ended",
                reason=error.message,
                permission=grant.permission.value,
                **grant.fields,
            )
        else:
            self.log.info(
                "access of {user!r} from {client} revoked: {reason}",
                user=grant.user,
                client=grant.client,
                reason=error.message,
                permission=grant.permission.value,
                **grant.fields,
            )
        try:
            lost(error)
        except Exception:
            # One response that cannot be ended must not keep the others
            # (or the rest of a reload) from being.
            self.log.failure(
                "the response of {user!r} could not be ended", user=grant.user
            )

    def _refuse(
        self,
        request: IRequest,
        name: str,
        reason: str,
        message: str,
        counted: bool = False,
        audited: str | None = None,
        sparse: bool = False,
        guess: bool = False,
    ) -> Unauthorized:
        """
        Record a failed authentication and return the error to raise.

        @param counted: the throttle counts it already (a password check
            begun with L{LoginThrottle.begin}).
        @param guess: a password's failure (else a token's or a
            certificate's: see L{LoginThrottle.failed}).
        @param audited: the user the audit log names, if not C{name} (the
            throttle's): a validly signed token's user.
        @param sparse: audited once a minute of that user and client (the
            count of those left out in the next line).
        """
        client = clientAddress(request)
        if self._onFailure is not None:
            self._onFailure()
        if self._throttle is not None and not counted:
            self._throttle.failed(name, client, guess)
        if audited is None:
            audited = name
        if self._audit is not None:
            record = self._audit.recordSparsely if sparse else self._audit.record
            record("auth.failure", audited, client, "refused", reason=reason)
        else:
            self.log.info(
                "authentication failed for {user!r} from {client}: {reason}",
                user=audited,
                client=client,
                reason=reason,
            )
        return Unauthorized(message)

    def _notThrottled(self, name: str, client: str) -> None:
        """
        Before anything of a Basic login (remembered or not: every such
        request, one look): refuse it if the throttle says wait for failures
        (a wait for checks in flight is where a check is counted).

        @raise TooManyRequests: too many failures.
        """
        throttle = self._throttle
        if throttle is None:
            return
        wait = throttle.retryAfter(name, client)
        if wait > 0 and not throttle.heldByChecksAlone(name, client):
            raise self._throttled(name, client, wait)

    async def _beginCheck(self, name: str, client: str) -> None:
        """
        Before a password check for C{name}: wait while checks in flight
        alone hold it back; refuse it if the throttle says wait for
        failures, or L{maxChecks} are in flight; else count it (as a
        failure until it ends).

        @raise TooManyRequests: too many failures, or too many of the
            client's attempts waiting for checks in flight.
        @raise ServiceUnavailable: L{maxChecks} in flight (L{_admitCheck}).
        """
        throttle = self._throttle
        if throttle is None:
            self._admitCheck(name, client)
            return
        while held := throttle.heldByChecksAlone(name, client):
            ended = throttle.whenACheckEnds(name, client)
            if ended is None:
                raise self._throttled(name, client, held)
            await ended
        # After any wait: the checks that let it go on are not counted in
        # flight any more (admitted before it waited, it went past
        # --max-password-checks: review round 29).
        self._admitCheck(name, client)
        wait = throttle.begin(name, client)
        if wait > 0:
            raise self._throttled(name, client, wait)

    def reportRefusals(self) -> None:
        """
        Audit the refusals a client earned since its last C{auth.throttled}
        or C{auth.busy} line, once it has not been refused for a minute
        (call once a minute): they were written only if it was refused
        again, so a burst's last minute went unreported.
        """
        if self._throttle is None:
            return
        for kind, client, refused in self._throttle.overdue():
            if self._audit is None:
                continue
            fields: dict[str, Any] = {"refused": refused}
            if kind == "busy":
                fields["reason"] = "password checks full"
            self._audit.record(f"auth.{kind}", "", client, "refused", **fields)

    def _throttled(self, name: str, client: str, wait: float) -> TooManyRequests:
        """
        The error for an attempt the throttle refuses (C{wait} seconds more);
        audited at most once a minute per client, with the count refused.
        """
        assert self._throttle is not None
        self.onThrottled()
        refused = self._throttle.refused(client)
        if self._audit is not None and refused is not None:
            self._audit.record(
                "auth.throttled", name, client, "refused", refused=refused
            )
        seconds = math.ceil(wait)
        return TooManyRequests(
            f"too many failed logins: retry in {seconds} s", retryAfter=seconds
        )

    def vouches(self, request: IRequest) -> str | None:
        """
        Whose are C{request}'s credentials, if they look good now, its body
        not yet read: a valid token's user (one HMAC), Basic credentials
        bcrypt took within the cache's life, or a client certificate the
        handshake verified of a user of the users file? None if they do
        not. No check is made that would cost more, and nothing is counted:
        a made up C{Authorization} on a body sent a byte every 4 s held a
        connection slot, with no account (attacker round 40, second wave);
        a certificate of no user did too (attacker round 41).
        """
        header = request.getHeader(b"authorization")
        if header is None:
            return self._certifiedName(request)
        scheme, _, response = header.partition(b" ")
        scheme = scheme.lower()
        if scheme == b"bearer" and self._tokens is not None:
            try:
                return self._tokens.claims(response.strip().decode("ascii")).user
            except (InvalidToken, UnicodeDecodeError):
                return None
        if scheme != b"basic":
            return None
        try:
            credentials = self._basic.decode(response.strip(), request)
        except LoginFailed:
            return None
        user = self._remembered(credentials)
        return None if user is None else user.name

    def _certifiedName(self, request: IRequest) -> str | None:
        """The user of the client certificate of C{request}'s connection, if
        the server takes certificates, it has no problem now (its dates,
        its CA) and its one common name is a user's; else None."""
        if not self._certificates:
            return None
        certified = peerCertificate(request)
        if certified is None:
            return None
        if self.certificateProblem is not None and self.certificateProblem(*certified):
            return None
        names = commonNames(certified[1])
        if len(names) != 1 or self._realm._users.lookup(names[0]) is None:
            return None
        return names[0]

    async def authenticate(self, request: IRequest, allowToken: bool = True) -> User:
        """
        The user the request authenticates as.

        @param allowToken: accept a bearer token (not when issuing tokens:
            a token must not extend its own life).
        @raise Unauthorized: with no, malformed or wrong credentials.
        @raise Forbidden: a token where C{allowToken} is false.
        @raise TooManyRequests: too many failures from this client.
        """
        header = request.getHeader(b"authorization")
        if header is None:
            user = self._fromCertificate(request)
            if user is None:
                raise Unauthorized("authentication required")
            return user
        scheme, _, response = header.partition(b" ")
        scheme = scheme.lower()
        if scheme == b"bearer" and self._tokens is not None:
            user = self._fromToken(request, response.strip())
            if not allowToken:
                if self._audit is not None:
                    self._audit.recordSparsely(
                        "access.denied",
                        user.name,
                        clientAddress(request),
                        "refused",
                        reason="a token cannot issue tokens",
                        permission=Permission.TOKENS.value,
                    )
                raise Forbidden(
                    "a token cannot issue tokens: use a password or certificate"
                )
            return user
        if scheme != b"basic":
            raise Unauthorized("unsupported authorization scheme; use Basic or Bearer")
        try:
            credentials = self._basic.decode(response.strip(), request)
        except LoginFailed:
            raise Unauthorized("malformed Basic credentials") from None
        name = credentials.username.decode("utf-8", "replace")[:64]
        client = clientAddress(request)
        # A throttled client is refused even the right password: otherwise
        # a correct guess would show through a lockout.
        try:
            self._notThrottled(name, client)
        except TooManyRequests:
            await self._likeACheck(request)
            raise
        user = self._remembered(credentials)
        if user is not None:
            # (No check runs: nothing to count as in flight.)
            if self._throttle is not None:
                self._throttle.succeeded(name, client)
            return user
        key = None
        if self._cache is not None:
            # A request after a users reload waits for no check begun
            # before it: that one is judged by the old users (review).
            key = (
                self._cache.digest(
                    bytes(credentials.username), bytes(credentials.password)
                ),
                self._cache.generation,
            )
            user = await self._awaitShared(request, key, credentials, name, client)
            if user is not None:
                return user
        try:
            await self._beginCheck(name, client)
        except TooManyRequests:
            await self._likeACheck(request)
            raise
        # Let in only because it logged in from here before: a failure of
        # it must read as everyone else's (429), or the throttle would tell
        # which names log in from this address. (Everyone else's 429 takes
        # as long as a check: see _likeACheck.)
        exempted = (
            self._throttle.retryAfterUntrusted(name, client)
            if self._throttle is not None
            else 0.0
        )
        succeeded: bool | None = False
        #: What the requests waiting on this check are told: True (right),
        #: False (wrong), None (no verdict: they check for themselves).
        verdict: bool | None = None
        # (Another request of the same credentials may have begun its check
        # while this one waited for its turn: then that one's waiters are
        # its own.)
        shared = key is not None and key not in self._checking
        if shared:
            assert key is not None
            self._checking[key] = []
        clock = self._throttle.clock if self._throttle is not None else None
        began = clock.seconds() if clock is not None else 0.0
        try:
            _, avatar, _ = await self._portal.login(credentials, None, IJobworkerUser)
            assert isinstance(avatar, User)
            user = avatar
            succeeded = verdict = True
        except UnauthorizedLogin:
            verdict = False
            refusal = self._refuse(
                request,
                name,
                "bad password",
                "invalid user name or password",
                counted=True,
            )
            if exempted > 0:
                raise self._throttled(name, client, exempted) from None
            raise refusal from None
        except ServiceUnavailable:
            # The server's trouble (no thread for bcrypt), not the client's:
            # its retry after Retry-After must not find itself throttled.
            succeeded = None
            raise
        finally:
            # Whatever else happened (a client that hangs up cancels the
            # check), anything but a success counts as a failure.
            if self._throttle is not None:
                self._throttle.finish(name, client, succeeded)
            if clock is not None and succeeded is not None:
                took = max(0.0, clock.seconds() - began)
                self._checkSeconds += (took - self._checkSeconds) / 8
            if shared:
                assert key is not None
                for waiter in self._checking.pop(key, []):
                    if not waiter.called:  # (its client hung up)
                        waiter.callback(verdict)
        return user

    async def _awaitShared(
        self,
        request: IRequest,
        key: tuple[bytes, int],
        credentials: Any,
        name: str,
        client: str,
    ) -> User | None:
        """
        While a check of the same credentials runs (C{key}), wait for its
        verdict rather than run another: concurrent logins of one user (a
        dozen clients after a restart, nothing remembered) were as many
        checks in flight, each counted as a failure until it ended, and
        those past the throttle's threshold got a 429 "too many failed
        logins" with no login failed (fault round 28). The same wrong
        password is refused as the check refused it, counted once.

        @return: the user (the check said right), or None: check them here
            (no check runs, or the one waited for gave no verdict).
        """
        while key in self._checking:
            waiter: Deferred[bool | None] = Deferred()
            self._checking[key].append(waiter)
            verdict = await waiter
            if verdict:
                user = self._remembered(credentials)
                if user is None:
                    # Not kept (the users were reloaded meanwhile): check
                    # them, or wait for the one of the waiters who does.
                    continue
                if self._throttle is not None:
                    self._throttle.succeeded(name, client)
                return user
            if verdict is False:
                refusal = self._refuse(
                    request,
                    name,
                    "bad password",
                    "invalid user name or password",
                    counted=True,  # (by the check it waited for)
                )
                if self._throttle is not None:
                    exempted = self._throttle.retryAfterUntrusted(name, client)
                    if exempted > 0:
                        raise self._throttled(name, client, exempted)
                raise refusal
        return None

    async def _likeACheck(self, request: IRequest) -> None:
        """
        Wait about as long as a password check takes: a throttled attempt
        answered at once, beside a name let in for having logged in from
        that address (its 429 comes after its check), told which names
        those were.

        Its refusal is decided: C{request} is marked so (C{refusalDecided}),
        and its connection gives way at --max-connections as one with
        nothing to lose would (it was spared as "being checked": eight
        connections looping made-up credentials held every slot: code
        review 41).
        """
        request.refusalDecided = True  # type: ignore[attr-defined]
        clock = self._throttle.clock if self._throttle is not None else None
        if clock is not None and self._checkSeconds > 0:
            await deferLater(clock, self._checkSeconds, lambda: None)

    def _admitCheck(self, name: str, client: str) -> None:
        """
        Refuse a password check when L{maxChecks} are in flight: bcrypt runs
        in the thread pool the server's other work shares, and checks from
        many clients (each under its own throttle) would queue there
        without end. Not a failure of the client: nothing is counted.

        @raise ServiceUnavailable: with Retry-After 1.
        """
        checker = self._checker
        if self.maxChecks is None or checker is None:
            return
        if checker.inFlight < self.maxChecks:
            return
        # Audited at most once a minute per client (as throttled attempts).
        throttle = self._throttle
        refused = throttle.refused(client, kind="busy") if throttle else 1
        if self._audit is not None and refused is not None:
            self._audit.record(
                "auth.busy",
                name,
                client,
                "refused",
                reason="password checks full",
                refused=refused,
            )
        raise ServiceUnavailable(
            f"too many password checks in progress ({self.maxChecks}): retry in "
            "1 s, or use a token or a client certificate, which need none",
            retryAfter=1,
        )

    def _remembered(self, credentials: Any) -> User | None:
        """
        The user, if bcrypt accepted these credentials a moment ago (the hot
        path: no Deferred chain at all). By the whole name as sent, never
        the name cut short for the logs.
        """
        cache = self._cache
        if cache is None:
            return None
        nameBytes = bytes(credentials.username)
        try:
            entry = self._realm._users.lookup(nameBytes.decode("utf-8"))
        except UnicodeDecodeError:
            return None
        password = bytes(credentials.password)
        if entry is not None and (nameBytes, password) in cache:
            return entry.user
        return None

    def _fromToken(self, request: IRequest, token: bytes) -> User:
        # Not throttled: a valid token is never refused for others' failures
        # from its address, and forging one is hopeless (HMAC-SHA256).
        assert self._tokens is not None
        try:
            name, role = self._tokens.verify(token.decode("ascii"))
        except (InvalidToken, UnicodeDecodeError) as e:
            # A bad token counts as a failed login (of no user's: an expired
            # token must not lock its user out), and a client throttled for
            # them is refused without a word more in the audit log: they
            # cost nothing to send, and each was a line.
            client = clientAddress(request)
            throttle = self._throttle
            wait = throttle.retryAfter("", client) if throttle is not None else 0.0
            if wait > 0:
                raise self._throttled("", client, wait) from None
            raise self._refuse(
                request,
                "",
                f"token: {e}",
                "invalid or expired token",
                audited=getattr(e, "user", ""),
            ) from None
        entry = self._realm._users.lookup(name)
        if entry is None or entry.user.role.value != role:
            raise self._refuse(
                request,
                name,
                "token: user removed or role changed",
                "invalid or expired token",
            )
        return entry.user

    def _fromCertificate(self, request: IRequest) -> User | None:
        if not self._certificates:
            return None
        certified = peerCertificate(request)
        if certified is None:
            return None
        transport, certificate = certified
        client = clientAddress(request)
        problem = (
            None
            if self.certificateProblem is None
            else self.certificateProblem(transport, certificate)
        )
        # The TLS layer verified it against --client-ca (purpose: client).
        # Each name as its string type says (pyOpenSSL's components are the
        # raw bytes: a BMPString's spelled another user's name in UTF-8:
        # auth review 37).
        names = commonNames(certificate)
        throttle = self._throttle
        if problem is not None:
            # It never lets in again on this connection (expired, or its CA
            # removed: a new handshake is refused): closed once answered.
            # Each request on it wrote a line, never throttled: 5,000
            # lines in 3 s of one connection (attacker round 39).
            closeOnceAnswered(request)
            if throttle is not None:
                wait = throttle.retryAfter("", client)
                if wait > 0:
                    raise self._throttled("", client, wait)
            # (Audited with the name it bears: it was "": review 37.)
            raise self._refuse(
                request,
                "",
                f"client certificate that {problem}",
                f"the client certificate {problem}",
                audited=names[0] if len(names) == 1 else "",
                sparse=True,
            )
        entry = self._realm._users.lookup(names[0]) if len(names) == 1 else None
        if entry is None and throttle is not None:
            # Refused from a throttled client without a word more, as a bad
            # token is: a removed user's certificate (no CRL) wrote a line
            # and counted a failure at every request, however many.
            wait = throttle.retryAfter("", client)
            if wait > 0:
                raise self._throttled("", client, wait)
        if len(names) != 1:
            # (pyOpenSSL's commonName is the first: CN=alice, CN=rita was
            # alice.) Which one is meant is anyone's guess: none is.
            raise self._refuse(
                request,
                ",".join(names)[:64],
                f"certificate with {len(names)} common names",
                "the client certificate must have exactly one common name",
            )
        name = names[0]
        if entry is None:
            raise self._refuse(
                request,
                name[:64],
                "certificate of an unknown user",
                "the client certificate's user is not in the users file",
            )
        return entry.user


def closeOnceAnswered(request: IRequest) -> None:
    """The connection of C{request} is closed once it is answered."""
    channel = getattr(request, "channel", None)
    if channel is not None:
        channel.persistent = False
    request.setHeader(b"connection", b"close")


def peerCertificate(request: IRequest) -> tuple[Any, Any] | None:
    """The TLS connection of C{request} and its client's certificate, if any."""
    transport = getattr(getattr(request, "channel", None), "transport", None)
    get = getattr(transport, "getPeerCertificate", None)
    certificate = get() if get is not None else None
    return None if certificate is None else (transport, certificate)


def notAfter(certificate: Any) -> float | None:
    """When C{certificate} expires (epoch seconds), if it says."""
    return float(certificate.to_cryptography().not_valid_after_utc.timestamp())


def chainEnds(transport: Any, certificate: Any) -> float | None:
    """
    When the client C{certificate} of the TLS connection C{transport}
    stops letting in (epoch seconds): the earliest end of the chain its
    handshake verified, the CAs above it included, or the one it was
    verified by again after a reload changed the client CAs (a renewed
    root: L{ServedTLS.certificateProblem
    <jobworker.server.tlssetup.ServedTLS.certificateProblem>}). Its own end
    alone let a kept connection go on as its user after its intermediate or
    root had expired, mint tokens that outlived them, and read on (attacker
    round 33). Worked out once a connection (and once a reload).
    """
    ends = getattr(transport, "_chainEnds", None)
    if ends is not None:
        return float(ends)
    chain = None
    handle = getattr(transport, "getHandle", None)
    if handle is not None:
        try:
            chain = handle().get_verified_chain()
        except Exception:
            chain = None
    ends = earliestEnd(chain or [certificate])
    try:
        transport._chainEnds = ends
    except AttributeError:
        pass
    return ends


def earliestEnd(chain: list[Any]) -> float | None:
    """The earliest end of the certificates of C{chain} (epoch seconds)."""
    found = [notAfter(c) for c in chain]
    return min((e for e in found if e is not None), default=None)


def clientAddress(request: IRequest) -> str:
    """The client's IP address, for logs and throttling."""
    peer = request.getClientAddress()
    host = getattr(peer, "host", None)
    return str(host) if host is not None else "unknown"
