"""
What a small long-lived spawner process would give (issue 16's next step for
the start rate), measured like `bare.py spawn`: N jobs in flight for D
seconds, each `true` with its stdout and stderr read to EOF by a bare reactor.
Prints one JSON object.

    python benchmarks/bare_spawner.py --duration 10 --inflight 8 [--sandbox]

The reactor sends each job's pipe ends to the spawner (a `python3 -S` process,
small, so it forks fast) over a socketpair; the spawner forks, and the child
does in-process what a job's exec chain does in six execs: `setsid`, with
--sandbox (as root) `unshare(CLONE_NEWNS|CLONE_NEWIPC)`, a private tmpfs on
/tmp, `setgroups`/`setresgid`/`setresuid` to 70000, then one `execve` with a
clean environment. The spawner reaps its children and reports each exit. A
prototype for measurement: no gate, no cgroup, no error handling.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import subprocess
import sys
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.abstract import FileDescriptor
from twisted.internet.main import CONNECTION_DONE

SPAWNER = r"""
import ctypes, os, select, signal, socket, struct, sys
sock = socket.socket(fileno=int(sys.argv[1]))
sandbox = sys.argv[2] == "1"
libc = ctypes.CDLL(None, use_errno=True)
ENV = {b"PATH": b"/usr/bin:/bin", b"LANG": b"C.UTF-8"}
TRUE = b"/bin/true"
r, w = os.pipe()
os.set_blocking(w, False)
signal.set_wakeup_fd(w)
signal.signal(signal.SIGCHLD, lambda *a: None)

def child(fds):
    os.setsid()
    if sandbox:
        if libc.unshare(0x00020000 | 0x08000000) != 0:  # NEWNS | NEWIPC
            os._exit(125)
        libc.mount(b"none", b"/", None, 0x4000 | 0x40000, None)  # MS_REC|PRIVATE
        if libc.mount(b"tmpfs", b"/tmp", b"tmpfs", 2 | 4, b"size=1m") != 0:
            os._exit(125)
        os.setgroups([])
        os.setresgid(70000, 70000, 70000)
        os.setresuid(70000, 70000, 70000)
    null = os.open("/dev/null", os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(fds[0], 1)
    os.dup2(fds[1], 2)
    os.execve(TRUE, [TRUE], ENV)

while True:
    ready, _, _ = select.select([sock, r], [], [])
    if r in ready:
        os.read(r, 512)
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            sock.sendall(struct.pack("=cii", b"x", pid, status))
    if sock in ready:
        try:
            msg, fds, _, _ = socket.recv_fds(sock, 16, 2)
        except InterruptedError:
            continue
        if not msg:
            break
        pid = os.fork()
        if pid == 0:
            try:
                child(fds)
            finally:
                os._exit(127)
        for fd in fds:
            os.close(fd)
        sock.sendall(struct.pack("=cii", b"p", pid, 0))
"""


class PipeEnd(FileDescriptor):
    """Read one pipe to EOF, then tell the job."""

    def __init__(self, fd: int, job: Job) -> None:
        super().__init__(reactor)
        os.set_blocking(fd, False)
        self.fd = fd
        self.job = job
        self.startReading()

    def fileno(self) -> int:
        return self.fd

    def doRead(self) -> Any:
        try:
            if os.read(self.fd, 65536):
                return None
        except BlockingIOError:
            return None
        return CONNECTION_DONE

    def connectionLost(self, reason: Any) -> None:
        # EOF (or a hang-up, which epoll reports without a read).
        super().connectionLost(reason)
        os.close(self.fd)
        self.job.part()


class Job:
    """Ended once both pipes hit EOF and the spawner reported the exit."""

    def __init__(self, ended: Any) -> None:
        self.left = 3
        self.ended = ended
        self.pid = 0

    def part(self) -> None:
        self.left -= 1
        if self.left == 0:
            self.ended()


class Spawner(FileDescriptor):
    """The reactor's end of the socketpair: send jobs, read pids and exits."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(reactor)
        self.sock = sock
        sock.setblocking(False)
        self.pending: list[Job] = []
        self.byPid: dict[int, Job] = {}
        self.buffer = b""
        #: Jobs whose exit status was not 0 (a set-up step failed).
        self.failed = 0
        #: The wait statuses of those jobs (the first few), to say why.
        self.statuses: list[int] = []
        self.startReading()

    def fileno(self) -> int:
        return self.sock.fileno()

    def spawn(self, job: Job) -> None:
        out = os.pipe()
        err = os.pipe()
        socket.send_fds(self.sock, [b"s"], [out[1], err[1]])
        os.close(out[1])
        os.close(err[1])
        PipeEnd(out[0], job)
        PipeEnd(err[0], job)
        self.pending.append(job)

    def doRead(self) -> Any:
        self.buffer += self.sock.recv(65536)
        size = struct.calcsize("=cii")
        while len(self.buffer) >= size:
            kind, pid, status = struct.unpack("=cii", self.buffer[:size])
            self.buffer = self.buffer[size:]
            if kind == b"p":
                job = self.pending.pop(0)
                self.byPid[pid] = job
            else:
                if status != 0:
                    self.failed += 1
                    self.statuses = [*self.statuses, status][:5]
                self.byPid.pop(pid).part()
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--inflight", type=int, default=8)
    parser.add_argument("--sandbox", action="store_true")
    args = parser.parse_args()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    helper = subprocess.Popen(
        [
            sys.executable,
            "-S",
            "-c",
            SPAWNER,
            str(theirs.fileno()),
            "1" if args.sandbox else "0",
        ],
        pass_fds=[theirs.fileno()],
    )
    theirs.close()
    spawner = Spawner(ours)
    state = {"started": 0, "ended": 0, "end": 0.0}
    begin = time.monotonic()
    deadline = begin + args.duration

    def ended() -> None:
        state["ended"] += 1
        now = time.monotonic()
        if now < deadline:
            launch()
        else:
            state["end"] = max(state["end"], now)
            if state["ended"] == state["started"]:
                reactor.stop()

    def launch() -> None:
        state["started"] += 1
        spawner.spawn(Job(ended))

    for _ in range(args.inflight):
        reactor.callWhenRunning(launch)
    reactor.run()
    ours.close()
    helper.wait()
    elapsed = state["end"] - begin
    json.dump(
        {
            "sandbox": args.sandbox,
            "inflight": args.inflight,
            "jobs": state["ended"],
            "failed": spawner.failed,
            "failed_statuses": spawner.statuses,
            "elapsed": elapsed,
            "rate": state["ended"] / elapsed,
        },
        sys.stdout,
    )


if __name__ == "__main__":
    main()
