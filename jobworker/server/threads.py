"""The one way the server hands work to its thread pool."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from ..errors import NoThread

log = Logger()


def threadRunner(reactor: Any, pool: ThreadPool) -> Callable[..., Deferred[Any]]:
    """
    C{runInThread(f, *args)}: C{f(*args)} in one of C{pool}'s threads, its
    result on a Deferred.

    A thread the pool cannot start (C{pids.max} reached in the server's
    cgroup) was a C{RuntimeError} raised to the caller: a 500 for a
    password check, an unhandled error for a users file reload, a
    descriptor left open by the output's page release. It is now a failed
    Deferred of L{NoThread} (a 503 with C{Retry-After}); the pool starts a
    thread again once one can be had.
    """

    def runInThread(f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        try:
            return deferToThreadPool(reactor, pool, f, *args)
        except RuntimeError as e:
            # The pool kept the thread it could not start: its stop would
            # join it, and fail (the threads after it never joined).
            pool.threads[:] = [t for t in pool.threads if t.ident is not None]
            log.error("no thread for {call}: {error}", call=f.__name__, error=str(e))
            return fail(NoThread("the server cannot start a thread now: try again"))

    return runInThread


def daemonRunner(reactor: Any, name: str) -> Callable[..., Deferred[Any]]:
    """
    C{runInThread(f, *args)} as L{threadRunner}'s, but each call in a
    daemon thread of its own, called C{name}: for work that may block for
    good (a read on a hung network file system), which the reactor's pool
    would join at the shutdown, holding the process for as long (a users
    file reload held a SIGTERM's exit 59 s: fault round 8). Its result is
    dropped if the reactor has stopped by then.
    """

    def runInThread(f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        done: Deferred[Any] = Deferred()

        def work() -> None:
            try:
                result = f(*args)
            except BaseException:
                reactor.callFromThread(done.errback, Failure())
            else:
                reactor.callFromThread(done.callback, result)

        try:
            threading.Thread(target=work, name=name, daemon=True).start()
        except RuntimeError as e:
            log.error("no thread for {call}: {error}", call=f.__name__, error=str(e))
            return fail(NoThread("the server cannot start a thread now: try again"))
        return done

    return runInThread
