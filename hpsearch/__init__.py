"""hpsearch: hyperparameter search with experiment tracking.

From Python::

    import hpsearch

    @hpsearch.trainable(metrics={"val_acc": "maximize"})
    def train(config, data, *, seed, on_epoch):
        ...
        return {"val_acc": accuracy}

    result = hpsearch.run("study.yaml")   # model.backend: "my_module:train"

Names are imported on first use, so ``import hpsearch`` (and ``hpsearch --help``) stays instant.
"""

from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("hpsearch")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

# hpsearch.api.trials is not re-exported: the name is the module hpsearch.engine.trials
__all__ = ["Dataset", "StudyResult", "TrainResult", "Trainable", "load", "run", "status", "trainable"]

_LAZY = {
    "Dataset": "hpsearch.data", "TrainResult": "hpsearch.backends.base", "Trainable": "hpsearch.backends.base",
    "trainable": "hpsearch.backends.base", "StudyResult": "hpsearch.api", "load": "hpsearch.api",
    "run": "hpsearch.api", "status": "hpsearch.api",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hpsearch' has no attribute {name!r}")
