"""L{jobworker.auth.users}: the users file, development users; hash-password."""

from __future__ import annotations

import os
import subprocess
import sys

import bcrypt
from twisted.trial.unittest import SynchronousTestCase

from jobworker.auth.permissions import Role, User
from jobworker.auth.users import UserDatabase, UsersFileError

#: Cheap hashes (cost 4) so parsing tests stay fast.
HASH4 = bcrypt.hashpw(b"secret", bcrypt.gensalt(4)).decode("ascii")
HASH5 = bcrypt.hashpw(b"other", bcrypt.gensalt(5)).decode("ascii")

DEVELOPMENT = {
    "alice": Role.DEVELOPER,
    "bob": Role.DEVELOPER,
    "rita": Role.READER,
    "ada": Role.ADMIN,
}


def cost(hashed: bytes) -> int:
    """The cost factor of a bcrypt hash."""
    return int(hashed.split(b"$")[2])


class FromTextTests(SynchronousTestCase):
    """UserDatabase.fromText parses name:role:hash lines."""

    def assertLineError(self, text: str, line: int, fragment: str) -> None:
        """Assert parsing C{text} fails naming C{line} and C{fragment}."""
        error = self.assertRaises(
            UsersFileError, UserDatabase.fromText, text, source="users.txt"
        )
        self.assertIn(f"users.txt, line {line}:", str(error))
        self.assertIn(fragment, str(error))

    def test_parses(self) -> None:
        """Valid lines give users with their role and hash."""
        db = UserDatabase.fromText(
            f"# comment\n\nalice:Developer:{HASH4}\n  rita:Reader:{HASH4}  \n"
        )
        self.assertEqual(len(db), 2)
        alice = db.lookup("alice")
        assert alice is not None
        self.assertEqual(alice.user, User("alice", Role.DEVELOPER))
        self.assertEqual(alice.passwordHash, HASH4.encode("ascii"))
        rita = db.lookup("rita")
        assert rita is not None
        self.assertEqual(rita.user, User("rita", Role.READER))

    def test_lookupUnknown(self) -> None:
        """An unknown name looks up as None; lookup is case-sensitive."""
        db = UserDatabase.fromText(f"alice:Admin:{HASH4}\n")
        self.assertIsNone(db.lookup("bob"))
        self.assertIsNone(db.lookup("Alice"))

    def test_errorIsValueError(self) -> None:
        """UsersFileError is a ValueError."""
        self.assertTrue(issubclass(UsersFileError, ValueError))

    def test_badLine(self) -> None:
        """A line without exactly three fields names its line number."""
        self.assertLineError(
            f"# header\n\nalice:Developer:{HASH4}\nbob:Developer\n",
            4,
            "expected name:role:bcrypt-hash",
        )

    def test_tooManyFields(self) -> None:
        """A line with four fields is refused too."""
        self.assertLineError(f"alice:Developer:{HASH4}:nobody:extra\n", 1, "expected")

    def test_unknownRole(self) -> None:
        """An unknown role is refused and named, with the valid roles listed."""
        self.assertLineError(
            f"alice:Developer:{HASH4}\nbob:Root:{HASH4}\n", 2, "unknown role 'Root'"
        )
        error = self.assertRaises(
            UsersFileError, UserDatabase.fromText, f"bob:admin:{HASH4}"
        )
        self.assertIn("Admin, Developer, Monitor, Reader", str(error))

    def test_badHash(self) -> None:
        """Something that is not a bcrypt hash is refused."""
        for bad in ("plaintext", HASH4[:-1], "$1$abc$def", HASH4.replace("$2b", "$3b")):
            self.assertLineError(f"\nalice:Developer:{bad}\n", 2, "not a bcrypt hash")

    def test_duplicate(self) -> None:
        """A second line for the same name is refused at that line."""
        self.assertLineError(
            f"alice:Developer:{HASH4}\n#\nalice:Admin:{HASH4}\n",
            3,
            "duplicate user 'alice'",
        )

    def test_invalidName(self) -> None:
        """A name with forbidden characters is refused."""
        self.assertLineError(f"al ice:Developer:{HASH4}\n", 1, "invalid user name")
        self.assertLineError(f":Developer:{HASH4}\n", 1, "invalid user name")

    def test_empty(self) -> None:
        """A file with no users (only comments and blanks) is refused."""
        for text in ("", "\n\n", "# nobody\n   \n"):
            error = self.assertRaises(
                UsersFileError, UserDatabase.fromText, text, source="users.txt"
            )
            self.assertIn("users.txt", str(error))
            self.assertIn("no users", str(error))

    def test_dummyHashCost(self) -> None:
        """The dummy hash has the highest cost of the users' hashes."""
        db = UserDatabase.fromText(
            f"a:Reader:{HASH5}\nb:Reader:{HASH4}\nc:Reader:{HASH4}\n"
        )
        self.assertEqual(cost(db.dummyHash), 5)
        self.assertTrue(db.dummyHash.startswith(b"$2"))

    def test_dummyHashMatchesNoUserPassword(self) -> None:
        """The dummy hash is a valid bcrypt hash that the user's password fails."""
        db = UserDatabase.fromText(f"a:Reader:{HASH4}\n")
        self.assertFalse(bcrypt.checkpw(b"secret", db.dummyHash))


class DevelopmentUsersTests(SynchronousTestCase):
    """The bundled development users."""

    def setUp(self) -> None:
        self.db = UserDatabase.development()

    def test_usersAndRoles(self) -> None:
        """alice/bob are Developers, rita a Reader, ada an Admin; no others."""
        self.assertEqual(len(self.db), len(DEVELOPMENT))
        for name, role in DEVELOPMENT.items():
            entry = self.db.lookup(name)
            assert entry is not None, name
            self.assertEqual(entry.user, User(name, role))

    def test_passwords(self) -> None:
        """Each user's password is '<name>-pass'."""
        for name in DEVELOPMENT:
            entry = self.db.lookup(name)
            assert entry is not None
            self.assertTrue(
                bcrypt.checkpw(f"{name}-pass".encode(), entry.passwordHash), name
            )

    def test_wrongPasswordsFail(self) -> None:
        """Another user's password does not match."""
        alice = self.db.lookup("alice")
        assert alice is not None
        self.assertFalse(bcrypt.checkpw(b"bob-pass", alice.passwordHash))

    def test_dummyHashSameCost(self) -> None:
        """The dummy hash costs what every development user's hash costs."""
        costs = set()
        for name in DEVELOPMENT:
            entry = self.db.lookup(name)
            assert entry is not None
            costs.add(cost(entry.passwordHash))
        self.assertEqual(costs, {cost(self.db.dummyHash)})


class FromFileTests(SynchronousTestCase):
    """UserDatabase.fromFile reads a users file."""

    def test_missingFile(self) -> None:
        """A missing file raises OSError (not UsersFileError)."""
        path = os.path.join(self.mktemp(), "users")
        error = self.assertRaises(OSError, UserDatabase.fromFile, path)
        self.assertNotIsInstance(error, UsersFileError)

    def test_readsFile(self) -> None:
        """A file's users are loaded."""
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write(f"ada:Admin:{HASH4}\n")
        db = UserDatabase.fromFile(path)
        entry = db.lookup("ada")
        assert entry is not None
        self.assertEqual(entry.user.role, Role.ADMIN)

    def test_errorNamesFile(self) -> None:
        """Parse errors name the file path and line."""
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write("ada:Admin\n")
        error = self.assertRaises(UsersFileError, UserDatabase.fromFile, path)
        self.assertIn(f"{path}, line 1", str(error))


class HashPasswordTests(SynchronousTestCase):
    def hashPassword(
        self, given: bytes, *argv: str
    ) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [sys.executable, "-m", "jobworker.auth.hashpw", "--cost", "10", *argv],
            input=given,
            capture_output=True,
            timeout=60,
        )

    def test_fromAPipe(self) -> None:
        """
        A password piped in is one line, read once, with no warning about
        echo: the line printed verifies it.
        """
        done = self.hashPassword(b"s3cret pass\n", "--user", "carol")
        self.assertEqual((done.returncode, done.stderr), (0, b""))
        name, role, hashed = done.stdout.decode().strip().split(":")
        self.assertEqual((name, role), ("carol", "Developer"))
        self.assertTrue(bcrypt.checkpw(b"s3cret pass", hashed.encode()))

    def test_oddPipes(self) -> None:
        """
        A line that is not UTF-8, one too long (however long: it is not all
        read), CRLF, and a closed stdin: one line each, never a traceback.
        """
        done = self.hashPassword(b"p\xffw\n")
        self.assertEqual(
            (done.returncode, done.stderr),
            (1, b"jobworker-hash-password: the password is not UTF-8\n"),
        )
        for given in (b"x" * 73 + b"\n", b"y" * 5_000_000):
            done = self.hashPassword(given)
            self.assertEqual(
                (done.returncode, done.stderr),
                (1, b"jobworker-hash-password: a password must be 1 to 72 bytes\n"),
            )
        done = self.hashPassword(b"crlf\r\n")
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertTrue(bcrypt.checkpw(b"crlf", done.stdout.strip()))
        closed = subprocess.run(
            [sys.executable, "-m", "jobworker.auth.hashpw", "--cost", "10"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=60,
            preexec_fn=lambda: os.close(0),
        )
        self.assertEqual(
            (closed.returncode, closed.stderr),
            (1, b"jobworker-hash-password: no password given\n"),
        )

    def test_nothingPiped(self) -> None:
        """An empty pipe or line is refused in one line, exit 1."""
        for given in (b"", b"\n"):
            done = self.hashPassword(given)
            self.assertEqual(done.returncode, 1)
            self.assertEqual(
                done.stderr, b"jobworker-hash-password: no password given\n"
            )
            self.assertEqual(done.stdout, b"")

    def test_roleWithoutUserRefused(self) -> None:
        """
        --role without --user printed a bare hash, the role silently
        dropped: a usage error (exit 2), before any password is read.
        """
        done = self.hashPassword(b"pass\n", "--role", "Admin")
        self.assertEqual(done.returncode, 2, done.stderr)
        self.assertIn(b"--role needs --user", done.stderr)
        self.assertEqual(done.stdout, b"")
