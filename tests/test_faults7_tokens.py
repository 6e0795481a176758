"""
Tokens issued while the server's clock was ahead (fault round 7): a step of
the clock back must not stretch a token past --token-ttl, nor let it
outlive its user's revocation.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from jobworker.auth.tokens import MAX_CLOCK_SKEW, InvalidToken, TokenSigner
from jobworker.auth.users import UserDatabase

from . import test_tokens
from .test_api import DEVELOPMENT_USERS, USERS, APITestCase

#: The --token-ttl of the reproduction.
TTL = 60.0


def step(clock: Clock, seconds: float) -> None:
    """Step C{clock} by C{seconds}, back too (an administrator's date -s)."""
    clock.rightNow += seconds


class FutureDatedTokenTests(SynchronousTestCase):
    """L{TokenSigner} with its clock stepped, as the fault round did."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.credentials = {"alice": b"alice's hash", "bob": b"bob's hash"}
        self.signer = TokenSigner(test_tokens.KEY, self.clock, TTL)
        self.signer.bind(self.credentials.get)

    def issuedAhead(self, seconds: float, name: str = "bob") -> str:
        """A token issued with the clock C{seconds} ahead, then stepped back."""
        step(self.clock, seconds)
        token, _ = self.signer.issue(name, "Developer")
        step(self.clock, -seconds)
        return token

    def test_issuedAnHourAheadRefused(self) -> None:
        """
        A token issued with the clock an hour ahead is refused once the
        clock is back, and stays refused past the ttl (it worked for the
        hour and a ttl).
        """
        token = self.issuedAhead(3600)
        self.assertRaises(InvalidToken, self.signer.verify, token)
        self.clock.advance(TTL + 10)
        error = self.assertRaises(InvalidToken, self.signer.verify, token)
        # Its signature holds: the refusal names its user, for the audit.
        self.assertEqual(error.user, "bob")

    def test_aheadBySkewAccepted(self) -> None:
        """
        A clock a little ahead at the issue (two servers, or a slew not
        yet done) is tolerated up to L{MAX_CLOCK_SKEW}, and the token still
        dies a ttl after its issue time.
        """
        token = self.issuedAhead(MAX_CLOCK_SKEW)
        self.assertEqual(self.signer.verify(token), ("bob", "Developer"))
        self.clock.advance(MAX_CLOCK_SKEW + TTL - 1)
        self.signer.verify(token)
        self.clock.advance(1)
        self.assertRaises(InvalidToken, self.signer.verify, token)

    def test_justPastTheSkewRefused(self) -> None:
        """One second more than the skew allowed: refused."""
        token = self.issuedAhead(MAX_CLOCK_SKEW + 1)
        self.assertRaises(InvalidToken, self.signer.verify, token)

    def test_revocationNotOutlivedAheadWithinSkew(self) -> None:
        """
        A token issued with the clock ahead (within the skew, so it is
        accepted) is revoked with its user: its issue time is after the
        revocation's now, but not after what the signer had stamped.
        """
        token = self.issuedAhead(MAX_CLOCK_SKEW / 2)
        self.signer.verify(token)
        self.clock.advance(1)
        del self.credentials["bob"]  # removed from the users file
        self.signer.revoke("bob")
        self.credentials["bob"] = b"bob's hash"  # and put back
        self.clock.advance(1)
        self.assertRaises(InvalidToken, self.signer.verify, token)
        # The rest of its ttl too.
        self.clock.advance(TTL - 2)
        self.assertRaises(InvalidToken, self.signer.verify, token)

    def test_revocationNotOutlivedAnHourAhead(self) -> None:
        """The reproduction's token, an hour ahead: refused throughout,
        revoked or not, until it would have expired."""
        token = self.issuedAhead(3600)
        del self.credentials["bob"]
        self.signer.revoke("bob")
        self.credentials["bob"] = b"bob's hash"
        self.clock.advance(2)
        self.assertRaises(InvalidToken, self.signer.verify, token)

    def test_revokedFarAheadTokenStaysRevoked(self) -> None:
        """
        The hour-ahead token, its user revoked and put back: once the clock
        has caught up with its issue time it is still refused (its issue
        time is after the revocation's now, but it was issued before).
        """
        token = self.issuedAhead(3600)
        del self.credentials["bob"]
        self.signer.revoke("bob")
        self.credentials["bob"] = b"bob's hash"
        self.clock.advance(3600)
        self.assertRaises(InvalidToken, self.signer.verify, token)

    def test_othersTokensAheadHoldNoLoginBack(self) -> None:
        """
        Another user's token issued an hour ahead does not keep a revoked
        user's new tokens out (what a revocation counts from is per user).
        """
        self.issuedAhead(3600, "alice")
        self.signer.revoke("bob")
        self.clock.advance(1)
        fresh, _ = self.signer.issue("bob", "Developer")
        self.assertEqual(self.signer.verify(fresh), ("bob", "Developer"))

    def test_aNewLoginAfterARevocationWorks(self) -> None:
        """
        With no clock step, a token issued a moment after its user's
        revocation works (the revocation does not reach into the skew).
        """
        self.signer.issue("bob", "Developer")
        self.signer.revoke("bob")
        self.clock.advance(1)
        fresh, _ = self.signer.issue("bob", "Developer")
        self.assertEqual(self.signer.verify(fresh), ("bob", "Developer"))


class FutureDatedTokenAPITests(APITestCase):
    """The reproduction through the API: /whoami's 200 became a 401."""

    # Not a subclass (nor imported by name): either would run every test of
    # TokenAPITests again.
    login = test_tokens.TokenAPITests.login
    bearer = test_tokens.TokenAPITests.bearer

    def test_futureDatedTokenRefused(self) -> None:
        """A token issued an hour ahead is 401 once the clock is back."""
        step(self.reactor, 3600)
        token = self.login("alice")
        step(self.reactor, -3600)
        self.assertError(self.bearer("GET", "/whoami", token), 401)
        self.reactor.advance(70)
        self.assertError(self.bearer("GET", "/whoami", token), 401)

    def test_removedAndRestoredUser(self) -> None:
        """
        alice removed and put back (two reloads of the users file): a token
        issued with the clock ahead (within the skew) is 401 like a normal
        one.
        """
        step(self.reactor, MAX_CLOCK_SKEW / 2)
        ahead = self.login("alice")
        step(self.reactor, -MAX_CLOCK_SKEW / 2)
        normal = self.login("alice")
        self.assertEqual(self.bearer("GET", "/whoami", ahead).code, 200)
        everyone = [
            entry
            for name in USERS
            if (entry := DEVELOPMENT_USERS.lookup(name)) is not None
        ]
        self.authenticator.replaceUsers(
            UserDatabase(
                [e for e in everyone if e.user.name != "alice"],
                DEVELOPMENT_USERS.dummyHash,
            )
        )
        self.authenticator.replaceUsers(
            UserDatabase(everyone, DEVELOPMENT_USERS.dummyHash)
        )
        self.reactor.advance(2)
        self.assertError(self.bearer("GET", "/whoami", normal), 401)
        self.assertError(self.bearer("GET", "/whoami", ahead), 401)
