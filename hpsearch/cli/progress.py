"""A study's progress as its storage sees it: shown by the parent of ``run --workers N`` while its workers train, and
by ``run`` itself on a terminal, below its own trial lines. Every number is read from the storage, whichever worker
finished which trial, so the counts never run backwards and the last line agrees with the summary that follows it.
On a terminal one live bar per phase; in a log (a pipe, CI) a plain line whenever a phase's counts change.

The reads run in a thread of their own (:meth:`StudyProgress.watching`): a storage that is slow to answer (a SQLite
file another process holds, an unreachable database) never delays a signal's handling. Nothing is read before a
run has begun to write the study (hpsearch's table exists), so the view never creates a storage or a table that the
run's own checks would have refused.
"""

from __future__ import annotations

import contextlib
import threading
from typing import TYPE_CHECKING, Any, Callable, Iterator

from hpsearch.engine.interrupt import hold_signals, started_without_signals
from hpsearch.engine.phaseview import resuming_line, shown_total
from hpsearch.formatting import format_duration
from hpsearch.storage.records import has_state_table

if TYPE_CHECKING:
    from hpsearch.spec.models import PhaseSpec, StudySpec

__all__ = ["PROGRESS_SECONDS", "StudyProgress", "progress_line"]

PROGRESS_SECONDS = 1.0  # how often the watching process reads the study's counts
JOIN_SECONDS = 5.0  # how long the end waits for a read in flight; a read stuck longer is left to its daemon thread


def progress_line(phase: PhaseSpec, status: dict[str, Any], eta: float | None) -> str:
    """``[grid] 26/54: 20 complete, 3 pruned, 1 failed, 2 running, best 0.9733, ETA 12 s`` (pruned and failed only
    where there are some)."""
    total = shown_total(phase, status)
    counts = [f"{status['complete']} complete"]
    counts += [f"{status[kind]} {kind}" for kind in ("pruned", "failed") if status[kind]]
    counts.append(f"{status['running']} running")
    best = f", best {status['best_value']:.4f}" if status["best_value"] is not None else ""
    when = f", ETA {format_duration(eta)}" if eta is not None and status["state"] != "complete" else ""
    return f"[{phase.name}] {status['done']}/{total if total is not None else '?'}: {', '.join(counts)}{best}{when}"


class StudyProgress:
    """Reads the study's phases (the first time whole, then the trials changed since) and shows what changed. A read
    that fails (a run has not begun to write the study yet, a busy SQLite file) is skipped, and a view that cannot
    be shown (a closed pipe) stops showing: it never stops the work it watches. ``only_phase``: the one phase a
    ``run --phase`` runs."""

    def __init__(self, spec: StudySpec, url: str, say: Callable[[str], None], *, only_phase: str | None = None,
                 terminal: bool = False) -> None:
        self.spec, self.url, self.say, self.only_phase = spec, url, say, only_phase
        self._driver: Any = None
        self._snapshot: Any = None
        self._shown: dict[str, tuple] = {}
        self._lock = threading.Lock()
        self._broken = self._closed = False
        self._bars: Any = None
        self._tasks: dict[str, Any] = {}
        if terminal:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            # markup off: a phase's name in brackets is text, not a style
            self._bars = Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                                  TextColumn("{task.fields[counts]}", markup=False), console=Console(stderr=True))

    def start(self, resuming: bool = True) -> None:
        """``resuming``: the first look, before any worker starts, in which a phase an earlier run left unfinished
        says where it stands (``[grid] resuming: 9 of 54 done``) and nothing else is shown until it changes. Without
        it (the run says so itself), no look: the first update shows every phase."""
        if resuming:
            with self._lock:
                for view, status in self._read():
                    self._shown[view.phase.name] = self._key(status)
                    self._show(resuming_line(view.phase, status))
        if self._bars is not None:
            started_without_signals(self._bars.start)  # rich's refresh thread, made now, holds them back

    def echo(self, line: str) -> None:
        """A line of this process's own, printed above the bars while they are live (written straight to the
        terminal, it would land inside them)."""
        if self._bars is not None and not self._closed:
            self._bars.console.print(line, markup=False, highlight=False, emoji=False, soft_wrap=True)
        else:
            self.say(line)

    def update(self) -> None:
        with self._lock:
            for view, status in self._read():
                key = self._key(status)
                if self._shown.get(view.phase.name) == key:
                    continue
                self._shown[view.phase.name] = key
                if self._bars is None:
                    self._show(progress_line(view.phase, status, view.eta_seconds()))
                elif not self._broken:
                    try:
                        self._show_bar(view, status)
                    except Exception:  # noqa: BLE001 - the terminal is gone: the workers go on, unwatched
                        self._broken = True

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        """Update every :data:`PROGRESS_SECONDS` in a daemon thread while the block runs."""
        stop = threading.Event()

        def watch() -> None:
            hold_signals()
            while not stop.wait(PROGRESS_SECONDS):
                self.update()

        thread = threading.Thread(target=watch, name="hpsearch-progress", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(JOIN_SECONDS)

    def close(self) -> None:
        """Stop the bars and close the storage; again, nothing."""
        if self._closed:
            return
        self._closed = True
        if self._bars is not None:
            self._bars.stop()
        if self._lock.acquire(timeout=JOIN_SECONDS):  # not while a stuck read holds the storage
            try:
                if self._driver is not None:
                    self._driver.close()
            finally:
                self._lock.release()

    @staticmethod
    def _key(status: dict[str, Any]) -> tuple:
        return tuple(status[k] for k in ("state", "done", "complete", "pruned", "failed", "running", "best_value"))

    def _read(self) -> list[tuple[Any, dict[str, Any]]]:
        """Each started phase's view and status, caught up; none when the storage cannot be read now, or is a SQLite
        file no worker has made yet."""
        from hpsearch.engine.driver import Driver

        if self._broken:
            return []
        try:
            if self._driver is None:
                if not has_state_table(self.url):
                    return []
                self._driver = Driver(self.spec, self.url, echo=lambda line: None)
            results = self._driver.results
            self._snapshot = results.snapshot() if self._snapshot is None else results.caught_up(self._snapshot)
        except Exception:  # noqa: BLE001 - whatever keeps the storage from being read now, the next look tries again
            return []
        return [(view, view.status()) for view in self._snapshot.views
                if view.record is not None and self.only_phase in (None, view.phase.name)]

    def _show(self, line: str | None) -> None:
        if line is None or self._broken:
            return
        try:
            self.say(line)
        except Exception:  # noqa: BLE001 - stderr closed (a pipe's reader gone): the workers go on, unwatched
            self._broken = True

    def _show_bar(self, view: Any, status: dict[str, Any]) -> None:
        counts = progress_line(view.phase, status, view.eta_seconds()).split(": ", 1)[1]
        name, total = view.phase.name, shown_total(view.phase, status)
        if name not in self._tasks:
            self._tasks[name] = self._bars.add_task(f"[{name}]", total=total, completed=status["done"],
                                                    counts=counts)
        self._bars.update(self._tasks[name], completed=status["done"], total=total, counts=counts)
