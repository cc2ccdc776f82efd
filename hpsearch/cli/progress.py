"""A study's progress as its storage sees it, shown by the one process that watches while others train: the parent
of ``run --workers N``. Every number is read from the storage, whichever worker finished which trial, so the counts
never run backwards and the last line agrees with the summary that follows it. On a terminal one live bar per phase;
in a log (a pipe, CI) a plain line whenever a phase's counts change.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from hpsearch.formatting import format_duration

if TYPE_CHECKING:
    from hpsearch.spec.models import StudySpec

__all__ = ["PROGRESS_SECONDS", "StudyProgress", "progress_line"]

PROGRESS_SECONDS = 1.0  # how often the watching process reads the study's counts


def progress_line(status: dict[str, Any], eta: float | None) -> str:
    """``[grid] 26/54: 20 complete, 3 pruned, 1 failed, 2 running, best 0.9733, ETA 12 s`` (counts that are 0 left
    out, but complete and running)."""
    total = status["total"] if status["total"] is not None else "?"
    counts = [f"{status['complete']} complete"]
    counts += [f"{status[kind]} {kind}" for kind in ("pruned", "failed") if status[kind]]
    counts.append(f"{status['running']} running")
    best = f", best {status['best_value']:.4f}" if status["best_value"] is not None else ""
    when = f", ETA {format_duration(eta)}" if eta is not None and status["state"] != "complete" else ""
    return f"[{status['phase']}] {status['done']}/{total}: {', '.join(counts)}{best}{when}"


class StudyProgress:
    """Reads the study's phases every :data:`PROGRESS_SECONDS` (the first time whole, then the trials changed since)
    and shows what changed. A read that fails (the workers are still creating the storage, a busy SQLite file) is
    skipped: the view never stops the work it watches."""

    def __init__(self, spec: StudySpec, url: str, say: Callable[[str], None], *, terminal: bool = False) -> None:
        self.spec, self.url, self.say = spec, url, say
        self._driver: Any = None
        self._snapshot: Any = None
        self._shown: dict[str, tuple] = {}
        self._bars: Any = None
        self._tasks: dict[str, Any] = {}
        if terminal:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self._bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TextColumn("{task.fields[counts]}"), console=Console(stderr=True))
            self._bars.start()

    def start(self) -> None:
        """The first look, before any worker starts: a phase an earlier run left unfinished says where it stands
        (``[grid] resuming: 9 of 54 done``); nothing else is shown until it changes."""
        for _, status in self._read():
            self._shown[status["phase"]] = self._key(status)
            if status["done"] and status["state"] != "complete":
                total = status["total"] if status["total"] is not None else "?"
                self.say(f"[{status['phase']}] resuming: {status['done']} of {total} done")

    def update(self) -> None:
        statuses = self._read()
        for view, status in statuses:
            if self._bars is not None:
                self._show_bar(view, status)
                continue
            key = self._key(status)
            if self._shown.get(status["phase"]) != key:
                self._shown[status["phase"]] = key
                self.say(progress_line(status, view.eta_seconds()))

    @staticmethod
    def _key(status: dict[str, Any]) -> tuple:
        return tuple(status[k] for k in ("state", "done", "complete", "pruned", "failed", "running", "best_value"))

    def close(self) -> None:
        if self._bars is not None:
            self._bars.stop()
        if self._driver is not None:
            self._driver.close()

    def _read(self) -> list[tuple[Any, dict[str, Any]]]:
        """Each started phase's view and status, caught up; none when the storage cannot be read now, or is a SQLite
        file no worker has created yet (the watcher creates nothing)."""
        from hpsearch.engine.driver import Driver
        from hpsearch.storage.urls import sqlite_path

        try:
            if self._driver is None:
                database = sqlite_path(self.url)
                if database is not None and not database.exists():
                    return []
                self._driver = Driver(self.spec, self.url, echo=lambda line: None)
            results = self._driver.results
            self._snapshot = results.snapshot() if self._snapshot is None else results.caught_up(self._snapshot)
        except Exception:  # noqa: BLE001 - whatever keeps the storage from being read now, the next look tries again
            return []
        return [(view, view.status()) for view in self._snapshot.views if view.record is not None]

    def _show_bar(self, view: Any, status: dict[str, Any]) -> None:
        counts = progress_line(status, view.eta_seconds()).split(": ", 1)[1]
        name = status["phase"]
        if name not in self._tasks:
            self._tasks[name] = self._bars.add_task(f"[{name}]", total=status["total"], counts=counts)
        self._bars.update(self._tasks[name], completed=status["done"], total=status["total"], counts=counts)
