"""
Hostile logins (issue 14, findings 1, 2, 7 and 8): each test tries the attack.

1. Concurrent guesses from one address must not each get a bcrypt check.
2. A burst of failures from a shared address must not lock out valid tokens,
   certificates, or users who log in from there.
7. A wrong password and an unknown name must cost the same bcrypt work.
8. A token must die with its user's password, role or existence.
"""

from __future__ import annotations

import base64
import hmac
import json
import os
import threading
from collections.abc import Callable
from typing import Any

import bcrypt
import treq
from twisted.internet import reactor
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import (
    Deferred,
    ensureDeferred,
    gatherResults,
    maybeDeferred,
)
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.test.requesthelper import DummyRequest

from jobworker.auth import authenticator as authModule
from jobworker.auth import tokens as tokensModule
from jobworker.auth.audit import AuditLog
from jobworker.auth.authenticator import (
    Authenticator,
    VerifiedCredentials,
    _checkPassword,
    makePortal,
)
from jobworker.auth.permissions import Role, User
from jobworker.auth.throttle import LoginThrottle
from jobworker.auth.tokens import TokenSigner
from jobworker.auth.users import UserDatabase, UserEntry
from jobworker.errors import ServiceUnavailable, TooManyRequests, Unauthorized

from .support import LiveServer, basic, selfSigned

KEY = b"k" * 32
#: Where the attacker (and everyone else behind the same NAT) comes from.
SHARED = "198.51.100.9"
ELSEWHERE = "203.0.113.5"
THRESHOLD = 5


def _hash(password: str, cost: int = 4) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(cost)).decode("ascii")


def cost(hashed: bytes) -> int:
    """The cost factor of a bcrypt hash."""
    return int(hashed.split(b"$")[2])


USERS_TEXT = (
    f"alice:Developer:{_hash('alice-pass')}\n"
    f"bob:Developer:{_hash('bob-pass')}\n"
    f"rita:Reader:{_hash('rita-pass')}\n"
)


def request(
    address: str = SHARED,
    authorization: bytes | None = None,
    certificateUser: str | None = None,
) -> DummyRequest:
    """A request from C{address} with this header and/or client certificate."""
    result = DummyRequest([b"jobs"])
    kind = IPv6Address if ":" in address else IPv4Address
    result.client = kind("TCP", address, 4321)
    if authorization is not None:
        result.requestHeaders.setRawHeaders(b"authorization", [authorization])
    if certificateUser is not None:
        certificate = realCertificate(("CN", certificateUser))
        result.channel = _Channel(_Transport(certificate))  # type: ignore[attr-defined]
    return result


def realCertificate(*attributes: tuple[str, str]) -> Any:
    """
    A pyOpenSSL certificate (as the TLS layer hands over) whose subject is
    C{attributes}, in order: ("CN", "ada"), ("OU", "x"), ...
    """
    from cryptography import x509
    from cryptography.x509.oid import NameOID
    from OpenSSL.crypto import X509

    oids = {"CN": NameOID.COMMON_NAME, "OU": NameOID.ORGANIZATIONAL_UNIT_NAME}
    name = x509.Name([x509.NameAttribute(oids[k], v) for k, v in attributes])
    certificate, _ = selfSigned(name)
    return X509.from_cryptography(certificate)


class _Transport:
    def __init__(self, certificate: Any) -> None:
        self._certificate = certificate

    def getPeerCertificate(self) -> Any:
        return self._certificate


class _Channel:
    def __init__(self, transport: _Transport) -> None:
        self.transport = transport


def basicHeader(name: str, password: str) -> bytes:
    """An C{Authorization: Basic} value."""
    return b"Basic " + base64.b64encode(f"{name}:{password}".encode())


def bearerHeader(token: str) -> bytes:
    """An C{Authorization: Bearer} value."""
    return b"Bearer " + token.encode("ascii")


class RecordingRunner:
    """A synchronous thread runner that records every call (the bcrypt checks)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []

    def __call__(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        self.calls.append((f, args))
        return maybeDeferred(f, *args)


class HeldRunner:
    """
    A thread runner that holds every call until L{release}: the bcrypt
    checks of concurrent logins, all in flight at once.
    """

    def __init__(self) -> None:
        self.held: list[tuple[Deferred[Any], Callable[..., Any], tuple[Any, ...]]] = []

    def __call__(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.held.append((d, f, args))
        return d

    def release(self) -> None:
        """Run the held calls and fire their Deferreds."""
        held, self.held = self.held, []
        for d, f, args in held:
            if not d.called:
                d.callback(f(*args))


class HostileAuthMixin:
    """
    Cheap (cost 4) users alice, bob and rita; the real portal, throttle and
    token signer on a L{Clock}; client certificates accepted.
    """

    clock: Clock
    runner: Any

    def makeAuthenticator(self, users: UserDatabase, runner: Any) -> Authenticator:
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.runner = runner
        self.throttle = LoginThrottle(self.clock, threshold=THRESHOLD)
        self.failures = 0
        self.signer = TokenSigner(KEY, self.clock, 3600.0)
        return Authenticator(
            makePortal(users, runner),
            self.countFailure,
            self.throttle,
            tokens=self.signer,
            certificates=True,
        )

    def countFailure(self) -> None:
        self.failures += 1

    def authenticate(
        self, authenticator: Authenticator, req: DummyRequest
    ) -> Deferred[User]:
        d = ensureDeferred(authenticator.authenticate(req))
        # Outcomes a test does not look at are still consumed.
        self.addCleanup(d.addErrback, lambda failure: None)  # type: ignore[attr-defined]
        return d


# -- Finding 1: the throttle race ---------------------------------------------


class ThrottleRaceTests(HostileAuthMixin, SynchronousTestCase):
    """
    Finding 1: 60 concurrent guesses from one address all got a bcrypt check
    although C{--login-failures} was 5; attempts in flight must count.
    """

    def setUp(self) -> None:
        self.users = UserDatabase.fromText(USERS_TEXT)
        self.held = HeldRunner()
        self.authenticator = self.makeAuthenticator(self.users, self.held)

    def guess(self, name: str, password: str, address: str = SHARED) -> Deferred[User]:
        return self.authenticate(
            self.authenticator, request(address, basicHeader(name, password))
        )

    def test_concurrentGuessesCostAtMostThreshold(self) -> None:
        """
        60 guesses in flight at once: only C{threshold} reach bcrypt; 32
        more wait for those to end (held back by checks in flight alone),
        the rest are 429 with Retry-After before any bcrypt; the 5 that ran
        are 401 once bcrypt answers, those that waited 429, and the address
        stays throttled.
        """
        results = [self.guess("rita", f"guess{n}") for n in range(60)]
        self.assertEqual(len(self.held.held), THRESHOLD)
        refused = [d for d in results if d.called]
        self.assertEqual(len(refused), 60 - THRESHOLD - 32)
        waiting = [d for d in results[THRESHOLD:] if not d.called]
        self.assertEqual(len(waiting), 32)
        for d in refused:
            error = self.failureResultOf(d, TooManyRequests).value
            assert isinstance(error, TooManyRequests)
            self.assertGreaterEqual(error.retryAfter, 1)
            # The wait, in the message a person reads too (not "later").
            self.assertEqual(
                error.message,
                f"too many failed logins: retry in {error.retryAfter} s",
            )
        self.held.release()
        for d in results[:THRESHOLD]:
            self.failureResultOf(d, Unauthorized)
        for d in waiting:
            self.failureResultOf(d, TooManyRequests)
        self.assertEqual(self.failures, THRESHOLD)
        self.failureResultOf(self.guess("rita", "one-more"), TooManyRequests)
        self.assertEqual(self.held.held, [])

    def test_manyNamesInFlight(self) -> None:
        """Spreading the guesses over many names does not get more checks."""
        results = [self.guess(f"user{n}", "guess") for n in range(60)]
        self.assertEqual(len(self.held.held), THRESHOLD)
        self.held.release()
        for d in results:
            self.assertIsNotNone(self.failureResultOf(d))

    def test_otherAddressUnaffected(self) -> None:
        """Guesses in flight from one address do not hold back another."""
        for n in range(THRESHOLD):
            self.guess("rita", f"guess{n}")
        d = self.guess("rita", "rita-pass", ELSEWHERE)
        self.assertEqual(len(self.held.held), THRESHOLD + 1)
        self.held.release()
        self.assertEqual(self.successResultOf(d).name, "rita")

    def test_loopbackRangeIsOneClient(self) -> None:
        """
        Every address of 127.0.0.0/8 (and ::1, and mapped ones) is one
        client: a local process (another user's job) may connect from any
        of them, and each was a new address with a throttle of its own.
        """
        addresses = [f"127.{n}.{n}.{n + 1}" for n in range(THRESHOLD)]
        for n, address in enumerate(addresses):
            self.guess(f"user{n}", "guess", address)
        self.assertEqual(len(self.held.held), THRESHOLD)
        others = [
            self.guess("x", "y", address)
            for address in ("127.200.1.1", "::1", "::ffff:127.3.2.1")
        ]
        self.assertEqual(len(self.held.held), THRESHOLD)  # they wait
        self.held.release()
        for d in others:
            self.failureResultOf(d, TooManyRequests)

    def test_anIPv6NetworkIsOneClient(self) -> None:
        """An IPv6 client is its /64 (a site's smallest network): its other
        addresses are not new clients; another /64 is."""
        for n in range(THRESHOLD):
            self.guess(f"user{n}", "guess", f"2001:db8:1:2::{n + 1:x}")
        same = self.guess("x", "y", "2001:db8:1:2:ffff::9")
        d = self.guess("rita", "rita-pass", "2001:db8:1:3::1")
        self.assertEqual(len(self.held.held), THRESHOLD + 1)
        self.held.release()
        self.assertEqual(self.successResultOf(d).name, "rita")
        self.failureResultOf(same, TooManyRequests)

    def test_successesInFlightGiveTheirCountBack(self) -> None:
        """
        Correct logins in flight count too, but once bcrypt accepts them they
        no longer count: only the failures remain against the address.
        """
        for name in ("alice", "bob", "rita"):
            self.guess(name, f"{name}-pass")
        self.guess("mallory", "x")
        self.guess("mallory", "y")
        z = self.guess("mallory", "z")  # waits for a check to end
        self.assertEqual(len(self.held.held), THRESHOLD)
        self.held.release()
        # Two failures remain: z's check is the third allowed before the
        # throttle, and two more.
        self.assertEqual(len(self.held.held), 1)
        self.held.release()
        self.failureResultOf(z, Unauthorized)
        for n in range(THRESHOLD - 3):
            self.guess("mallory", f"again{n}")
        self.assertEqual(len(self.held.held), THRESHOLD - 3)
        over = self.guess("mallory", "over")  # waits for them
        self.assertEqual(len(self.held.held), THRESHOLD - 3)
        self.held.release()
        self.failureResultOf(over, TooManyRequests)

    def test_abandonedAttemptCountsAsFailure(self) -> None:
        """
        A client that hangs up while bcrypt runs (the request's Deferred is
        cancelled) is counted as a failure: hanging up cannot free the slot
        for another check, and the throttle keeps no attempt in flight.
        """
        for n in range(THRESHOLD):
            self.guess("rita", f"guess{n}").cancel()
        self.failureResultOf(self.guess("rita", "more"), TooManyRequests)
        self.assertEqual(len(self.held.held), THRESHOLD)
        self.held.release()
        self.failureResultOf(self.guess("rita", "more"), TooManyRequests)
        self.assertTrue(
            all(entry.pending == 0 for entry in self.throttle._entries.values())
        )

    def test_unexpectedErrorEndsAttempt(self) -> None:
        """An error from the thread runner ends the attempt as a failure."""
        for n in range(THRESHOLD):
            d = self.guess("rita", f"guess{n}")
            held, _, _ = self.held.held.pop()
            held.errback(Failure(RuntimeError("pool broken")))
            self.failureResultOf(d, RuntimeError)
        self.failureResultOf(self.guess("rita", "more"), TooManyRequests)
        self.assertTrue(
            all(entry.pending == 0 for entry in self.throttle._entries.values())
        )


class InFlightThrottleTests(SynchronousTestCase):
    """L{LoginThrottle.begin} and L{LoginThrottle.finish} on their own."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.throttle = LoginThrottle(self.clock, threshold=THRESHOLD, window=900)

    def test_aClockSteppedBackOwesNothing(self) -> None:
        """
        A step of the system clock back by an hour, just after failures
        from an address (loopback: every local client), kept every user new
        to it out for the hour (Retry-After 3599; a fault round): a wait is
        never longer than the throttle's own delay.
        """
        for _ in range(THRESHOLD):
            self.throttle.failed("mallory", SHARED)
        self.clock.advance(2)
        self.clock.rightNow -= 3600
        self.assertLessEqual(self.throttle.retryAfter("rita", SHARED), 1.0)

    def test_staleFailuresDoNotCountWithAttemptsInFlight(self) -> None:
        """
        Failures older than the window are forgotten even while an attempt
        begun before they expired is still in flight.
        """
        for _ in range(THRESHOLD - 1):
            self.throttle.failed("rita", SHARED)
        self.clock.advance(899)
        self.assertEqual(self.throttle.begin("rita", SHARED), 0)
        self.clock.advance(2)
        self.assertEqual(self.throttle.begin("rita", SHARED), 0)

    def test_successKeepsOthersAttemptsInFlight(self) -> None:
        """
        alice logging in clears her pair's failures, but not the guesses
        for her that are still in flight from the same address.
        """
        self.throttle.succeeded("alice", SHARED)
        for _ in range(3):
            self.assertEqual(self.throttle.begin("alice", SHARED), 0)
        self.assertEqual(self.throttle.begin("alice", SHARED), 0)
        self.throttle.finish("alice", SHARED, True)
        for _ in range(THRESHOLD - 3):
            self.assertEqual(self.throttle.begin("alice", SHARED), 0)
        self.assertGreater(self.throttle.begin("alice", SHARED), 0)

    def test_finishedAttemptsLeaveNothingInFlight(self) -> None:
        """After every begun attempt is finished, none is pending."""
        for n in range(THRESHOLD):
            self.assertEqual(self.throttle.begin(f"u{n}", SHARED), 0)
        for n in range(THRESHOLD):
            self.throttle.finish(f"u{n}", SHARED, n % 2 == 0)
        self.assertEqual(
            [e.pending for e in self.throttle._entries.values()],
            [0] * len(self.throttle._entries),
        )
        address = self.throttle._entries[("address", SHARED)]
        self.assertEqual(address.count, THRESHOLD // 2)


class RealThreadsRaceTests(TestCase):
    """
    Finding 1 with real threads: bcrypt runs in a thread pool and is held
    until all 60 attempts are in flight.
    """

    def test_heldThreadsCostAtMostThreshold(self) -> Deferred[None]:
        """
        60 guesses from one address, their checks held in real threads
        until all have been made: C{threshold} bcrypt checks and 401s, the
        rest 429.
        """
        pool = ThreadPool(minthreads=0, maxthreads=10, name="hostile-auth")
        pool.start()
        self.addCleanup(pool.stop)
        gate = threading.Event()
        checks: list[bytes] = []
        lock = threading.Lock()

        def heldCheck(password: bytes, hashed: bytes, *padding: bytes) -> bool:
            with lock:
                checks.append(password)
            gate.wait(10)
            return _checkPassword(password, hashed, *padding)

        def runner(f: Callable[..., Any], *args: Any) -> Deferred[Any]:
            assert f is _checkPassword
            return deferToThreadPool(reactor, pool, heldCheck, *args)  # type: ignore[arg-type]

        clock = Clock()
        authenticator = Authenticator(
            makePortal(UserDatabase.fromText(USERS_TEXT), runner),
            throttle=LoginThrottle(clock, threshold=THRESHOLD),
        )
        results = [
            ensureDeferred(
                authenticator.authenticate(
                    request(SHARED, basicHeader("rita", f"guess{n}"))
                )
            )
            for n in range(60)
        ]
        gate.set()
        outcomes: list[type[Exception]] = []

        def collect(_: object) -> None:
            self.assertEqual(len(checks), THRESHOLD)
            self.assertEqual(outcomes.count(Unauthorized), THRESHOLD)
            self.assertEqual(outcomes.count(TooManyRequests), 60 - THRESHOLD)

        def outcome(failure: Failure) -> None:
            outcomes.append(failure.type)  # type: ignore[arg-type]

        for d in results:
            d.addErrback(outcome)
        return gatherResults(results).addCallback(collect)


class LiveThrottleRaceTests(TestCase):
    """Finding 1 as reported: 60 TLS connections guessing at the same moment."""

    timeout = 60

    async def test_concurrentGuessesOverTLS(self) -> None:
        """At most C{--login-failures} bad-password checks; the rest are 429."""
        server = LiveServer(self, f"--login-failures={THRESHOLD}")

        async def guess(n: int) -> int:
            response = await server.http.request(
                "GET", server.url + "/jobs", headers=basic("rita", f"guess{n}")
            )
            await treq.content(response)
            return int(response.code)

        codes = await gatherResults(
            [Deferred.fromCoroutine(guess(n)) for n in range(60)]
        )
        audit = self.auditEvents(server)
        badPassword = [
            e
            for e in audit
            if e["event"] == "auth.failure" and e.get("reason") == "bad password"
        ]
        self.assertLessEqual(len(badPassword), THRESHOLD, codes)
        self.assertEqual(codes.count(401), len(badPassword))
        self.assertEqual(codes.count(429), 60 - len(badPassword))

    def auditEvents(self, server: LiveServer) -> list[dict[str, Any]]:
        with open(os.path.join(server.stateDir, "audit.log")) as f:
            return [json.loads(line) for line in f]


# -- Finding 2: lock-out of a shared address --------------------------------


class SharedAddressTests(HostileAuthMixin, SynchronousTestCase):
    """
    Finding 2: 30 failures for a nonexistent name from an address made
    alice (correct password) and bob (valid token) get 429 from there.
    """

    def setUp(self) -> None:
        self.users = UserDatabase.fromText(USERS_TEXT)
        self.authenticator = self.makeAuthenticator(self.users, RecordingRunner())

    def auth(self, req: DummyRequest) -> Deferred[User]:
        return self.authenticate(self.authenticator, req)

    def burst(self, times: int = 30, name: str = "nobody", at: str = SHARED) -> None:
        """The attacker's failures from the shared address."""
        for n in range(times):
            d = self.auth(request(at, basicHeader(name, f"guess{n}")))
            self.assertIsNotNone(self.failureResultOf(d))

    def test_validTokenNotBlocked(self) -> None:
        """bob's valid bearer token works from the throttled address."""
        token, _ = self.signer.issue("bob", "Developer")
        self.burst()
        user = self.successResultOf(self.auth(request(SHARED, bearerHeader(token))))
        self.assertEqual(user.name, "bob")

    def test_invalidTokenStillRefused(self) -> None:
        """A forged token is still refused there (and costs no bcrypt)."""
        token, _ = self.signer.issue("bob", "Developer")
        self.burst()
        before = len(self.runner.calls)
        d = self.auth(request(SHARED, bearerHeader(token[:-2] + "xx")))
        self.failureResultOf(d, Unauthorized, TooManyRequests)
        self.assertEqual(len(self.runner.calls), before)

    def test_certificateNotBlocked(self) -> None:
        """A client certificate works from the throttled address."""
        self.burst()
        user = self.successResultOf(self.auth(request(SHARED, certificateUser="rita")))
        self.assertEqual(user.name, "rita")

    def test_userWhoLoggedInThereNotBlocked(self) -> None:
        """
        alice logged in from the shared address yesterday: the burst does
        not lock her out from there.
        """
        header = basicHeader("alice", "alice-pass")
        self.successResultOf(self.auth(request(SHARED, header)))
        self.clock.advance(86400)
        self.burst()
        user = self.successResultOf(self.auth(request(SHARED, header)))
        self.assertEqual(user.name, "alice")

    def test_trustedUsersFailureReadsAsEveryones(self) -> None:
        """
        From a throttled address, a name that had logged in there got to
        the password check and a wrong password was 401, where every other
        name, real or not, was 429: a local user listed the accounts in
        use on the host (attacker round 6b). It is 429 too; the right
        password still logs in.
        """
        header = basicHeader("alice", "alice-pass")
        self.successResultOf(self.auth(request(SHARED, header)))
        self.clock.advance(60)
        self.burst()
        for name in ("alice", "bob", "nobody"):
            d = self.auth(request(SHARED, basicHeader(name, "wrong")))
            self.failureResultOf(d, TooManyRequests)
        self.assertEqual(
            self.successResultOf(self.auth(request(SHARED, header))).name, "alice"
        )

    def test_throttledAnswerTakesAsLongAsACheck(self) -> None:
        """
        A throttled name's 429 came at once, and a trusted name's (let in
        to the password check) after bcrypt: the time told the names apart
        as the 401 had (the review's point). A throttled attempt is
        answered after about as long as checks take lately.
        """
        clock = self.clock

        def slowly(f: Callable[..., Any], *args: Any) -> Deferred[Any]:
            clock.advance(0.25)  # bcrypt's time, on this clock
            return maybeDeferred(f, *args)

        self.authenticator = self.makeAuthenticator(self.users, slowly)
        clock = self.clock
        for n in range(30):
            d = self.auth(request(SHARED, basicHeader("nobody", f"guess{n}")))
            clock.advance(0.5)  # (a throttled answer waits now)
            self.failureResultOf(d)
        d = self.auth(request(SHARED, basicHeader("bob", "wrong")))
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.assertNoResult(d)
        self.clock.advance(0.2)
        self.failureResultOf(d, TooManyRequests)

    def test_unknownCertificateThrottled(self) -> None:
        """
        A client certificate of a name not (or no longer) in the users file
        was refused with 401 however often, each a failed login and an
        audit line: it is throttled as a bad token is (attacker round 6b).
        A known user's certificate still works there.
        """
        self.burst(at=ELSEWHERE)
        self.failureResultOf(self.withCertificate(("CN", "carol")), TooManyRequests)
        user = self.successResultOf(self.withCertificate(("CN", "rita")))
        self.assertEqual(user.name, "rita")

    def test_trustExpires(self) -> None:
        """A login from there longer ago than the trust window does not count."""
        header = basicHeader("alice", "alice-pass")
        self.successResultOf(self.auth(request(SHARED, header)))
        self.clock.advance(31 * 86400)
        self.burst()
        self.failureResultOf(self.auth(request(SHARED, header)), TooManyRequests)

    def test_strangerStillThrottled(self) -> None:
        """
        bob never logged in from the shared address: per-address throttling
        still applies to him (the server cannot tell him from the guesser).
        """
        self.burst()
        d = self.auth(request(SHARED, basicHeader("bob", "bob-pass")))
        self.failureResultOf(d, TooManyRequests)

    def withCertificate(self, *attributes: tuple[str, str]) -> Deferred[User]:
        req = request(ELSEWHERE)
        req.channel = _Channel(_Transport(realCertificate(*attributes)))  # type: ignore[attr-defined]
        return self.auth(req)

    def test_certificateOfOneCommonName(self) -> None:
        """A real certificate with one CN (and other parts) is its user."""
        user = self.successResultOf(self.withCertificate(("OU", "x"), ("CN", "rita")))
        self.assertEqual(user.name, "rita")

    def test_certificateOfTwoCommonNamesRefused(self) -> None:
        """
        A certificate with two common names was the user of the first one
        (CN=alice, CN=rita: alice, a developer): which one is meant is anyone's
        guess, so it is none.
        """
        for attributes in (
            (("CN", "alice"), ("CN", "rita")),
            (("CN", "rita"), ("CN", "rita")),
        ):
            failure = self.failureResultOf(
                self.withCertificate(*attributes), Unauthorized
            )
            self.assertIn("exactly one common name", failure.value.message)

    def test_guessingTrustedUserStillThrottledPerPair(self) -> None:
        """
        Guessing alice's password from an address she logs in from is
        still throttled per (user, address): at most C{threshold} checks.
        """
        self.successResultOf(
            self.auth(request(SHARED, basicHeader("alice", "alice-pass")))
        )
        self.clock.advance(60)
        calls = len(self.runner.calls)
        for n in range(THRESHOLD):
            d = self.auth(request(SHARED, basicHeader("alice", f"guess{n}")))
            self.failureResultOf(d, Unauthorized)
        for n in range(10):
            d = self.auth(request(SHARED, basicHeader("alice", f"more{n}")))
            self.failureResultOf(d, TooManyRequests)
        self.assertEqual(len(self.runner.calls) - calls, THRESHOLD)

    def test_guessingTrustedUsersBoundedPerName(self) -> None:
        """
        Even when every user is trusted at the address, the guesser gets at
        most C{threshold} checks per name there.
        """
        for name in ("alice", "bob", "rita"):
            self.successResultOf(
                self.auth(request(SHARED, basicHeader(name, f"{name}-pass")))
            )
        calls = len(self.runner.calls)
        for name in ("alice", "bob", "rita"):
            for n in range(20):
                self.auth(request(SHARED, basicHeader(name, f"guess{n}")))
        self.assertEqual(len(self.runner.calls) - calls, 3 * THRESHOLD)

    def test_perUserGuessingStillThrottled(self) -> None:
        """
        Guessing alice's password from many addresses still throttles alice
        from a new address, but not from one she logs in from.
        """
        self.successResultOf(
            self.auth(request(SHARED, basicHeader("alice", "alice-pass")))
        )
        for n in range(4 * THRESHOLD):
            d = self.auth(request(f"10.0.0.{n}", basicHeader("alice", "guess")))
            self.failureResultOf(d, Unauthorized)
        d = self.auth(request("10.9.9.9", basicHeader("alice", "alice-pass")))
        self.failureResultOf(d, TooManyRequests)
        d = self.auth(request(SHARED, basicHeader("alice", "alice-pass")))
        self.assertEqual(self.successResultOf(d).name, "alice")


# -- Finding 7: user names enumerated by timing ------------------------------

#: Three users at cost 4 and one at cost 6 (the "one user at the hash tool's
#: default" case of the report, made cheap).
MIXED_TEXT = (
    f"a:Reader:{_hash('a-pass', 4)}\n"
    f"b:Reader:{_hash('b-pass', 4)}\n"
    f"c:Reader:{_hash('c-pass', 4)}\n"
    f"d:Reader:{_hash('d-pass', 6)}\n"
)


def bcryptWork(calls: list[tuple[Callable[..., Any], tuple[Any, ...]]]) -> int:
    """The bcrypt work the recorded checks do: the sum of 2**cost per hash."""
    work = 0
    for f, args in calls:
        assert f is _checkPassword
        for hashed in args[1:]:
            work += 2 ** cost(hashed)
    return work


class DummyHashTests(SynchronousTestCase):
    """
    Finding 7: with mixed costs a wrong password and an unknown name took
    different times, so names could be enumerated.
    """

    def test_dummyHashHasHighestCost(self) -> None:
        """The dummy hash has the highest cost in the file, not the commonest."""
        users = UserDatabase.fromText(MIXED_TEXT)
        self.assertEqual(cost(users.dummyHash), 6)
        self.assertFalse(bcrypt.checkpw(b"d-pass", users.dummyHash))

    def test_everyFailureCostsTheSame(self) -> None:
        """
        A wrong password for a cost-4 user, for the cost-6 user, and any
        password for an unknown name, cost the same bcrypt work: that of one
        check at the highest cost.
        """
        users = UserDatabase.fromText(MIXED_TEXT)
        work = {}
        for name in ("a", "c", "d", "nobody", "zz"):
            runner = RecordingRunner()
            authenticator = Authenticator(makePortal(users, runner))
            d = ensureDeferred(
                authenticator.authenticate(request(SHARED, basicHeader(name, "guess")))
            )
            self.failureResultOf(d, Unauthorized)
            work[name] = bcryptWork(runner.calls)
        self.assertEqual(set(work.values()), {2**6}, work)

    def test_successPaysNoPadding(self) -> None:
        """A correct password is not padded (the client knows the name exists)."""
        users = UserDatabase.fromText(MIXED_TEXT)
        calls: list[bytes] = []
        real = bcrypt.checkpw

        def counting(password: bytes, hashed: bytes) -> bool:
            calls.append(hashed)
            return real(password, hashed)

        self.patch(authModule.bcrypt, "checkpw", counting)
        runner = RecordingRunner()
        authenticator = Authenticator(makePortal(users, runner))
        d = ensureDeferred(
            authenticator.authenticate(request(SHARED, basicHeader("a", "a-pass")))
        )
        self.assertEqual(self.successResultOf(d).name, "a")
        self.assertEqual(len(calls), 1)
        calls.clear()
        d = ensureDeferred(
            authenticator.authenticate(request(SHARED, basicHeader("a", "wrong")))
        )
        self.failureResultOf(d, Unauthorized)
        self.assertEqual([cost(h) for h in calls], [4, 4, 5])

    def test_sameCostsNeedNoPadding(self) -> None:
        """With one cost throughout, a failure is still a single check."""
        users = UserDatabase.fromText(USERS_TEXT)
        runner = RecordingRunner()
        authenticator = Authenticator(makePortal(users, runner))
        d = ensureDeferred(
            authenticator.authenticate(request(SHARED, basicHeader("alice", "x")))
        )
        self.failureResultOf(d, Unauthorized)
        entry = users.lookup("alice")
        assert entry is not None
        self.assertEqual(runner.calls, [(_checkPassword, (b"x", entry.passwordHash))])


# -- Finding 8: tokens outliving their user's credentials --------------------


class TokenLifetimeTests(HostileAuthMixin, SynchronousTestCase):
    """
    Finding 8: a token survived its user's password change, and a removed
    user's tokens worked again when a user of that name was added back.
    """

    def setUp(self) -> None:
        self.users = UserDatabase.fromText(USERS_TEXT)
        self.authenticator = self.makeAuthenticator(self.users, RecordingRunner())

    def issue(self, name: str = "alice") -> str:
        """A token issued the way C{POST /tokens} issues one."""
        entry = self.authenticator._realm._users.lookup(name)
        assert entry is not None
        signer = self.authenticator.tokens
        assert signer is not None
        token, _ = signer.issue(entry.user.name, entry.user.role.value)
        return token

    def useToken(self, token: str, address: str = ELSEWHERE) -> Deferred[User]:
        return self.authenticate(
            self.authenticator, request(address, bearerHeader(token))
        )

    def assertRefused(self, token: str) -> None:
        self.failureResultOf(self.useToken(token), Unauthorized)

    def withUsers(self, **changed: UserEntry | None) -> UserDatabase:
        """The current users with some entries replaced (None: removed)."""
        current = self.authenticator._realm._users
        entries = []
        for name in ("alice", "bob", "rita"):
            entry = changed.get(name, current.lookup(name))
            if entry is not None:
                entries.append(entry)
        return UserDatabase(entries, current.dummyHash)

    def alice(self, password: str, role: Role = Role.DEVELOPER) -> UserEntry:
        return UserEntry(User("alice", role), _hash(password).encode("ascii"))

    def reload(self, users: UserDatabase) -> None:
        """What SIGHUP does, a moment later."""
        self.clock.advance(1)
        self.authenticator.replaceUsers(users)
        self.clock.advance(1)

    def test_tokenWorks(self) -> None:
        """Unchanged users: the token works, with no bcrypt."""
        user = self.successResultOf(self.useToken(self.issue()))
        self.assertEqual(user, User("alice", Role.DEVELOPER))
        self.assertEqual(self.runner.calls, [])

    def test_shorterTtlAppliesToTokensIssued(self) -> None:
        """
        The server restarted with a shorter --token-ttl: a token issued for
        longer dies when the new ttl says (it lived its old lifetime: a
        leaked year-long token could not be cut short but by changing the
        key, and every user's tokens with it).
        """
        self.signer.ttl = 366 * 86400.0
        token = self.issue()
        self.clock.advance(7200)
        restarted = TokenSigner(KEY, self.clock, 3600.0)
        restarted.bind(self.authenticator._credentialsOf)
        self.authenticator.tokens = restarted
        self.assertRefused(token)
        fresh = self.issue()
        self.assertEqual(self.successResultOf(self.useToken(fresh)).name, "alice")

    def test_passwordChangeInvalidates(self) -> None:
        """alice's password changes: her earlier token is 401."""
        token = self.issue()
        self.reload(self.withUsers(alice=self.alice("new-pass")))
        self.assertRefused(token)
        # A token issued after the change works.
        self.assertEqual(
            self.successResultOf(self.useToken(self.issue())).name, "alice"
        )

    def test_passwordChangeInvalidatesAfterRestart(self) -> None:
        """
        The password changed while the server was down: a new server with
        the same key refuses the old token too (nothing kept in memory).
        """
        token = self.issue()
        users = self.withUsers(alice=self.alice("new-pass"))
        restarted = Authenticator(
            makePortal(users, RecordingRunner()),
            tokens=TokenSigner(KEY, self.clock, 3600.0),
        )
        d = ensureDeferred(
            restarted.authenticate(request(ELSEWHERE, bearerHeader(token)))
        )
        self.failureResultOf(d, Unauthorized)

    def test_sameRoleNewHashInvalidates(self) -> None:
        """Rehashing the same password (new salt) is a change too."""
        token = self.issue()
        self.reload(self.withUsers(alice=self.alice("alice-pass")))
        self.assertRefused(token)

    def test_roleChangeInvalidates(self) -> None:
        """alice demoted (same hash): her Developer token is 401."""
        token = self.issue()
        current = self.users.lookup("alice")
        assert current is not None
        demoted = UserEntry(User("alice", Role.READER), current.passwordHash)
        self.reload(self.withUsers(alice=demoted))
        self.assertRefused(token)

    def test_removedThenReaddedWithNewPassword(self) -> None:
        """alice removed, then a new alice added: the old token stays dead."""
        token = self.issue()
        self.reload(self.withUsers(alice=None))
        self.assertRefused(token)
        self.reload(self.withUsers(alice=self.alice("another-pass")))
        self.assertRefused(token)

    def test_removedThenSameLineRestored(self) -> None:
        """
        alice removed, then her very same line put back: the token issued
        before the removal is not revived.
        """
        token = self.issue()
        original = self.users.lookup("alice")
        self.reload(self.withUsers(alice=None))
        self.reload(self.withUsers(alice=original))
        self.assertRefused(token)
        self.assertEqual(
            self.successResultOf(self.useToken(self.issue())).name, "alice"
        )

    def test_passwordChangedBack(self) -> None:
        """alice's password changed, then the old line restored: still 401."""
        token = self.issue()
        original = self.users.lookup("alice")
        self.reload(self.withUsers(alice=self.alice("new-pass")))
        self.reload(self.withUsers(alice=original))
        self.assertRefused(token)

    def test_otherUsersTokensSurvive(self) -> None:
        """Changing alice does not touch bob's token."""
        token = self.issue("bob")
        self.reload(self.withUsers(alice=self.alice("new-pass")))
        self.assertEqual(self.successResultOf(self.useToken(token)).name, "bob")

    def test_reloadWithoutChangeKeepsTokens(self) -> None:
        """Re-reading an unchanged users file keeps every token."""
        token = self.issue()
        self.reload(UserDatabase.fromText(USERS_TEXT))
        self.reload(self.withUsers())
        self.assertEqual(self.successResultOf(self.useToken(token)).name, "alice")

    def test_tokenForUnknownUserNeverVerifies(self) -> None:
        """A token issued for a name not in the users file is refused."""
        signer = self.authenticator.tokens
        assert signer is not None
        token, _ = signer.issue("mallory", "Admin")
        self.assertRefused(token)

    def test_tokenHoldsNoHash(self) -> None:
        """The token's readable claims reveal nothing of the password hash."""
        token = self.issue()
        entry = self.users.lookup("alice")
        assert entry is not None
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
        self.assertEqual(set(claims), {"u", "r", "e", "i", "n"})
        self.assertNotIn(entry.passwordHash[7:29].decode(), json.dumps(claims))

    def test_checkIsOneHMAC(self) -> None:
        """Checking a token is one HMAC and no bcrypt."""
        token = self.issue()
        digests = []
        real = hmac.digest

        def counting(key: bytes, message: bytes, digest: str) -> bytes:
            digests.append(message)
            return real(key, message, digest)

        self.patch(tokensModule.hmac, "digest", counting)
        self.successResultOf(self.useToken(token))
        self.assertEqual(len(digests), 1)
        self.assertEqual(self.runner.calls, [])


class TokenAuditTests(HostileAuthMixin, SynchronousTestCase):
    """A token refused because its user changed is audited with a reason."""

    def test_auditReason(self) -> None:
        users = UserDatabase.fromText(USERS_TEXT)
        authenticator = self.makeAuthenticator(users, RecordingRunner())
        path = self.mktemp()
        audit = authenticator._audit = AuditLog(path, self.clock)
        self.addCleanup(audit.close)
        signer = authenticator.tokens
        assert signer is not None
        token, _ = signer.issue("alice", "Developer")
        self.clock.advance(1)
        authenticator.replaceUsers(
            UserDatabase(
                [
                    UserEntry(User("alice", Role.DEVELOPER), _hash("x").encode()),
                ],
                users.dummyHash,
            )
        )
        self.clock.advance(1)
        d = ensureDeferred(
            authenticator.authenticate(request(ELSEWHERE, bearerHeader(token)))
        )
        self.failureResultOf(d, Unauthorized)
        audit.close()
        with open(path) as f:
            events = [json.loads(line) for line in f]
        self.assertEqual([e["event"] for e in events], ["auth.failure"])
        self.assertIn("password or role changed", events[0]["reason"])

    def test_auditReasonRemoved(self) -> None:
        users = UserDatabase.fromText(USERS_TEXT)
        authenticator = self.makeAuthenticator(users, RecordingRunner())
        path = self.mktemp()
        audit = authenticator._audit = AuditLog(path, self.clock)
        self.addCleanup(audit.close)
        signer = authenticator.tokens
        assert signer is not None
        token, _ = signer.issue("alice", "Developer")
        bob = users.lookup("bob")
        assert bob is not None
        authenticator.replaceUsers(UserDatabase([bob], users.dummyHash))
        d = ensureDeferred(
            authenticator.authenticate(request(ELSEWHERE, bearerHeader(token)))
        )
        self.failureResultOf(d, Unauthorized)
        audit.close()
        with open(path) as f:
            events = [json.loads(line) for line in f]
        self.assertIn("no such user", events[0]["reason"])


class SignerRevocationTests(SynchronousTestCase):
    """L{TokenSigner.revoke} and the claims it relies on."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.signer = TokenSigner(KEY, self.clock, 600.0)

    def test_revocationsForgottenAfterATokenLifetime(self) -> None:
        """A revocation is kept one token lifetime, so they cannot pile up."""
        for n in range(100):
            self.signer.revoke(f"user{n}")
            self.clock.advance(60)
        self.assertLessEqual(len(self.signer._revoked), 11)

    def test_revokedOnlyBefore(self) -> None:
        """A revocation refuses the tokens issued before it, not after."""
        old, _ = self.signer.issue("alice", "Developer")
        self.clock.advance(1)
        self.signer.revoke("alice")
        self.clock.advance(1)
        new, _ = self.signer.issue("alice", "Developer")
        self.assertRaises(tokensModule.InvalidToken, self.signer.verify, old)
        self.assertEqual(self.signer.verify(new), ("alice", "Developer"))

    def test_signedButIllTypedClaims(self) -> None:
        """Well-signed claims of the wrong types are refused, not trusted."""
        for claims in (
            {"u": "alice", "r": "Developer", "i": True, "e": 1_900_000_000},
            {"u": "alice", "r": "Developer", "i": "0", "e": 1_900_000_000},
            {"u": "alice", "r": "Developer", "e": 1_900_000_000},
            {"u": "alice", "r": "Developer", "i": 0, "e": True},
            {"u": 1, "r": "Developer", "i": 0, "e": 1_900_000_000},
            ["alice"],
        ):
            payload = tokensModule._b64(json.dumps(claims).encode())
            token = f"jw1.{payload}.{self.signer._mac(payload, b'')}"
            self.assertRaises(tokensModule.InvalidToken, self.signer.verify, token)

    def test_nonASCII(self) -> None:
        """A token with non-ASCII characters is refused, not an error."""
        token, _ = self.signer.issue("alice", "Developer")
        for bad in (token + "\u00e9", "jw1.abc.\u00e9\u00e9"):
            self.assertRaises(tokensModule.InvalidToken, self.signer.verify, bad)


class ReloadDuringCheckTests(HostileAuthMixin, SynchronousTestCase):
    """
    A password check that was running when the users file was reloaded
    (SIGHUP) judged by the file before: alice's old password let her in
    after its change, and could mint a token the new file did not revoke.
    """

    def setUp(self) -> None:
        self.users = UserDatabase.fromText(USERS_TEXT)
        self.held = HeldRunner()
        self.authenticator = self.makeAuthenticator(self.users, self.held)

    def changed(self, password: str) -> UserDatabase:
        entries = [
            UserEntry(User("alice", Role.DEVELOPER), _hash(password).encode("ascii"))
        ]
        return UserDatabase(entries, self.users.dummyHash)

    def test_oldPasswordRefusedAfterReload(self) -> None:
        d = self.authenticate(
            self.authenticator, request(ELSEWHERE, basicHeader("alice", "alice-pass"))
        )
        self.authenticator.replaceUsers(self.changed("new-pass"))
        self.held.release()
        # Checked again against the new hash (a reload that only hashed
        # the same password again must not refuse it): refused there.
        self.held.release()
        self.failureResultOf(d, Unauthorized)

    def test_unchangedUserStillLetIn(self) -> None:
        """A reload that leaves alice's password as it was lets her in."""
        d = self.authenticate(
            self.authenticator, request(ELSEWHERE, basicHeader("alice", "alice-pass"))
        )
        same = self.users.lookup("alice")
        assert same is not None
        self.authenticator.replaceUsers(UserDatabase([same], self.users.dummyHash))
        self.held.release()
        self.assertEqual(self.successResultOf(d).name, "alice")


class UnauthenticatedFloodTests(HostileAuthMixin, SynchronousTestCase):
    """
    Anyone, without credentials, grew the audit log without bound: each bad
    token was an C{auth.failure} line and never throttled, and each attempt
    refused by the throttle an C{auth.throttled} line (about 200 KiB/s from
    one connection).
    """

    def setUp(self) -> None:
        self.users = UserDatabase.fromText(USERS_TEXT)
        self.authenticator = self.makeAuthenticator(self.users, RecordingRunner())
        self.path = self.mktemp()
        self.authenticator._audit = AuditLog(self.path, self.clock)

    def auth(self, header: bytes) -> Deferred[User]:
        return self.authenticate(self.authenticator, request(SHARED, header))

    def events(self) -> list[dict[str, Any]]:
        with open(self.path) as f:
            return [json.loads(line) for line in f]

    def test_badTokensThrottled(self) -> None:
        """Past the threshold a bad token is a 429, and a valid one still passes."""
        for _ in range(THRESHOLD):
            self.failureResultOf(self.auth(bearerHeader("jw1.x.y")), Unauthorized)
        self.failureResultOf(self.auth(bearerHeader("jw1.x.y")), TooManyRequests)
        token, _ = self.signer.issue("bob", Role.DEVELOPER.value)
        self.assertEqual(
            self.successResultOf(self.auth(bearerHeader(token))).name, "bob"
        )

    def test_auditLinesBounded(self) -> None:
        """
        1,000 bad tokens and 1,000 bad passwords in a minute: the first
        failures, then one C{auth.throttled} line, which says how many were
        refused; a minute on, one more line with the count since.
        """
        for n in range(1000):
            self.auth(bearerHeader("jw1.x.y"))
            self.auth(basicHeader("nobody", f"guess{n}"))
        events = self.events()
        failures = [e for e in events if e["event"] == "auth.failure"]
        throttled = [e for e in events if e["event"] == "auth.throttled"]
        self.assertEqual(len(failures), THRESHOLD)
        self.assertEqual(len(throttled), 1)
        self.assertEqual(throttled[0]["refused"], 1)
        self.clock.advance(61)
        # (The first is a failure again, the throttle's delay over; the
        # rest are refused, and the first of those is reported.)
        for _ in range(10):
            self.auth(bearerHeader("jw1.x.y"))
        throttled = [e for e in self.events() if e["event"] == "auth.throttled"]
        self.assertEqual([e["refused"] for e in throttled], [1, 2000 - THRESHOLD])

    def test_lastRefusalsReported(self) -> None:
        """
        A client that stopped after a burst of refused attempts: its last
        minute of refusals was never audited (only a later refusal wrote
        the count). The minute report writes what is overdue, once.
        """
        for _ in range(100):
            self.auth(bearerHeader("jw1.x.y"))
        self.authenticator.reportRefusals()
        self.assertEqual(
            [e["refused"] for e in self.events() if e["event"] == "auth.throttled"],
            [1],
        )
        self.clock.advance(61)
        self.authenticator.reportRefusals()
        self.authenticator.reportRefusals()
        throttled = [e for e in self.events() if e["event"] == "auth.throttled"]
        self.assertEqual([e["refused"] for e in throttled], [1, 100 - THRESHOLD - 1])
        self.assertEqual(throttled[1]["client"], throttled[0]["client"])

    def test_tokenFailureNamesItsUserOnlyWhenSigned(self) -> None:
        """
        An expired token of bob's was audited with C{user: ""}, so an
        operator could not tell whose client kept sending it. A token whose
        signature holds names its user; a forged one names no one (its
        claims are the sender's words).
        """
        token, _ = self.signer.issue("bob", Role.DEVELOPER.value)
        forged = self.signer.issue("alice", Role.DEVELOPER.value)[0][:-2] + "xx"
        self.clock.advance(7200)
        self.failureResultOf(self.auth(bearerHeader(token)), Unauthorized)
        self.failureResultOf(self.auth(bearerHeader(forged)), Unauthorized)
        failures = [
            (e["user"], e["reason"])
            for e in self.events()
            if e["event"] == "auth.failure"
        ]
        self.assertEqual(
            failures,
            [
                ("bob", "token: token expired"),
                ("", "token: bad signature, or its user's password or role changed"),
            ],
        )


class LongNameTests(HostileAuthMixin, SynchronousTestCase):
    """
    Remembered credentials were looked up by the name cut to 64 characters
    (as logs keep it): once a user with a 64-character name had logged in,
    that name with any suffix and the same password was let in as them.
    """

    def test_suffixedNameRefused(self) -> None:
        long = "l" * 64
        users = UserDatabase.fromText(f"{long}:Reader:{_hash('long-pass')}\n")
        authenticator = Authenticator(
            makePortal(users, RecordingRunner(), VerifiedCredentials(Clock())),
        )
        header = basicHeader(long, "long-pass")
        first = self.authenticate(authenticator, request(ELSEWHERE, header))
        self.assertEqual(self.successResultOf(first).name, long)
        suffixed = basicHeader(long + "-not-a-user", "long-pass")
        d = self.authenticate(authenticator, request(ELSEWHERE, suffixed))
        self.failureResultOf(d, Unauthorized)


class GlobalCheckCapTests(HostileAuthMixin, SynchronousTestCase):
    """
    Password checks in flight were bounded per client only: guesses from
    many addresses each queued a bcrypt check, without end, in the thread
    pool the server's other work shares. Past C{maxChecks} in flight, a
    check is refused at once (503, Retry-After), before bcrypt and without
    counting as a failure of the client; remembered credentials, tokens
    and certificates need no check and still pass.
    """

    CAP = 3

    def setUp(self) -> None:
        self.users = UserDatabase.fromText(USERS_TEXT)
        self.held = HeldRunner()
        self.authenticator = self.makeAuthenticator(self.users, self.held)
        self.authenticator.maxChecks = self.CAP

    def guess(self, n: int, password: str = "guess") -> Deferred[User]:  # noqa: S107
        return self.authenticate(
            self.authenticator,
            request(f"198.51.{n // 250}.{n % 250 + 1}", basicHeader("rita", password)),
        )

    def test_checksInFlightBounded(self) -> None:
        """Guesses from many clients: at most C{CAP} bcrypt checks at once."""
        results = [self.guess(n) for n in range(40)]
        self.assertEqual(len(self.held.held), self.CAP)
        refused = [d for d in results if d.called]
        self.assertEqual(len(refused), 40 - self.CAP)
        for d in refused:
            error = self.failureResultOf(d, ServiceUnavailable).value
            assert isinstance(error, ServiceUnavailable)
            self.assertEqual(error.retryAfter, 1)
            self.assertIn("too many password checks", error.message)
        # Not failures of those clients: none is throttled for them.
        self.assertEqual(self.failures, 0)
        self.held.release()
        # The checks that ran ended: room again, for the right password.
        d = self.guess(100, "rita-pass")
        self.held.release()
        self.assertEqual(self.successResultOf(d).name, "rita")

    def test_hangingUpFreesNoSlot(self) -> None:
        """
        A client that hangs up cancels its request, but not the bcrypt call
        queued for it: the slot stays taken until that call has run (it was
        given back at once, and guesses that hung up queued without end).
        """
        guesses = [self.guess(n) for n in range(self.CAP)]
        for d in guesses:
            d.cancel()
        self.failureResultOf(self.guess(100), ServiceUnavailable)
        self.assertEqual(len(self.held.held), self.CAP)
        self.held.release()
        d = self.guess(101, "rita-pass")
        self.held.release()
        self.assertEqual(self.successResultOf(d).name, "rita")

    def test_busyAuditedOnceAMinutePerClient(self) -> None:
        """
        auth.busy lines are bounded like auth.throttled ones: the first,
        then one a minute with the count refused (anyone could write one
        line per request while the slots were taken).
        """
        path = self.mktemp()
        self.authenticator._audit = AuditLog(path, self.clock)
        for n in range(self.CAP):
            self.guess(n)
        for _ in range(1000):
            self.guess(500)
        self.clock.advance(61)
        self.guess(500)

        with open(path) as f:
            busy = [json.loads(line) for line in f]
        self.assertEqual([e["event"] for e in busy], ["auth.busy", "auth.busy"])
        self.assertEqual([e["refused"] for e in busy], [1, 1000])
        self.held.release()

    def test_tokensAndCertificatesNeedNoCheck(self) -> None:
        """With every check slot taken, a token and a certificate still pass."""
        for n in range(self.CAP):
            self.guess(n)
        token, _ = self.signer.issue("alice", Role.DEVELOPER.value)
        viaToken = self.authenticate(
            self.authenticator, request(ELSEWHERE, bearerHeader(token))
        )
        self.assertEqual(self.successResultOf(viaToken).name, "alice")
        viaCertificate = self.authenticate(
            self.authenticator, request(ELSEWHERE, certificateUser="bob")
        )
        self.assertEqual(self.successResultOf(viaCertificate).name, "bob")
        self.held.release()

    def test_rememberedCredentialsNeedNoCheck(self) -> None:
        """Credentials bcrypt accepted a moment ago pass with every slot taken."""
        self.authenticator = Authenticator(
            makePortal(self.users, self.held, VerifiedCredentials(self.clock)),
            maxChecks=self.CAP,
        )
        first = self.guess(0, "rita-pass")
        self.held.release()
        self.assertEqual(self.successResultOf(first).name, "rita")
        for n in range(1, self.CAP + 1):
            self.guess(n)
        again = self.guess(0, "rita-pass")
        self.assertEqual(self.successResultOf(again).name, "rita")
        self.held.release()
