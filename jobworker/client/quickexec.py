"""
C{jw exec} on the standard library (L{jobworker.client.quick}): the job is
created and its end reported as in L{jobworker.client.verbs.doExec}; its
output is followed, its stdin fed and a stop sent by worker threads, each on
its own connection, while the main thread answers Ctrl-C and friends.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from typing import Any

from .errors import ClientError
from .follow import followOutput, watchEnd
from .interrupts import Interrupts
from .quick import QuickClient, drive
from .show import jsonLine
from .streams import OutputFailed, Streams
from .verbs import (
    STOP_DEADLINE,
    STOP_PATIENCE,
    InputFeed,
    InputNotSent,
    StatusHeard,
    backlogCut,
    closeInput,
    createExecJob,
    execCreated,
    execEnded,
    execInterrupted,
    execOutput,
    feedStdin,
    followedEnd,
    followFailed,
    inputStatus,
    neverStarted,
    sayBacklog,
    sayInputLeft,
    sayLeft,
    sayStarting,
    stopTaken,
    stopWaitLine,
)
from .workers import Background, Worker


async def quickExec(
    options: argparse.Namespace,
    client: QuickClient,
    streams: Streams,
    interrupts: Interrupts,
) -> int:
    """C{jw exec}, as L{doExec<jobworker.client.verbs.doExec>} does it."""
    if not (options.follow or options.stdin):
        return await _execCreated(options, client, streams, interrupts)
    with Background(interrupts) as background:
        job = await createExecJob(options, client, streams, interrupts)
        if job is None:
            return interrupts.status
        jobId: str = job["id"]
        if not options.follow:
            status = execCreated(job, options, streams)
            if status is not None:
                return status
        if options.stdin:
            feeder = client.another()

            async def read(size: int) -> bytes:
                return streams.readInputNow(size)

            feed = InputFeed(read)
            feeding = background.start(
                lambda: drive(
                    # With -f, whether the job waits in the queue is said
                    # by sayStarting.
                    feedStdin(feeder, jobId, streams, feed.read, not options.follow)
                ),
                onError=(
                    (
                        lambda e: streams.say(
                            f"jw: {e}"
                            if isinstance(e, InputNotSent)
                            else f"jw: stdin: {e}"
                        )
                    )
                    if options.follow
                    else None
                ),
            )
        if not options.follow:
            # The job's end, long-polled meanwhile on a connection of its
            # own, through any outage: once it has come, a feed still
            # waiting on jw's stdin (open, and nothing written) is left
            # behind (InputFeed).
            watcher = client.another()
            ending = background.start(lambda: drive(watchEnd(watcher, jobId)))

            def endedFirst() -> bool:
                # Or its watch was refused (the job deleted, the login
                # refused): nothing else would end the wait on jw's stdin.
                return ending.done and not feed.atEnd

            interrupted: list[str] = []
            interrupts.handle(interrupted.append)
            try:
                background.wait(
                    lambda: feeding.done or endedFirst() or bool(interrupted)
                )
            finally:
                interrupts.handle(None)
            if interrupted and not feeding.done:
                await closeInput(
                    client.another(),
                    jobId,
                    interrupted[0],
                    streams,
                    taken=feed.taken,
                )
                return interrupts.status
            if not feeding.done:
                try:
                    final = ending.outcome()
                except ClientError as e:
                    # The watch refused (the job deleted, the login
                    # refused): the feed is left, the job's stdin open,
                    # and said (it was not: new user round 36).
                    raise InputNotSent(
                        f"job {jobId}: {e}: its stdin is left open: jw stop "
                        f"{jobId} ends the job",
                        e.status,
                        e.body,
                    ) from None
                return sayInputLeft(final, streams)
            unsent = feeding.outcome()
            return 0 if unsent is None else sayInputLeft(unsent, streams)
        left: list[str] = []
        stops: list[Worker] = []
        started = StatusHeard(job)

        def stop(signal: str) -> None:
            stopper = client.another()
            stops.append(
                background.start(
                    lambda: drive(stopper.stop(jobId, signal)),
                    onError=lambda e: streams.say(f"jw: could not stop: {e}"),
                )
            )

        interrupts.handle(
            execInterrupted(
                options, jobId, streams, interrupts, left.append, stop, started
            )
        )
        try:
            started.then = sayStarting(job, streams)
            # Not the main thread's connection: it is closed at the exit,
            # maybe under a follower left behind. Nor is that one held idle
            # meanwhile (it opens again if asked): a server counts it against
            # its connection caps (fault round 27).
            await client.close()
            follower, output = client.another(), execOutput(options, streams)
            following = background.start(
                lambda: drive(followOutput(follower, jobId, output, onStatus=started))
            )
            cut: list[tuple[dict[str, Any], int]] = []

            def backlogLeft() -> bool:
                """Once the stop asked for has ended the job: too much to show?"""
                if cut or following.done:
                    return bool(cut)
                for worker in stops:
                    if worker.done and worker.error is None:
                        ended = worker.outcome()
                        unshown = backlogCut(ended, output)
                        if unshown is not None:
                            cut.append((ended, unshown))
                        return bool(cut)
                return False

            background.wait(lambda: following.done or bool(left) or backlogLeft())
        finally:
            interrupts.handle(None)
        if cut and not left:
            # The follower is left to the exit, printing nothing more.
            sayBacklog(cut[0][1], jobId, streams)
            return execEnded(cut[0][0], options, streams, interrupts)
        if left:
            # The follower is left to the exit; the stop asked for is not,
            # until the server has it.
            if not options.detach_on_interrupt:
                taken = stopTakenQuick(
                    background, client, jobId, streams, interrupts, stops
                )
                sayLeft(left[0], jobId, streams, taken)
            elif options.stdin:
                # Left running: its stdin closed, as without -f (it was left
                # open, the job waiting on it for ever: new user round 35).
                await closeInput(
                    client.another(), jobId, left[0], streams, detached=True
                )
            if options.json:
                # The one document --json promises: the job as it is now
                # (the real jw printed none: new user round 28).
                with contextlib.suppress(ClientError):
                    streams.show(jsonLine(await client.job(jobId)))
            return interrupts.status
        try:
            end = following.outcome()
        except (BrokenPipeError, OutputFailed, ClientError) as e:
            await followFailed(client, jobId, streams, e)
    final = await followedEnd(client, jobId, end)
    if options.stdin and inputLeft(feeding, feed, streams) and not neverStarted(final):
        sayInputLeft(final, streams)
    status = execEnded(final, options, streams, interrupts)
    if options.stdin:
        feedDone = feeding.done and isinstance(feeding.error, InputNotSent)
        return inputStatus(status, feedDone)
    return status


async def _execCreated(
    options: argparse.Namespace,
    client: QuickClient,
    streams: Streams,
    interrupts: Interrupts,
) -> int:
    """
    C{jw exec} without C{-f} or C{-i}. An interrupt stops jw at once until
    the job's request is sent (nothing is created); after, jw waits for the
    answer, shows the job's id and says that it runs on (jw exited saying
    nothing, the job running: new user round 36).
    """

    async def sending() -> None:
        client.opened()  # (its handshake: Ctrl-C there still stops jw)
        interrupts.queueing = interrupts.queueOne = True

    try:
        job = await createExecJob(options, client, streams, interrupts, sending)
    except KeyboardInterrupt:
        if not interrupts.queueOne:
            raise  # (before the request: nothing was created)
        # A second interrupt: jw stops waiting for the answer at once (it
        # waited out the request's timeout: session review 36).
        streams.say(
            "jw: interrupted again: no answer waited for; the job may have "
            "been created and run on (jw list shows it)"
        )
        return interrupts.status
    finally:
        interrupts.queueing = interrupts.queueOne = False
        interrupts.dispatch()  # counted: no handler here
    assert job is not None  # (no -f)
    status = execCreated(job, options, streams)
    if not interrupts.count:
        return status or 0
    if status is None:
        jobId = job["id"]
        streams.say(
            f"jw: {interrupts.first}: job {jobId} was created and runs on "
            f"(jw stop {jobId} ends it)"
        )
    return interrupts.status


def inputLeft(feeding: Worker, feed: InputFeed, streams: Streams) -> bool:
    """
    C{jw exec -i -f}, its job followed to its end: did the job end before
    it was sent all of jw's stdin? Its feed ended on the job's end with
    input not sent, or still waits on (or sends) jw's stdin: a pipe or a
    file, not a terminal (an interactive job ended with nothing typed
    after it: nothing was left).
    """
    if not feeding.done:
        return not feed.atEnd and not streams.inputIsTerminal()
    return feeding.error is None and feeding.outcome() is not None


def stopTakenQuick(
    background: Background,
    client: QuickClient,
    jobId: str,
    streams: Streams,
    interrupts: Interrupts,
    stops: list[Worker],
) -> bool:
    """
    Whether the stop the first interrupt asked for (its worker in
    C{stops}) was answered, or the server shows it taken (L{stopTaken},
    asked on a connection of its own), within L{STOP_DEADLINE}: the
    process must not exit, taking the stop's worker with it, before its
    request has reached the server. Interrupts meanwhile are ignored (the
    wait is bounded); after L{STOP_PATIENCE} jw says what it waits for.
    """

    def answered() -> bool:
        return any(w.done and not _failed(w) for w in stops)

    if answered():
        return True
    checker = client.another()
    deadline = time.monotonic() + STOP_DEADLINE
    clockDeadline = checker.reactor.seconds() + STOP_DEADLINE

    def failed() -> bool:
        return any(w.done and _failed(w) for w in stops)

    checking = background.start(
        lambda: drive(stopTaken(checker, jobId, clockDeadline, failed))
    )

    def decided() -> bool:
        return answered() or checking.done

    interrupts.handle(lambda name: None)
    try:
        if not background.wait(decided, STOP_PATIENCE):
            streams.say(stopWaitLine(jobId))
            background.wait(decided, max(0.0, deadline - time.monotonic()))
    finally:
        interrupts.handle(None)
    if answered():
        return True
    return checking.done and checking.error is None and bool(checking.outcome())


def _failed(worker: Worker) -> bool:
    """Did this stop fail (not: the job had ended already, a 409)?"""
    error = worker.error
    return error is not None and not (
        isinstance(error, ClientError) and error.status == 409
    )
