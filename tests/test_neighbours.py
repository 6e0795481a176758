"""
What a job shares with its neighbours on the machine, and what it may not
reach of theirs: abstract unix sockets (one network namespace for all jobs),
the cgroup file system, and its own pipes by path. Real servers, real jobs,
as root; each test also runs through the exec chain where it applies.
"""

from __future__ import annotations

import os
import pwd

import treq
from twisted.trial.unittest import SkipTest, TestCase

from jobworker.auth.users import DEVELOPMENT_USERS
from jobworker.executors.local.launcher import LANDLOCK_SCOPES, landlockABI

from .support import LiveServer
from .test_identity import output, requireRoot, waitOutput

#: alice's job: an abstract unix socket named after its argument; it answers
#: each connection with a secret, after checking its own connection works.
LISTENER = r"""
import socket, sys
name = "\0" + sys.argv[1]
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(name)
server.listen(5)
mine = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
mine.connect(name)
own, _ = server.accept()
own.sendall(b"own-ok")
print("own", mine.recv(10).decode(), flush=True)
print("ready", flush=True)
while True:
    peer, _ = server.accept()
    peer.sendall(b"alice-secret")
    peer.close()
"""

#: bob's job: connect to the name, and to send a datagram to it; say what
#: came of each.
CONNECTOR = r"""
import errno, socket, sys
name = "\0" + sys.argv[1]
client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    client.connect(name)
    print("GOT", client.recv(100).decode())
except OSError as e:
    print("refused", errno.errorcode[e.errno])
"""


#: bob's job: whether it reads its own cgroup, and the job's named by $0.
READER = (
    "line=$(grep :freezer: /proc/self/cgroup || grep '^0::' /proc/self/cgroup);"
    " own=${line#*:*:}; case $line in *freezer*) root=/sys/fs/cgroup/freezer;;"
    " *) root=/sys/fs/cgroup;; esac;"
    ' grep -qx "$$" "$root$own/cgroup.procs" && echo own-readable;'
    ' cat "$root${own%/*}/$0/cgroup.procs" 2>/dev/null && echo READ;'
    ' ls "$root${own%/*}/$0" >/dev/null 2>&1 && echo LISTED; echo done'
)


class NeighbourTests(TestCase):
    timeout = 60
    #: The server's options (a variant sets the exec chain).
    serverOptions: tuple[str, ...] = ()

    def setUp(self) -> None:
        requireRoot()

    async def test_abstractSocketsAreTheJobsOwn(self) -> None:
        """
        bob's job cannot connect to the abstract unix socket alice's job
        listens on (one network namespace: abstract names are shared, and
        it read her secret, or took her name first); alice's job reaches
        its own.
        """
        if self.serverOptions:
            raise SkipTest("the exec chain leaves abstract sockets shared (README)")
        abi = landlockABI()
        if abi < LANDLOCK_SCOPES:
            raise SkipTest(
                f"Landlock ABI {abi} here; scoping abstract sockets needs "
                f"{LANDLOCK_SCOPES} (Linux 6.12, landlock in lsm=)"
            )
        python = "/usr/bin/python3"
        if not os.path.exists(python):
            raise SkipTest("the jobs' socket scripts need /usr/bin/python3")
        server = LiveServer(self)
        name = f"jw-test-abstract-{os.getpid()}"
        listener = await server.createJob(python, "-c", LISTENER, name, user="alice")
        text = await waitOutput(server, listener["id"], b"ready")
        self.assertIn(b"own own-ok", text)
        connector = await server.createJob(python, "-c", CONNECTOR, name, user="bob")
        ended = await server.waitEnded(connector["id"])
        self.assertEqual(ended["status"], "COMPLETED", ended)
        self.assertEqual(
            (await output(server, connector["id"])).strip(), b"refused EPERM"
        )
        await server.json("POST", f"/jobs/{listener['id']}/stop", "alice")

    async def test_otherJobsCgroupsUnlisted(self) -> None:
        """
        A job cannot list the jobs' cgroup folder (every job's id, pids and
        memory use were there to read); it still reads its own cgroup.
        """
        server = LiveServer(self, *self.serverOptions)
        if server.manager._executor._cgroups is None:  # type: ignore[attr-defined]
            raise SkipTest("no cgroups here")
        script = (
            "line=$(grep :freezer: /proc/self/cgroup || grep '^0::' /proc/self/cgroup);"
            " own=${line#*:*:}; case $line in *freezer*) root=/sys/fs/cgroup/freezer;;"
            " *) root=/sys/fs/cgroup;; esac;"
            ' ls "$root$own" >/dev/null && echo own-readable;'
            ' ls "$root${own%/*}/" >/dev/null 2>&1 && echo LISTED; echo done'
        )
        job = await server.createJob("sh", "-c", script, user="bob")
        ended = await server.waitEnded(job["id"])
        self.assertEqual(ended["status"], "COMPLETED", ended)
        self.assertEqual(
            (await output(server, job["id"])).split(), [b"own-readable", b"done"]
        )

    async def test_otherJobsCgroupsUnreadable(self) -> None:
        """
        A job cannot read another job's cgroup (its pids, memory use,
        limits), though every role lists the job ids: each job's folder was
        0755 in a folder anyone may enter. It reads its own.
        """
        server = LiveServer(self, *self.serverOptions)
        if server.manager._executor._cgroups is None:  # type: ignore[attr-defined]
            raise SkipTest("no cgroups here")
        alice = await server.createJob("sleep", "30", user="alice")
        job = await server.createJob("sh", "-c", READER, alice["id"], user="bob")
        ended = await server.waitEnded(job["id"])
        self.assertEqual(ended["status"], "COMPLETED", ended)
        self.assertEqual(
            (await output(server, job["id"])).split(), [b"own-readable", b"done"]
        )
        await server.json("POST", f"/jobs/{alice['id']}/stop", "alice")

    async def test_sharedPrimaryGroupReadsNoCgroup(self) -> None:
        """
        Two accounts with one primary group (a site's C{users}; here
        C{nobody} and C{sync}, both in C{nogroup}): each job's cgroup folder
        was its account's primary group's, so bob's job read alice's pids,
        memory use and limits (attacker round 6). A group that is not the
        account's own leaves the folder root's alone.
        """
        members = {e.pw_name for e in pwd.getpwall() if e.pw_gid == 65534}
        if not {"nobody", "sync"} <= members:
            raise SkipTest("needs the accounts nobody and sync in group 65534")
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            for line in DEVELOPMENT_USERS.splitlines():
                account = {"alice": ":nobody", "bob": ":sync"}
                f.write(line + account.get(line.split(":", 1)[0], "") + "\n")
        os.chmod(path, 0o600)
        server = LiveServer(self, f"--users={path}", *self.serverOptions)
        if server.manager._executor._cgroups is None:  # type: ignore[attr-defined]
            raise SkipTest("no cgroups here")
        alice = await server.createJob("sleep", "30", user="alice")
        job = await server.createJob("sh", "-c", READER, alice["id"], user="bob")
        ended = await server.waitEnded(job["id"])
        self.assertEqual(ended["status"], "COMPLETED", ended)
        self.assertEqual((await output(server, job["id"])).split(), [b"done"])
        await server.json("POST", f"/jobs/{alice['id']}/stop", "alice")

    async def test_signalsStayInTheJob(self) -> None:
        """
        A job cannot signal a process of another job that runs as the same
        uid (a shared --run-as, or a dynamic uid reused by a setuid file
        left behind): alice's job was stopped with SIGSTOP and killed. It
        still signals its own processes.
        """
        if self.serverOptions:
            raise SkipTest(
                "the exec chain has no Landlock domain: a shared --run-as "
                "signals (README)"
            )
        abi = landlockABI()
        if abi < LANDLOCK_SCOPES:
            raise SkipTest(
                f"Landlock ABI {abi} here; scoping signals needs "
                f"{LANDLOCK_SCOPES} (Linux 6.12, landlock in lsm=)"
            )
        server = LiveServer(self, "--run-as=nobody")
        alice = await server.createJob("sleep", "30", user="alice")
        script = (
            'sleep 30 & kill "$!" && echo own-killed; '
            'kill -STOP "$0" 2>/dev/null && echo STOPPED; '
            'kill -0 "$0" 2>/dev/null && echo SIGNALLED; echo done'
        )
        job = await server.createJob("sh", "-c", script, str(alice["pid"]), user="bob")
        ended = await server.waitEnded(job["id"])
        self.assertEqual(ended["status"], "COMPLETED", ended)
        self.assertEqual(
            (await output(server, job["id"])).split(), [b"own-killed", b"done"]
        )
        with open(f"/proc/{alice['pid']}/stat") as f:
            self.assertNotIn(") T ", f.read())
        await server.json("POST", f"/jobs/{alice['id']}/stop", "alice")

    async def test_noNewPrivilegesForDynamicIdentities(self) -> None:
        """
        A dynamic uid's job gains nothing from a setuid or file-capability
        program: such a program left by an earlier holder of its uid ran as
        that uid for the next one (another user's job). A mapped or shared
        account keeps them (sudo, ping).
        """
        server = LiveServer(self, *self.serverOptions)
        check = "grep NoNewPrivs /proc/self/status"
        job = await server.createJob("sh", "-c", check, user="bob")
        await server.waitEnded(job["id"])
        self.assertEqual(
            (await output(server, job["id"])).split(), [b"NoNewPrivs:", b"1"]
        )
        shared = LiveServer(self, "--run-as=nobody", *self.serverOptions)
        job = await shared.createJob("sh", "-c", check, user="bob")
        await shared.waitEnded(job["id"])
        self.assertEqual(
            (await output(shared, job["id"])).split(), [b"NoNewPrivs:", b"0"]
        )

    async def test_pipesOpenByPath(self) -> None:
        """
        A job may write to /dev/stdout, /dev/stderr and /proc/self/fd/N (its
        pipes, opened again): they were root's, so a dynamic uid got
        "Permission denied", where a shell's user does not.
        """
        server = LiveServer(self, *self.serverOptions)
        script = (
            "echo to-err > /dev/stderr && echo to-out > /dev/stdout && "
            "echo by-fd > /proc/self/fd/1 && echo done"
        )
        job = await server.createJob("sh", "-c", script, user="bob")
        ended = await server.waitEnded(job["id"])
        self.assertEqual((ended["status"], ended["exit_code"]), ("COMPLETED", 0), ended)
        self.assertEqual(
            (await output(server, job["id"])).split(), [b"to-out", b"by-fd", b"done"]
        )
        response = await server.request(
            "GET", f"/jobs/{job['id']}/logs?stream=stderr", "ada"
        )
        self.assertEqual(await treq.content(response), b"to-err\n")


class NeighbourChainTests(NeighbourTests):
    """The same through the exec chain (--launcher=off)."""

    serverOptions = ("--launcher=off",)


class IsolatedPidStopTests(TestCase):
    """
    Under --isolate pid the launcher's first process waits for the
    namespace's init (which waits for the job) and ends as the job does; a
    stop signals the whole group, so that process must let every stop
    signal pass to the job, not die of it (SIGKILL of the job then
    followed, at once: PR_SET_PDEATHSIG).
    """

    timeout = 60

    def setUp(self) -> None:
        requireRoot()

    async def test_everyStopSignalReachesTheJob(self) -> None:
        """A stop with HUP (what jw exec -f sends when its terminal goes)
        runs the job's own HUP handler: it exits 3, not killed."""
        server = LiveServer(self, "--isolate=pid")
        job = await server.createJob(
            "sh", "-c", "trap 'exit 3' HUP; echo ready; while :; do sleep 0.1; done"
        )
        await waitOutput(server, job["id"], b"ready")
        code, _ = await server.json(
            "POST", f"/jobs/{job['id']}/stop", "alice", {"signal": "HUP"}
        )
        self.assertEqual(code, 200)
        ended = await server.waitEnded(job["id"])
        self.assertEqual((ended["exit_code"], ended["signal"]), (3, None), ended)
