"""
A heavy output stream drained by a thread of its own.

The reactor's one thread reads every job's pipes and sends every log
response. A job printing at full speed and its followers then take turns on
one CPU: while the reactor encrypts for a follower, the pipe is not read.
Once a stream turns heavy (its pipe was found full: L{pipes.PipeDrain}),
a L{Pump} thread takes its pipe over: it splices it into the spool file,
kernel to kernel with the GIL released, on another CPU; while the stream
has live readers, at a higher priority than the reactor's (L{NICE}).
The reactor only learns how far the file has grown (L{OutputSpool.grew}:
every L{ANNOUNCE} bytes while the pipe stays full, at once when it runs
dry, and at the end) and wakes the readers. So followers are no
longer paced against the job (L{pacing}), and the job never waits for them.

The thread owns nothing of the job's state: it splices (or reads) the
pipe into its own duplicate of the spool's descriptor, and counts. Sizes,
the order of the streams, the page cache, readers and the end of the
stream are all handled on the reactor, in the order the thread reported
them; before the reactor records that the output switched to the other
stream, it takes the thread's counts (L{OrderLog.beforeSwitch}), so the
combined order is as fine as the reactor's own. At most L{MAX_PUMPS}
streams are pumped at once (C{--output-threads}); the others are read by
the reactor as before. A stream quiet for L{IDLE} seconds goes back to
the reactor, and its thread to the next heavy stream.
"""

from __future__ import annotations

import errno
import os
import select
import threading
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.main import CONNECTION_DONE, CONNECTION_LOST
from twisted.python.failure import Failure

from ...jobs.spool import Handover, OutputSpool

#: Streams pumped at once, server-wide: one thread each.
MAX_PUMPS = 4
#: What one splice (or read) of the pipe asks for (the heavy pipe's capacity).
READ = 1 << 20
#: While the pipe stays full, the reactor hears of the growth once per this
#: many bytes read (each time costs it a wake-up); at once when the pipe
#: runs dry, and at the end.
ANNOUNCE = 4 << 20
#: How the pipe is spliced into the file: never waiting for the pipe.
SPLICE = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
#: A pump thread's nice value, relative to the server's, while its spool
#: has readers (as root): the reactor, sending to them, never starves the
#: pipe they read from. Without readers, the server's own: a higher
#: priority would only make the thread preempt the job writing into its
#: pipe, for a few KiB each time.
NICE = -5
#: Seconds a pumped stream may stay quiet before the reactor reads it again.
IDLE = 2.0


class Pumps:
    """The server's pump threads: how many run, and the most that may."""

    def __init__(
        self, reactor: IReactorFromThreads, limit: int = MAX_PUMPS, idle: float = IDLE
    ) -> None:
        self._reactor = reactor
        self.limit = limit
        self.idle = idle
        #: Threads pumping now; started, and given back for being idle, in all.
        self.running = 0
        self.started = 0
        self.idled = 0

    def take(self, reader: Any, spool: OutputSpool) -> bool:
        """
        Pump C{reader} (a process's output reader) into C{spool} if a
        thread is free and the spool can hand its file over; True if so.
        """
        if self.running >= self.limit:
            return False
        handover = spool.handOver()
        if handover is None:
            return False
        # Handing over changes nothing in the spool until the thread runs.
        try:
            pump = Pump(self._reactor, reader, spool, handover, self._ended, self.idle)
        except OSError:  # no descriptor for its wake-up pipe
            os.close(handover.fd)
            return False
        if not pump.start():
            return False
        self.running += 1
        self.started += 1
        return True

    def _ended(self, idle: bool) -> None:
        self.running -= 1
        self.idled += idle


class Pump:
    """One pumped stream: its thread, and the reactor's side of it."""

    def __init__(
        self,
        reactor: IReactorFromThreads,
        reader: Any,
        spool: OutputSpool,
        handover: Handover,
        ended: Callable[[bool], None],
        idle: float = IDLE,
    ) -> None:
        self._reactor = reactor
        self._reader = reader
        self._spool = spool
        self._pipe: int = reader.fileno()
        self._out = handover.fd
        self._room = handover.room
        self._idleMs = max(1, int(idle * 1000))
        #: Counted by the thread, published to the spool by the reactor.
        self.size = handover.size
        self.dropped = handover.dropped
        self.lost = handover.lost
        self.error: str | None = None
        self._splicing = True
        #: The nice value the thread should run at, relative to the
        #: server's (set by the reactor: L{_wantedNice}).
        self.nice = self._wantedNice()
        self._pending = False
        #: Bytes read from the pipe, and as many when last announced.
        self._read = 0
        self._announced = 0
        self._stopping = False
        self._ended = ended
        self._wakeRead, self._wakeWrite = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)

    def start(self) -> bool:
        """
        Start the thread and take the pipe from the reactor; False (and
        nothing taken) if no thread can be started.
        """
        try:
            # The reactor is in this reader's doRead: it reads no more of
            # this pipe before stopReading below.
            threading.Thread(
                target=self._run, name="jobworker-pump", daemon=True
            ).start()
        except RuntimeError:
            for fd in (self._out, self._wakeRead, self._wakeWrite):
                os.close(fd)
            return False
        reader = self._reader
        reader.stopReading()
        # Process.loseConnection (a job abandoned after SIGKILL) stops the
        # thread before the pipe is closed: never close a descriptor a
        # thread is polling. Process.resumeProducing must not make the
        # reactor read it too.
        reader.loseConnection = self.stop
        reader.startReading = _notWhilePumped
        if self._spool.order is not None:
            self._spool.order.beforeSwitch.append(self._publish)
        return True

    def stop(self) -> None:
        """Stop pumping; the reader's connection is lost once the thread ends."""
        if not self._stopping:
            self._stopping = True
            self._reader.disconnecting = 1
            try:
                os.write(self._wakeWrite, b"x")
            except OSError:
                pass

    # -- the thread ------------------------------------------------------------

    def _run(self) -> None:
        reason: Exception | None = CONNECTION_DONE
        try:
            # (A thread starts at its creator's nice value: the reactor's.)
            base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
            nice = _prioritise(base, self.nice)
            poller = select.poll()
            poller.register(self._pipe, select.POLLIN)
            poller.register(self._wakeRead, select.POLLIN)
            while not self._stopping:
                try:
                    moved = self._move()
                except (BlockingIOError, InterruptedError):
                    self._announce()
                    if not poller.poll(self._idleMs):
                        reason = None  # quiet: back to the reactor
                        break
                    continue
                except OSError:
                    reason = CONNECTION_LOST
                    break
                if not moved:
                    break
                if self._room == 0 and moved < READ:
                    # Past its cap, in small writes: back to the reactor,
                    # which paces it (a thread read it write by write).
                    reason = None
                    break
                if self._read - self._announced >= ANNOUNCE:
                    self._announce()
                if self.nice != nice:
                    nice = _prioritise(base, self.nice)
        finally:
            try:
                os.close(self._out)
            except OSError:  # NFS, FUSE: the bytes were counted as written
                pass
            self._reactor.callFromThread(self._end, reason)

    def _move(self) -> int:
        """
        Move what the pipe holds into the file: spliced, kernel to kernel,
        while there is room under the cap and the file takes it; else read
        and counted by L{_take} (dropped past the cap; lost if the write
        fails, as the splice did). 0 at the end of the pipe.

        @raise OSError: the pipe's: EAGAIN when it is empty.
        """
        room = self._room
        if room and self._splicing:
            try:
                moved = os.splice(
                    self._pipe,
                    self._out,
                    READ if room < 0 else min(READ, room),
                    flags=SPLICE,
                )
            except (BlockingIOError, InterruptedError):
                raise
            except OSError:
                # The file's error, or a file that takes no splice: from now
                # on, read and write (what the write loses is counted).
                self._splicing = False
            else:
                self._read += moved
                self.size += moved
                if room > 0:
                    self._room -= moved
                return moved
        data = os.read(self._pipe, READ)
        self._take(data)
        return len(data)

    def _take(self, data: bytes) -> None:
        self._read += len(data)
        if self._room >= 0:
            if len(data) > self._room:
                self.dropped += len(data) - self._room
                data = data[: self._room]
            self._room -= len(data)
        view = memoryview(data)
        try:
            while view:
                written = os.write(self._out, view)
                self.size += written
                view = view[written:]
        except OSError as e:
            # As OutputSpool.write: this chunk's rest is lost, the next is tried.
            self.error = os.strerror(e.errno or errno.EIO)
            self.lost += len(view)

    def _announce(self) -> None:
        """Have the reactor publish the counts (once, however often asked)."""
        if self._read != self._announced and not self._pending:
            self._announced = self._read
            self._pending = True
            self._reactor.callFromThread(self._publish)

    # -- the reactor -----------------------------------------------------------

    def _publish(self) -> None:
        # Cleared before the counts are read: a count the thread changes
        # after this line is published again.
        self._pending = False
        self._spool.grew(self.size, self.dropped, self.lost, self.error)
        self.nice = self._wantedNice()

    def _wantedNice(self) -> int:
        """L{NICE} while the spool has readers, else the server's own."""
        return NICE if self._spool.followed else 0

    def _end(self, reason: Exception | None) -> None:
        """
        The thread has returned: with C{reason}, the pipe is done; with
        None, the stream was quiet and goes back to the reactor (unless a
        stop came meanwhile).
        """
        reader = self._reader
        if reason is None and self._stopping:
            reason = CONNECTION_DONE
        try:
            self._publish()
        finally:
            self._stopping = True  # a late stop() writes to no closed descriptor
            for fd in (self._wakeRead, self._wakeWrite):
                os.close(fd)
            order = self._spool.order
            if order is not None and self._publish in order.beforeSwitch:
                order.beforeSwitch.remove(self._publish)
            self._ended(reason is None)
            del reader.loseConnection, reader.startReading
            if reason is None:
                self._spool.takeBack(self._room)
                reader.startReading()
            else:
                reader.connectionLost(Failure(reason))


def _prioritise(base: int, nice: int) -> int:
    """
    Give the calling thread (a pump) the nice value C{base + nice}, as root
    (without the privilege, a raise is refused: it keeps what it has). The
    C{nice} asked for, so that it is asked once.
    """
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), base + nice)
    except OSError:
        pass
    return nice


def _notWhilePumped() -> None:
    """A pumped reader's startReading: the thread reads it."""
