"""
What a sandboxed job's exec chain costs, against a bare spawn and against
one small compiled launcher doing the same set-up (issue 16's start rate).
Sequential spawns, each waited for; as root (the sandbox needs it), with a
C compiler for the launcher. Prints one JSON object.

    python benchmarks/launch_chain.py [--runs 300]

The chain is what the local executor runs today for a sandboxed job
(without its cgroup gate): C{setsid}, C{unshare --mount --ipc}, a shell
that runs C{mount -a} of a small fstab (a fork and an exec) and enters the
start folder, C{setpriv} to the job's uid and gid, C{env -i}, the command.
The launcher makes the same system calls in one process (setsid, unshare,
the private mounts, chdir, setgroups/setresgid/setresuid, execve with a
clean environment): a prototype for measurement, with none of the checks a
real one needs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

UID = 70000
LAUNCHER = r"""
#define _GNU_SOURCE
#include <grp.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>
int main(int argc, char **argv) {
  const char *tmps[] = {"/tmp", "/var/tmp", "/dev/shm"};
  char *env[] = {"PATH=/usr/bin:/bin", NULL};
  unsigned long quiet = MS_NOSUID | MS_NODEV;
  if (argc < 2) return 2;
  setsid();
  if (unshare(CLONE_NEWNS | CLONE_NEWIPC)) return 125;
  if (mount("none", "/", NULL, MS_REC | MS_PRIVATE, NULL)) return 125;
  if (mount("jobworker-proc", "/proc", "proc", quiet | MS_NOEXEC,
            "hidepid=invisible")) return 125;
  for (int i = 0; i < 3; i++)
    if (mount("jobworker-tmp", tmps[i], "tmpfs", quiet, "mode=1777,size=1048576"))
      return 125;
  mkdir("/tmp/job", 0755);
  if (mount("jobworker-work", "/tmp/job", "tmpfs", quiet,
            "mode=0700,uid=70000,gid=70000,size=1048576")) return 125;
  if (chdir("/tmp/job")) return 126;
  if (setgroups(0, NULL) || setresgid(70000, 70000, 70000) ||
      setresuid(70000, 70000, 70000)) return 125;
  execve(argv[1], argv + 1, env);
  return 127;
}
"""
FSTAB = "".join(
    line + " 0 0\n"
    for line in [
        "jobworker-proc /proc proc nosuid,nodev,noexec,hidepid=invisible",
        *(
            f"jobworker-tmp {folder} tmpfs nosuid,nodev,mode=1777,size=1048576"
            for folder in ("/tmp", "/var/tmp", "/dev/shm")
        ),
        f"jobworker-work /tmp/job tmpfs nosuid,nodev,mode=0700,uid={UID},"
        f"gid={UID},size=1048576,X-mount.mkdir=0755",
    ]
)
SANDBOX = (
    'mount -a -T "$0" || exit 125; cd "$1" || exit 126; unset OLDPWD; shift; exec "$@"'
)


def perSpawn(argv: list[str], runs: int) -> float:
    """Milliseconds per spawn of C{argv}, waited for."""
    started = time.perf_counter()
    for _ in range(runs):
        subprocess.run(argv, stdin=subprocess.DEVNULL, check=True)
    return (time.perf_counter() - started) / runs * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=300)
    options = parser.parse_args()
    compiler = shutil.which("cc") or shutil.which("gcc")
    if os.geteuid() != 0 or compiler is None:
        print("launch_chain.py needs root and a C compiler", file=sys.stderr)
        return 2
    true = shutil.which("true") or "/bin/true"
    with tempfile.TemporaryDirectory() as work:
        source = os.path.join(work, "launch.c")
        launcher = os.path.join(work, "launch")
        fstab = os.path.join(work, "fstab")
        with open(source, "w", encoding="ascii") as f:
            f.write(LAUNCHER)
        with open(fstab, "w", encoding="ascii") as f:
            f.write(FSTAB)
        subprocess.run([compiler, "-O2", "-o", launcher, source], check=True)
        chain = [
            *("setsid", "unshare", "--mount", "--ipc", "--"),
            *("sh", "-c", SANDBOX, fstab, "/tmp/job"),
            *("setpriv", f"--reuid={UID}", f"--regid={UID}", "--clear-groups", "--"),
            *("env", "-i", "PATH=/usr/bin:/bin", true),
        ]
        bare = perSpawn([true], options.runs)
        results = {
            "runs": options.runs,
            "bare_ms": round(bare, 3),
            "chain_ms": round(perSpawn(chain, options.runs), 3),
            "launcher_ms": round(perSpawn([launcher, true], options.runs), 3),
            "bare_again_ms": round(perSpawn([true], options.runs), 3),
        }
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
