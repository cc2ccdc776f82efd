"""The study spec: one YAML file read safely (:mod:`~hpsearch.spec.document`), validated into typed objects
(:mod:`~hpsearch.spec.models`) and checked against what the trainable and the search algorithms allow
(:mod:`~hpsearch.spec.checks`). Nothing outside this package reads the raw mapping.

May import: :mod:`hpsearch.search` (to check sizes and ladders), the backends and the data (for their configuration
models), and the shared helpers; never the engine, a storage, tracking or the command line.
"""
