"""Authentication through twisted.cred: Basic credentials, bcrypt off the reactor."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import bcrypt
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import LoginFailed, UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred, fail
from twisted.logger import Logger
from twisted.web.guard import BasicCredentialFactory
from twisted.web.iweb import IRequest
from zope.interface import Interface, implementer

from .errors import Unauthorized
from .permissions import User
from .users import UserDatabase

#: Runs a blocking callable off the reactor thread and returns a Deferred of
#: its result (C{deferToThreadPool} in the server, a synchronous call in tests).
ThreadRunner = Callable[..., "Deferred[Any]"]

REALM = "jobworker"
#: bcrypt reads at most 72 bytes; bcrypt 5 refuses longer passwords.
MAX_PASSWORD_BYTES = 72


class IJobworkerUser(Interface):
    """The avatar interface: an authenticated L{User}."""


def _checkPassword(password: bytes, hashed: bytes) -> bool:
    try:
        return bcrypt.checkpw(password, hashed)
    except ValueError:
        return False


@implementer(ICredentialsChecker)
class BcryptChecker:
    """
    Check user name and password against the users' bcrypt hashes.

    An unknown name is checked against a dummy hash of the same cost, so the
    answer takes as long as for a wrong password.
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, users: UserDatabase, runInThread: ThreadRunner) -> None:
        self._users = users
        self._runInThread = runInThread

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
        hashed = entry.passwordHash if entry is not None else self._users.dummyHash
        d: Deferred[bool] = self._runInThread(_checkPassword, password, hashed)

        def verdict(ok: bool) -> bytes | tuple[()]:
            if ok and entry is not None:
                return name.encode("utf-8")
            raise UnauthorizedLogin()

        result: Deferred[bytes | tuple[()]] = d.addCallback(verdict)
        return result


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


def makePortal(users: UserDatabase, runInThread: ThreadRunner) -> Portal:
    """The portal the API logs requests in through."""
    return Portal(UserRealm(users), [BcryptChecker(users, runInThread)])


class Authenticator:
    """Read the C{Authorization} header of a request and log it in."""

    log = Logger()

    def __init__(self, portal: Portal) -> None:
        self._portal = portal
        self._basic = BasicCredentialFactory(REALM)

    async def authenticate(self, request: IRequest) -> User:
        """
        The user the request authenticates as.

        @raise Unauthorized: with no, malformed or wrong credentials.
        """
        header = request.getHeader(b"authorization")
        if header is None:
            raise Unauthorized("authentication required")
        scheme, _, response = header.partition(b" ")
        if scheme.lower() != b"basic":
            raise Unauthorized("unsupported authorization scheme; use Basic")
        try:
            credentials = self._basic.decode(response.strip(), request)
        except LoginFailed:
            raise Unauthorized("malformed Basic credentials") from None
        try:
            _, avatar, _ = await self._portal.login(credentials, None, IJobworkerUser)
        except UnauthorizedLogin:
            self.log.info(
                "authentication failed for {user!r} from {client}",
                user=credentials.username.decode("utf-8", "replace")[:64],
                client=_clientAddress(request),
            )
            raise Unauthorized("invalid user name or password") from None
        assert isinstance(avatar, User)
        return avatar


def _clientAddress(request: IRequest) -> str:
    peer = request.getClientAddress()
    host = getattr(peer, "host", None)
    return str(host) if host is not None else "unknown"
