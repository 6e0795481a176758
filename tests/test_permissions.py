"""Unit tests for L{jobworker.auth.permissions}: the one permission table."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from jobworker.auth.permissions import (
    PERMISSIONS,
    Permission,
    Role,
    Scope,
    User,
    authorize,
)
from jobworker.errors import Forbidden

#: The ownership cases: the job is the user's, someone else's, or not given
#: (the role-level check made before a job is looked up).
OWN = "own"
OTHER = "other"
NO_OWNER = "none"
CASES = (OWN, OTHER, NO_OWNER)

ALL_CASES = frozenset(CASES)
OWN_ONLY = frozenset({OWN, NO_OWNER})
NEVER: frozenset[str] = frozenset()

#: The specification, written independently of the table: for each role and
#: permission, the ownership cases that are allowed. Reader: jobs.get on all
#: jobs. Developer: jobs.get on all, jobs.create, and jobs.stop, jobs.logs,
#: jobs.delete and jobs.stdin on their own jobs only. Admin: everything on every
#: job, jobs.prioritize (a priority above the default), metrics.read
#: (GET /metrics) and server.drain (/drain), which no other role has but
#: Monitor its metrics.read, alone. Every role may get itself a token
#: (tokens.create) but Monitor.
SPEC: dict[Role, dict[Permission, frozenset[str]]] = {
    Role.READER: {
        Permission.GET: ALL_CASES,
        Permission.CREATE: NEVER,
        Permission.STOP: NEVER,
        Permission.LOGS: NEVER,
        Permission.DELETE: NEVER,
        Permission.STDIN: NEVER,
        Permission.PRIORITIZE: NEVER,
        Permission.METRICS: NEVER,
        Permission.TOKENS: ALL_CASES,
        Permission.DRAIN: NEVER,
    },
    Role.DEVELOPER: {
        Permission.GET: ALL_CASES,
        Permission.CREATE: ALL_CASES,
        Permission.STOP: OWN_ONLY,
        Permission.LOGS: OWN_ONLY,
        Permission.DELETE: OWN_ONLY,
        Permission.STDIN: OWN_ONLY,
        Permission.PRIORITIZE: NEVER,
        Permission.METRICS: NEVER,
        Permission.TOKENS: ALL_CASES,
        Permission.DRAIN: NEVER,
    },
    Role.ADMIN: {
        Permission.GET: ALL_CASES,
        Permission.CREATE: ALL_CASES,
        Permission.STOP: ALL_CASES,
        Permission.LOGS: ALL_CASES,
        Permission.DELETE: ALL_CASES,
        Permission.STDIN: ALL_CASES,
        Permission.PRIORITIZE: ALL_CASES,
        Permission.METRICS: ALL_CASES,
        Permission.TOKENS: ALL_CASES,
        Permission.DRAIN: ALL_CASES,
    },
    Role.MONITOR: {
        Permission.GET: NEVER,
        Permission.CREATE: NEVER,
        Permission.STOP: NEVER,
        Permission.LOGS: NEVER,
        Permission.DELETE: NEVER,
        Permission.STDIN: NEVER,
        Permission.PRIORITIZE: NEVER,
        Permission.METRICS: ALL_CASES,
        Permission.TOKENS: NEVER,
        Permission.DRAIN: NEVER,
    },
}


def ownerFor(user: User, case: str) -> str | None:
    """The owner argument for an ownership case."""
    if case == OWN:
        return user.name
    if case == OTHER:
        return "someone-else"
    return None


def allowed(user: User, permission: Permission, owner: str | None) -> bool:
    """True if authorize() lets it through, False if it raises Forbidden."""
    try:
        authorize(user, permission, owner)
    except Forbidden:
        return False
    return True


class PermissionTableTests(SynchronousTestCase):
    """The table has exactly the roles, permissions and scopes of the spec."""

    def test_valuesAreTheWireNames(self) -> None:
        """Permissions and roles carry the names used in docs and users file."""
        self.assertEqual(
            {p.value for p in Permission},
            {
                "jobs.create",
                "jobs.get",
                "jobs.stop",
                "jobs.logs",
                "jobs.delete",
                "jobs.stdin",
                "jobs.prioritize",
                "metrics.read",
                "tokens.create",
                "server.drain",
            },
        )
        self.assertEqual(
            {r.value for r in Role}, {"Reader", "Developer", "Admin", "Monitor"}
        )

    def test_everyRoleHasAnEntry(self) -> None:
        """Every role appears in the table."""
        self.assertEqual(set(PERMISSIONS), set(Role))

    def test_tableMatchesSpec(self) -> None:
        """The table grants exactly the permissions and scopes of the spec."""
        self.assertEqual(
            PERMISSIONS,
            {
                Role.READER: {Permission.GET: Scope.ALL, Permission.TOKENS: Scope.ALL},
                Role.DEVELOPER: {
                    Permission.GET: Scope.ALL,
                    Permission.CREATE: Scope.ALL,
                    Permission.STOP: Scope.OWN,
                    Permission.LOGS: Scope.OWN,
                    Permission.DELETE: Scope.OWN,
                    Permission.STDIN: Scope.OWN,
                    Permission.TOKENS: Scope.ALL,
                },
                Role.ADMIN: {
                    Permission.GET: Scope.ALL,
                    Permission.CREATE: Scope.ALL,
                    Permission.STOP: Scope.ALL,
                    Permission.LOGS: Scope.ALL,
                    Permission.DELETE: Scope.ALL,
                    Permission.STDIN: Scope.ALL,
                    Permission.PRIORITIZE: Scope.ALL,
                    Permission.METRICS: Scope.ALL,
                    Permission.TOKENS: Scope.ALL,
                    Permission.DRAIN: Scope.ALL,
                },
                Role.MONITOR: {Permission.METRICS: Scope.ALL},
            },
        )


class AuthorizeTests(SynchronousTestCase):
    """authorize() against the spec, for every role, permission and owner."""

    def test_everyCombinationMatchesSpec(self) -> None:
        """Every Role x Permission x ownership case is decided as specified."""
        checked = 0
        mismatches = []
        for role in Role:
            user = User(f"user-{role.value.lower()}", role)
            for permission in Permission:
                for case in CASES:
                    expected = case in SPEC[role][permission]
                    actual = allowed(user, permission, ownerFor(user, case))
                    checked += 1
                    if actual != expected:
                        mismatches.append((role, permission, case, actual))
        self.assertEqual(mismatches, [])
        self.assertEqual(checked, len(Role) * len(Permission) * len(CASES))

    def test_forbiddenHasMessage(self) -> None:
        """Every denial raises Forbidden (HTTP 403) with a non-empty message."""
        for role in Role:
            user = User("someone", role)
            for permission in Permission:
                for case in CASES:
                    if case in SPEC[role][permission]:
                        continue
                    error = self.assertRaises(
                        Forbidden, authorize, user, permission, ownerFor(user, case)
                    )
                    self.assertEqual(error.code, 403)
                    self.assertTrue(error.message.strip())
                    self.assertEqual(error.body(), {"error": error.message})

    def test_readerCannotCreate(self) -> None:
        """A Reader's denial names the missing permission."""
        error = self.assertRaises(
            Forbidden, authorize, User("rita", Role.READER), Permission.CREATE
        )
        self.assertIn("jobs.create", error.message)
        self.assertIn("Reader", error.message)

    def test_developerStopsOwnJob(self) -> None:
        """A Developer may stop their own job, and not another user's."""
        alice = User("alice", Role.DEVELOPER)
        self.assertTrue(allowed(alice, Permission.STOP, "alice"))
        self.assertFalse(allowed(alice, Permission.STOP, "bob"))

    def test_developerCannotStopOthersJob(self) -> None:
        """A Developer may not stop another user's job; the message says so."""
        error = self.assertRaises(
            Forbidden,
            authorize,
            User("bob", Role.DEVELOPER),
            Permission.STOP,
            owner="alice",
        )
        self.assertIn("own", error.message)

    def test_developerCannotReadOthersLogs(self) -> None:
        """A Developer may not read another user's job output."""
        self.assertRaises(
            Forbidden,
            authorize,
            User("bob", Role.DEVELOPER),
            Permission.LOGS,
            owner="alice",
        )

    def test_developerCannotDeleteOthersJob(self) -> None:
        """A Developer may not delete another user's job."""
        self.assertRaises(
            Forbidden,
            authorize,
            User("bob", Role.DEVELOPER),
            Permission.DELETE,
            owner="alice",
        )

    def test_developerGetsOthersJob(self) -> None:
        """A Developer may see any job's status, though not its output."""
        bob = User("bob", Role.DEVELOPER)
        self.assertTrue(allowed(bob, Permission.GET, "alice"))
        self.assertFalse(allowed(bob, Permission.LOGS, "alice"))

    def test_readerGetsAnyJob(self) -> None:
        """A Reader may see any job's status (own or not), and do nothing to it."""
        rita = User("rita", Role.READER)
        for owner in ("alice", "rita", None):
            self.assertTrue(allowed(rita, Permission.GET, owner), owner)
            self.assertFalse(allowed(rita, Permission.STOP, owner), owner)

    def test_readerCannotReadOwnLogs(self) -> None:
        """A Reader may not read logs, not even of a job recorded as theirs."""
        self.assertRaises(
            Forbidden,
            authorize,
            User("rita", Role.READER),
            Permission.LOGS,
            owner="rita",
        )

    def test_adminEverything(self) -> None:
        """An Admin may do everything on anyone's job."""
        ada = User("ada", Role.ADMIN)
        for permission in Permission:
            for owner in ("alice", "ada", None):
                self.assertTrue(allowed(ada, permission, owner), (permission, owner))

    def test_ownershipIsByExactName(self) -> None:
        """Ownership compares the exact name: a prefix or case change differs."""
        alice = User("alice", Role.DEVELOPER)
        for owner in ("Alice", "alice2", "alic", " alice"):
            self.assertFalse(allowed(alice, Permission.STOP, owner), owner)
