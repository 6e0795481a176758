"""
Fault round 9, finding 3: a token key that is a FIFO hung the start-up in
open(2) for good, before the log began; a FIFO or a folder in place of
SQLite's C{-wal} or C{-shm} file let the server start, then refuse every
job. Each is refused at once, in one line.
"""

from __future__ import annotations

import os
import threading

from twisted.trial.unittest import SynchronousTestCase

from jobworker.auth.tokens import KEY_BYTES, loadOrCreateKey
from jobworker.jobs.store import JobStore, StoreError

#: Seconds a refusal may take (it took for ever).
PROMPTLY = 5.0


class TokenKeyTests(SynchronousTestCase):
    """L{loadOrCreateKey} reads a regular file, or refuses at once."""

    def folder(self) -> str:
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        return folder

    def test_fifoRefusedAtOnce(self) -> None:
        path = os.path.join(self.folder(), "token.key")
        os.mkfifo(path, 0o600)
        outcome: list[BaseException | bytes] = []

        def load() -> None:
            try:
                outcome.append(loadOrCreateKey(path))
            except BaseException as e:
                outcome.append(e)

        reader = threading.Thread(target=load, daemon=True)
        reader.start()
        reader.join(PROMPTLY)
        if reader.is_alive():
            # Let the hung open(2) go (a writer is its partner), then fail.
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
            reader.join(PROMPTLY)
            self.fail(f"loadOrCreateKey waited on a FIFO for {PROMPTLY} s")
        [error] = outcome
        assert isinstance(error, OSError), error
        self.assertEqual(error.strerror, "not a regular file")

    def test_symlinkToAKeyFollowed(self) -> None:
        """A secret mounted as a symlink (an orchestrator's) still works."""
        folder = self.folder()
        target = os.path.join(folder, "..data-key")
        with open(os.open(target, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as f:
            f.write(b"k" * KEY_BYTES)
        path = os.path.join(folder, "token.key")
        os.symlink(target, path)
        self.assertEqual(loadOrCreateKey(path), b"k" * KEY_BYTES)

    def test_hugeFileRefused(self) -> None:
        """A file far bigger than a key is no key: refused, not read whole."""
        path = os.path.join(self.folder(), "token.key")
        with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as f:
            f.truncate(1 << 20)
        try:
            key = loadOrCreateKey(path)
        except ValueError as e:
            self.assertIn("over", str(e))
        else:
            self.fail(f"a key of {len(key)} bytes")


class StoreCompanionTests(SynchronousTestCase):
    """SQLite's C{-wal} and C{-shm} beside the store must be regular files."""

    def path(self) -> str:
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        return os.path.join(folder, "jobs.sqlite3")

    def refused(self, path: str, companion: str) -> None:
        try:
            store = JobStore(path)
        except StoreError as e:
            self.assertIn(companion, str(e))
            self.assertIn("not a regular file", str(e))
        else:
            store.close()
            self.fail(f"a store opened with {companion} no regular file")
        # Refused having left no lock held: once it is moved away, it opens.
        os.rename(companion, companion + ".moved")
        JobStore(path).close()

    def test_walFifoRefused(self) -> None:
        path = self.path()
        JobStore(path).close()
        os.mkfifo(path + "-wal", 0o600)
        self.refused(path, path + "-wal")

    def test_shmFolderRefused(self) -> None:
        path = self.path()
        JobStore(path).close()
        os.mkdir(path + "-shm")
        self.refused(path, path + "-shm")
