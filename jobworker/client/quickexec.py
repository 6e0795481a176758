"""
C{jw exec} on the standard library (L{jobworker.client.quick}): the job is
created and its end reported as in L{jobworker.client.verbs.doExec}; its
output is followed, its stdin fed and a stop sent by worker threads, each on
its own connection, while the main thread answers Ctrl-C and friends.
"""

from __future__ import annotations

import argparse

from .follow import followOutput
from .interrupts import Interrupts
from .quick import QuickClient, drive
from .show import jsonLine
from .streams import Streams
from .verbs import (
    createExecJob,
    execEnded,
    execInterrupted,
    execOutput,
    feedStdin,
    stopUnread,
)
from .workers import Background


async def quickExec(
    options: argparse.Namespace,
    client: QuickClient,
    streams: Streams,
    interrupts: Interrupts,
) -> int:
    """C{jw exec}, as L{doExec<jobworker.client.verbs.doExec>} does it."""
    if not (options.follow or options.stdin):
        # Nothing to wait for: an interrupt stops jw at once.
        job = await createExecJob(options, client, streams, interrupts)
        assert job is not None  # an interrupt is a KeyboardInterrupt here
        streams.show(jsonLine(job) if options.json else job["id"] + "\n")
        return 0
    with Background(interrupts) as background:
        job = await createExecJob(options, client, streams, interrupts)
        if job is None:
            return interrupts.status
        jobId: str = job["id"]
        if options.stdin:
            feeder = client.another()

            async def read(size: int) -> bytes:
                return streams.readInputNow(size)

            feeding = background.start(
                lambda: drive(feedStdin(feeder, jobId, streams, read)),
                onError=(
                    (lambda e: streams.say(f"jw: stdin: {e}"))
                    if options.follow
                    else None
                ),
            )
        if not options.follow:
            streams.show(jsonLine(job) if options.json else jobId + "\n")
            background.wait(lambda: feeding.done)
            feeding.outcome()
            return 0
        detached: list[bool] = []

        def stop(signal: str) -> None:
            stopper = client.another()
            background.start(
                lambda: drive(stopper.stop(jobId, signal)),
                onError=lambda e: streams.say(f"jw: could not stop: {e}"),
            )

        interrupts.handle(
            execInterrupted(
                options, jobId, streams, interrupts, lambda: detached.append(True), stop
            )
        )
        try:
            streams.say(f"jw: job {jobId} started")
            # Not the main thread's connection: it is closed at the exit,
            # maybe under a follower left behind.
            follower, output = client.another(), execOutput(options, streams)
            following = background.start(
                lambda: drive(followOutput(follower, jobId, output))
            )
            background.wait(lambda: following.done or bool(detached))
        finally:
            interrupts.handle(None)
        if detached:
            return interrupts.status  # the follower is left to the exit
        try:
            end = following.outcome()
        except BrokenPipeError:
            await stopUnread(client, jobId, streams)
            raise
    final = end if end is not None else await client.job(jobId)
    return execEnded(final, options, streams, interrupts)
