"""
Instructions the server's process spends per started job: a measure that
does not drift with the machine (the start rate does, by 15-20% within
minutes on a shared VM).

    python benchmarks/instructions.py [--seconds 15] [--out FILE]

The server runs under C{valgrind --tool=callgrind} (installed apart:
Debian's valgrind), its own process only: the spawner and the jobs are not
traced. Counting starts after a warm-up and covers C{--seconds} of 8
clients C{POST /jobs} of C{true}, then every job's end; the count divided
by the jobs started is printed as one JSON line. User-space instructions
only: system calls count as the instructions that make them.
C{callgrind_annotate FILE} breaks the count down by C function.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import PYTHON, ROOT, Cleanup, Server, Workers

#: Server options as the start-rate scenario uses them (run.py).
EXTRA = ("--max-connections-per-client=100000", "--create-rate=1000000")


class CountedServer(Server):
    """The benchmark's server under callgrind, counting nothing at first."""

    def __init__(self, out: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.out = out

    def argv(self) -> list[str]:
        return [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={self.out}",
            "--trace-children=no",
            PYTHON,
            *super().argv(),
        ]


def control(what: str, pid: int) -> None:
    subprocess.run(
        ["callgrind_control", "-i", what, str(pid)], check=True, capture_output=True
    )


def total(path: str) -> int:
    """The event total callgrind wrote at the process's end (its summary;
    the largest, should a part before it hold a smaller one)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        totals = [
            int(line.split()[1])
            for line in f
            if line.startswith(("summary:", "totals:"))
        ]
    if not totals:
        raise RuntimeError(f"no total in {path}")
    return max(totals)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--out", default=None, help="callgrind's output file")
    parser.add_argument(
        "--server-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="an extra twistd jobworker option (repeatable), e.g. --cgroups=off",
    )
    args = parser.parse_args()
    # The server imports jobworker from this checkout, as run.py's do, not
    # from whatever build of it the virtualenv holds.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [ROOT, *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    cleanup = Cleanup()
    workdir = cleanup.tempdir()
    out = args.out or os.path.join(
        tempfile.mkdtemp(prefix="jw-callgrind-"), "callgrind.out"
    )
    server = CountedServer(
        out, cleanup, workdir, "counted", extra=(*EXTRA, *args.server_arg)
    )
    try:
        server.start(timeout=600)
        client = server.client()
        client.expect(200, "GET", "/jobs?limit=1")
        for _ in range(5):
            client.expect(201, "POST", "/jobs", {"command": "true", "args": []})
        time.sleep(2)
        workers = Workers(
            cleanup,
            8,
            {
                "mode": "repeat",
                "port": server.port,
                "method": "POST",
                "path": "/jobs",
                "body": {"command": "true", "args": []},
                "expect": 201,
                "duration": args.seconds,
            },
            timeout=600,
        )
        control("on", server.pid)
        workers.go()
        jobs = sum(result["count"] for result in workers.results())
        deadline = time.monotonic() + 300
        while client.expect(200, "GET", "/jobs?status=RUNNING&limit=1")["jobs"]:
            if time.monotonic() > deadline:
                raise RuntimeError("jobs still running after 300 s")
            time.sleep(0.5)
        control("off", server.pid)
        client.close()
    finally:
        server.stop(timeout=300)
        cleanup.run()
    count = total(out)
    print(
        json.dumps(
            {"jobs": jobs, "instructions": count, "per_job": count // jobs, "out": out}
        )
    )


if __name__ == "__main__":
    main()
