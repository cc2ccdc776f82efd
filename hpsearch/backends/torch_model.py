"""The MLP of the torch backend (:mod:`hpsearch.backends.torch_mlp`): its configuration, the network, and its file.

    input (D) -> [Linear -> (BatchNorm) -> ReLU -> (Dropout)] x len(hidden_sizes) -> Linear (C)

torch is imported only inside the functions that need it (:func:`require`), so specs, plans and the NumPy path never
load it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from hpsearch.backends.base import ModelFileError, visible_devices
from hpsearch.errors import UserError
from hpsearch.validation import UserConfig

__all__ = ["INSTALL_HINT", "TorchConfig", "TorchModel", "build_mlp", "load_model", "require", "resolve_device",
           "save_model", "visible_gpus", "visible_gpus_if_installed"]

INSTALL_HINT = "the torch backend needs PyTorch: pip install 'hpsearch[torch]' (CPU build: torch==2.13.0)"


class TorchConfig(UserConfig):
    """The trainable's configuration. Depth and width come from ``hidden_sizes``, or from ``num_layers`` x
    ``width`` when both are given (handy to search them separately)."""

    hidden_sizes: list[int] = Field(default_factory=lambda: [100], min_length=1)
    num_layers: int | None = Field(None, ge=1)
    width: int | None = Field(None, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    batch_norm: bool = False
    init: Literal["normal", "kaiming"] = "normal"
    init_std: float = Field(1e-3, gt=0)  # for init: normal (the template's N(0, 1e-3^2) weights, zero biases)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"  # adamw: decoupled weight decay
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False  # sgd only
    learning_rate: float = Field(1e-3, gt=0)
    learning_rate_decay: float = Field(0.95, gt=0, le=1)  # schedule: step
    schedule: Literal["step", "cosine", "onecycle"] = "step"
    warmup_epochs: float = Field(0.0, ge=0)  # a linear warm-up before the schedule (onecycle: 30 % of the run if 0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    grad_clip: float | None = Field(None, gt=0)  # the largest global norm of a step's gradients
    mirror: bool = False  # image rows only: each training image mirrored left to right with probability 1/2
    shift: int = Field(0, ge=0, le=16)  # image rows only: each training image moved up to this many pixels each way
    reg: float = Field(0.001, ge=0)  # weight decay
    num_epochs: int = Field(10, gt=0)
    batch_size: int = Field(200, gt=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @model_validator(mode="after")
    def _depth_and_width(self) -> TorchConfig:
        if (self.num_layers is None) != (self.width is None):
            raise ValueError("give both 'num_layers' and 'width', or neither (and 'hidden_sizes')")
        if any(size < 1 for size in self.hidden_sizes):
            raise ValueError("'hidden_sizes' must be positive integers")
        if self.batch_norm and self.batch_size < 2:
            raise ValueError(f"'batch_norm' needs 'batch_size' >= 2. Got {self.batch_size} instead")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            raise ValueError("'nesterov' needs optimizer 'sgd' and a 'momentum' above 0")
        if self.warmup_epochs >= self.num_epochs:
            raise ValueError(f"'warmup_epochs' ({self.warmup_epochs}) must be fewer than 'num_epochs' "
                             f"({self.num_epochs})")
        return self

    def layers(self) -> list[int]:
        return [self.width] * self.num_layers if self.num_layers is not None else list(self.hidden_sizes)


def require() -> Any:
    """torch, or one line telling how to install it."""
    try:
        import torch
    except ImportError:
        raise UserError(INSTALL_HINT) from None
    return torch


def visible_gpus() -> tuple[str, ...]:
    """The GPUs PyTorch sees here, as CUDA_VISIBLE_DEVICES names them (its entries where it is set, else the
    indices); UserError (one line) without PyTorch."""
    torch = require()
    count = torch.cuda.device_count()  # through NVML where it can: CUDA is not set up in this process for it
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        return tuple(visible_devices(given))[:count]
    return tuple(str(index) for index in range(count))


def visible_gpus_if_installed() -> tuple[str, ...] | None:
    """:func:`visible_gpus`, or None where PyTorch is not installed (nothing to compare a list of GPUs with)."""
    try:
        return visible_gpus()
    except UserError:
        return None


def resolve_device(device: str) -> str:
    """``auto`` picks CUDA when a device is present; asking for ``cuda`` without one is an error."""
    torch = require()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("device: cuda was asked for, but PyTorch sees no CUDA device here (use device: auto or cpu).")
    return device


def build_mlp(input_size: int, hidden_sizes: list[int], num_classes: int, *, dropout: float = 0.0,
              batch_norm: bool = False, init: str = "normal", init_std: float = 1e-3) -> Any:
    torch = require()
    nn = torch.nn
    layers: list[Any] = []
    width = input_size
    for size in hidden_sizes:
        layers.append(nn.Linear(width, size))
        if batch_norm:
            layers.append(nn.BatchNorm1d(size))
        layers.append(nn.ReLU())
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = size
    layers.append(nn.Linear(width, num_classes))
    model = nn.Sequential(*layers)
    for layer in model:
        if isinstance(layer, nn.Linear):
            if init == "kaiming":
                nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            else:
                nn.init.normal_(layer.weight, mean=0.0, std=init_std)
            nn.init.zeros_(layer.bias)
    return model


class TorchModel:
    """A trained MLP with the NumPy backend's scoring interface (NumPy in, NumPy out)."""

    def __init__(self, module: Any, device: str) -> None:
        self.module = module
        self.device = device

    def scores(self, X: np.ndarray, batch: int = 10_000) -> np.ndarray:
        torch = require()
        self.module.eval()
        out = []
        with torch.no_grad():
            for start in range(0, len(X), batch):
                rows = torch.as_tensor(X[start:start + batch], dtype=torch.float32, device=self.device)
                out.append(self.module(rows).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.argmax(self.scores(X), axis=1)

    def accuracy(self, X: np.ndarray, y: np.ndarray) -> float:
        return float((self.predict(X) == y).mean())

    @property
    def input_size(self) -> int:
        return int(self.module[0].in_features)


def save_model(model: TorchModel, config: dict[str, Any], path: str | Path) -> None:
    """The state dict and the configuration, loadable with ``weights_only=True`` (no pickled code)."""
    torch = require()
    state = {k: v.detach().cpu() for k, v in model.module.state_dict().items()}
    first = model.module[0]
    last = [layer for layer in model.module if isinstance(layer, torch.nn.Linear)][-1]
    torch.save({"state_dict": state, "config": json.dumps(config), "input_size": first.in_features,
                "num_classes": last.out_features}, path)


def load_model(path: str | Path) -> tuple[TorchModel, dict[str, Any]]:
    """A network saved by :func:`save_model` and its configuration.

    Raises ModelFileError for any other file, and for NaN or infinite weights. The network the configuration
    describes is first built on PyTorch's ``meta`` device (no memory) and its shapes compared with the stored
    tensors, so absurd declared sizes are refused without being allocated.
    """
    torch = require()
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError, UnpicklingError, EOFError... by file kind
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelFileError(f"not a PyTorch file saved by a study: {reason}") from None
    if not isinstance(saved, dict) or not {"state_dict", "config", "input_size", "num_classes"} <= saved.keys():
        raise ModelFileError("not the {state_dict, config, input_size, num_classes} a study saves")
    try:
        config = json.loads(saved["config"])
        cfg = TorchConfig(**config)
    except (TypeError, ValueError) as exc:  # a ValidationError is a ValueError
        raise ModelFileError(f"its config is not one a study saves ({str(exc).splitlines()[0]})") from None
    sizes = (saved["input_size"], saved["num_classes"])
    if not all(isinstance(size, int) and not isinstance(size, bool) and size > 0 for size in sizes):
        raise ModelFileError(f"input_size and num_classes must be positive integers. Got {sizes} instead")
    state = saved["state_dict"]
    def build() -> Any:
        return build_mlp(sizes[0], cfg.layers(), sizes[1], dropout=cfg.dropout, batch_norm=cfg.batch_norm,
                         init=cfg.init, init_std=cfg.init_std)

    try:
        with torch.device("meta"):
            expected = build().state_dict()
    except (RuntimeError, ValueError, OverflowError) as exc:  # sizes beyond what a tensor can hold
        raise ModelFileError(f"it declares layers no tensor can hold ({str(exc).splitlines()[0]})") from None
    stored = {k: tuple(v.shape) for k, v in state.items()} if isinstance(state, dict) and all(
        isinstance(v, torch.Tensor) for v in state.values()) else None
    if stored != {k: tuple(v.shape) for k, v in expected.items()}:
        raise ModelFileError("its tensors do not have the shapes its config and sizes describe")
    unfinite = [name for name, tensor in state.items()
                if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if unfinite:  # training that diverges is stopped and saves no model: such weights were altered or broken
        raise ModelFileError(f"its {unfinite[0]} holds NaN or infinite values")
    module = build()
    module.load_state_dict(state)
    return TorchModel(module, "cpu"), config
