"""Study storages: where a study lives and everything hpsearch writes to it.

:mod:`~hpsearch.storage.urls` reads, checks and masks storage URLs; :mod:`~hpsearch.storage.connections` holds the
lock, the files and the engines that every process on one storage shares; :mod:`~hpsearch.storage.trialstore` is the one adapter over Optuna's own tables (the
only module that names a private Optuna symbol); :mod:`~hpsearch.storage.records` holds the names hpsearch gives its
trial attributes, their encoding, and hpsearch's own ``hpsearch_state`` table.

May import: optuna, sqlalchemy and the shared helpers; nothing above it (no spec, engine, tracking or command line).
"""
