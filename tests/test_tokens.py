"""Bearer tokens: the signer, and the API accepting and refusing them."""

from __future__ import annotations

import base64
import json
import os
import stat
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SynchronousTestCase, TestCase

from jobworker.auth.audit import AuditLog
from jobworker.auth.permissions import Role
from jobworker.auth.tokens import (
    MAX_TOKEN_CHARS,
    InvalidToken,
    TokenSigner,
    fingerprint,
    loadOrCreateKey,
)
from jobworker.auth.users import UserDatabase, UserEntry

from .support import CA, JW, LiveServer
from .test_api import (
    DEVELOPMENT_USERS,
    NOBODY,
    USERS,
    APITestCase,
    RoleMatrixTests,
    authHeaders,
)
from .test_auditflood import audit

KEY = b"k" * 32


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class SignerTests(SynchronousTestCase):
    """L{TokenSigner}: what verifies and what does not."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.signer = TokenSigner(KEY, self.clock, 600.0)

    def test_roundTrip(self) -> None:
        """A fresh token verifies to the user and role it was issued for."""
        token, expires = self.signer.issue("alice", "Developer")
        self.assertEqual(self.signer.verify(token), ("alice", "Developer"))
        self.assertEqual(expires, 1_800_000_600)
        self.assertTrue(token.startswith("jw1."))

    def test_tokensDiffer(self) -> None:
        """Two tokens for the same user at the same moment differ (nonce)."""
        first, _ = self.signer.issue("alice", "Developer")
        second, _ = self.signer.issue("alice", "Developer")
        self.assertNotEqual(first, second)

    def test_expires(self) -> None:
        """A token is refused once its lifetime has passed, not before."""
        token, _ = self.signer.issue("alice", "Developer")
        self.clock.advance(599)
        self.signer.verify(token)
        self.clock.advance(1)
        self.assertRaises(InvalidToken, self.signer.verify, token)

    def test_otherKey(self) -> None:
        """A token signed under another key (a key change) is refused."""
        token, _ = self.signer.issue("alice", "Developer")
        other = TokenSigner(b"x" * 32, self.clock, 600.0)
        self.assertRaises(InvalidToken, other.verify, token)

    def test_forgedClaims(self) -> None:
        """Rewriting the claims (role Admin, later expiry) breaks the signature."""
        token, _ = self.signer.issue("rita", "Reader")
        prefix, payload, mac = token.split(".")
        claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
        claims["r"] = "Admin"
        claims["e"] += 10**6
        forged = f"{prefix}.{_b64(json.dumps(claims).encode())}.{mac}"
        self.assertRaises(InvalidToken, self.signer.verify, forged)

    def test_malformed(self) -> None:
        """Garbage of every shape is an InvalidToken, never another error."""
        token, _ = self.signer.issue("alice", "Developer")
        _prefix, payload, mac = token.split(".")
        unsignedPayload = _b64(b"not json")
        for bad in (
            "",
            "jw1",
            "jw1..",
            "jw2." + payload + "." + mac,
            token + "x",
            token[:-2],
            f"jw1.{payload}",
            "jw1.\u00e9\u00e9.abc",
            f"jw1.{unsignedPayload}.{self.signer._mac(unsignedPayload, b'')}",
            "a" * (MAX_TOKEN_CHARS + 1),
        ):
            self.assertRaises(InvalidToken, self.signer.verify, bad)

    def test_fingerprintIsNotTheToken(self) -> None:
        """The audit name of a token is short and reveals none of it."""
        token, _ = self.signer.issue("alice", "Developer")
        name = fingerprint(token)
        self.assertEqual(len(name), 12)
        self.assertNotIn(name, token)


class KeyFileTests(SynchronousTestCase):
    """L{loadOrCreateKey}."""

    def test_createdPrivateAndKept(self) -> None:
        """The key is made once, 0600, and read back unchanged."""
        path = self.mktemp()
        key = loadOrCreateKey(path)
        self.assertEqual(len(key), 32)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(loadOrCreateKey(path), key)

    def test_keyOthersMayReadRefused(self) -> None:
        """
        A key its group or others may read is refused (it was used without
        a word): with it and a user's line of the users file, anyone who
        read it could sign that user's tokens, an admin's among them.
        """
        path = self.mktemp()
        loadOrCreateKey(path)
        os.chmod(path, 0o644)
        error = self.assertRaises(ValueError, loadOrCreateKey, path)
        self.assertIn("permissions 0644 are too open", str(error))
        self.assertIn(f"chmod 600 {path}", str(error))

    def test_shortKeyRefused(self) -> None:
        """A file with too short a key is an error, not a weak key."""
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"short")
        self.assertRaises(ValueError, loadOrCreateKey, path)


class BearerRoleMatrixTests(RoleMatrixTests):
    """
    The whole route x role matrix again, each user authenticated by a bearer
    token: every route accepts one, except POST /tokens (no token may
    extend its own life).
    """

    EXPECTED = {
        **RoleMatrixTests.EXPECTED,
        "POST /tokens": {"alice": 403, "bob": 403, "rita": 403, "ada": 403, None: 401},
    }

    def setUp(self) -> None:
        super().setUp()
        signer = self.authenticator.tokens
        assert signer is not None
        self.tokens = {
            user: signer.issue(user, entry.user.role.value)[0]
            for user in USERS
            if (entry := DEVELOPMENT_USERS.lookup(user)) is not None
        }

    def credentials(self, user: str | None, password: str | None) -> dict[bytes, Any]:
        if user is None or password is not None:
            return authHeaders(user, password)
        return {b"authorization": [f"Bearer {self.tokens[user]}".encode()]}


class TokenAPITests(APITestCase):
    """POST /tokens and the life of a token through the API."""

    def setUp(self) -> None:
        super().setUp()
        self.auditPath = self.mktemp()
        self.api._auditLog = self.audit = AuditLog(self.auditPath, self.reactor)
        self.authenticator._audit = self.audit
        self.addCleanup(self.audit.close)

    def login(self, user: str) -> str:
        response = self.call("POST", "/tokens", user)
        self.assertEqual(response.code, 201, response.body)
        self.assertEqual(response.header(b"cache-control"), b"no-store")
        body = response.json()
        self.assertEqual(body["user"], user)
        self.assertTrue(body["expires_at"].endswith("Z"))
        token: str = body["token"]
        return token

    def bearer(self, method: str, path: str, token: str, **kwargs: Any) -> Any:
        self.credentials = lambda user, password: {  # type: ignore[method-assign]
            b"authorization": [f"Bearer {token}".encode()]
        }
        try:
            return self.call(method, path, "alice", **kwargs)
        finally:
            del self.credentials

    def test_tokenActsAsItsUser(self) -> None:
        """A job created with alice's token is alice's."""
        token = self.login("alice")
        response = self.bearer("POST", "/jobs", token, body={"command": "true"})
        self.assertEqual(response.code, 201, response.body)
        self.assertEqual(response.json()["owner"], "alice")

    def test_expiredTokenRefused(self) -> None:
        """After the TTL the token is 401."""
        token = self.login("alice")
        self.reactor.advance(3599)
        self.assertEqual(self.bearer("GET", "/jobs", token).code, 200)
        self.reactor.advance(1)
        self.assertError(self.bearer("GET", "/jobs", token), 401)

    def test_keyChangeInvalidates(self) -> None:
        """A new signing key: every earlier token is 401."""
        token = self.login("alice")
        self.authenticator.tokens = TokenSigner(b"n" * 32, self.reactor, 3600.0)
        self.assertError(self.bearer("GET", "/jobs", token), 401)

    def test_removedUserInvalidates(self) -> None:
        """A user removed from the users file: their token is 401."""
        token = self.login("alice")
        others = [
            entry
            for name in ("bob", "rita", "ada")
            if (entry := DEVELOPMENT_USERS.lookup(name)) is not None
        ]
        self.authenticator.replaceUsers(
            UserDatabase(others, DEVELOPMENT_USERS.dummyHash)
        )
        self.assertError(self.bearer("GET", "/jobs", token), 401)

    def test_roleChangeInvalidates(self) -> None:
        """alice demoted to Reader: her Developer token is 401, not a Reader."""
        token = self.login("alice")
        entries = []
        for name in USERS:
            entry = DEVELOPMENT_USERS.lookup(name)
            assert entry is not None
            if name == "alice":
                entry = UserEntry(
                    type(entry.user)("alice", Role.READER), entry.passwordHash
                )
            entries.append(entry)
        self.authenticator.replaceUsers(
            UserDatabase(entries, DEVELOPMENT_USERS.dummyHash)
        )
        self.assertError(self.bearer("GET", "/jobs", token), 401)
        # A new login (a moment later) gets a Reader token, which works as a
        # Reader. (One issued at the very instant of the change is refused.)
        self.reactor.advance(1)
        fresh = self.login("alice")
        self.assertEqual(self.bearer("GET", "/jobs", fresh).code, 200)
        self.assertError(
            self.bearer("POST", "/jobs", fresh, body={"command": "true"}), 403
        )

    def test_tamperedTokenRefused(self) -> None:
        """One changed character: 401."""
        token = self.login("rita")
        flipped = token[:-1] + ("A" if token[-1] != "A" else "B")
        self.assertError(self.bearer("GET", "/jobs", flipped), 401)

    def test_tokenCannotIssueTokens(self) -> None:
        """POST /tokens with a bearer token is 403: tokens do not self-renew."""
        token = self.login("alice")
        self.assertError(self.bearer("POST", "/tokens", token), 403)

    def test_wrongPasswordGetsNoToken(self) -> None:
        """POST /tokens with a wrong password is 401."""
        self.assertError(self.call("POST", "/tokens", "alice", password="x"), 401)

    def test_auditNamesTokenNeverHoldsIt(self) -> None:
        """token.issue is audited by fingerprint; neither token nor password leak."""
        token = self.login("alice")
        self.bearer("GET", "/jobs", token + "x")
        with open(self.auditPath) as f:
            text = f.read()
        events = [json.loads(line) for line in text.splitlines()]
        issued = [e for e in events if e["event"] == "token.issue"]
        self.assertEqual(len(issued), 1)
        self.assertEqual(issued[0]["user"], "alice")
        self.assertEqual(issued[0]["token"], fingerprint(token))
        self.assertIn("auth.failure", [e["event"] for e in events])
        self.assertNotIn(token.split(".")[2], text)
        self.assertNotIn("alice-pass", text)

    def test_noCredentialsNoToken(self) -> None:
        """POST /tokens as nobody is 401."""
        self.assertError(self.call("POST", "/tokens", NOBODY), 401)


class LoginCLITests(TestCase):
    """C{jw login} / C{jw logout} against a real server."""

    timeout = 60

    def setUp(self) -> None:
        self.server = LiveServer(self)
        self.config = os.path.abspath(self.mktemp())
        self.tokensFile = os.path.join(self.config, "jobworker", "tokens.json")

    def jw(self, *args: str, password: str | None = None, user: str = "bob") -> Any:
        env = {
            "PATH": os.environ.get("PATH", ""),
            "JW_SERVER": self.server.url,
            "JW_CA": CA,
            "JW_USER": user,
            "XDG_CONFIG_HOME": self.config,
        }
        if password is not None:
            env["JW_PASSWORD"] = password
        return getProcessOutputAndValue(
            JW, list(args), env=env, reactor=reactor, path=self.config
        )

    async def test_loginThenUseThenLogout(self) -> None:
        """The token is kept 0600, used without a password, and deleted."""
        os.makedirs(self.config)
        _, err, code = await self.jw("login", password="bob-pass")
        self.assertEqual(code, 0, err)
        self.assertIn(b"logged in to", err)
        self.assertEqual(stat.S_IMODE(os.stat(self.tokensFile).st_mode), 0o600)
        with open(self.tokensFile) as f:
            saved = json.load(f)[self.server.url]
        self.assertEqual(saved["user"], "bob")
        self.assertNotIn("bob-pass", json.dumps(saved))
        # No password, no terminal: the token does it.
        out, err, code = await self.jw("exec", "--json", "--", "true")
        self.assertEqual(code, 0, err)
        self.assertEqual(json.loads(out)["owner"], "bob")
        _, err, code = await self.jw("logout")
        self.assertEqual(code, 0, err)
        self.assertFalse(os.path.exists(self.tokensFile))
        _, err, code = await self.jw("list")
        self.assertEqual(code, 2)
        self.assertIn(b"no terminal to ask for credentials", err)

    async def test_tokenOnlyForItsUser(self) -> None:
        """bob's saved login is not used when JW_USER names someone else."""
        os.makedirs(self.config)
        _, err, code = await self.jw("login", password="bob-pass")
        self.assertEqual(code, 0, err)
        _, err, code = await self.jw("list", user="alice")
        self.assertEqual(code, 2)
        self.assertIn(b"no terminal to ask for credentials", err)
        _, err, code = await self.jw("list")
        self.assertEqual(code, 0, err)

    async def test_wrongPasswordNoToken(self) -> None:
        """A failed login keeps nothing and exits non-zero with one line."""
        os.makedirs(self.config)
        _out, err, code = await self.jw("login", password="wrong")
        self.assertEqual(code, 1)
        self.assertEqual(len(err.strip().splitlines()), 1)
        self.assertFalse(os.path.exists(self.tokensFile))

    async def test_refusedTokenForgotten(self) -> None:
        """A token the server refuses (new key) is dropped with a hint."""
        os.makedirs(self.config)
        _, err, code = await self.jw("login", password="bob-pass")
        self.assertEqual(code, 0, err)
        with open(os.path.join(self.server.stateDir, "token.key"), "wb") as f:
            f.write(b"n" * 32)
        await self.server.stop()
        self.server = LiveServer(self, stateDir=self.server.stateDir)
        # The saved token is keyed by URL: move it to the new server's.
        with open(self.tokensFile) as f:
            tokens = json.load(f)
        with open(self.tokensFile, "w") as f:
            json.dump({self.server.url: next(iter(tokens.values()))}, f)
        _out, err, code = await self.jw("list")
        self.assertEqual(code, 1)
        self.assertIn(b"run jw login", err)
        self.assertFalse(os.path.exists(self.tokensFile))

    async def test_refusedTokenForgottenWithSeveralIds(self) -> None:
        """
        C{jw status/stop/rm ID ID} with a token the server refuses: the
        token is forgotten with the hint, once, as for one id; it was taken
        for each id's failure and kept. And one request is refused, not one
        per id (each counts against the address at the login throttle).
        """
        os.makedirs(self.config)
        first = await self.server.createJob("true")
        second = await self.server.createJob("true")
        for verb in ("status", "stop", "rm"):
            _, err, code = await self.jw("login", password="bob-pass")
            self.assertEqual(code, 0, err)
            with open(self.tokensFile) as f:
                tokens = json.load(f)
            tokens[self.server.url]["token"] += "x"  # its signature fails
            with open(self.tokensFile, "w") as f:
                json.dump(tokens, f)
            before = len(audit(self.server, "auth.failure"))
            _out, err, code = await self.jw(verb, first["id"], second["id"])
            self.assertEqual(len(audit(self.server, "auth.failure")), before + 1, verb)
            self.assertEqual(code, 1, (verb, err))
            self.assertEqual(err.count(b"run jw login"), 1, (verb, err))
            self.assertNotIn(first["id"].encode(), err, verb)
            self.assertFalse(os.path.exists(self.tokensFile), verb)

    async def test_expiredTokenAsksAgain(self) -> None:
        """An expired saved token is not sent: jw asks for the password."""
        os.makedirs(os.path.dirname(self.tokensFile))
        with open(self.tokensFile, "w") as f:
            json.dump(
                {self.server.url: {"token": "jw1.x.y", "expires": 1.0, "user": "bob"}},
                f,
            )
        os.chmod(self.tokensFile, 0o600)  # as jw writes it: others' is refused
        _, err, code = await self.jw("list")
        self.assertEqual(code, 2)
        self.assertIn(b"no terminal to ask for credentials", err)
        # With the password given (JW_PASSWORD), it is what is sent: the
        # kept login is not renewed by it (new user round 39: a plain verb
        # said "logged in" and kept a token no one asked for).
        _, err, code = await self.jw("list", password="bob-pass")
        self.assertEqual(code, 0, err)
        self.assertNotIn(b"logged in", err)
        _out, err, code = await self.jw("list")
        self.assertEqual(code, 2, err)
