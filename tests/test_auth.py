"""Unit tests for L{jobworker.auth.authenticator}: Basic credentials, bcrypt."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import bcrypt
from twisted.cred.credentials import IUsernamePassword, UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, ensureDeferred, maybeDeferred
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from jobworker.auth.authenticator import (
    MAX_PASSWORD_BYTES,
    REALM,
    Authenticator,
    BcryptChecker,
    IJobworkerUser,
    UserRealm,
    _checkPassword,
    makePortal,
)
from jobworker.auth.permissions import Role, User
from jobworker.auth.users import UserDatabase
from jobworker.errors import Unauthorized

LONG_PASSWORD = "p" * MAX_PASSWORD_BYTES


def _hash(password: str) -> str:
    return bcrypt.hashpw(password.encode("utf-8"), bcrypt.gensalt(4)).decode("ascii")


#: Cheap (cost 4) users: alice Developer, rita Reader, max (Admin) with a
#: password of exactly 72 bytes.
USERS_TEXT = (
    f"alice:Developer:{_hash('alice-pass')}\n"
    f"rita:Reader:{_hash('rita-pass')}\n"
    f"max:Admin:{_hash(LONG_PASSWORD)}\n"
)


class RecordingRunner:
    """A synchronous runInThread that records every call it runs."""

    def __init__(self) -> None:
        self.calls: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []

    def __call__(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        self.calls.append((f, args))
        return maybeDeferred(f, *args)


def requestWith(authorization: bytes | None) -> DummyRequest:
    """A request carrying C{authorization} (or no Authorization header)."""
    request = DummyRequest([b"jobs"])
    request.client = IPv4Address("TCP", "192.0.2.7", 4321)
    if authorization is not None:
        request.requestHeaders.setRawHeaders(b"authorization", [authorization])
    return request


def basicHeader(user: bytes, password: bytes, scheme: bytes = b"Basic") -> bytes:
    """An Authorization header value for the raw C{user} and C{password}."""
    return scheme + b" " + base64.b64encode(user + b":" + password)


class AuthTestMixin:
    """A cost-4 user database, a recording runner, a portal and authenticator."""

    def setUp(self) -> None:
        self.users = UserDatabase.fromText(USERS_TEXT)
        self.runner = RecordingRunner()
        self.portal = makePortal(self.users, self.runner)
        self.authenticator = Authenticator(self.portal)

    def authenticate(self, authorization: bytes | None) -> Deferred[User]:
        """Authenticate a request with this header; a Deferred of the result."""
        return ensureDeferred(
            self.authenticator.authenticate(requestWith(authorization))
        )


class AuthenticatorTests(AuthTestMixin, SynchronousTestCase):
    """Authenticator.authenticate: header to User, or Unauthorized."""

    def assertUnauthorized(self, authorization: bytes | None) -> Unauthorized:
        """Authenticating with this header fails with Unauthorized (401)."""
        failure = self.failureResultOf(self.authenticate(authorization), Unauthorized)
        error = failure.value
        assert isinstance(error, Unauthorized)
        self.assertEqual(error.code, 401)
        self.assertTrue(error.message)
        return error

    def test_correctPassword(self) -> None:
        """The right password gives the User with its role."""
        user = self.successResultOf(
            self.authenticate(basicHeader(b"alice", b"alice-pass"))
        )
        self.assertEqual(user, User("alice", Role.DEVELOPER))

    def test_roleFromDatabase(self) -> None:
        """Each user gets the role the database gives them."""
        user = self.successResultOf(
            self.authenticate(basicHeader(b"rita", b"rita-pass"))
        )
        self.assertEqual(user, User("rita", Role.READER))

    def test_bcryptRunsThroughRunner(self) -> None:
        """The bcrypt check is the one call made through runInThread."""
        entry = self.users.lookup("alice")
        assert entry is not None
        self.successResultOf(self.authenticate(basicHeader(b"alice", b"alice-pass")))
        self.assertEqual(
            self.runner.calls, [(_checkPassword, (b"alice-pass", entry.passwordHash))]
        )

    def test_schemeCaseInsensitive(self) -> None:
        """The Basic scheme name is matched case-insensitively."""
        user = self.successResultOf(
            self.authenticate(basicHeader(b"alice", b"alice-pass", b"bAsIc"))
        )
        self.assertEqual(user.name, "alice")

    def test_passwordWithColon(self) -> None:
        """Only the first colon separates name from password."""
        users = UserDatabase.fromText(f"carl:Reader:{_hash('a:b:c')}\n")
        authenticator = Authenticator(makePortal(users, RecordingRunner()))
        d = ensureDeferred(
            authenticator.authenticate(requestWith(basicHeader(b"carl", b"a:b:c")))
        )
        self.assertEqual(self.successResultOf(d).name, "carl")

    def test_wrongPassword(self) -> None:
        """A wrong password is Unauthorized, after one bcrypt check."""
        error = self.assertUnauthorized(basicHeader(b"alice", b"bob-pass"))
        self.assertIn("invalid user name or password", error.message)
        self.assertEqual(len(self.runner.calls), 1)

    def test_passwordOfAnotherUser(self) -> None:
        """Another user's password does not log in."""
        self.assertUnauthorized(basicHeader(b"alice", b"rita-pass"))

    def test_unknownUserChecksDummyHash(self) -> None:
        """An unknown name is Unauthorized after a check against the dummy hash."""
        error = self.assertUnauthorized(basicHeader(b"mallory", b"alice-pass"))
        self.assertIn("invalid user name or password", error.message)
        self.assertEqual(
            self.runner.calls, [(_checkPassword, (b"alice-pass", self.users.dummyHash))]
        )

    def test_sameMessageForUnknownAndWrong(self) -> None:
        """Unknown user and wrong password give the same message."""
        unknown = self.assertUnauthorized(basicHeader(b"mallory", b"x"))
        wrong = self.assertUnauthorized(basicHeader(b"alice", b"x"))
        self.assertEqual(unknown.message, wrong.message)

    def test_passwordOver72Bytes(self) -> None:
        """A password over 72 bytes is Unauthorized, without calling bcrypt."""
        self.assertUnauthorized(
            basicHeader(b"max", LONG_PASSWORD.encode("ascii") + b"p")
        )
        self.assertEqual(self.runner.calls, [])

    def test_passwordOver72BytesUnknownUser(self) -> None:
        """A long password for an unknown user is also just Unauthorized."""
        self.assertUnauthorized(basicHeader(b"nobody", b"x" * 1000))

    def test_passwordOf72Bytes(self) -> None:
        """A password of exactly 72 bytes still works."""
        user = self.successResultOf(
            self.authenticate(basicHeader(b"max", LONG_PASSWORD.encode("ascii")))
        )
        self.assertEqual(user, User("max", Role.ADMIN))

    def test_emptyPassword(self) -> None:
        """An empty password is Unauthorized, without calling bcrypt."""
        self.assertUnauthorized(basicHeader(b"alice", b""))
        self.assertEqual(self.runner.calls, [])

    def test_emptyName(self) -> None:
        """An empty user name is Unauthorized."""
        self.assertUnauthorized(basicHeader(b"", b"alice-pass"))

    def test_nonUTF8Name(self) -> None:
        """A user name that is not UTF-8 is Unauthorized, not a crash."""
        self.assertUnauthorized(basicHeader(b"al\xffice", b"alice-pass"))
        self.assertEqual(self.runner.calls, [])

    def test_nonUTF8Password(self) -> None:
        """A password that is not UTF-8 is simply a wrong password."""
        self.assertUnauthorized(basicHeader(b"alice", b"\xff\xfe"))

    def test_missingHeader(self) -> None:
        """No Authorization header is Unauthorized."""
        error = self.assertUnauthorized(None)
        self.assertIn("authentication required", error.message)

    def test_nonBasicScheme(self) -> None:
        """Another scheme is Unauthorized, naming Basic."""
        for header in (
            b"Bearer abc.def",
            b"Digest username=alice",
            basicHeader(b"alice", b"alice-pass", b"Basicx"),
            b"alice:alice-pass",
        ):
            error = self.assertUnauthorized(header)
            self.assertIn("Basic", error.message)
        self.assertEqual(self.runner.calls, [])

    def test_malformedBase64(self) -> None:
        """Malformed base64 or a missing colon is Unauthorized."""
        for header in (
            b"Basic",
            b"Basic ",
            b"Basic a",
            b"Basic !!!!",
            b"Basic " + base64.b64encode(b"alice"),
        ):
            self.assertUnauthorized(header)
        self.assertEqual(self.runner.calls, [])

    def test_failureLoggedWithoutPassword(self) -> None:
        """A failed login is logged with name and client, never the password."""
        with capturedLogs() as events:
            self.assertUnauthorized(basicHeader(b"alice", b"s3cr3t-guess"))
        texts = [repr(event) for event in events]
        self.assertTrue(any("alice" in text for text in texts), texts)
        self.assertTrue(any("192.0.2.7" in text for text in texts), texts)
        self.assertFalse(any("s3cr3t-guess" in text for text in texts), texts)

    def test_realmConstant(self) -> None:
        """The realm is 'jobworker'."""
        self.assertEqual(REALM, "jobworker")


class BcryptCheckerTests(AuthTestMixin, SynchronousTestCase):
    """BcryptChecker.requestAvatarId on its own."""

    def test_avatarIdIsName(self) -> None:
        """A correct password fires with the UTF-8 name."""
        checker = BcryptChecker(self.users, self.runner)
        d = checker.requestAvatarId(UsernamePassword(b"alice", b"alice-pass"))
        self.assertEqual(self.successResultOf(d), b"alice")

    def test_wrongIsUnauthorizedLogin(self) -> None:
        """A wrong password fails with UnauthorizedLogin."""
        checker = BcryptChecker(self.users, self.runner)
        d = checker.requestAvatarId(UsernamePassword(b"alice", b"nope"))
        self.failureResultOf(d, UnauthorizedLogin)

    def test_runnerResultIsTheVerdict(self) -> None:
        """The checker trusts the runner's answer: False means refused."""
        checker = BcryptChecker(self.users, lambda f, *a: maybeDeferred(lambda: False))
        d = checker.requestAvatarId(UsernamePassword(b"alice", b"alice-pass"))
        self.failureResultOf(d, UnauthorizedLogin)

    def test_unknownUserEvenIfDummyMatches(self) -> None:
        """An unknown name is refused even if the dummy check said yes."""
        checker = BcryptChecker(self.users, lambda f, *a: maybeDeferred(lambda: True))
        d = checker.requestAvatarId(UsernamePassword(b"mallory", b"x"))
        self.failureResultOf(d, UnauthorizedLogin)

    def test_waitsForRunner(self) -> None:
        """Nothing is decided until the runner's Deferred fires."""
        pending: Deferred[bool] = Deferred()
        checker = BcryptChecker(self.users, lambda f, *a: pending)
        d = checker.requestAvatarId(UsernamePassword(b"alice", b"alice-pass"))
        self.assertNoResult(d)
        pending.callback(True)
        self.assertEqual(self.successResultOf(d), b"alice")

    def test_checkPasswordBadHash(self) -> None:
        """_checkPassword answers False, not an error, for an unusable hash."""
        self.assertFalse(_checkPassword(b"x", b"not-a-hash"))


class UserRealmTests(AuthTestMixin, SynchronousTestCase):
    """UserRealm turns a name into a User."""

    def test_avatar(self) -> None:
        """The avatar is the database's User for the name."""
        interface, avatar, logout = UserRealm(self.users).requestAvatar(
            b"rita", None, IJobworkerUser
        )
        self.assertIs(interface, IJobworkerUser)
        self.assertEqual(avatar, User("rita", Role.READER))
        self.assertIsNone(logout())

    def test_otherInterface(self) -> None:
        """Other avatar interfaces are not implemented."""
        self.assertRaises(
            NotImplementedError,
            UserRealm(self.users).requestAvatar,
            b"rita",
            None,
            IUsernamePassword,
        )

    def test_anonymous(self) -> None:
        """The anonymous avatar id is refused."""
        self.assertRaises(
            NotImplementedError,
            UserRealm(self.users).requestAvatar,
            (),
            None,
            IJobworkerUser,
        )


class DevelopmentUsersAuthTests(SynchronousTestCase):
    """The development users log in with their documented passwords."""

    def test_developmentLogins(self) -> None:
        """alice, bob, rita and ada log in as their roles with '<name>-pass'."""
        runner = RecordingRunner()
        authenticator = Authenticator(makePortal(UserDatabase.development(), runner))
        expected = {
            "alice": Role.DEVELOPER,
            "bob": Role.DEVELOPER,
            "rita": Role.READER,
            "ada": Role.ADMIN,
        }
        for name, role in expected.items():
            header = basicHeader(name.encode(), f"{name}-pass".encode())
            d = ensureDeferred(authenticator.authenticate(requestWith(header)))
            self.assertEqual(self.successResultOf(d), User(name, role))
        self.assertEqual(len(runner.calls), len(expected))
