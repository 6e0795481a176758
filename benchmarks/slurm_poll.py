"""
The Slurm executor's poll against a cluster full of other people's jobs:
how much of the server's reactor thread one poll costs.

Needs a running cluster (SLURM_CONF set, e.g. by slurm-ci/up.sh; its
MaxJobCount must exceed --foreign). It submits --foreign held jobs of
another name (held jobs are cheap: they never run), --own held jobs named as
jobworker names its jobs, and --ended short ones that complete, then runs,
in one Twisted reactor, each way of polling --rounds times:

  - jobworker's poll (SlurmCommands.states for its own jobs, then
    SlurmCommands.exits for those that ended, through the sieve process);
  - the poll before issue 19 (squeue --json --states=all, every job of the
    cluster, parsed on the reactor thread): the reference.

"reactor CPU" is time.thread_time() of the reactor's thread across the
poll: spawning, reading the pipes, parsing. The child processes' own CPU
(squeue, the sieve) is not the reactor's and is reported as wall time.

    python benchmarks/slurm_poll.py [--foreign 10000] [--own 20] [--ended 5]
                                    [--rounds 5] [--keep]

Without --keep the foreign and own jobs are cancelled at the end.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

FOREIGN = "jw-bench-foreign"


def sbatch(*options: str) -> str:
    return subprocess.run(
        ["sbatch", "--parsable", "--output=/dev/null", *options],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def named(name: str) -> list[str]:
    out = subprocess.run(
        ["squeue", "--noheader", f"--name={name}", "--format=%i"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return out.split()


def fill(foreign: int) -> float:
    """Held foreign jobs up to C{foreign}; seconds it took."""
    started = time.monotonic()
    missing = foreign - len(named(FOREIGN))
    with ThreadPoolExecutor(8) as pool:
        list(
            pool.map(
                lambda _: sbatch("--hold", f"--job-name={FOREIGN}", "--wrap=true"),
                range(max(0, missing)),
            )
        )
    return time.monotonic() - started


async def measure(reactor: Any, ids: list[str], ended: list[str], rounds: int) -> Any:
    from jobworker.executors.slurm.commands import SlurmCommands
    from jobworker.executors.slurm.documents import parseJobs

    commands = SlurmCommands(reactor)
    results: dict[str, list[tuple[float, float]]] = {"jobworker": [], "before": []}
    for _ in range(rounds):
        cpu, wall = time.thread_time(), time.monotonic()
        states = await commands.states(ids)
        done = [i for i in ids if i in states and states[i].state == "COMPLETED"]
        exits = await commands.exits(done)
        results["jobworker"].append((time.thread_time() - cpu, time.monotonic() - wall))
        assert sorted(done) == sorted(ended), (done, ended)
        assert all(exits[i].exitCode == 0 for i in ended), exits
        cpu, wall = time.thread_time(), time.monotonic()
        out, err, code = await commands.run("squeue", "--json", "--states=all")
        every = parseJobs(out)
        results["before"].append((time.thread_time() - cpu, time.monotonic() - wall))
        assert code == 0 and all(i in every for i in ids), err
    return results, len(every)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--foreign", type=int, default=10000)
    parser.add_argument("--own", type=int, default=20)
    parser.add_argument("--ended", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    filling = fill(args.foreign)
    own = [
        sbatch("--hold", f"--job-name=jobworker-{uuid.uuid4()}", "--wrap=true")
        for _ in range(args.own)
    ]
    ended = [
        sbatch(f"--job-name=jobworker-{uuid.uuid4()}", "--wrap=true")
        for _ in range(args.ended)
    ]
    for _ in range(120):
        out = subprocess.run(
            [
                "squeue",
                "--noheader",
                "--states=all",
                f"--jobs={','.join(ended)}",
                "--format=%T",
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        if len(out) == len(ended) and set(out) == {"COMPLETED"}:
            break
        time.sleep(0.5)
    from twisted.internet import defer, reactor

    box: list[Any] = []
    d = defer.ensureDeferred(measure(reactor, own + ended, ended, args.rounds))
    d.addBoth(box.append)
    d.addBoth(lambda _: reactor.stop())  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]
    if not isinstance(box[0], tuple):
        box[0].raiseException()
    results, clusterJobs = box[0]
    if not args.keep:
        subprocess.run(["scancel", f"--name={FOREIGN}"], check=False)
        subprocess.run(["scancel", *own], check=False)
    report = {
        "cluster_jobs": clusterJobs,
        "own_jobs": len(own) + len(ended),
        "ended": len(ended),
        "fill_seconds": round(filling, 1),
    }
    for way, samples in results.items():
        cpu = [c * 1000 for c, _ in samples]
        wall = [w * 1000 for _, w in samples]
        report[way] = {
            "reactor_cpu_ms_median": round(statistics.median(cpu), 2),
            "reactor_cpu_ms_max": round(max(cpu), 2),
            "wall_ms_median": round(statistics.median(wall), 1),
        }
    print(json.dumps(report, indent=2))
    goal = report["jobworker"]["reactor_cpu_ms_max"] < 20  # type: ignore[index]
    print(f"goal (< 20 ms of the reactor per poll): {'met' if goal else 'MISSED'}")
    return 0 if goal else 1


if __name__ == "__main__":
    sys.exit(main())
