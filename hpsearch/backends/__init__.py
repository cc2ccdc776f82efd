"""Trainables. Each backend module exposes ``train(config, data, *, seed, on_epoch) -> TrainResult``.

Backends are imported on demand so that the NumPy path never imports torch.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from hpsearch.backends.base import DivergedError, ModelFileError, TrainResult

__all__ = ["BACKENDS", "DivergedError", "ModelFileError", "TrainResult", "get_backend"]

# backend name -> module that implements it
BACKENDS = {"numpy": "hpsearch.backends.numpy_twolayer", "torch": "hpsearch.backends.torch_mlp"}


def get_backend(name: str) -> ModuleType:
    """The module implementing backend ``name``."""
    return importlib.import_module(BACKENDS[name])
