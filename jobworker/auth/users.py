"""The user database: the users file format and the bundled development users."""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, replace

import bcrypt

from ..jobs.folders import readAtMost
from ..jobs.identity import Identity, IdentityError
from .names import USER_NAME
from .permissions import Role, User

#: The biggest users file read (a line is under 200 bytes: some 80,000 users).
MAX_USERS_FILE_BYTES = 16 * 1024 * 1024
_TOO_BIG = "larger than 16 MiB, the most a users file may hold"

_HASH = re.compile(r"^\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}$")
#: The costs bcrypt takes (C{bcrypt.gensalt} refuses others: a users file with
#: C{$2b$03$} or C{$2b$99$} ended the start in a traceback, and a SIGHUP in
#: silence, its old users kept).
MIN_COST = 4
MAX_COST = 31

#: The development users seeded when no --users file is given. Their
#: passwords are "<name>-pass"; they are public, so the server warns loudly.
DEVELOPMENT_USERS = """\
# name:role:bcrypt-hash   (passwords: alice-pass, bob-pass, rita-pass, ada-pass)
alice:Developer:$2b$10$Cjf7bE7zQ28.0B/HE1ZfLO..SRXQvt06wjyMS4QR4GgIv2vniW3Lm
bob:Developer:$2b$10$5BzLmImfxipRj/lOYigCrudDT5aFIgw2r.26Gbro7dKXepOSQ2nuS
rita:Reader:$2b$10$yjOq/BxW/toGDDh9LaLoc.DSg4pOp9Py/Fy.yPHRPSu7akadH8lNe
ada:Admin:$2b$10$a0h1Dh1nL1FagcvLmTqIfOVLj8GTINpbyFmJGiCFCvH0SP09plU66
"""


class UsersFileError(ValueError):
    """The users file cannot be parsed; the message names the line."""


@dataclass(frozen=True)
class UserEntry:
    """One line of the users file."""

    user: User
    passwordHash: bytes

    @property
    def credentials(self) -> bytes:
        """
        What the user's bearer tokens are bound to: the role and the
        password hash. A new password (even the same one hashed again) or a
        new role makes every earlier token invalid.
        """
        return self.user.role.value.encode("ascii") + b":" + self.passwordHash


def _cost(hashed: bytes) -> int:
    """The cost factor of a bcrypt hash."""
    return int(hashed[4:6])


def _unmatchableHash(cost: int) -> bytes:
    """
    A bcrypt hash of cost C{cost} that no password matches in practice (its
    checksum is all zero bits: a chance of 2**-184), made without running
    bcrypt; checking a password against it costs what a real hash of that
    cost costs.
    """
    return bcrypt.gensalt(cost) + b"." * 31


class UserDatabase:
    """
    Users by name, plus what makes a failed login cost the same whatever
    the name: a dummy hash of the highest cost in the file, checked for
    unknown names, and padding hashes checked after a wrong password for a
    user whose hash costs less (see L{padding}).
    """

    def __init__(self, entries: list[UserEntry], dummyHash: bytes) -> None:
        self._entries = {entry.user.name: entry for entry in entries}
        self.dummyHash = dummyHash
        #: The highest cost of any hash here (the dummy's included).
        self._maxCost = max(
            [_cost(dummyHash)] + [_cost(e.passwordHash) for e in entries]
        )
        self._padding = {
            cost: tuple(_unmatchableHash(k) for k in range(cost, self._maxCost))
            for cost in {_cost(e.passwordHash) for e in entries}
        }

    def lookup(self, name: str) -> UserEntry | None:
        """The entry for C{name}, or None."""
        return self._entries.get(name)

    def names(self) -> set[str]:
        """The names of all users."""
        return set(self._entries)

    def padding(self, entry: UserEntry) -> tuple[bytes, ...]:
        """
        Hashes to check after a wrong password for C{entry}, so that the
        failure costs one check at the highest cost, as an unknown name does:
        for cost M{c} below the highest M{m}, one hash each of cost M{c},
        M{c+1}, ..., M{m-1}, since M{2^c + (2^c + ... + 2^(m-1)) = 2^m}.
        Empty when the entry's hash has the highest cost.
        """
        return self._padding.get(_cost(entry.passwordHash), ())

    def __len__(self) -> int:
        return len(self._entries)

    def changesFrom(self, old: UserDatabase) -> dict[str, list[str]]:
        """
        What a reload made of the users of C{old} (a removed or demoted
        user left no trace but the count: operator round 41): the names
        C{added} and C{removed}, C{role} changes (C{"rita: Developer ->
        Reader"}), C{password} changes (a new hash: their tokens end) and
        C{account} changes (C{"bob: bob -> svc"}); empty lists left out.
        """
        changes: dict[str, list[str]] = {
            "added": sorted(set(self._entries) - set(old._entries)),
            "removed": sorted(set(old._entries) - set(self._entries)),
            "role": [],
            "password": [],
            "account": [],
        }
        for name in sorted(set(self._entries) & set(old._entries)):
            now, before = self._entries[name], old._entries[name]
            if now.user.role is not before.user.role:
                changes["role"].append(
                    f"{name}: {before.user.role.value} -> {now.user.role.value}"
                )
            if now.passwordHash != before.passwordHash:
                changes["password"].append(name)
            was, isNow = before.user.account, now.user.account
            if (was and was.label) != (isNow and isNow.label):
                changes["account"].append(
                    f"{name}: {was.label if was else '-'} -> "
                    f"{isNow.label if isNow else '-'}"
                )
        return {kind: names for kind, names in changes.items() if names}

    @classmethod
    def fromText(cls, text: str, source: str = "users file") -> UserDatabase:
        """
        Parse C{name:role:bcrypt-hash[:unix-user]} lines; blank lines and
        C{#} comments are ignored. The optional fourth field is the Unix
        account the user's jobs run as.

        @raise UsersFileError: on a malformed line, unknown role, bad hash
            (a cost bcrypt refuses too), duplicate name, or an account that
            does not exist, is root, or that this server cannot switch to.
        """
        entries: list[UserEntry] = []
        seen: set[str] = set()
        roles = {role.value: role for role in Role}
        # Lines end at a newline alone: str.splitlines also ended them at a
        # form feed, NEL or U+2028, and a line "commented out" with one of
        # those in it was a live user that grep '^name' did not find
        # (operator round 39). A byte-order mark is no part of a name.
        lines = text.removeprefix("\ufeff").split("\n")
        for number, raw in enumerate(lines, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            where = f"{source}, line {number}"
            parts = line.split(":")
            if len(parts) not in (3, 4):
                raise UsersFileError(
                    f"{where}: expected name:role:bcrypt-hash[:unix-user]"
                )
            name, roleName, hashText = parts[:3]
            account = _account(parts[3], where) if len(parts) == 4 else None
            if not USER_NAME.fullmatch(name):
                raise UsersFileError(f"{where}: invalid user name {name!r}")
            if name in seen:
                raise UsersFileError(f"{where}: duplicate user {name!r}")
            if roleName not in roles:
                raise UsersFileError(
                    f"{where}: unknown role {roleName!r} "
                    f"(one of {', '.join(sorted(roles))})"
                )
            match = _HASH.match(hashText)
            if match is None:
                raise UsersFileError(f"{where}: not a bcrypt hash")
            if not MIN_COST <= int(match.group(1)) <= MAX_COST:
                raise UsersFileError(
                    f"{where}: bcrypt cost {match.group(1)} is not between "
                    f"{MIN_COST:02d} and {MAX_COST}"
                )
            seen.add(name)
            entries.append(
                UserEntry(
                    User(name, roles[roleName], account), hashText.encode("ascii")
                )
            )
        if not entries:
            raise UsersFileError(f"{source}: no users defined")
        entries = _sharedAccountsMarked(entries)
        # The highest cost, not the commonest: with one user at cost 12 and
        # the rest at 10, a dummy of cost 10 made that user's wrong passwords
        # four times slower than unknown names (issue 14, finding 7).
        cost = max(_cost(entry.passwordHash) for entry in entries)
        return cls(entries, _unmatchableHash(cost))

    def accounts(self) -> dict[str, str]:
        """The mapped users and the Unix account of each."""
        return {
            name: entry.user.account.label
            for name, entry in self._entries.items()
            if entry.user.account is not None
        }

    @classmethod
    def fromFile(cls, path: str) -> UserDatabase:
        """
        Read a users file: a regular file (or a symlink to one) of at most
        L{MAX_USERS_FILE_BYTES}.

        @raise OSError: if it cannot be read.
        @raise UsersFileError: if it cannot be parsed, or is not a regular
            file (a FIFO would block the reading thread, and with it the
            shutdown; /dev/zero would fill the memory), or is too big.
        @raise UnicodeDecodeError: if it is not UTF-8.
        """
        return cls.fromText(_readUsersFile(path).decode("utf-8"), source=path)

    @classmethod
    def development(cls) -> UserDatabase:
        """The four public development users (see the README)."""
        return cls.fromText(DEVELOPMENT_USERS, source="development users")


def _readUsersFile(path: str) -> bytes:
    """
    The bytes of the users file C{path}, refusing what is not a regular
    file without waiting on it: the open does not block (O_NONBLOCK: a FIFO
    opens at once with no writer), then fstat decides, and the read stops
    past L{MAX_USERS_FILE_BYTES}. Symlinks are followed (operators use
    them); what counts is what they lead to.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UsersFileError(f"{path}: not a regular file ({_kind(st.st_mode)})")
        if st.st_size > MAX_USERS_FILE_BYTES:
            raise UsersFileError(f"{path}: {_TOO_BIG}")
        data = readAtMost(fd, MAX_USERS_FILE_BYTES)
        if len(data) > MAX_USERS_FILE_BYTES:
            # It grew while being read.
            raise UsersFileError(f"{path}: {_TOO_BIG}")
        return data
    finally:
        os.close(fd)


def _kind(mode: int) -> str:
    """What a non-regular file is, in words."""
    for test, name in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return f"file type {stat.S_IFMT(mode):o}"


def _sharedAccountsMarked(entries: list[UserEntry]) -> list[UserEntry]:
    """
    C{entries}, with each account that several users are mapped to (by
    uid) marked C{ownPidNamespace}: their jobs are different users'.
    """
    users: dict[int, int] = {}
    for entry in entries:
        if entry.user.account is not None:
            uid = entry.user.account.uid
            users[uid] = users.get(uid, 0) + 1
    return [
        entry
        if entry.user.account is None or users[entry.user.account.uid] < 2
        else replace(
            entry,
            user=replace(
                entry.user,
                account=replace(entry.user.account, ownPidNamespace=True),
            ),
        )
        for entry in entries
    ]


def _account(text: str, where: str) -> Identity:
    """The fourth field of a users file line: a Unix account to run jobs as."""
    if not text:
        raise UsersFileError(f"{where}: empty Unix account (omit the field)")
    try:
        account = Identity.ofAccount(text)
    except IdentityError as e:
        raise UsersFileError(f"{where}: {e}") from None
    if os.getuid() not in (0, account.uid):
        raise UsersFileError(
            f"{where}: cannot run jobs as {text!r}: the server is not root"
        )
    return account
