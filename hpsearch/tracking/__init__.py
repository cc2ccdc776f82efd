"""MLflow tracking: the only package that talks to MLflow.

One study run per study, one phase run nested under it per phase, one trial run nested under its phase per Optuna
trial, created when the trial starts. Parent run ids live in the study storage (through the driver's
``SharedState``), so a resumed run or another worker attaches to the same parents.

MLflow being down or slow never stops a study: the first failure is reported once, tracking pauses for a minute and
then tries again; what was missed is rebuilt from the Optuna storage, the source of truth, by ``hpsearch sync``.

The rooms: :mod:`~hpsearch.tracking.client` (the client, the experiment, shared parent runs, batched writes),
:mod:`~hpsearch.tracking.localstore` (a local SQLite store made whole before MLflow opens it),
:mod:`~hpsearch.tracking.logger` (the hooks' work), :mod:`~hpsearch.tracking.mending` (sync and mending from the
storage) and :mod:`~hpsearch.tracking.process` (the separate tracking process and the driver's listener).
"""

from hpsearch.tracking.client import TrackingError, resolve_tracking_uri
from hpsearch.tracking.logger import MlflowLogger
from hpsearch.tracking.process import MlflowTracker

__all__ = ["MlflowLogger", "MlflowTracker", "TrackingError", "resolve_tracking_uri"]
