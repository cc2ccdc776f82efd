"""The assignment's two-layer network, written from scratch in NumPy.

Conventions follow CS231n's ``classifiers/neural_net.py``: rows are samples, ``params`` and ``grads`` are dicts
with the same keys, and ``loss`` returns scores when no labels are given.

    input (D) -> fully connected (H) -> ReLU -> fully connected (C) -> softmax

Named dimensions: N samples, D input features, H hidden units, C classes, B minibatch size.
"""

from __future__ import annotations

import contextlib
import functools
import json
import time
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
from pydantic import Field, ValidationError
from threadpoolctl import ThreadpoolController

from hpsearch.backends.base import ModelFileError, Trainable, TrainResult, replacing, start_with
from hpsearch.backends.sgd import SGDRun, lr_at_epoch
from hpsearch.data import Dataset
from hpsearch.files import read_npy_header
from hpsearch.validation import UserConfig

__all__ = ["CONFIG_MODEL", "METRICS", "MODEL_SUFFIX", "NumpyConfig", "SGDRun", "TRAINABLE", "Training", "TwoLayerNet",
           "cost", "evaluate", "load_model", "lr_at_epoch", "probe", "save_model", "start", "train"]


class TwoLayerNet:
    """A two-layer fully connected network with a ReLU and a softmax cross-entropy loss.

    Parameters are stored in ``self.params``:
      W1: first layer weights, shape (D, H)
      b1: first layer biases, shape (H,)
      W2: second layer weights, shape (H, C)
      b2: second layer biases, shape (C,)
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_classes: int,
        std: float = 1e-4,
        seed: int | np.random.SeedSequence | None = None,
        dtype: Any = np.float64,
    ) -> None:
        rng = np.random.default_rng(seed)
        self.dtype = np.dtype(dtype)
        self.params: dict[str, np.ndarray] = {
            "W1": (std * rng.standard_normal((input_size, hidden_size))).astype(self.dtype),
            "b1": np.zeros(hidden_size, dtype=self.dtype),
            "W2": (std * rng.standard_normal((hidden_size, num_classes))).astype(self.dtype),
            "b2": np.zeros(num_classes, dtype=self.dtype),
        }

    def loss(
        self, X: np.ndarray, y: np.ndarray | None = None, reg: float = 0.0
    ) -> np.ndarray | tuple[float, dict[str, np.ndarray]]:
        """Scores of shape (N, C) when ``y`` is None, else ``(loss, grads)``.

        X: inputs, shape (N, D). y: integer labels in [0, C), shape (N,).
        The loss is the mean softmax cross-entropy plus ``reg * (||W1||^2 + ||W2||^2)``; biases are not regularised.
        """
        W1, b1, W2, b2 = (self.params[k] for k in ("W1", "b1", "W2", "b2"))
        z2 = X @ W1 + b1  # (N, H)
        a2 = np.maximum(z2, 0)  # (N, H)
        z3 = a2 @ W2 + b2  # (N, C)
        if y is None:
            return z3

        n = X.shape[0]
        shifted = z3 - z3.max(axis=1, keepdims=True)  # (N, C), max 0 per row: exp cannot overflow
        log_norm = np.log(np.exp(shifted).sum(axis=1, keepdims=True))  # (N, 1)
        log_probs = shifted - log_norm  # (N, C)
        rows = np.arange(n)
        data_loss = -log_probs[rows, y].mean()
        loss = float(data_loss + reg * (np.sum(W1 * W1) + np.sum(W2 * W2)))

        dz3 = np.exp(log_probs)  # softmax, (N, C)
        dz3[rows, y] -= 1
        dz3 /= n
        dz2 = dz3 @ W2.T  # (N, H)
        dz2 *= z2 > 0  # ReLU mask on the pre-activation z2
        grads = {
            "W1": X.T @ dz2 + 2 * reg * W1,  # (D, H)
            "b1": dz2.sum(axis=0),  # (H,)
            "W2": a2.T @ dz3 + 2 * reg * W2,  # (H, C)
            "b2": dz3.sum(axis=0),  # (C,)
        }
        return loss, grads

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predicted labels, shape (N,)."""
        return np.argmax(self.loss(X), axis=1)

    def accuracy(self, X: np.ndarray, y: np.ndarray) -> float:
        return float((self.predict(X) == y).mean())

    def score(self, X: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """Accuracy and mean softmax cross-entropy (without the L2 term) on X (N, D), y (N,), from one pass."""
        return classification_scores(self.loss(X), y)

    @property
    def input_size(self) -> int:
        return int(self.params["W1"].shape[0])

    def train(
        self,
        X: np.ndarray,
        y: np.ndarray,
        X_val: np.ndarray,
        y_val: np.ndarray,
        learning_rate: float = 1e-3,
        learning_rate_decay: float = 0.95,
        reg: float = 5e-6,
        num_iters: int = 100,
        batch_size: int = 200,
        verbose: bool = False,
        seed: int | np.random.SeedSequence | None = None,
        on_epoch: Callable[[int, dict[str, Any]], None] | None = None,
    ) -> dict[str, list[float]]:
        """Minibatch SGD with the learning rate decayed once per epoch: :class:`SGDRun` advanced to ``num_iters``.

        Returns the run's history: ``loss_history`` (every iteration's loss), and ``train_acc``, ``val_acc`` and
        ``val_loss`` once per finished epoch. See :class:`SGDRun` for the sampling and what ``on_epoch`` gets.
        """
        run = SGDRun(self, X, y, X_val, y_val, learning_rate=learning_rate, learning_rate_decay=learning_rate_decay,
                     reg=reg, batch_size=batch_size, seed=seed, verbose=verbose)
        run.advance(num_iters, on_epoch=on_epoch)
        return run.history

    def copy(self) -> TwoLayerNet:
        """A network with copies of these parameters, which training this one no longer changes."""
        twin = TwoLayerNet.__new__(TwoLayerNet)
        twin.dtype = self.dtype
        twin.params = {name: param.copy() for name, param in self.params.items()}
        return twin


class NumpyConfig(UserConfig):
    """The trainable's configuration: what a study searches over and its defaults."""

    hidden_size: int = Field(50, gt=0)
    learning_rate: float = Field(1e-4, gt=0)
    learning_rate_decay: float = Field(0.95, gt=0, le=1)
    reg: float = Field(0.25, ge=0)
    num_iters: int = Field(1000, gt=0)
    batch_size: int = Field(200, gt=0)
    std: float = Field(1e-4, gt=0)
    dtype: str = Field("float32", pattern="^(float32|float64)$")


CONFIG_MODEL = NumpyConfig
PREPROCESS = "center"  # the assignment subtracts the training set's mean image
METRICS = {"val_acc": "maximize", "val_loss": "minimize", "train_acc": "maximize"}


@functools.cache
def _blas() -> ThreadpoolController:
    """The process's thread pools, found once: looking them up scans the loaded libraries (half a millisecond)."""
    return ThreadpoolController()


def train(
    config: dict[str, Any],
    data: Dataset,
    *,
    seed: int,
    on_epoch: Callable[[int, dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train one network with ``config`` on ``data`` and score it on the validation split."""
    return Training(config, data, seed=seed).advance(NumpyConfig(**config).num_iters, on_epoch=on_epoch)


class Training:
    """One configuration trained in stages along its budget, ``num_iters``: ``advance(n)`` returns exactly what
    :func:`train` returns for the configuration with ``num_iters: n`` and the same seed, and the next ``advance``
    goes on from there. ``save`` and ``start(..., resume_from=)`` carry it across processes.
    """

    def __init__(self, config: dict[str, Any], data: Dataset, *, seed: int) -> None:
        started = time.perf_counter()
        cfg = NumpyConfig(**config)
        self.config = cfg.model_dump()
        self.seed = seed
        self.data_identity = {"name": data.name, "fingerprint": data.fingerprint}
        dtype = np.dtype(cfg.dtype)
        self.X_train, self.X_val = data.X_train.astype(dtype, copy=False), data.X_val.astype(dtype, copy=False)
        self.y_train, self.y_val = data.y_train, data.y_val
        init_seed, batch_seed = np.random.SeedSequence(seed).spawn(2)  # independent streams for weights and batches
        net = TwoLayerNet(self.X_train.shape[1], cfg.hidden_size, data.num_classes, std=cfg.std, seed=init_seed,
                          dtype=dtype)
        self.threads = blas_threads(cfg.batch_size, self.X_train.shape[1], cfg.hidden_size)
        self.run = SGDRun(net, self.X_train, self.y_train, self.X_val, self.y_val,
                          learning_rate=cfg.learning_rate, learning_rate_decay=cfg.learning_rate_decay, reg=cfg.reg,
                          batch_size=cfg.batch_size, seed=batch_seed)
        self.seconds = time.perf_counter() - started

    @property
    def budget(self) -> int:
        """Iterations trained so far."""
        return self.run.iteration

    @property
    def examples(self) -> int:
        """Training examples processed so far: iterations x batch size."""
        return self.run.iteration * self.run.batch_size

    def advance(self, num_iters: int, *, on_epoch: Callable[[int, dict[str, Any]], None] | None = None) -> TrainResult:
        """Train on to ``num_iters`` iterations in all; the result of the configuration with that ``num_iters``."""
        config = NumpyConfig(**{**self.config, "num_iters": num_iters}).model_dump()  # the budget is validated too
        started = time.perf_counter()
        limit = _blas().limit(limits=self.threads, user_api="blas") if self.threads else contextlib.nullcontext()
        with limit:
            self.run.advance(num_iters, on_epoch=on_epoch)
        net = self.run.net
        val = net.score(self.X_val, self.y_val)
        train_acc = net.accuracy(self.X_train, self.y_train)
        self.seconds += time.perf_counter() - started
        history = {name: list(values) for name, values in self.run.history.items() if name != "loss_history"}
        return TrainResult(
            metrics={"val_acc": val["acc"], "val_loss": val["loss"], "train_acc": train_acc},
            history=history,
            loss_history=list(self.run.history["loss_history"]),
            seconds=self.seconds,
            config=config,
            model=net.copy(),
            examples=self.examples,
            device="cpu",
        )

    def save(self, path: str | Path) -> None:
        """The run's whole state in one ``.npz`` at exactly ``path`` (no pickle inside), for :func:`start`'s
        ``resume_from``; written beside it and renamed, so a crash never leaves half a file there."""
        with replacing(path) as file:
            np.savez(file, identity=np.array(json.dumps(self._identity())), seconds=np.array(self.seconds),
                     **self.run.state())

    def restore(self, path: str | Path) -> None:
        """Take up the run :meth:`save` wrote; ValueError for a file that is not one of this configuration's."""
        try:
            with np.load(path, allow_pickle=False) as saved:
                identity = json.loads(str(saved["identity"][()]))
                state = {name: _read_member(saved, name) for name in saved.files if name != "identity"} \
                    if identity == self._identity() else None
            if state is not None:
                self.seconds = float(state.pop("seconds"))
                self.run.restore(state)
        except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile) as exc:  # ModelFileError is one
            raise ValueError(f"{path}: not a saved run: {str(exc) or type(exc).__name__}") from None
        if state is None:
            raise ValueError(f"{path} holds the run of another configuration, seed or dataset")

    def _identity(self) -> dict[str, Any]:
        """What a saved run must match to be taken up: the configuration without its budget, the seed, the shapes."""
        config = {name: value for name, value in self.config.items() if name != "num_iters"}
        return {"config": config, "seed": self.seed, "data": self.data_identity}


start = start_with(Training)  # at iteration 0, or where the run saved at ``resume_from`` stood


def classification_scores(scores: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """``acc`` and ``loss`` (mean softmax cross-entropy) of class scores (N, C) against labels y (N,)."""
    if len(y) == 0:
        return {"acc": float("nan"), "loss": float("nan")}
    scores = np.asarray(scores, dtype=np.float64)
    shifted = scores - scores.max(axis=1, keepdims=True)  # (N, C)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))  # (N, C)
    rows = np.arange(len(y))
    return {"acc": float((scores.argmax(axis=1) == y).mean()), "loss": float(-log_probs[rows, y].mean())}


def evaluate(model: TwoLayerNet, X: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """The scores a study reports for a split (the test split, at its end): ``acc`` and ``loss``."""
    return model.score(np.asarray(X, dtype=model.dtype), y)


def cost(config: dict[str, Any], data: Dataset) -> float:
    """Relative compute of training ``config``: multiply-adds of the SGD steps and the per-epoch validation passes."""
    cfg = NumpyConfig(**config)
    per_sample = data.input_size * cfg.hidden_size + cfg.hidden_size * data.num_classes
    epochs = cfg.num_iters // max(len(data.y_train) // cfg.batch_size, 1)
    return float(per_sample * (3 * cfg.num_iters * cfg.batch_size + epochs * len(data.y_val)))


def probe(config: dict[str, Any]) -> dict[str, Any]:
    """A short version of ``config`` whose measured time, divided by its cost, prices every other configuration."""
    return {**config, "num_iters": min(int(config.get("num_iters", 1000)), 50)}


MODEL_SUFFIX = ".npz"


def save_model(model: TwoLayerNet, config: dict[str, Any], path: str | Path) -> None:
    """The parameters and the configuration that trained them, in one ``.npz`` (no pickle inside)."""
    np.savez(path, **model.params, config=np.array(json.dumps(config)))


PARAM_NAMES = ("W1", "b1", "W2", "b2")


def load_model(path: str | Path) -> tuple[TwoLayerNet, dict[str, Any]]:
    """A network saved by :func:`save_model` and its configuration.

    Raises ModelFileError for any other file: not an ``.npz``, keys or shapes that do not make a two-layer network,
    NaN or infinite weights, a configuration that does not validate, or an array whose header declares more data
    than the file holds (checked before the array is read, so no absurd size is ever allocated).
    """
    try:
        saved = np.load(path, allow_pickle=False)
        if not isinstance(saved, np.lib.npyio.NpzFile):
            raise ModelFileError("a single .npy array, not the .npz archive a study saves")
        with saved:
            missing = [name for name in (*PARAM_NAMES, "config") if name not in saved.files]
            if missing:
                raise ModelFileError(f"no {', '.join(missing)} in the archive")
            arrays = {name: _read_member(saved, name) for name in (*PARAM_NAMES, "config")}
    except ModelFileError:
        raise
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as exc:
        raise ModelFileError(f"not an .npz archive: {str(exc) or type(exc).__name__}") from None
    config = _saved_config(arrays.pop("config"))
    W1, b1, W2, b2 = (arrays[name] for name in PARAM_NAMES)
    if any(a.dtype not in (np.float32, np.float64) for a in arrays.values()):
        raise ModelFileError("parameters must be float32 or float64 arrays")
    unfinite = [name for name in PARAM_NAMES if not np.isfinite(arrays[name]).all()]
    if unfinite:  # training that diverges is stopped and saves no model: such weights were altered or broken
        raise ModelFileError(f"its {unfinite[0]} holds NaN or infinite values")
    if W1.ndim != 2 or W2.ndim != 2 or b1.shape != (W1.shape[1],) or W2.shape[0] != W1.shape[1] \
            or b2.shape != (W2.shape[1],) or 0 in W1.shape + W2.shape:
        raise ModelFileError(f"shapes W1 {W1.shape}, b1 {b1.shape}, W2 {W2.shape}, b2 {b2.shape} do not make a "
                             "two-layer network ((D, H), (H,), (H, C), (C,))")
    if config["hidden_size"] != W1.shape[1]:
        raise ModelFileError(f"its config says hidden_size {config['hidden_size']}, its W1 has {W1.shape[1]}")
    net = TwoLayerNet(W1.shape[0], W1.shape[1], W2.shape[1], dtype=W1.dtype)
    net.params = {name: arrays[name].astype(W1.dtype, copy=False) for name in PARAM_NAMES}
    return net, config


def _read_member(saved: Any, name: str) -> np.ndarray:
    """One array of an ``.npz``, its declared size checked against the bytes stored for it first."""
    info = saved.zip.getinfo(f"{name}.npy")
    with saved.zip.open(info) as member:
        try:
            header = read_npy_header(member)
        except ValueError as exc:
            raise ModelFileError(f"{name}: {exc}") from None
        if header.dtype.hasobject or header.nbytes > info.file_size:
            raise ModelFileError(f"{name} declares {header.shape} {header.dtype} values, more than the file holds")
    return saved[name]


def _saved_config(array: np.ndarray) -> dict[str, Any]:
    try:
        config = json.loads(str(array[()])) if array.shape == () and array.dtype.kind == "U" else None
    except ValueError:
        config = None
    if not isinstance(config, dict):
        raise ModelFileError("its config is not the JSON object a study saves")
    try:
        return NumpyConfig(**config).model_dump()
    except ValidationError as exc:
        raise ModelFileError(f"its config does not validate: {exc.errors()[0]['msg']}") from None


def blas_threads(batch_size: int, input_size: int, hidden_size: int) -> int | None:
    """BLAS threads for a step of this size: one for small products, where threads cost more than they give.

    On 2 cores, the digits network (B=100, D=64, H=120) steps twice as fast on one thread; CIFAR-10's
    (B=200, D=3072, H=50) is faster on all of them. None means "leave the process's setting alone".
    """
    return 1 if batch_size * input_size * hidden_size < 2_000_000 else None


TRAINABLE = Trainable(
    name="numpy", train=train, config_model=NumpyConfig, metrics=METRICS, evaluate=evaluate, tasks=("classification",),
    preprocess=PREPROCESS, model_suffix=MODEL_SUFFIX, save_model=save_model, load_model=load_model, probe=probe,
    cost=cost, budget="num_iters", start=start,
)
