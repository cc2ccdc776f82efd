"""The engine: running a study's phases and trials on a study storage, and reading back what they found.

:mod:`~hpsearch.engine.driver` runs a spec's phases in order; :mod:`~hpsearch.engine.phaserun` one phase's trials,
from the exactly-once :mod:`~hpsearch.engine.pointqueue` or Optuna's sampler; :mod:`~hpsearch.engine.trials` one
trial. :mod:`~hpsearch.engine.phases` keeps which Optuna study serves each phase, :mod:`~hpsearch.engine.results`
what the phases found (a :class:`~hpsearch.engine.summary.StudySummary`), :mod:`~hpsearch.engine.budget` the limits
of one invocation, :mod:`~hpsearch.engine.interrupt` the signals, :mod:`~hpsearch.engine.pausedruns` a halving
phase's runs between levels, :mod:`~hpsearch.engine.training` one training run from a spec,
:mod:`~hpsearch.engine.plan` the estimates of ``hpsearch plan``, and :mod:`~hpsearch.engine.listener` the plain data
the engine tells the world.

May import: :mod:`hpsearch.search`, :mod:`hpsearch.spec`, :mod:`hpsearch.storage`, the backends, the data and the
shared helpers (``errors``, ``files``, ``formatting``, ``plugins``, ``validation``); never tracking, the API or the
command line, which build on it.
"""
