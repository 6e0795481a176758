"""
twistd under cProfile, for `run.py --profile DIR`.

    python benchmarks/profiled_twistd.py OUT.pstats [twistd arguments...]

`python -m cProfile twistd` loses its profile: on SIGTERM twistd re-kills
itself with the signal (twisted.application.app._exitWithSignal) before
cProfile can write. This writes the profile first.
"""

from __future__ import annotations

import cProfile
import sys

from twisted.application import app

out = sys.argv[1]
sys.argv = ["twistd", *sys.argv[2:]]
profiler = cProfile.Profile()
_exitWithSignal = app._exitWithSignal


def dump() -> None:
    profiler.disable()
    profiler.dump_stats(out)


def dumpThenExit(sig: int) -> None:
    dump()
    _exitWithSignal(sig)


app._exitWithSignal = dumpThenExit

from twisted.scripts.twistd import run  # noqa: E402

profiler.enable()
try:
    run()
finally:
    dump()
