"""
The sandbox a job runs in when the server switches identities (runs as root):
a mount and IPC namespace of its own with a private C{/proc} (C{hidepid}),
private C{/tmp}, C{/var/tmp}, C{/dev/shm} and C{/run/lock} (tmpfs), a fresh
working directory, then the job's identity. Set up by the compiled launcher
(C{launcher.c}) in one process (which forks once more under C{--isolate
pid}), or by the exec chain C{setsid}, C{unshare}, C{sh} (C{mount -a}),
C{setpriv}, C{env} where there is no launcher (C{--launcher off}, no
compiler).

Also the check, done as the job's identity would see it, that a command and
a working directory can be used: what that identity cannot reach is "not
found or not permitted", whichever it is, so the answer never tells whether
something exists where the job may not look.
"""

from __future__ import annotations

import grp
import os
import posixpath
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import islice
from typing import Protocol

from twisted.internet.interfaces import IReactorTime

from ...jobs.identity import Identity
from .launcher import encodeArguments

POSIX_SHELL = shutil.which("sh") or "/bin/sh"
SETSID = shutil.which("setsid") or "/usr/bin/setsid"
UNSHARE = shutil.which("unshare") or "/usr/bin/unshare"
SETPRIV = shutil.which("setpriv") or "/usr/bin/setpriv"
MOUNT = shutil.which("mount") or "/usr/bin/mount"
ENV = shutil.which("env") or "/usr/bin/env"

#: The only environment the root stages of a sandboxed job see (setsid,
#: unshare, the sandbox shell, mount, setpriv): never the request's. A
#: shell that is bash would import functions from it (BASH_FUNC_read%%),
#: and libraries read settings from it. The job's own environment is set
#: after setpriv, by env -i, running as the job.
ROOT_ENVIRONMENT = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"}

#: The line a gated job waits for on fd 3 (JobProcess.recorded writes it).
GO = b"go\n"

#: --isolate names and the unshare flags that make them.
ISOLATION = {
    "pid": ["--pid", "--fork", "--kill-child", "--mount-proc"],
    "net": ["--net"],
    "mount": ["--mount"],
}

#: The gate: the job's first process waits here, before running anything of
#: the user's, until the server has placed it in its cgroup and says go.
GATE_SCRIPT = 'read -r _ <&3 || exit 125; exec 3<&-; unset PWD; exec "$@"'
#: The same, for a request that sets PWD itself (the shell keeps it if true).
GATE_KEEP_WORKDIR = 'read -r _ <&3 || exit 125; exec 3<&-; exec "$@"'
#: The gate in front of a sandbox, which sets PWD itself.
GATE_ONLY = GATE_KEEP_WORKDIR

#: The variables of the root stages' environment (never the job's) that
#: give the job's soft RLIMIT_NOFILE and its oom_score_adj: the launcher and
#: the exec chain's sandbox shell set them.
DESCRIPTOR_LIMIT = "JOBWORKER_NOFILE"
OOM_SCORE = "JOBWORKER_OOM_SCORE_ADJ"
#: And the job's umask (octal), set last, right before the command.
UMASK = "JOBWORKER_UMASK"


@dataclass(frozen=True)
class Inherited:
    """
    What a job would inherit from the server but gets as given here (None:
    as inherited).

    @ivar descriptorLimit: the soft C{RLIMIT_NOFILE} (the server raises its
        own).
    @ivar oomScore: the C{oom_score_adj} (a server run with
        C{OOMScoreAdjust=-1000} would make every job immune to the OOM
        killer, its own cgroup's limit included).
    @ivar umask: the umask (twistd without C{-n} sets its own to 077 as it
        daemonizes: jobs got it, where under C{-n} they got the umask of
        whoever started the server).
    """

    descriptorLimit: int | None = None
    oomScore: int | None = None
    umask: int | None = None

    def gate(self, keepWorkdir: bool) -> str:
        """
        The gate of a job that is not sandboxed (its shell runs with the
        job's environment): L{GATE_KEEP_WORKDIR} or L{GATE_SCRIPT}, after
        setting what is given here.
        """
        gate = GATE_KEEP_WORKDIR if keepWorkdir else GATE_SCRIPT
        if self.umask is not None:
            gate = f"umask {self.umask:04o} || exit 125; {gate}"
        if self.oomScore is not None:
            score = f"echo {self.oomScore:d} >/proc/self/oom_score_adj"
            gate = f"{score} || exit 125; {gate}"
        if self.descriptorLimit is not None:
            gate = f"ulimit -Sn {self.descriptorLimit:d} || exit 125; {gate}"
        return gate

    def rootEnvironment(self) -> dict[str, str]:
        """L{ROOT_ENVIRONMENT}, with what is given here."""
        environment = dict(ROOT_ENVIRONMENT)
        if self.descriptorLimit is not None:
            environment[DESCRIPTOR_LIMIT] = str(self.descriptorLimit)
        if self.oomScore is not None:
            environment[OOM_SCORE] = str(self.oomScore)
        if self.umask is not None:
            environment[UMASK] = f"{self.umask:04o}"
        return environment


def jobOomScore(own: int) -> int | None:
    """
    The C{oom_score_adj} jobs get by default, given the server's C{own}:
    0 if the server's is below (a job never shares the server's protection
    from the OOM killer), else the server's (None: as inherited).
    """
    return 0 if own < 0 else None


#: Runs as root inside the job's new namespaces: mount the private folders
#: (one C{mount -a} of a small fstab), enter the start folder, then exec
#: setpriv and the command.
SANDBOX = (
    f'[ -z "${DESCRIPTOR_LIMIT}" ] || ulimit -Sn "${DESCRIPTOR_LIMIT}" || exit 125; '
    f'[ -z "${OOM_SCORE}" ] || echo "${OOM_SCORE}" >/proc/self/oom_score_adj '
    "|| exit 125; "
    f'u="${UMASK}"; unset {DESCRIPTOR_LIMIT} {OOM_SCORE} {UMASK}; '
    f'{MOUNT} -a -T "$0" || exit 125; cd "$1" || exit 126; unset OLDPWD; '
    # The job's pipes are its own (who may open them again by path, as
    # /dev/stderr: their owner), as the launcher's 4c; not its /dev/null.
    'p=; for f in 0 1 2; do [ -p /proc/self/fd/$f ] && p="$p /proc/self/fd/$f"; '
    'done; [ -z "$p" ] || chown "$2" $p || exit 125; '
    '[ -z "$u" ] || umask "$u" || exit 125; shift 2; exec "$@"'
)
#: The same, behind the cgroup gate (no PID namespace: the pid never changes).
GATED_SANDBOX = "read -r _ <&3 || exit 125; exec 3<&-; " + SANDBOX
#: Runs as the job's identity: enter the requested working directory.
CHDIR = 'cd "$0" || exit 126; unset OLDPWD; exec "$@"'

#: The job's private working directory (a tmpfs of its own, owned by it).
WORKDIR = "/tmp/job"  # noqa: S108 (inside the job's own tmpfs)

#: Folders every local user may write to, which a job gets a private tmpfs
#: for (those that exist on this machine).
SHARED_WRITABLE = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")  # noqa: S108


#: The most pseudo-terminals one sandboxed job may hold at once (its own
#: devpts instance's C{max}).
MAX_PTYS = 64


def _ttyGroup() -> int:
    """The C{tty} group, which owns terminals (5 where it has no entry)."""
    try:
        return grp.getgrnam("tty").gr_gid
    except KeyError:
        return 5


TTY_GID = _ttyGroup()

#: The launcher's mount FLAGS letter of each mount(8) option the sandbox uses.
LAUNCHER_FLAGS = {"nosuid": "s", "nodev": "d", "noexec": "x", "X-mount.mkdir=0755": "m"}


def logicalFolder(cwd: str) -> str:
    """
    Where C{cd "$cwd"} from C{/} lands and what it sets C{PWD} to: the
    path made absolute and cleaned of C{.}, C{..} and repeated slashes
    without looking at the disk (a shell's logical C{cd}).
    """
    return posixpath.normpath(posixpath.join("/", cwd))


def jobEnvironment(env: dict[str, str], cwd: str | None, start: str) -> dict[str, str]:
    """
    The environment the command gets: C{env}, with C{PWD} the start folder
    unless the request set it; with a C{cwd}, C{PWD} that folder (logical)
    and no C{OLDPWD}, as the chain's C{cd "$cwd"; unset OLDPWD} leaves it.
    """
    assignments = dict(env)
    if cwd is None:
        assignments.setdefault("PWD", start)
    else:
        assignments.pop("OLDPWD", None)
        assignments["PWD"] = logicalFolder(cwd)
    return assignments


#: The most characters of a command or folder a refusal quotes: the error
#: is stored in the job's record, listed and logged (a 30 KB command doubled
#: every record of a refused job: attacker round 12).
NAMED_CHARS = 200


def _named(text: str) -> str:
    """C{text} quoted for a refusal, cut at L{NAMED_CHARS} characters."""
    if len(text) <= NAMED_CHARS:
        return repr(text)
    return f"{text[:NAMED_CHARS]!r}... ({len(text)} characters)"


class SpawnRefused(Exception):
    """The command cannot be started; the message says why."""


#: Characters a shell would have read in a command line: a command whose
#: name has one was most likely meant for a shell (C{ssh host 'a | b'}).
SHELL_CHARACTERS = frozenset(" \t\n|;&<>$`()*?'\"")


def _notFound(command: str, where: str) -> SpawnRefused:
    """
    C{command} was not found (C{where}: how it was looked for), with a word
    on the shell jobworker does not run when its name looks like a shell's
    command line (new user round 35: C{jw exec -- 'a | b'} said only "not
    found").
    """
    message = f"cannot start: {_named(command)}: {where}"
    # (A first "~" is a shell's too: ~/bin/x, new user round 37.)
    if not SHELL_CHARACTERS.isdisjoint(command) or command.startswith("~"):
        message += (
            " (the command is run as is, no shell reads it: for a shell's "
            "command line, jw exec -- sh -c '...')"
        )
    return SpawnRefused(message)


def checkCommand(command: str) -> str | None:
    """
    Why C{command} cannot run in the sandbox, or None: C{env} would take a
    name containing C{=} for a variable to set.
    """
    if "=" in command:
        # (jw exec -- FOO=1 env: a shell's habit; jw runs no shell.)
        return (
            f"a command whose name contains '=' cannot be run as another user "
            f'({command!r}: to set a variable, give it in "env" (jw exec '
            "--env NAME=VALUE); the command is run as is, no shell reads it)"
        )
    return None


class SandboxError(Exception):
    """The sandbox does not work on this machine; the message says why."""


def privateFolders(candidates: Iterable[str] = SHARED_WRITABLE) -> list[str]:
    """The folders of C{candidates} that exist here as real folders."""
    return [
        path for path in candidates if os.path.isdir(path) and not os.path.islink(path)
    ]


class Sandbox:
    """
    Builds the argv that runs a command sandboxed as an identity.

    @param directory: a root-only folder for the small fstab files (one per
        uid and gid, written once).
    @param tmpSize: the size of each private tmpfs, in bytes.
    """

    def __init__(
        self,
        directory: str,
        tmpSize: int,
        isolate: frozenset[str] = frozenset(),
        folders: list[str] | None = None,
        launcher: str | None = None,
    ) -> None:
        self._dir = directory
        self._tmpSize = tmpSize
        self._isolate = isolate
        self.folders = folders if folders is not None else privateFolders()
        #: The compiled launcher (None: the exec chain); see L{usesLauncher}.
        self.launcher = launcher
        self._fstabs: dict[tuple[int, int], str] = {}
        #: The launcher's arguments for the mounts every job has alike
        #: (all but its working directory's), made at the first job.
        self._sharedMounts: list[str] | None = None
        os.makedirs(directory, mode=0o700, exist_ok=True)
        for name in os.listdir(directory):
            if name.startswith("fstab-"):
                os.unlink(os.path.join(directory, name))

    @property
    def usesLauncher(self) -> bool:
        """Jobs start through the launcher (there is one)."""
        return self.launcher is not None

    def pidNamespace(self, identity: Identity) -> bool:
        """Does a job of C{identity} get a PID namespace of its own?"""
        return "pid" in self._isolate or (
            self.usesLauncher and identity.ownPidNamespace
        )

    def commandDepth(self, identity: Identity) -> int:
        """
        How many forks down from the process the server starts a job's
        command runs: under a PID namespace, the launcher's init and then
        the command (2), or C{unshare --fork}'s child (1); else 0 (the
        same process, exec'd).
        """
        if not self.pidNamespace(identity):
            return 0
        return 2 if self.usesLauncher else 1

    def mounts(self, identity: Identity) -> list[tuple[str, str, str, str, str]]:
        """
        C{identity}'s private mounts, in order: source, target, type, the
        options mount(8) reads (C{X-mount.mkdir=0755}: make the folder
        first), and the data the kernel gets.
        """
        return [*self._mountsAlike(), self._workMount(identity)]

    def _mountsAlike(self) -> list[tuple[str, str, str, str, str]]:
        """The mounts every job has alike, in order (L{mounts})."""
        size = f"size={self._tmpSize}"
        found = [
            (
                "jobworker-proc",
                "/proc",
                "proc",
                "nosuid,nodev,noexec",
                "hidepid=invisible",
            )
        ]
        found += [
            ("jobworker-tmp", folder, "tmpfs", "nosuid,nodev", f"mode=1777,{size}")
            for folder in self.folders
        ]
        if os.path.isdir("/dev/pts"):
            # Pseudo-terminals of its own (/dev/ptmx opens the devpts
            # mounted beside it, Linux 4.7 on), at most MAX_PTYS: one job
            # took all of the host's, ssh logins included.
            found.append(
                (
                    "jobworker-devpts",
                    "/dev/pts",
                    "devpts",
                    "nosuid,noexec",
                    f"newinstance,gid={TTY_GID},mode=0620,ptmxmode=0666,max={MAX_PTYS}",
                )
            )
        if os.path.isdir("/dev/mqueue"):
            # The POSIX message queues of the job's own IPC namespace: no
            # queue left for the next job of this uid.
            found.append(
                ("jobworker-mqueue", "/dev/mqueue", "mqueue", "nosuid,nodev,noexec", "")
            )
        return found

    def _workMount(self, identity: Identity) -> tuple[str, str, str, str, str]:
        """C{identity}'s own mount, its working directory: the last one."""
        return (
            "jobworker-work",
            WORKDIR,
            "tmpfs",
            "nosuid,nodev,X-mount.mkdir=0755",
            f"mode=0700,uid={identity.uid},gid={identity.gid},size={self._tmpSize}",
        )

    def fstab(self, identity: Identity) -> str:
        """The fstab (path) of C{identity}'s private mounts, written once."""
        key = (identity.uid, identity.gid)
        path = self._fstabs.get(key)
        if path is None:
            path = os.path.join(self._dir, f"fstab-{identity.uid}-{identity.gid}")
            lines = [
                f"{source} {target} {kind} " + ",".join(o for o in (options, data) if o)
                for source, target, kind, options, data in self.mounts(identity)
            ]
            temporary = path + ".new"
            with open(temporary, "w", encoding="ascii") as f:
                f.write("".join(line + " 0 0\n" for line in lines))
            os.replace(temporary, path)
            self._fstabs[key] = path
        return path

    def startFolder(self, identity: Identity) -> str:
        """Where a job starts without a C{cwd}: its home if it has one, else
        its private working directory."""
        home = identity.home
        if home is not None and os.path.isdir(home):
            return home
        return WORKDIR

    def argv(
        self,
        identity: Identity,
        command: list[str],
        cwd: str | None,
        gated: bool,
        env: dict[str, str] | None = None,
    ) -> list[str]:
        """
        The whole argv. With a launcher (L{usesLauncher}): the launcher,
        its arguments and the command, one process. Otherwise the chain:
        [gate] setsid unshare sh(mounts) setpriv env [chdir] command. The
        root stages run with L{ROOT_ENVIRONMENT} (spawn with it); C{env},
        the job's environment, is set by the launcher's execvp or by
        C{env -i} after setpriv, as the job (a command containing C{=}
        cannot be run so by C{env}: L{checkCommand}, kept for both).

        Without a PID namespace the gate sits inside the sandbox shell (one
        exec fewer): setsid and unshare do not fork, so the pid the server
        puts in the cgroup is still the job's. With one, unshare forks, so
        the gate must come first.
        """
        if self.usesLauncher:
            start = self._start(identity, cwd)
            return self._launcherArgv(identity, command, cwd, gated, env, start)
        pidNamespace = "pid" in self._isolate
        argv: list[str] = []
        if gated and pidNamespace:
            argv += [POSIX_SHELL, "-c", GATE_ONLY, "jobworker-gate"]
        argv += [SETSID, UNSHARE]
        for name in ("pid", "net"):
            if name in self._isolate:
                argv += ISOLATION[name]
        argv += ["--mount", "--ipc", "--"]
        script = GATED_SANDBOX if gated and not pidNamespace else SANDBOX
        start = self._start(identity, cwd)
        argv += [
            POSIX_SHELL,
            "-c",
            script,
            self.fstab(identity),
            start,
            f"+{identity.uid}:+{identity.gid}",
        ]
        argv += identity.setpriv(SETPRIV)
        if env is not None:
            assignments = dict(env)
            if cwd is None and "PWD" not in assignments:
                assignments["PWD"] = start
            argv += [ENV, "-i", "--"]
            argv += [f"{name}={value}" for name, value in assignments.items()]
        if cwd is not None:
            argv += [POSIX_SHELL, "-c", CHDIR, cwd]
        return argv + command

    def _launcherArgv(
        self,
        identity: Identity,
        command: list[str],
        cwd: str | None,
        gated: bool,
        env: dict[str, str] | None,
        start: str,
    ) -> list[str]:
        """The same job through the launcher (its arguments: launcher.c)."""
        assert self.launcher is not None
        shared = self._sharedMounts
        if shared is None:
            shared = self._sharedMounts = _launcherMounts(self._mountsAlike())
        mounts = shared + _launcherMounts([self._workMount(identity)])
        # Gated, the environment comes on the gate (option e): a command
        # line is readable by every local user in /proc/<pid>/cmdline.
        # A dynamic uid's jobs get no kernel keyrings, no user namespace
        # and no new privileges (option k): the kernel keeps a uid's
        # keyrings after its last process, a setuid file of the uid may be
        # left behind, the next job of that uid may be another user's, and
        # in a user namespace of its own a job mounts past its caps.
        # An account several users' jobs run as gets a PID namespace per
        # job (Identity.ownPidNamespace; the exec chain, whose job would be
        # its namespace's PID 1, which a stop's SIGTERM does not reach,
        # gives it only under --isolate pid).
        options = (
            ("ge" if gated else "")
            + ("n" if "net" in self._isolate else "")
            + ("p" if self.pidNamespace(identity) else "")
            + ("k" if identity.dynamic else "")
        )
        groups = ",".join(str(g) for g in identity.groups) or "-"
        assignments = (
            {}
            if gated
            else jobEnvironment(
                env if env is not None else ROOT_ENVIRONMENT, cwd, start
            )
        )
        return [
            self.launcher,
            options or "-",
            start,
            str(identity.uid),
            str(identity.gid),
            groups,
            "" if cwd is None else logicalFolder(cwd),
            str(len(mounts) // 5),
            *mounts,
            str(len(assignments)),
            *(f"{name}={value}" for name, value in assignments.items()),
            *command,
        ]

    def _start(self, identity: Identity, cwd: str | None) -> str:
        """The folder the set-up enters as root: / with a cwd."""
        return "/" if cwd is not None else self.startFolder(identity)

    def gatedStart(
        self,
        identity: Identity,
        command: list[str],
        cwd: str | None,
        env: dict[str, str],
    ) -> tuple[list[str], bytes]:
        """
        C{argv(identity, command, cwd, True, env)} and C{gate(identity, cwd,
        env)} from one look at the start folder, so the launcher's START and
        the job's PWD cannot disagree.
        """
        if not self.usesLauncher:
            return self.argv(identity, command, cwd, True, env), GO
        start = self._start(identity, cwd)
        argv = self._launcherArgv(identity, command, cwd, True, env, start)
        return argv, self._gateLine(cwd, env, start)

    def gate(
        self,
        identity: Identity,
        cwd: str | None,
        env: dict[str, str] | None = None,
    ) -> bytes:
        """
        What the server writes on fd 3 of a job started with C{argv(...,
        gated=True, env)} once it may run: the L{GO} line; through the
        launcher C{go LENGTH} and the job's environment after it, LENGTH
        bytes of C{NAME=VALUE} each ended by a NUL byte (the request's text
        never holds NUL: validation).
        """
        if not self.usesLauncher:
            return GO
        return self._gateLine(cwd, env, self._start(identity, cwd))

    def _gateLine(
        self, cwd: str | None, env: dict[str, str] | None, start: str
    ) -> bytes:
        assignments = jobEnvironment(
            env if env is not None else ROOT_ENVIRONMENT, cwd, start
        )
        block = encodeArguments(
            [f"{name}={value}" for name, value in assignments.items()]
        )
        # Counted, so the launcher takes it without waiting for the pipe's
        # end (which would wake it a second time).
        return b"go %d\n" % len(block) + block

    def probe(self, identity: Identity) -> None:
        """
        Run the sandbox once, at start-up, as C{identity}.

        @raise SandboxError: it does not work here (no mount namespaces, a
            kernel without per-mount C{hidepid}, ...).
        """
        parent = os.path.dirname(WORKDIR)
        if parent not in self.folders:
            # The job's working tmpfs would be mounted in a shared folder,
            # where another user may have put a symlink in its place.
            raise SandboxError(
                f"{parent} is not a real folder here, so it gets no private "
                f"tmpfs, and {WORKDIR} cannot be made safely"
            )
        check = f"test -w . && test ! -e /proc/{os.getpid()}"
        argv = self.argv(
            identity, [POSIX_SHELL, "-c", check], None, False, {"PATH": "/usr/bin:/bin"}
        )
        try:
            result = subprocess.run(
                argv,
                # Never the server's own stdin: a pipe there would be
                # given to the probe's uid (the job's pipes are its own).
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=30,
                check=False,
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise SandboxError(str(e)) from None
        if result.returncode != 0:
            why = result.stderr.decode("utf-8", "replace").strip().splitlines()
            raise SandboxError(why[-1] if why else f"exit status {result.returncode}")


def _launcherMounts(mounts: list[tuple[str, str, str, str, str]]) -> list[str]:
    """Mounts as the launcher's arguments: five each (launcher.c)."""
    return [
        text
        for source, target, kind, options, data in mounts
        for text in (
            source,
            target,
            kind,
            "".join(LAUNCHER_FLAGS[o] for o in options.split(",")) or "-",
            data,
        )
    ]


# -- can this identity start that? --------------------------------------------


class Permissions(Protocol):
    """What L{checkRunnable} asks of an identity."""

    @property
    def uid(self) -> int: ...

    def mayTraverse(self, st: os.stat_result) -> bool: ...

    def mayExecute(self, st: os.stat_result) -> bool: ...


#: How many C{PATH} folders a start check walks at most (each is a walk of
#: its folders on the server's thread); past them the job's own C{execvp}
#: decides, as it does anyway.
MAX_PATH_CHECKS = 64


def checkRunnable(
    command: str,
    env: dict[str, str],
    cwd: str | None,
    identity: Permissions | None = None,
    startFolder: str | None = None,
    hidden: Iterable[str] = (),
) -> None:
    """
    Check, as C{execvp} in the job will, that C{command} can be started.

    With an C{identity} other than root the check is made as that identity:
    every folder on the way must be searchable by it, and what it cannot
    reach reads exactly like what does not exist. C{hidden} folders are
    private to the job (its own C{/tmp}): nothing of the server's is there.

    @raise SpawnRefused: naming the cause.
    """
    if identity is None or identity.uid == 0:
        _checkAsRoot(command, env, cwd)
        return
    try:
        _checkAsIdentity(
            command, env, cwd, _Walker(identity, tuple(hidden)), startFolder
        )
    except _Undecided:
        pass  # (the job's own execvp decides, as it does anyway)


def _checkAsIdentity(
    command: str,
    env: dict[str, str],
    cwd: str | None,
    walker: _Walker,
    startFolder: str | None,
) -> None:
    """L{checkRunnable} as an identity other than root."""
    if (
        cwd is not None
        and not _ownFolder(cwd, walker.hidden)
        and not _reachableFolder(cwd, walker)
    ):
        raise SpawnRefused(
            f"cannot start: working directory {_named(cwd)}: not found or not permitted"
        )
    base = cwd if cwd is not None else startFolder
    # The private working directory is empty when the job starts.
    known = base if base is not None and base != WORKDIR else None
    if "/" in command:
        path = command if os.path.isabs(command) else None
        if path is None and known is not None:
            path = os.path.join(known, command)
        if path is None or not _runnable(path, walker):
            raise _notFound(command, "not found or not permitted")
        return
    walked: set[str] = set()
    for entry in env.get("PATH", "").split(os.pathsep):
        if not entry.startswith("/"):  # (os.path.isabs)
            if known is None:
                continue
            entry = os.path.join(known, entry)
        # Each folder once (/etc, /etc/, //etc alike), and at most
        # MAX_PATH_CHECKS of them: past those the job's execvp decides.
        # (The path walked is the entry as execvp takes it: ".." after a
        # symlink, or after a name the job cannot look up, is not what
        # normpath makes of it; such an entry is its own.)
        seen = (
            entry
            if ".." in entry.split("/")
            else "/" + os.path.normpath(entry).lstrip("/")
        )
        if seen in walked:
            continue
        if len(walked) == MAX_PATH_CHECKS:
            return
        walked.add(seen)
        # os.path.join(entry, command), without its checks: one per entry.
        path = entry + command if entry.endswith("/") else f"{entry}/{command}"
        if _runnable(path, walker):
            return
    raise _notFound(command, "not found in PATH or not permitted")


class _Owners:
    """
    An identity for L{checkRunnable} that also notes the owner and group of
    every file and folder whose permissions it was asked about.
    """

    def __init__(self, identity: Identity) -> None:
        self._identity = identity
        self.uid = identity.uid
        self.seen: set[int] = set()

    def mayTraverse(self, st: os.stat_result) -> bool:
        self.seen.update((st.st_uid, st.st_gid))
        return self._identity.mayTraverse(st)

    def mayExecute(self, st: os.stat_result) -> bool:
        self.seen.update((st.st_uid, st.st_gid))
        return self._identity.mayExecute(st)


class RunnableChecks:
    """
    L{checkRunnable} with a short memory: a command found runnable is taken
    as runnable again, for the same identity, working directory, C{PATH}
    and sandbox, for C{ttl} seconds. Only answers that let a job start are
    remembered; a refusal is always checked afresh.

    The check is advice, given before the job is forked; the job's own
    C{execvp} decides. A command removed within C{ttl} of a check starts a
    job that fails at its C{execvp} (exit 127 and the launcher's message)
    instead of being refused.

    Dynamic identities (a new uid for nearly every job) share their answers:
    an answer is reused for a dynamic uid only when neither the uid that was
    checked nor this one owns (as user or group) any file or folder the
    check looked at. Every such uid is "other" to all of them, so the check
    would have answered the same for it, and nothing about what one job's
    uid owns is told to another's.
    """

    #: Answers about longer commands, C{PATH}s and folders than this (in
    #: characters, together) are not remembered: what is kept stays small.
    MAX_KEY = 4096

    def __init__(self, clock: IReactorTime, ttl: float = 1.0, size: int = 4096):
        self._clock = clock
        self._ttl = ttl
        self._size = size
        #: key -> (until, the owners seen: empty when the answer is not
        #: shared), oldest first: expired answers are dropped from the front.
        self._known: dict[tuple[object, ...], tuple[float, frozenset[int]]] = {}

    def check(
        self,
        command: str,
        env: dict[str, str],
        cwd: str | None,
        identity: Identity | None = None,
        startFolder: str | None = None,
        hidden: Iterable[str] = (),
    ) -> None:
        """L{checkRunnable}, or its answer of less than C{ttl} ago."""
        hiddenFolders = tuple(hidden)
        shared = identity is not None and identity.uid != 0 and identity.dynamic
        uid = identity.uid if identity is not None else 0
        who: object
        if uid == 0:
            who = 0
        elif shared:
            who = "dynamic"
        else:
            assert identity is not None
            who = (uid, identity.gid, identity.groups)
        path = env.get("PATH")
        key = (command, path, cwd, startFolder, hiddenFolders, who)
        now = self._clock.seconds()
        known = self._known.get(key)
        # (An answer from "later" than now + ttl: the clock went back.)
        if known is not None and now < known[0] <= now + self._ttl:
            if uid not in known[1]:
                return
        owners: frozenset[int] = frozenset()
        if shared:
            assert identity is not None
            recorder = _Owners(identity)
            checkRunnable(command, env, cwd, recorder, startFolder, hiddenFolders)
            owners = frozenset(recorder.seen)
            if uid in owners:
                # This uid's own files decided the answer: not for others.
                return
        else:
            checkRunnable(command, env, cwd, identity, startFolder, hiddenFolders)
        length = sum(len(part or "") for part in (command, path, cwd, startFolder))
        if length <= self.MAX_KEY:
            self._remember(key, now, owners)

    def _remember(
        self, key: tuple[object, ...], now: float, owners: frozenset[int]
    ) -> None:
        known = self._known
        for old in list(islice(known, 2)):
            # Up to two dropped for each one added: the expired never pile up.
            until = known[old][0]
            if now < until <= now + self._ttl:
                break
            del known[old]
        known.pop(key, None)  # to the end: the newest
        if len(known) >= self._size:
            del known[next(iter(known))]
        known[key] = (now + self._ttl, owners)


def _within(path: str, folders: tuple[str, ...]) -> bool:
    return any(path == f or path.startswith(f + "/") for f in folders)


#: How many symbolic links a start check's walk follows (the kernel's
#: MAXSYMLINKS): past them, C{ELOOP} for the job too.
MAX_LINKS = 40

#: The longest path a walk takes (the kernel's PATH_MAX: C{ENAMETOOLONG}
#: for the job too).
MAX_PATH = 4096

#: How many names one start check looks up at most, every C{PATH} folder
#: and link together: past them the job's own C{execvp} decides. (A chain
#: of links in a home and a C{PATH} of 64 entries made a check of 5 s on
#: the server's thread: a review.)
MAX_WALK_STEPS = 1024

_DIRECTORY, _FILE_TYPE, _LINK = 0o040000, 0o170000, 0o120000


class _Undecided(Exception):
    """The check cannot say (too long a walk, or through /proc, whose links
    are the server's, not the job's): the job's own C{execvp} decides."""


class _Walker:
    """
    The walks of one start check, as C{identity}: the names looked up so
    far (L{MAX_WALK_STEPS}), and what was stat'ed (each once a check).
    """

    def __init__(self, identity: Permissions, hidden: tuple[str, ...]) -> None:
        self.identity = identity
        self.hidden = hidden
        self._steps = MAX_WALK_STEPS
        self._stats: dict[tuple[str, bool], os.stat_result | None] = {}

    def _stat(self, path: str, follow: bool = True) -> os.stat_result | None:
        key = (path, follow)
        if key not in self._stats:
            try:
                self._stats[key] = os.stat(path) if follow else os.lstat(path)
            except OSError:
                self._stats[key] = None
        return self._stats[key]

    def walk(self, path: str) -> str | None:
        """
        Where C{path} (absolute) leads, walked as the kernel walks it for
        the identity: one name at a time, each folder a name is looked up
        in found searchable by it first (and not C{hidden}: the job's own);
        C{.} and C{..} as they come; symbolic links followed. The real path
        reached, or None where the job's walk would stop.

        Nothing is looked up, as root, in a folder the identity cannot
        search: a name there reads as missing, whether it exists or not.
        (The check tested the raw path's existence as root, then walked its
        C{normpath}, where C{NAME/..} is gone: a command through an existing
        folder of a 0700 home was accepted, through a missing one refused:
        attacker round 10.)

        @raise _Undecided: past L{MAX_WALK_STEPS}, or into C{/proc}.
        """
        if not path.startswith("/") or len(path.encode()) >= MAX_PATH:
            return None
        parts = path.split("/")
        parts.reverse()  # (the next name last)
        current = "/"
        links = 0
        while parts:
            part = parts.pop()
            if not part:
                continue
            self._steps -= 1
            if self._steps < 0:
                raise _Undecided()
            st = self._stat(current)
            if st is None:
                return None
            if (st.st_mode & _FILE_TYPE) != _DIRECTORY or not self.identity.mayTraverse(
                st
            ):
                return None
            if part == ".":
                continue
            if part == "..":
                current = os.path.dirname(current)
                continue
            if _within(current, self.hidden):
                return None  # (nothing of the server's is in the job's own)
            found = os.path.join(current, part)
            if found == "/proc":
                raise _Undecided()  # (the job's /proc is its own)
            st = self._stat(found, follow=False)
            if st is None:
                return None
            if (st.st_mode & _FILE_TYPE) != _LINK:
                current = found
                continue
            links += 1
            try:
                target = os.readlink(found)
            except OSError:
                return None
            if links > MAX_LINKS or not target:
                return None
            if target.startswith("/"):
                current = "/"
            parts.extend(reversed(target.split("/")))
        if path.endswith("/") and not os.path.isdir(current):
            return None
        return None if _within(current, self.hidden) else current

    def reached(self, path: str) -> os.stat_result | None:
        """What C{path} leads to, if the identity can reach it."""
        real = self.walk(path)
        return None if real is None else self._stat(real)


def _ownFolder(path: str, hidden: tuple[str, ...]) -> bool:
    """
    Is C{path} one of the job's private folders (C{hidden}), or its
    working folder in one? They exist in every sandboxed job, whatever the
    server's own are (C{--cwd /tmp} was refused: new user round 28).
    """
    if not path.startswith("/"):
        return False
    path = os.path.normpath("/" + path.lstrip("/"))  # (//tmp is /tmp)
    return path in hidden or (path == WORKDIR and _within(WORKDIR, hidden))


def _reachableFolder(path: str, walker: _Walker) -> bool:
    st = walker.reached(path)
    return (
        st is not None
        and (st.st_mode & _FILE_TYPE) == _DIRECTORY
        and walker.identity.mayTraverse(st)
    )


def _runnable(path: str, walker: _Walker) -> bool:
    st = walker.reached(path)
    return (
        st is not None
        and (st.st_mode & _FILE_TYPE) == 0o100000
        and walker.identity.mayExecute(st)
    )


def _checkAsRoot(command: str, env: dict[str, str], cwd: str | None) -> None:
    base = cwd if cwd is not None else os.getcwd()
    if cwd is not None:
        if not os.path.isdir(cwd):
            raise SpawnRefused(
                f"cannot start: working directory {_named(cwd)} does not exist"
            )
        if not os.access(cwd, os.X_OK):
            raise SpawnRefused(
                f"cannot start: working directory {_named(cwd)} is not accessible"
            )
    if "/" in command:
        path = os.path.join(base, command)
        if not os.path.exists(path):
            raise _notFound(command, "no such file")
        if os.path.isdir(path):
            raise SpawnRefused(f"cannot start: {_named(command)} is a directory")
        if not os.access(path, os.X_OK):
            raise SpawnRefused(f"cannot start: {_named(command)} is not executable")
        return
    search = env.get("PATH", "")
    if shutil.which(command, path=_absolutePath(search, base)) is None:
        raise _notFound(command, "not found in PATH")


def _absolutePath(search: str, base: str) -> str:
    return os.pathsep.join(
        os.path.join(base, entry) for entry in search.split(os.pathsep)
    )
