"""The job launcher (jobworker/data/launcher.c): how it is built and found."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from jobworker.executors.local import launcher

# -- building ---------------------------------------------------------------


class BuildTests(SynchronousTestCase):
    """Compiled once per source and compiler, atomically, root-only."""

    def setUp(self) -> None:
        try:
            self.compiler = launcher.findCompiler()
        except launcher.LauncherUnavailable as e:
            raise SkipTest(str(e)) from None
        self.cache = os.path.abspath(self.mktemp())

    def test_warningFree(self) -> None:
        """The shipped source compiles with -Wall -Wextra -Werror -pedantic,
        and stays small (under 250 lines)."""
        text = launcher.source()
        self.assertLess(text.count(b"\n"), 250)
        path = os.path.join(self.mktemp())
        with open(path, "wb") as f:
            f.write(text)
        result = subprocess.run(
            [
                *(self.compiler, "-Wall", "-Wextra", "-Werror", "-pedantic"),
                *("-std=gnu11", "-O2", "-fsyntax-only", "-x", "c", path),
            ],
            capture_output=True,
            check=False,
        )
        self.assertEqual(result.returncode, 0, result.stderr)

    def test_compiledOnceThenReused(self) -> None:
        """A second build finds the first one's file (no compiler run); the
        folder and the file are the server's alone."""
        first = launcher.build([self.cache], self.compiler)
        self.assertEqual(os.path.dirname(first), self.cache)
        self.assertEqual(stat.S_IMODE(os.stat(self.cache).st_mode), 0o700)
        self.assertEqual(stat.S_IMODE(os.stat(first).st_mode), 0o700)
        before = os.stat(first).st_mtime_ns
        self.patch(launcher, "_compile", lambda *a: self.fail("compiled again"))
        self.assertEqual(launcher.build([self.cache], self.compiler), first)
        self.assertEqual(os.stat(first).st_mtime_ns, before)
        # No temporary files left beside it.
        self.assertEqual(os.listdir(self.cache), [os.path.basename(first)])

    def test_keyedBySourceAndCompiler(self) -> None:
        """Another source or another compiler is another file."""
        first = launcher.build([self.cache], self.compiler)
        other = launcher.build(
            [self.cache], self.compiler, launcher.source() + b"\n/* v2 */\n"
        )
        self.assertNotEqual(first, other)

    def test_compilerFailureSaysWhy(self) -> None:
        """A failing compiler: LauncherUnavailable naming it, nothing left."""
        false = shutil.which("false") or "/bin/false"
        with self.assertRaises(launcher.LauncherUnavailable) as caught:
            launcher.build([self.cache], false)
        self.assertIn(f"{false} failed", str(caught.exception))
        self.assertEqual(os.listdir(self.cache), [])
        with self.assertRaises(launcher.LauncherUnavailable) as caught:
            launcher.build([self.cache], self.compiler, b"int main(void) { x }\n")
        self.assertIn("error", str(caught.exception))

    def test_unsafeFolderOrFileRefused(self) -> None:
        """A cache folder others may write is skipped for the next one; a
        binary others may write is compiled again, never run."""
        os.makedirs(self.cache)
        os.chmod(self.cache, 0o777)  # noqa: S103
        fallback = os.path.abspath(self.mktemp())
        path = launcher.build([self.cache, fallback], self.compiler)
        self.assertEqual(os.path.dirname(path), fallback)
        with self.assertRaises(launcher.LauncherUnavailable) as caught:
            launcher.build([self.cache], self.compiler)
        self.assertIn("writable by others", str(caught.exception))
        os.chmod(path, 0o777)  # noqa: S103
        self.assertEqual(launcher.build([fallback], self.compiler), path)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o700)

    def test_compilerFromEnvironment(self) -> None:
        """$JW_LAUNCHER_CC names the compiler; a missing one is said."""
        false = shutil.which("false") or "/bin/false"
        self.assertEqual(launcher.findCompiler({"JW_LAUNCHER_CC": false}), false)
        with self.assertRaises(launcher.LauncherUnavailable) as caught:
            launcher.findCompiler({"JW_LAUNCHER_CC": "no-such-cc-jw"})
        self.assertIn("no-such-cc-jw", str(caught.exception))
