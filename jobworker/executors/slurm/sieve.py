"""
C{python -m jobworker.executors.slurm.sieve ID... -- COMMAND...}: run a
Slurm command printing JSON (C{squeue --json}), keep only the jobs of the
given ids, print that (small) document.

Slurm before 24.05 ignores C{--jobs} with C{--json} and prints every job of
the cluster (about 4 KB each): parsed in the server, 10,000 of them would
hold its reactor thread for 0.4 s, and a thread would not help (the JSON
parser holds the GIL). This process parses them instead; the server reads
only its own jobs. Its exit status is the command's; its stderr passes
through.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys


def sieve(text: str, ids: set[str]) -> str:
    """The document C{text} with only the jobs of C{ids} (errors kept)."""
    document = json.loads(text)
    document["jobs"] = [
        job for job in document.get("jobs", []) if str(job.get("job_id")) in ids
    ]
    document.pop("meta", None)
    return json.dumps(document)


def main(argv: list[str]) -> int:
    if "--" not in argv:
        sys.stderr.write("usage: sieve ID... -- COMMAND...\n")
        return 2
    split = argv.index("--")
    ids, command = set(argv[:split]), argv[split + 1 :]
    # A group of its own: the server's deadline kills it and the command
    # together (a squeue that hung kept the server's pipe: Slurm round 34).
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    done = subprocess.run(command, stdout=subprocess.PIPE, check=False)
    if done.returncode != 0:
        sys.stdout.buffer.write(done.stdout)
        return done.returncode
    try:
        sys.stdout.write(sieve(done.stdout.decode("utf-8", "replace"), ids))
    except (ValueError, AttributeError) as e:
        sys.stderr.write(f"sieve: unexpected output of {command[0]}: {e}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
