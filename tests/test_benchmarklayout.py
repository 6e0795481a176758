"""Benchmark scripts run with benchmarks/ first on sys.path: no stdlib names."""

from __future__ import annotations

import os
import sys

from twisted.trial.unittest import SynchronousTestCase

HERE = os.path.dirname(os.path.abspath(__file__))
BENCHMARKS = os.path.join(os.path.dirname(HERE), "benchmarks")


class LayoutTests(SynchronousTestCase):
    def test_noModuleShadowsTheStandardLibrary(self) -> None:
        """
        A benchmarks/queue.py once hid the stdlib's queue from Twisted in every
        script there (bench-smoke broke): no module there has a stdlib name.
        """
        names = {name[:-3] for name in os.listdir(BENCHMARKS) if name.endswith(".py")}
        self.assertEqual(names & set(sys.stdlib_module_names), set())
