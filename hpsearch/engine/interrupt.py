"""SIGINT and SIGTERM, delivered where it is safe to stop.

Raising from a signal handler interrupts whatever the main thread is doing: a storage transaction, SQLAlchemy's
garbage-collection callbacks (where the exception is swallowed), a queue's bookkeeping. So the handler only records
the signal; the driver and its phase runner call :meth:`Interruption.check` at safe points (between trials, at every
epoch, while waiting) and finish the current trial's bookkeeping before it raises :class:`Interrupted`. Inside
:meth:`Interruption.immediate` — pure training computation — the handler raises at once, so a long epoch does not
delay the stop. A signal that lands in a storage or tracking library's code there (in practice a garbage-collection
callback of SQLAlchemy's, run between two lines of training, where Python would swallow the exception and print a
traceback) is only recorded, and raised at the next check: at the latest at the end of the epoch.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from typing import Any, Callable, Iterator, TypeVar

__all__ = ["SIGNALS", "Interrupted", "Interruption", "hold_signals", "started_without_signals"]

SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})
T = TypeVar("T")

# code that runs inside a stretch of training only as callbacks (garbage collection, finalizers) or bookkeeping:
# an exception raised there would be swallowed, so a signal that lands there waits for the next check
NOT_RAISED_IN = frozenset({"sqlalchemy", "alembic", "optuna", "mlflow", "weakref"})


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; the current trial was failed and will be retried on the next run."""


class Interruption:
    """The signal a process received, if any, and the places where it may act on it."""

    def __init__(self) -> None:
        self.signal: str | None = None
        self.stopped: list[str] = []  # the trials the signal stopped while they trained ("trial 4 of phase 'grid'")
        self._immediate = 0

    def _handler(self, signum: int, frame: Any) -> None:
        # no lock, no Event here: a second signal can arrive while this handler runs, and would wait on its lock
        # forever (a signal handler runs in the main thread, on top of whatever it interrupted)
        self.signal = signal.Signals(signum).name
        if self._immediate and not _in_library(frame):
            self._immediate = 0  # once: the cleanup that follows must not be interrupted again
            raise Interrupted(self.signal)

    @contextlib.contextmanager
    def installed(self, restore: bool = True) -> Iterator[Interruption]:
        """Handle SIGINT and SIGTERM this way for the duration (main thread only; elsewhere a no-op).

        ``restore`` False, for a process that exits right after: the signals are then ignored while it winds down,
        so a late one cannot kill it with a traceback half-way through its exit.
        """
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {sig: signal.signal(sig, self._handler) for sig in SIGNALS}
        try:
            yield self
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old if restore else signal.SIG_IGN)

    def check(self) -> None:
        """Raise :class:`Interrupted` if a signal arrived."""
        if self.signal is not None:
            raise Interrupted(self.signal)

    def wait(self, seconds: float) -> None:
        """Sleep up to ``seconds``, raising within a tenth of a second of a signal."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.check()
            time.sleep(min(left, 0.1))
        self.check()

    @contextlib.contextmanager
    def immediate(self) -> Iterator[None]:
        """A stretch of pure computation, where the handler may raise at once."""
        self.check()
        self._immediate += 1
        try:
            yield
        finally:
            self._immediate = max(0, self._immediate - 1)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """Inside :meth:`immediate`, a stretch that must not be interrupted (storage, listener calls)."""
        saved, self._immediate = self._immediate, 0
        try:
            yield
        finally:
            self._immediate = saved
        if saved:
            self.check()


def hold_signals() -> None:
    """In a thread of this process's own (a heartbeat, a progress display): leave SIGINT and SIGTERM to the main
    thread. A signal this thread took would reach the main thread's handler only once the scheduler ran this one
    (late, on a loaded machine), and the threads and processes it starts hold them back too."""
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)


def started_without_signals(start: Callable[[], T]) -> T:
    """``start()``, run in a short-lived thread of its own that holds SIGINT and SIGTERM back: the threads and
    processes it starts inherit that mask (a process keeps it across exec, and unblocks them once its own handling is
    in place), so a signal stays the main thread's to handle, and one that lands while a new interpreter imports is
    no traceback. The calling thread never blocks them itself: blocked there even for a moment, the kernel hands a
    signal to another thread (one of BLAS's), and the main thread may run its handler only much later."""
    returned: list[T] = []
    raised: list[BaseException] = []

    def run() -> None:
        hold_signals()
        try:
            returned.append(start())
        except BaseException as exc:  # noqa: BLE001 - raised again in the calling thread
            raised.append(exc)

    thread = threading.Thread(target=run, name="hpsearch-start", daemon=True)
    thread.start()
    thread.join()
    if raised:
        raise raised[0]
    return returned[0]


def _in_library(frame: Any) -> bool:
    """Whether the code a signal interrupted belongs to one of :data:`NOT_RAISED_IN`'s packages."""
    module = frame.f_globals.get("__name__", "") if frame is not None else ""
    return str(module).partition(".")[0] in NOT_RAISED_IN
