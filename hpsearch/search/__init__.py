"""The search algorithms, as pure functions of plain values: a phase's points (random draws, grids, derived grids)
in :mod:`~hpsearch.search.grid`, budget ladders and halving's decisions in :mod:`~hpsearch.search.ladders`, and
asynchronous halving's (ASHA) for phases that sample their configurations in :mod:`~hpsearch.search.asha`.

Pure means testable without a database and replayable by a benchmark: nothing here imports Optuna, a storage,
MLflow or the spec's models (a parameter is anything with the attributes of :class:`~hpsearch.search.grid.Param`).
May import: the shared helpers (``errors``) and numpy only.
"""
