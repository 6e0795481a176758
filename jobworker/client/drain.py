"""
C{jw drain}: an Admin drains the server before a restart (C{POST /drain}:
it takes no new job and starts no queued one, while the running ones go
on to their end), waits for it to be drained (C{GET /drain?wait=}, asked
again until no job runs), looks at it (C{GET /drain}) or ends it
(C{DELETE /drain}). Runs on either client (a short command: the quick one).
"""

from __future__ import annotations

import argparse
from typing import Any

from .calls import MAX_DRAIN_WAIT
from .failures import BadArguments
from .follow import resuming
from .interrupts import Interrupts
from .show import jsonLine, when
from .streams import Streams, printable

#: Exit status of C{jw drain --wait} when the drain was ended before no
#: job ran (C{jw drain --end} elsewhere, or a restart of the server).
EXIT_DRAIN_ENDED = 1


def checkDrainOptions(options: argparse.Namespace) -> None:
    """@raise BadArguments: more than one of C{--wait}, C{--status}, C{--end}."""
    given = [flag for flag in ("wait", "status", "end") if getattr(options, flag)]
    if len(given) > 1:
        raise BadArguments(
            f"--{given[0]} and --{given[1]}: choose one (--wait, --status or --end)"
        )


def _counts(state: dict[str, Any]) -> str:
    return f"{state['running']} running, {state['queued']} queued"


def _since(state: dict[str, Any], now: float) -> str:
    """Since when the drain is on, and whose it is: C{since ..., by ada}."""
    parts = []
    since = when(state.get("since"), now)
    if since:
        parts.append(f"since {since}")
    by = state.get("by")
    if isinstance(by, str) and by:
        reason = state.get("reason")
        why = f" ({printable(reason)})" if isinstance(reason, str) and reason else ""
        parts.append(f"by {printable(by)}{why}")
    return ", ".join(parts)


def drainLine(state: dict[str, Any], now: float) -> str:
    """
    The drain as C{jw drain} shows it (C{state}: C{GET /drain}'s answer):
    C{draining since ..., by ada: 2 running, 1 queued}; once no job runs,
    that the server may be restarted; C{not draining: ...} if it is not.
    """
    if state.get("draining") is not True:
        return f"not draining: {_counts(state)}"
    if state["running"] == 0:
        return (
            f"drained: no job running ({state['queued']} queued); the server "
            "may be restarted"
        )
    since = _since(state, now)
    return f"draining{' ' + since if since else ''}: {_counts(state)}"


def _waitingLine(state: dict[str, Any]) -> str:
    running = state["running"]
    return (
        f"jw: waiting for {running} running job{'s' if running != 1 else ''} "
        f"to end ({state['queued']} queued)"
    )


async def doDrain(
    options: argparse.Namespace,
    client: Any,
    streams: Streams,
    interrupts: Interrupts,
) -> int:
    """
    C{jw drain [--wait | --status | --end] [--json]}: the drain's state
    (C{--json}: the API's document) on stdout, exit 0; exit
    L{EXIT_DRAIN_ENDED} if C{--wait} saw the drain ended before no job ran.
    """
    checkDrainOptions(options)
    now = client.reactor.seconds
    if options.status:
        state = await client.drainState()
    elif options.end:
        return await _end(options, client, streams)
    else:
        state = await client.startDrain()
        if options.wait:
            state = await _untilDrained(client, state, streams, interrupts)
            if state.get("draining") is not True:
                # Ended by someone else (jw drain --end), or the server
                # restarted: nothing to restart for.
                streams.say(
                    "jw: the drain was ended meanwhile (jw drain --end, or a "
                    f"restart of the server): not drained; {_counts(state)}"
                )
                if options.json:
                    streams.show(jsonLine(state))
                return EXIT_DRAIN_ENDED
    streams.show(jsonLine(state) if options.json else drainLine(state, now()) + "\n")
    return 0


async def _end(options: argparse.Namespace, client: Any, streams: Streams) -> int:
    """
    C{jw drain --end}: the drain as it was (to say whether one was on: the
    answer of C{DELETE /drain} does not), then ended.
    """
    if options.json:
        streams.show(jsonLine(await client.endDrain()))
        return 0
    before = await client.drainState()
    after = await client.endDrain()
    if before.get("draining") is True:
        since = _since(before, client.reactor.seconds())
        was = f" (it was on {since})" if since else ""
        streams.show(f"drain ended: {_counts(after)}{was}\n")
    else:
        streams.show(f"no drain was on: {_counts(after)}\n")
    return 0


async def _untilDrained(
    client: Any,
    state: dict[str, Any],
    streams: Streams,
    interrupts: Interrupts,
) -> dict[str, Any]:
    """
    Long-poll the drain (C{GET /drain?wait=300}, asked again) until no job
    runs, or the drain is over: its last state. A poll whose connection
    broke is asked again as a follow resumes (L{resuming}). Each time the
    count of running jobs changes, one line on stderr; an interrupt ends
    the wait, not the drain, and says so.
    """
    clock = client.reactor
    interruptsBefore = interrupts.count
    shown = state["running"]
    wait = asked = 0.0

    async def attempt() -> None:
        nonlocal state, wait, asked
        wait, asked = MAX_DRAIN_WAIT, clock.seconds()
        state = await client.drainState(wait)

    try:
        if state.get("draining") is True and shown:
            streams.tell(_waitingLine(state))
        while state.get("draining") is True and state["running"]:
            await resuming(client, attempt)
            if state.get("draining") is not True or not state["running"]:
                break
            if state["running"] != shown:
                shown = state["running"]
                streams.tell(_waitingLine(state))
            # A server that answers before the wait is over, jobs still
            # running, must not make this a busy loop.
            early = min(wait, 1.0) - max(0.0, clock.seconds() - asked)
            if early > 0:
                await client.pause(early)
    except BaseException:
        if interrupts.count > interruptsBefore:
            # (A KeyboardInterrupt without the reactor, a cancellation on
            # it.) The drain goes on: said, with how to end it.
            try:
                streams.say(
                    f"jw: {interrupts.first or 'SIGINT'}: no longer waiting; the "
                    "drain goes on (jw drain --status shows it, jw drain --end "
                    "ends it)"
                )
            except OSError:
                pass  # the terminal went away (SIGHUP): the status says it
        raise
    return state
