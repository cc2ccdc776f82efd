"""The tracking process: the driver's listener hands every hook to it, so MLflow's cost stays off training."""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import queue
import signal
import time
from pathlib import Path
from typing import Any, Callable

from hpsearch.engine.interrupt import SIGNALS, started_without_signals
from hpsearch.engine.listener import StudyListener, StudyReport, TrialInfo
from hpsearch.engine.summary import StudySummary
from hpsearch.errors import UserError
from hpsearch.spec.models import PhaseSpec, StudySpec
from hpsearch.storage.records import SharedState
from hpsearch.storage.urls import mask_url, register_secret_url
from hpsearch.tracking.client import FLUSH_SECONDS, TrackingError, failure_reason
from hpsearch.tracking.localstore import artifact_location
from hpsearch.tracking.logger import MlflowLogger

__all__ = ["MlflowTracker"]


def _serve(logger: MlflowLogger, inbox: Any, outbox: Any, seconds: Any) -> None:
    """The tracking process: apply hook calls in order until told to stop; messages go to outbox.

    Signals are the study's to handle (it closes this process); a study process that died leaves this one orphaned,
    and what is still queued belongs to it: the next run, or `hpsearch sync`, mends MLflow from the storage.
    """
    logger.echo = outbox.put
    register_secret_url(logger.uri)  # a spawned process starts with no known passwords
    for sig in SIGNALS:  # blocked since the spawn (see MlflowTracker._start): ignored from now on
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
    from hpsearch import report  # noqa: F401 - warm the plotting imports while the study trains
    report._pyplot()
    # the queue came with its writing end too: closed here, a study process killed in the middle of sending a
    # message leaves an end of file, not a read that waits forever for the message's rest
    inbox._writer.close()
    parent = os.getppid()
    while True:
        try:
            message = inbox.get(timeout=5)
        except queue.Empty:
            message = ()
        except (EOFError, OSError):
            return
        if os.getppid() != parent or message is None:
            return
        if not message:
            continue
        name, args, logger.sent_at = message
        try:
            getattr(logger, name)(*args)
        except Exception as exc:  # noqa: BLE001 - a tracking bug must not leave the study waiting
            logger._failed(name, exc)
        finally:
            seconds.value = logger.seconds


def _forwarded(name: str) -> Callable[..., None]:
    def forward(self: MlflowTracker, *args: Any) -> None:
        self._send(name, *args)

    forward.__name__ = name
    forward.__doc__ = f"Hand ``{name}`` to the tracking process."
    return forward


class MlflowTracker(StudyListener):
    """The driver's listener: hands every hook to a separate tracking process.

    MLflow's client is slow (tens of milliseconds per call on a SQLite store) and holds the GIL; in its own process
    it uses a spare core instead of the training loop's time, and a hung server cannot stall a trial. Hooks are
    forwarded as (name, arguments) messages; epochs are batched here and sent every ``FLUSH_SECONDS``. A tracking
    process that dies is reported once and the study goes on without it.
    """

    wants_report = True
    FORWARDED = ("on_study_start", "on_phase_start", "on_trial_start", "on_trial_reaped", "on_existing_trials",
                 "on_phase_end")

    def __init__(self, spec: StudySpec, uri: str, echo: Callable[[str], None] = print) -> None:
        self.spec = spec
        self.uri = uri
        self.experiment = spec.tracking.experiment or spec.name
        self.echo = echo
        self._process: Any = None
        self._dead = False
        self._epochs: dict[int, list[tuple[int, dict[str, Any]]]] = {}
        self._epochs_sent: dict[int, float] = {}
        self._inbox: Any = None
        self._outbox: Any = None
        self._seconds: Any = None
        self._last_seconds = 0.0

    @property
    def seconds(self) -> float:
        """Time the tracking process spent in MLflow calls."""
        return self._seconds.value if self._seconds is not None else self._last_seconds

    def _start(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._inbox, self._outbox = context.Queue(), context.Queue()
        self._seconds = context.Value("d", self._last_seconds, lock=False)
        logger = MlflowLogger(self.spec, self.uri)
        self._process = context.Process(target=_serve, args=(logger, self._inbox, self._outbox, self._seconds),
                                        name="hpsearch-tracking", daemon=True)
        # Ctrl-C reaches the whole process group: the new process starts with SIGINT and SIGTERM blocked, so one
        # that lands while it imports is no KeyboardInterrupt traceback; it then ignores them, and this process tells
        # it when to stop
        started_without_signals(self._process.start)

    def _send(self, name: str, *args: Any) -> None:
        if self._dead:
            return
        if self._process is None:
            self._start()
        elif not self._process.is_alive():
            self._died()
            return
        self._inbox.put((name, args, time.time()))
        self._relay()

    def _died(self) -> None:
        self._dead = True
        self._relay()
        self.echo(f"tracking: the tracking process died (exit code {self._process.exitcode}); the study continues "
                  f"without MLflow, and the next run or `hpsearch sync {self.spec.source}` fills it in")

    def _relay(self) -> None:
        """Print what the tracking process had to say, from this process, so it lands with the study's output."""
        while self._outbox is not None:
            try:
                self.echo(self._outbox.get_nowait())
            except (queue.Empty, OSError, EOFError):
                return

    def close(self, timeout: float = 60.0, *, quiet: bool = False) -> None:
        """Wait (at most ``timeout`` seconds) for the tracking process to send everything queued, then stop it."""
        if self._process is None:
            return
        if self._process.is_alive():
            self._inbox.put(None)
            self._process.join(timeout)
            if self._process.is_alive():
                if not quiet:
                    self.echo(f"tracking: MLflow did not take everything within {timeout:.0f}s; "
                              f"run `hpsearch sync {self.spec.source}` to fill it in")
                self._process.kill()  # it ignores SIGINT and SIGTERM
                self._process.join(5)
        elif not self._dead:
            self._died()
        self._relay()
        self._last_seconds = self._seconds.value
        # nobody reads the inbox any more: its feeder thread must not wait to deliver what is left
        self._inbox.cancel_join_thread()
        for channel in (self._inbox, self._outbox):
            channel.close()
        self._process = self._inbox = self._outbox = self._seconds = None

    def on_epoch(self, phase: PhaseSpec, trial: TrialInfo, epoch: int, metrics: dict[str, Any]) -> None:
        # epochs can be milliseconds long: collect them and send one message every FLUSH_SECONDS
        self._epochs.setdefault(trial.trial_id, []).append((epoch, metrics))
        if time.monotonic() - self._epochs_sent.get(trial.trial_id, 0.0) >= FLUSH_SECONDS:
            self._send_epochs(trial.trial_id)

    def _send_epochs(self, trial_id: int) -> None:
        self._epochs_sent[trial_id] = time.monotonic()
        epochs = self._epochs.pop(trial_id, [])
        if epochs:
            self._send("on_epochs", trial_id, epochs)

    def on_trial_end(self, phase: PhaseSpec, trial: TrialInfo, result: Any, reason: str | None,
                     progress: dict[str, Any]) -> None:
        self._send_epochs(trial.trial_id)
        self._epochs_sent.pop(trial.trial_id, None)
        if result is not None:
            result = dataclasses.replace(result, model=None)  # histories only; the model stays here
        self._send("on_trial_end", phase, trial, result, reason, progress)

    def on_study_end(self, summary: StudySummary, report: StudyReport | None) -> None:
        self._send("on_study_end", summary, report)
        self.close()

    def experiment_id(self, state: SharedState) -> str | None:
        """The experiment's id in MLflow, once the tracking process found or created it (read from the storage)."""
        return state.get(MlflowLogger(self.spec, self.uri)._key("experiment"))

    def saved_model(self, state: SharedState) -> Path | None:
        """The study run's best model in a local artifact store, once the study logged it."""
        logger = MlflowLogger(self.spec, self.uri)
        run_id = state.get_or_create(logger._key(self.spec.name), lambda: None)
        location = artifact_location(self.uri)
        suffix = self.spec.trainable.model_suffix
        if not run_id or location is None or suffix is None:
            return None
        experiments = Path(location.removeprefix("file://"))
        path = experiments / run_id / "artifacts" / "model" / f"best_model{suffix}"
        return path if path.is_file() else None

    def sync(self, state: SharedState, trials: list[dict[str, Any]], phases: dict[str, dict[str, Any]],
             report: Callable[[], StudyReport | None] | None) -> dict[str, int]:
        """See :meth:`MlflowLogger.sync`; runs in this process."""
        try:
            return MlflowLogger(self.spec, self.uri, echo=self.echo).sync(state, trials, phases, report)
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - MLflow and network errors vary; all mean "MLflow unusable now"
            reason = failure_reason(exc)[:300]
            raise TrackingError(f"sync to MLflow at {mask_url(self.uri)} failed: {reason}") from None


for _name in MlflowTracker.FORWARDED:
    setattr(MlflowTracker, _name, _forwarded(_name))
