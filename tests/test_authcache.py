"""The cache of verified credentials: bcrypt once, not per request."""

from __future__ import annotations

from typing import Any

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from jobworker.auth import BcryptChecker, VerifiedCredentials
from jobworker.users import UserDatabase


class CountingRunner:
    """Runs the callable synchronously and counts the calls (the bcrypt checks)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, f: Any, *args: Any) -> Deferred[Any]:
        self.calls += 1
        return maybeDeferred(f, *args)


class VerifiedCredentialsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.cache = VerifiedCredentials(self.clock, ttl=60.0, maxEntries=3)
        self.runner = CountingRunner()
        self.checker = BcryptChecker(
            UserDatabase.development(), self.runner, self.cache
        )

    def check(self, name: str, password: str) -> Any:
        return self.checker.requestAvatarId(
            UsernamePassword(name.encode(), password.encode())
        )

    def test_secondRequestSkipsBcrypt(self) -> None:
        """Correct credentials pay bcrypt once, then come from the cache."""
        self.assertEqual(
            self.successResultOf(self.check("alice", "alice-pass")), b"alice"
        )
        self.assertEqual(
            self.successResultOf(self.check("alice", "alice-pass")), b"alice"
        )
        self.assertEqual(self.runner.calls, 1)

    def test_checkBeforeReloadNotRemembered(self) -> None:
        """
        A bcrypt check still running when the users file is reloaded does
        not put its (old) verdict in the emptied cache.
        """
        pending: Deferred[bool] = Deferred()
        checker = BcryptChecker(
            UserDatabase.development(), lambda f, *a: pending, self.cache
        )
        result = checker.requestAvatarId(UsernamePassword(b"alice", b"alice-pass"))
        self.cache.clear()  # what replaceUsers does on SIGHUP
        pending.callback(True)
        self.assertEqual(self.successResultOf(result), b"alice")
        self.assertEqual(len(self.cache), 0)

    def test_failuresNotCached(self) -> None:
        """A wrong password is checked by bcrypt every time, and never cached."""
        for _ in range(2):
            self.failureResultOf(self.check("alice", "wrong"), UnauthorizedLogin)
        self.assertEqual(self.runner.calls, 2)
        self.assertEqual(len(self.cache), 0)

    def test_cachedNameDoesNotAcceptOtherPassword(self) -> None:
        """A cached user with a different password still fails."""
        self.successResultOf(self.check("alice", "alice-pass"))
        self.failureResultOf(self.check("alice", "alice-pasS"), UnauthorizedLogin)
        self.failureResultOf(self.check("bob", "alice-pass"), UnauthorizedLogin)

    def test_entriesExpire(self) -> None:
        """After the TTL, bcrypt runs again."""
        self.successResultOf(self.check("alice", "alice-pass"))
        self.clock.advance(61)
        self.successResultOf(self.check("alice", "alice-pass"))
        self.assertEqual(self.runner.calls, 2)

    def test_bounded(self) -> None:
        """The oldest entry goes when the cache is full."""
        for name in ("alice", "bob", "rita", "ada"):
            self.successResultOf(self.check(name, f"{name}-pass"))
        self.assertEqual(len(self.cache), 3)
        self.successResultOf(self.check("alice", "alice-pass"))
        self.assertEqual(self.runner.calls, 5)

    def test_passwordNotStored(self) -> None:
        """The cache holds keyed digests, not passwords."""
        self.successResultOf(self.check("alice", "alice-pass"))
        keys = list(self.cache._entries)
        self.assertEqual(len(keys), 1)
        self.assertNotIn(b"alice-pass", keys[0])
        self.assertEqual(len(keys[0]), 32)
