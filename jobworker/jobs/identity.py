"""
Who a job runs as: a user's mapped Unix account, a dynamic uid of its own,
the shared C{--run-as} account, or the server's own user.

The idea of dynamic identities is systemd's C{DynamicUser=}: a uid from a
range no passwd or group entry uses, held by one live job at a time (a lock
file per uid, shared by every jobworker server of the machine, so two servers
never hand out the same uid), and given back only once nothing of the job is
left.
"""

from __future__ import annotations

import errno
import fcntl
import grp
import os
import pwd
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

#: Where per-job dynamic uids come from by default: in the 65536-524287 gap
#: of systemd.io/UIDS-GIDS, below useradd's subordinate ranges (from 100000,
#: rootless containers). Not systemd's own C{DynamicUser=} range (61184-65519):
#: these uids have no passwd entry, and systemd, which checks NSS before it
#: hands one out, could give a service a uid a job is running as. Nor Debian's
#: package users (60000-64999: C{slurm} is 64030).
DYNAMIC_UIDS = (70000, 79999)

#: Where the per-uid lock files live: one folder for every server of the
#: machine, on a tmpfs that a reboot empties.
LOCK_DIR = "/run/jobworker/dynamic-uids"


class IdentityError(ValueError):
    """An identity cannot be used; the message says why."""


@dataclass(frozen=True)
class Identity:
    """
    The Unix identity a job runs as.

    @ivar label: what the job record's C{run_as} shows: the account name,
        C{dynamic:<uid>}, or the server's own user.
    @ivar home: C{HOME} and the default working directory; None for a
        dynamic identity, whose home is its private working directory.
    @ivar ownPidNamespace: each job of it gets a PID namespace of its own
        through the launcher, even without C{--isolate pid}: an account
        whose jobs are several users' (C{--run-as}, or one mapped by
        several users-file lines). The kernel lets a process change
        another of its uid's limits, priority and CPU affinity by pid
        (C{prlimit}: C{RLIMIT_CPU} at 1 s is a kill); neither Landlock nor
        a signal check stops that, a PID namespace does.
    """

    uid: int
    gid: int
    groups: tuple[int, ...]
    name: str
    home: str | None
    shell: str
    label: str
    dynamic: bool = False
    ownPidNamespace: bool = False

    @classmethod
    def ofAccount(cls, name: str) -> Identity:
        """
        The identity of the Unix account C{name}: its uid, primary gid,
        supplementary groups, home and shell from the user database.

        @raise IdentityError: no such account, or it is root, or in root's
            group.
        """
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise IdentityError(f"no such Unix account {name!r}") from None
        if entry.pw_uid == 0:
            raise IdentityError(f"Unix account {name!r} is root: jobs must not be")
        if entry.pw_gid == 0:
            raise IdentityError(
                f"Unix account {name!r} has root's group as its primary group"
            )
        groups = tuple(
            sorted(set(os.getgrouplist(entry.pw_name, entry.pw_gid)) - {entry.pw_gid})
        )
        if 0 in groups:
            raise IdentityError(
                f"Unix account {name!r} is in root's group: jobs must not be"
            )
        return cls(
            uid=entry.pw_uid,
            gid=entry.pw_gid,
            groups=groups,
            name=entry.pw_name,
            home=entry.pw_dir or None,
            shell=entry.pw_shell or "/bin/sh",
            label=entry.pw_name,
        )

    @classmethod
    def ofDynamicUid(cls, uid: int) -> Identity:
        """A dynamic identity: uid and gid C{uid}, no groups, no account."""
        return cls(  # noqa: S604 (a login shell, not a subprocess flag)
            uid=uid,
            gid=uid,
            groups=(),
            name=f"jobworker-{uid}",
            home=None,
            shell="/bin/sh",
            label=f"dynamic:{uid}",
            dynamic=True,
        )

    @classmethod
    def ofServer(cls) -> Identity:
        """The user this server runs as."""
        uid = os.getuid()
        try:
            entry = pwd.getpwuid(uid)
        except KeyError:
            return cls(uid, os.getgid(), (), str(uid), "/", "/bin/sh", str(uid))
        return cls(
            uid=uid,
            gid=entry.pw_gid,
            groups=(),
            name=entry.pw_name,
            home=entry.pw_dir or "/",
            shell=entry.pw_shell or "/bin/sh",
            label=entry.pw_name,
        )

    def environment(self, workdir: str | None) -> dict[str, str]:
        """C{HOME}, C{USER}, C{LOGNAME} and C{SHELL} of this identity."""
        home = self.home if self.home is not None else workdir
        return {
            "HOME": home or "/",
            "USER": self.name,
            "LOGNAME": self.name,
            "SHELL": self.shell,
        }

    def setpriv(self, setprivPath: str) -> list[str]:
        """The C{setpriv} argv that becomes this identity, then runs the rest."""
        groups = (
            [f"--groups={','.join(str(g) for g in self.groups)}"]
            if self.groups
            else ["--clear-groups"]
        )
        # A dynamic uid gains nothing from a setuid file (an earlier holder
        # of the uid, another user's job, may have left one behind).
        return [
            setprivPath,
            f"--reuid={self.uid}",
            f"--regid={self.gid}",
            *groups,
            *(["--no-new-privs"] if self.dynamic else []),
            "--",
        ]

    def mayTraverse(self, st: os.stat_result) -> bool:
        """May this identity search (C{x}) the directory C{st}?"""
        return self._allows(st, 0o1)

    def mayRead(self, st: os.stat_result) -> bool:
        """May this identity read C{st}?"""
        return self._allows(st, 0o4)

    def mayExecute(self, st: os.stat_result) -> bool:
        """May this identity execute the file C{st}?"""
        return self._allows(st, 0o1)

    def _allows(self, st: os.stat_result, bit: int) -> bool:
        """Mode bits as the kernel applies them (ACLs aside)."""
        if self.uid == 0:
            return bit != 0o1 or bool(st.st_mode & 0o111) or _isDir(st)
        if st.st_uid == self.uid:
            return bool(st.st_mode & (bit << 6))
        if st.st_gid == self.gid or st.st_gid in self.groups:
            return bool(st.st_mode & (bit << 3))
        return bool(st.st_mode & bit)


def _isDir(st: os.stat_result) -> bool:
    return (st.st_mode & 0o170000) == 0o040000


def parseRange(text: str) -> tuple[int, int]:
    """C{"70000-79999"} -> C{(70000, 79999)}.

    @raise ValueError: not a range of at least one uid within 1..2**31-2,
        or one that holds 65534 (nobody).
    """
    first, sep, last = text.partition("-")
    if not sep or not first.strip().isdigit() or not last.strip().isdigit():
        raise ValueError(f"not a uid range: {text!r} (e.g. 70000-79999)")
    low, high = int(first), int(last)
    if not 1000 <= low <= high < 2**31 - 1:
        raise ValueError(f"uid range {text!r} must lie within 1000..2147483646")
    if low <= 65534 <= high:
        raise ValueError(f"uid range {text!r} holds 65534 (nobody)")
    return low, high


def rangeClashes(
    first: int,
    last: int,
    users: Iterable[tuple[str, int]] | None = None,
    groups: Iterable[tuple[str, int]] | None = None,
) -> list[str]:
    """The passwd and group entries whose id lies in C{first..last}."""
    if users is None:
        users = ((e.pw_name, e.pw_uid) for e in pwd.getpwall())
    if groups is None:
        groups = ((e.gr_name, e.gr_gid) for e in grp.getgrall())
    found = [f"user {n} ({i})" for n, i in users if first <= i <= last]
    found += [f"group {n} ({i})" for n, i in groups if first <= i <= last]
    return found


def dynamicUid(runAs: str | None) -> int | None:
    """The uid of a record's C{run_as} if it is a dynamic one (C{dynamic:N})."""
    if runAs is None or not runAs.startswith("dynamic:"):
        return None
    number = runAs.removeprefix("dynamic:")
    return int(number) if number.isdigit() else None


class PoolExhausted(Exception):
    """Every dynamic uid is held by a live job."""


class DynamicUids:
    """
    The dynamic uid range, each uid held by one live job at a time.

    A uid is held by an exclusive C{flock} on C{<lockDir>/<uid>}, kept open
    while the job lives: a second server on the machine skips it, and the
    kernel drops the lock if this server dies. Uids are handed out in turn
    (not lowest first), so a uid just given back is the last to be reused.
    """

    def __init__(
        self,
        first: int = DYNAMIC_UIDS[0],
        last: int = DYNAMIC_UIDS[1],
        lockDir: str = LOCK_DIR,
    ) -> None:
        self.first = first
        self.last = last
        self._lockDir = lockDir
        self._held: dict[int, int] = {}
        self._next = first
        #: Uids L{reclaim} found in use by a live job of no lock: held, never
        #: handed out, never killed.
        self.keptAside: list[int] = []
        os.makedirs(lockDir, mode=0o700, exist_ok=True)

    def __len__(self) -> int:
        """How many uids are held now."""
        return len(self._held)

    def acquire(self) -> int:
        """
        A uid no live job of any server holds.

        @raise PoolExhausted: all are held.
        """
        size = self.last - self.first + 1
        for _ in range(size):
            uid = self._next
            self._next = uid + 1 if uid < self.last else self.first
            if uid not in self._held and self._lock(uid):
                return uid
        raise PoolExhausted(f"all {size} dynamic uids are in use")

    def _lock(self, uid: int) -> bool:
        try:
            fd = self._flock(uid)
        except FileNotFoundError:
            # The folder was removed under a running server (rm -rf of
            # /run/jobworker, a cleaner of /run): made again, not a 500 for
            # every job until a restart; with the uids this server holds
            # locked again in it (their files went with it: another server
            # would have handed out, or killed, a running job's uid).
            os.makedirs(self._lockDir, mode=0o700, exist_ok=True)
            self._lockHeldAgain()
            fd = self._flock(uid)
        if fd is None:
            return False
        self._held[uid] = fd
        return True

    def _flock(self, uid: int) -> int | None:
        """C{uid}'s lock file, locked; None if another holds it."""
        fd = os.open(
            os.path.join(self._lockDir, str(uid)),
            os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
            0o600,
        )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return None
            raise
        return fd

    def _lockHeldAgain(self) -> None:
        """Lock each uid held in a new file (L{_lock}'s folder was remade)."""
        for uid, old in list(self._held.items()):
            try:
                fd = self._flock(uid)
            except OSError:
                continue
            if fd is None:
                continue  # another server took it first: nothing to do now
            self._held[uid] = fd
            os.close(old)

    def release(self, uid: int) -> None:
        """Give C{uid} back (only once nothing of its job is left)."""
        fd = self._held.pop(uid, None)
        if fd is not None:
            os.close(fd)

    @property
    def lockDir(self) -> str:
        """Where the uids' lock files are."""
        return self._lockDir

    @property
    def uids(self) -> range:
        """The whole range."""
        return range(self.first, self.last + 1)

    def reclaim(
        self,
        processes: dict[int, list[int]],
        kill: Callable[[list[int]], object],
        liveParent: Callable[[int, list[int]], bool] = lambda uid, pids: False,
    ) -> list[int]:
        """
        At start-up, given the live C{processes} of the range by uid: the
        uids left by a server that died, that no live server holds. Each is
        held (so it is not handed out) and its processes are killed; the
        caller releases it once they are gone.

        A uid whose lock no server holds but whose processes descend from a
        live parent (C{liveParent}: another server's job, whose lock file
        was removed under it by a cleaner of /run) is held for good and
        nothing of it killed (L{keptAside}): it killed that server's job.
        """
        found: list[int] = []
        for uid, pids in processes.items():
            if uid not in self.uids or uid in self._held or not self._lock(uid):
                continue
            if liveParent(uid, pids):
                self.keptAside.append(uid)
                continue
            kill(pids)
            found.append(uid)
        return found


def ownGroup(identity: Identity) -> int | None:
    """
    C{identity}'s primary group, if it is its own (a dynamic uid's, or an
    account's that no other account has as its primary group or lists as a
    member), else None. A job's cgroup folder is readable by its group: a
    shared one (C{users}, a site-wide group) would let another account's
    jobs read it. Only the accounts the user database lists are seen.
    """
    if identity.dynamic:
        return identity.gid
    key = (identity.name, identity.gid)
    now = time.monotonic()
    known = _ownGroups.get(key)
    if known is not None and 0 <= now - known[1] < OWN_GROUP_KEPT:
        return known[0]
    try:
        members = grp.getgrgid(identity.gid).gr_mem
    except KeyError:
        members = []
    found: int | None = identity.gid
    if any(member != identity.name for member in members):
        found = None
    elif any(
        entry.pw_gid == identity.gid and entry.pw_name != identity.name
        for entry in pwd.getpwall()
    ):
        found = None
    if len(_ownGroups) >= 4096:
        _ownGroups.clear()
    _ownGroups[key] = (found, now)
    return found


#: How long L{ownGroup}'s answer for an account is kept (seconds): it reads
#: the whole user database, which a burst of jobs need not read each.
OWN_GROUP_KEPT = 60.0
_ownGroups: dict[tuple[str, int], tuple[int | None, float]] = {}


@dataclass
class Identities:
    """
    How a job's identity is chosen. A user's mapped account comes first;
    an unmapped user's jobs share C{shared} (C{--run-as}), else get a uid of
    their own from C{pool}, else run as the server's own user (a server not
    running as root, or C{--allow-root-jobs}).
    """

    shared: Identity | None = None
    pool: DynamicUids | None = None
    server: Identity = field(default_factory=Identity.ofServer)
    #: An account's identity by its name, as it is now (tests give theirs).
    lookUp: Callable[[str], Identity] = field(default=Identity.ofAccount)

    @property
    def switching(self) -> bool:
        """True when jobs may run as someone other than the server (root)."""
        return self.server.uid == 0

    def acquire(self, account: Identity | None) -> Identity:
        """
        The identity of a new job of a user mapped to C{account} (or not).
        An account (mapped, or the shared one) is looked up again by its
        name, as it is now: its uid could have gone to another account
        (C{userdel}, then C{useradd}) since the users file was read, and
        its groups could have changed.

        @raise PoolExhausted: a dynamic uid was needed and none is free.
        @raise IdentityError: the account cannot be used now (gone, say).
        """
        if account is not None or self.shared is not None:
            named = account if account is not None else self.shared
            assert named is not None
            found = self.lookUp(named.name)
            pool = self.pool
            if pool is not None and pool.first <= found.uid <= pool.last:
                # (Refused at start-up too: made since, it would share a
                # uid with another user's dynamic jobs.)
                raise IdentityError(
                    f"Unix account {found.name!r} has uid {found.uid}, in "
                    f"--dynamic-uids ({pool.first}-{pool.last})"
                )
            shared = self.shared
            if named.ownPidNamespace or (shared and found.uid == shared.uid):
                # Several users' jobs run as this uid (see ownPidNamespace).
                return replace(found, ownPidNamespace=True)
            return found
        if self.pool is not None:
            return Identity.ofDynamicUid(self.pool.acquire())
        return self.server

    def release(self, identity: Identity) -> None:
        """Give a dynamic identity's uid back to the pool."""
        if identity.dynamic and self.pool is not None:
            self.pool.release(identity.uid)

    def sandboxed(self, identity: Identity) -> bool:
        """Does a job of C{identity} get the private /proc, /tmp and namespaces?"""
        return self.switching and identity.uid != 0
