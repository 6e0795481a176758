"""The cache of verified credentials: bcrypt once, not per request."""

from __future__ import annotations

import base64
from dataclasses import replace
from typing import Any

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, ensureDeferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from jobworker.auth.authenticator import (
    Authenticator,
    BcryptChecker,
    VerifiedCredentials,
    makePortal,
)
from jobworker.auth.permissions import User
from jobworker.auth.throttle import LoginThrottle
from jobworker.auth.users import UserDatabase
from jobworker.errors import ServiceUnavailable, TooManyRequests, Unauthorized

from .test_hostile_auth import HeldRunner


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


def basicRequest(name: str, password: str) -> DummyRequest:
    """A request carrying Basic credentials."""
    request = DummyRequest([b"jobs"])
    request.client = IPv4Address("TCP", "192.0.2.7", 4321)
    token = base64.b64encode(f"{name}:{password}".encode())
    request.requestHeaders.setRawHeaders(b"authorization", [b"Basic " + token])
    return request


class AuthenticatorCacheTests(SynchronousTestCase):
    """
    The L{Authenticator} consults the cache itself (before the portal): a
    hit must match name and password, not merely find the cache non-empty.
    """

    def setUp(self) -> None:
        self.cache = VerifiedCredentials(Clock(), ttl=60.0)
        self.runner = CountingRunner()
        self.authenticator = Authenticator(
            makePortal(UserDatabase.development(), self.runner, self.cache)
        )

    def authenticate(self, name: str, password: str) -> Deferred[User]:
        return ensureDeferred(
            self.authenticator.authenticate(basicRequest(name, password))
        )

    def test_hitSkipsBcrypt(self) -> None:
        """The second correct login comes from the cache, without bcrypt."""
        for _ in range(2):
            user = self.successResultOf(self.authenticate("alice", "alice-pass"))
            self.assertEqual(user.name, "alice")
        self.assertEqual(self.runner.calls, 1)

    def test_cachedUserWrongPassword(self) -> None:
        """With alice cached, a wrong password for alice is still refused."""
        self.successResultOf(self.authenticate("alice", "alice-pass"))
        self.failureResultOf(self.authenticate("alice", "wrong"), Unauthorized)
        self.failureResultOf(self.authenticate("alice", "alice-pasS"), Unauthorized)
        self.assertEqual(self.runner.calls, 3)

    def test_cachedPasswordOtherUser(self) -> None:
        """Alice's cached credentials do not log bob in with her password."""
        self.successResultOf(self.authenticate("alice", "alice-pass"))
        self.failureResultOf(self.authenticate("bob", "alice-pass"), Unauthorized)
        user = self.successResultOf(self.authenticate("bob", "bob-pass"))
        self.assertEqual(user.name, "bob")


class ReloadTests(SynchronousTestCase):
    """
    A users reload forgets the remembered credentials of the users whose
    password changed (or who are gone), not the others': after a reload of
    an unchanged file (logrotate, a certificate renewal), parallel correct
    logins all went to bcrypt, and the checks in flight counted as failures
    got some a 429 "too many failed logins" (fault round 27).
    """

    def test_unchangedUsersRemembered(self) -> None:
        cache = VerifiedCredentials(Clock(), ttl=60.0)
        runner = CountingRunner()
        users = UserDatabase.development()
        authenticator = Authenticator(makePortal(users, runner, cache))

        def login(name: str) -> None:
            self.successResultOf(
                ensureDeferred(
                    authenticator.authenticate(basicRequest(name, f"{name}-pass"))
                )
            )

        login("alice")
        login("bob")
        self.assertEqual(runner.calls, 2)
        bob = users.lookup("bob")
        assert bob is not None
        # bob's password hashed again (the same password, a new hash).
        rehashed = replace(bob, passwordHash=bob.passwordHash.replace(b"$2b$", b"$2a$"))
        entries = [users.lookup(name) for name in sorted(users.names())]
        changed = UserDatabase(
            [rehashed if e is bob else e for e in entries if e is not None],
            users.dummyHash,
        )
        authenticator.replaceUsers(changed)
        login("alice")  # remembered still
        self.assertEqual(runner.calls, 2)
        login("bob")  # his hash changed: checked again
        self.assertEqual(runner.calls, 3)


def throttled(testCase: Any, runner: Any, threshold: int) -> None:
    """
    An authenticator with a throttle of C{threshold} and a cache of verified
    credentials, on a clock, whose bcrypt checks C{runner} runs: set as
    C{testCase}'s C{clock}, C{cache}, C{runner}, C{throttle} and
    C{authenticator}.
    """
    testCase.clock = Clock()
    testCase.clock.advance(1_800_000_000)
    testCase.cache = VerifiedCredentials(testCase.clock, ttl=3600.0)
    testCase.runner = runner
    testCase.throttle = LoginThrottle(testCase.clock, threshold=threshold)
    testCase.authenticator = Authenticator(
        makePortal(UserDatabase.development(), runner, testCase.cache),
        throttle=testCase.throttle,
    )


class ThrottledCacheTests(SynchronousTestCase):
    """
    A remembered login skips bcrypt and the throttle's count of checks in
    flight, never the throttle's verdict: a client locked out is refused the
    right password too, or a correct guess would show through the lockout.
    """

    def setUp(self) -> None:
        throttled(self, CountingRunner(), threshold=3)

    def authenticate(self, name: str, password: str) -> Deferred[User]:
        return ensureDeferred(
            self.authenticator.authenticate(basicRequest(name, password))
        )

    def test_lockedOutRefusedTheRememberedPassword(self) -> None:
        """Remembered, then three wrong guesses for alice from the address:
        the right password is refused (429) without bcrypt; once the wait
        is over it logs in from the cache, and the pair's failures are gone."""
        self.successResultOf(self.authenticate("alice", "alice-pass"))
        for n in range(3):
            self.failureResultOf(self.authenticate("alice", f"guess{n}"), Unauthorized)
        calls = self.runner.calls
        self.failureResultOf(self.authenticate("alice", "alice-pass"), TooManyRequests)
        self.assertEqual(self.runner.calls, calls)
        self.clock.advance(self.throttle.retryAfter("alice", "192.0.2.7"))
        user = self.successResultOf(self.authenticate("alice", "alice-pass"))
        self.assertEqual((user.name, self.runner.calls), ("alice", calls))
        self.assertEqual(self.throttle.retryAfter("alice", "192.0.2.7"), 0.0)
        self.assertTrue(
            all(entry.pending == 0 for entry in self.throttle._entries.values())
        )


class SharedCheckTests(SynchronousTestCase):
    """
    Concurrent logins with the same credentials share one password check:
    after a restart (nothing remembered), a dozen clients of one user
    logging in at once counted as a dozen checks in flight, each a failure
    until it ended, and those past the throttle's threshold got a 429 "too
    many failed logins" with no login failed (fault round 28).
    """

    def setUp(self) -> None:
        throttled(self, HeldRunner(), threshold=5)

    def authenticate(self, name: str, password: str) -> Deferred[User]:
        return ensureDeferred(
            self.authenticator.authenticate(basicRequest(name, password))
        )

    def test_concurrentCorrectLogins(self) -> None:
        """Twelve at once: one bcrypt check, twelve logins, nothing counted."""
        logins = [self.authenticate("alice", "alice-pass") for _ in range(12)]
        self.assertEqual(len(self.runner.held), 1)
        self.runner.release()
        for d in logins:
            self.assertEqual(self.successResultOf(d).name, "alice")
        self.assertEqual(self.throttle.retryAfter("alice", "192.0.2.7"), 0.0)
        self.assertTrue(
            all(
                entry.count == entry.pending == 0
                for entry in self.throttle._entries.values()
            )
        )

    def test_concurrentWrongPasswordCountsOnce(self) -> None:
        """The same wrong password sent at once: refused, counted once."""
        guesses = [self.authenticate("alice", "wrong") for _ in range(3)]
        self.assertEqual(len(self.runner.held), 1)
        self.runner.release()
        for d in guesses:
            self.failureResultOf(d, Unauthorized)
        pair = self.throttle._entries[("pair", "alice", "192.0.2.7")]
        self.assertEqual((pair.count, pair.pending), (1, 0))

    def test_differentGuessesEachChecked(self) -> None:
        """Different passwords are different checks, each counted: past
        the threshold, they wait for those in flight, and are refused once
        those failed."""
        guesses = [self.authenticate("alice", f"guess{n}") for n in range(7)]
        self.assertEqual(len(self.runner.held), 5)
        self.assertFalse(any(d.called for d in guesses))
        self.runner.release()
        for d in guesses[:5]:
            self.failureResultOf(d, Unauthorized)
        for d in guesses[5:]:
            self.failureResultOf(d, TooManyRequests)

    def test_aCancelledCheckLeavesTheOthersTheirOwn(self) -> None:
        """
        The client whose check the others wait for hangs up: they are not
        refused for it; one of them checks, and all log in.
        """
        first = self.authenticate("alice", "alice-pass")
        others = [self.authenticate("alice", "alice-pass") for _ in range(3)]
        first.cancel()
        self.failureResultOf(first)
        self.runner.release()  # the first check ends, its verdict unheard
        self.runner.release()  # the check one of the others made
        for d in others:
            self.assertEqual(self.successResultOf(d).name, "alice")


class DifferentUsersAtOnceTests(SynchronousTestCase):
    """
    Different users logging in at once from one address (after a restart:
    nothing remembered, no address trusted) were refused "too many failed
    logins" past the throttle's threshold of checks in flight, with none
    failed (fault round 28, left open then). Held back by checks in flight
    alone, a login waits for one to end.
    """

    def setUp(self) -> None:
        throttled(self, HeldRunner(), threshold=2)

    def authenticate(self, name: str, password: str) -> Deferred[User]:
        return ensureDeferred(
            self.authenticator.authenticate(basicRequest(name, password))
        )

    def test_everyoneLogsIn(self) -> None:
        """Four users at once, two checks at a time: all four log in."""
        names = ["alice", "bob", "rita", "ada"]
        logins = [self.authenticate(name, f"{name}-pass") for name in names]
        self.assertEqual(len(self.runner.held), 2)
        self.assertFalse(any(d.called for d in logins))
        self.runner.release()
        self.assertEqual(len(self.runner.held), 2)
        self.runner.release()
        self.assertEqual([self.successResultOf(d).name for d in logins], names)
        self.assertEqual((self.throttle._waiters, self.throttle._waitersOf), ({}, {}))
        self.assertTrue(
            all(e.count == e.pending == 0 for e in self.throttle._entries.values())
        )

    def test_aUserWhoLoggedInFromThereWaitsToo(self) -> None:
        """
        A user who has logged in from the address waits as any other name
        does: let through at once, its answer's time told which names log
        in from there. Once failures (not checks) hold the address, it is
        let through, as before.
        """
        first = self.authenticate("alice", "alice-pass")
        self.runner.release()
        self.successResultOf(first)
        self.cache.clear()  # (a users reload, say: a check again)
        guesses = [self.authenticate("mallory", f"guess{n}") for n in range(2)]
        alice = self.authenticate("alice", "alice-pass")
        self.assertEqual(len(self.runner.held), 2)  # alice waits
        self.runner.release()
        for d in guesses:
            self.failureResultOf(d, Unauthorized)
        self.assertEqual(len(self.runner.held), 1)  # failures now: let through
        self.runner.release()
        self.assertEqual(self.successResultOf(alice).name, "alice")

    def test_aWaiterThatHangsUpIsForgotten(self) -> None:
        """A waiting client that hangs up leaves no waiter and no count."""
        first = [self.authenticate(n, f"{n}-pass") for n in ("alice", "bob")]
        waiting = self.authenticate("rita", "rita-pass")
        waiting.cancel()
        self.failureResultOf(waiting)
        self.assertEqual((self.throttle._waiters, self.throttle._waitersOf), ({}, {}))
        self.runner.release()
        for d in first:
            self.successResultOf(d)
        self.assertEqual(self.runner.held, [])

    def test_waitersBounded(self) -> None:
        """Past C{maxWaiting} of a client's waiting, the next is refused."""
        self.throttle._maxWaiting = 1
        logins = [self.authenticate(n, f"{n}-pass") for n in ("alice", "bob", "rita")]
        self.failureResultOf(self.authenticate("ada", "ada-pass"), TooManyRequests)
        self.runner.release()
        self.runner.release()
        for d in logins:
            self.successResultOf(d)

    def test_failuresStillRefuseAtOnce(self) -> None:
        """Failures past the threshold refuse at once, as before."""
        guesses = [self.authenticate("alice", f"guess{n}") for n in range(2)]
        self.runner.release()
        for d in guesses:
            self.failureResultOf(d, Unauthorized)
        self.failureResultOf(self.authenticate("bob", "bob-pass"), TooManyRequests)
        self.assertEqual(self.runner.held, [])


class WaitersWokenTests(SynchronousTestCase):
    """
    A login waiting for checks in flight is woken by the end of a check of
    its own client or user only (woken at every end, each looking through
    all the others, it was quadratic in the waiters: review).
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.throttle = LoginThrottle(self.clock, threshold=2)
        for name in ("u0", "u1"):
            self.assertEqual(self.throttle.begin(name, "192.0.2.1"), 0)
        self.assertEqual(self.throttle.begin("x", "198.51.100.1"), 0)

    def test_anotherClientsEndWakesNothing(self) -> None:
        self.assertGreater(self.throttle.heldByChecksAlone("v", "192.0.2.1"), 0)
        waiting = self.throttle.whenACheckEnds("v", "192.0.2.1")
        assert waiting is not None
        self.throttle.finish("x", "198.51.100.1", True)
        self.assertNoResult(waiting)
        self.throttle.finish("u0", "192.0.2.1", True)
        self.successResultOf(waiting)
        self.assertEqual(self.throttle.heldByChecksAlone("v", "192.0.2.1"), 0)

    def test_theSameUsersEndWakesIt(self) -> None:
        waiting = self.throttle.whenACheckEnds("x", "192.0.2.1")
        assert waiting is not None
        self.throttle.finish("x", "198.51.100.1", True)
        self.successResultOf(waiting)


class AdmittedAfterTheWaitTests(SynchronousTestCase):
    """
    A login that waited for checks in flight is held to
    --max-password-checks when it goes on, not before it waited: admitted
    then, each check's end let more in past the bound (review round 29).
    """

    def test_neverPastMaxChecks(self) -> None:
        clock = Clock()
        clock.advance(1_800_000_000)
        runner = HeldRunner()
        throttle = LoginThrottle(clock, threshold=1, userThreshold=1)
        authenticator = Authenticator(
            makePortal(
                UserDatabase.development(), runner, VerifiedCredentials(clock, 3600.0)
            ),
            throttle=throttle,
            maxChecks=2,
        )
        checker = authenticator._checker
        assert checker is not None

        def login(name: str, password: str, address: str) -> Deferred[User]:
            request = basicRequest(name, password)
            request.client = IPv4Address("TCP", address, 4321)
            return ensureDeferred(authenticator.authenticate(request))

        first = login("alice", "alice-pass", "192.0.2.1")  # runs
        waiters = [
            login("bob", "bob-pass", "192.0.2.1"),  # waits: its address
            login("alice", "guess", "192.0.2.2"),  # waits: its user
        ]
        login("rita", "rita-pass", "192.0.2.3")  # runs: 2 in flight
        self.assertEqual(checker.inFlight, 2)
        d, f, args = runner.held.pop(0)
        d.callback(f(*args))  # the first ends: both waiters wake
        self.successResultOf(first)
        self.assertLessEqual(checker.inFlight, 2)
        refused = [d for d in waiters if d.called]
        self.assertEqual(len(refused), 1)
        self.failureResultOf(refused[0], ServiceUnavailable)
        runner.release()


class SharedCheckReloadTests(SynchronousTestCase):
    """
    The check others wait for is right, but its verdict is not kept (the
    users were reloaded while it ran): one of the waiters checks again,
    and the others wait for that one (each made a check of its own, and
    each took the place of the last as the check to wait for).
    """

    def test_oneCheckAgain(self) -> None:
        clock = Clock()
        cache = VerifiedCredentials(clock, ttl=3600.0)
        runner = HeldRunner()
        authenticator = Authenticator(
            makePortal(UserDatabase.development(), runner, cache),
            throttle=LoginThrottle(clock, threshold=5),
        )
        logins = [
            ensureDeferred(
                authenticator.authenticate(basicRequest("alice", "alice-pass"))
            )
            for _ in range(4)
        ]
        self.assertEqual(len(runner.held), 1)
        cache.clear()  # a reload while it runs: its verdict is not kept
        runner.release()
        self.assertEqual(len(runner.held), 1)  # one check again, not three
        runner.release()
        for d in logins:
            self.assertEqual(self.successResultOf(d).name, "alice")

    def test_aLoginAfterAReloadChecksItself(self) -> None:
        """
        A login that comes after a users reload does not wait for a check
        of the same credentials begun before it: that one is judged by the
        old users (a password hashed again, the same: the later login got
        401 with it; review of fault round 28).
        """
        clock = Clock()
        cache = VerifiedCredentials(clock, ttl=3600.0)
        runner = HeldRunner()
        users = UserDatabase.development()
        authenticator = Authenticator(
            makePortal(users, runner, cache),
            throttle=LoginThrottle(clock, threshold=5),
        )
        before = ensureDeferred(
            authenticator.authenticate(basicRequest("alice", "alice-pass"))
        )
        alice = users.lookup("alice")
        assert alice is not None
        rehashed = replace(
            alice, passwordHash=alice.passwordHash.replace(b"$2b$", b"$2a$")
        )
        entries = [users.lookup(name) for name in sorted(users.names())]
        authenticator.replaceUsers(
            UserDatabase(
                [rehashed if e is alice else e for e in entries if e is not None],
                users.dummyHash,
            )
        )
        after = ensureDeferred(
            authenticator.authenticate(basicRequest("alice", "alice-pass"))
        )
        self.assertEqual(len(runner.held), 2)  # its own check
        runner.release()
        self.assertEqual(self.successResultOf(after).name, "alice")
        # The one begun before is checked again against the new hash (it
        # was refused, "bad password": fault round 28b).
        self.assertEqual(len(runner.held), 1)
        runner.release()
        self.assertEqual(self.successResultOf(before).name, "alice")
