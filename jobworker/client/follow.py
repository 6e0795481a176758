"""
Following a job: its output as it comes, in the job's order; waiting for its
end. The same code runs over either client: the Twisted one
(L{jobworker.client.http}), where it waits on the reactor, and the
standard-library one (L{jobworker.client.quick}), where every call blocks and
the two raw streams are read by two threads (C{client.concurrently}).
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from typing import Any

from .calls import exitStatusOf
from .errors import ClientError
from .events import EventParser, outputBytes
from .failures import EXIT_TIMED_OUT
from .show import jsonLine
from .streams import Streams

#: A L{JobworkerClient<jobworker.client.http.JobworkerClient>} or a
#: L{QuickClient<jobworker.client.quick.QuickClient>}: both have C{events},
#: C{logs}, C{job}, C{pause}, C{another} and C{concurrently}.
Client = Any

#: How often a follower reconnects after its stream broke off.
FOLLOW_RETRIES = 5


async def resuming(client: Client, attempt: Callable[[], Awaitable[None]]) -> None:
    """
    Run C{attempt} until it completes; when the connection broke (no HTTP
    answer), run it again after a short, growing pause, up to
    L{FOLLOW_RETRIES} times. Each attempt resumes where the last one left.
    """
    failures = 0
    while True:
        try:
            await attempt()
            return
        except ClientError as e:
            if e.status is not None or failures >= FOLLOW_RETRIES:
                raise
        failures += 1
        await client.pause(0.2 * failures)


async def followCombined(
    client: Client,
    jobId: str,
    streams: Streams,
    follow: bool = True,
    tail: int | None = None,
) -> dict[str, Any] | None:
    """
    Copy the job's stdout to ours and its stderr to ours, in the order the
    job wrote them (the server's C{combined} stream, as events), until it
    ends (C{follow}) or to the end of what is there. If the connection
    breaks, resume after the last event received (no gap, no repeat).

    @return: the job's record from the C{end} event, or None without one.
    """
    writers = {name: streams.writer(name) for name in ("stdout", "stderr")}
    state: dict[str, Any] = {"last": None, "end": None}

    def onEvent(event: str, data: Any, eventId: str | None) -> None:
        if event in writers:
            writers[event](outputBytes(data))
            state["last"] = eventId
        elif event == "truncated":
            streams.say(
                f"jw: {data.get('dropped')} bytes of the job's {data.get('stream')} "
                "were dropped (the server's output cap)"
            )
        elif event == "end":
            state["end"] = data

    async def attempt() -> None:
        parser = EventParser(onEvent)
        await client.events(
            jobId, parser.feed, "combined", follow, tail, lastEventId=state["last"]
        )

    await resuming(client, attempt)
    end: dict[str, Any] | None = state["end"]
    return end


async def followOutput(
    client: Client,
    jobId: str,
    streams: Streams,
    follow: bool = True,
    tail: int | None = None,
) -> dict[str, Any] | None:
    """
    The job's stdout to ours and its stderr to ours: in the job's order
    (L{followCombined}) when both of ours go to one place (a terminal,
    C{2>&1}), where order shows; else each stream on its own, raw, which is
    faster (no framing), and no one can tell the order apart.

    @return: the job's final record if it came with the output, else None.
    """
    if not follow or streams.sharedDestination():
        return await followCombined(client, jobId, streams, follow, tail)

    def reader(name: str) -> Callable[[Client], Awaitable[None]]:
        write = streams.writer(name)
        return lambda each: followStream(each, jobId, name, write, tail=tail)

    await client.concurrently([reader("stdout"), reader("stderr")])
    return None


async def followStream(
    client: Client,
    jobId: str,
    stream: str,
    write: Callable[[bytes], None],
    offset: int = 0,
    tail: int | None = None,
) -> None:
    """
    Copy one stream to C{write} (raw bytes) until the job ends; if the
    connection breaks, reconnect from the byte after the last one received.
    """
    position = offset

    def sink(data: bytes) -> None:
        nonlocal position
        write(data)
        position += len(data)

    def started(start: int) -> None:
        # Where the server began (it picks the start of a tail): from then on
        # a reconnection resumes by absolute offset.
        nonlocal position, tail
        position = start
        tail = None

    async def attempt() -> None:
        await client.logs(
            jobId, sink, stream, position, follow=True, tail=tail, onStart=started
        )

    await resuming(client, attempt)


async def waitFor(client: Client, options: argparse.Namespace, streams: Streams) -> int:
    """Long-poll the job until it ends (or the timeout passes)."""
    deadline = (
        None if options.timeout is None else client.reactor.seconds() + options.timeout
    )
    clock = client.reactor
    while True:
        remaining = 60.0 if deadline is None else deadline - clock.seconds()
        wait = max(0.0, min(60.0, remaining))
        asked = clock.seconds()
        job = await client.job(options.id, wait=wait)
        if job["status"] not in ("RUNNING", "PENDING"):
            if options.json:
                streams.show(jsonLine(job))
            return exitStatusOf(job)
        if deadline is not None and clock.seconds() >= deadline:
            streams.say(f"jw: job {options.id} still running")
            return EXIT_TIMED_OUT
        # A server that answers "still running" before the wait is over
        # (an old one, or a record it cannot wait on) must not make this a
        # busy loop.
        early = min(wait, 1.0) - (clock.seconds() - asked)
        if early > 0:
            await client.pause(early)
