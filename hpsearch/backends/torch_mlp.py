"""Multi-layer perceptrons of any depth in PyTorch, on the CPU or a CUDA device (the assignment's Question 4).

    input (D) -> [Linear -> (BatchNorm) -> ReLU -> (Dropout)] x len(hidden_sizes) -> Linear (C)

Same interface as the NumPy backend: ``train(config, data, *, seed, on_epoch) -> TrainResult``; the network, its
configuration and its file are :mod:`hpsearch.backends.torch_model`'s. torch is imported only inside the functions
that need it, so specs, plans and the NumPy path never load it.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from hpsearch.backends.base import DivergedError, Trainable, TrainResult, replacing, start_with
from hpsearch.backends.torch_model import (TorchConfig, TorchModel, build_mlp, load_model, require, resolve_device,
                                           save_model)
from hpsearch.data import Dataset
from hpsearch.errors import UserError, one_line

__all__ = ["CONFIG_MODEL", "METRICS", "MODEL_SUFFIX", "PREPROCESS", "TRAINABLE", "TorchConfig", "TorchModel",
           "Training", "augmenter", "budget_blocker", "build_mlp", "cost", "evaluate", "image_layout", "load_model",
           "probe", "require", "resolve_device", "save_model", "start", "train"]

PREPROCESS = "unit_range"  # the template's Normalize(0.5, 0.5): inputs in [-1, 1]
METRICS = {"val_acc": "maximize", "val_loss": "minimize", "train_acc": "maximize"}
MODEL_SUFFIX = ".pt"
CONFIG_MODEL = TorchConfig


def learning_rate_at(cfg: TorchConfig, step: int, steps_per_epoch: int) -> float:
    """The learning rate at optimizer step ``step`` (0-based): a pure function of the step.

    step: ``learning_rate`` times ``learning_rate_decay`` once per finished epoch, multiplied epoch by epoch as
    PyTorch's ExponentialLR does (the same floats as before schedules existed). cosine: from ``learning_rate`` down to
    0 over the run. onecycle: cosine after a warm-up of 30 % of the run unless ``warmup_epochs`` says. A warm-up
    ramps linearly up to ``learning_rate`` (its first step at 1/warm-up steps of it) before the schedule.
    """
    total = cfg.num_epochs * steps_per_epoch
    warmup = cfg.warmup_epochs * steps_per_epoch or (0.3 * total if cfg.schedule == "onecycle" else 0)
    ramp = min(1.0, (step + 1) / warmup) if step < warmup else 1.0
    if cfg.schedule == "step":
        rate = cfg.learning_rate
        for _ in range(step // steps_per_epoch):
            rate *= cfg.learning_rate_decay
        return rate * ramp
    if step < warmup:
        return cfg.learning_rate * ramp
    progress = (step - warmup) / max(total - warmup, 1)
    return cfg.learning_rate * 0.5 * (1.0 + math.cos(math.pi * progress))


def image_layout(sample_shape: tuple[int, ...]) -> tuple[int, int, int, bool] | None:
    """(height, width, channels, channels_last) of rows that are images, None for rows that are not.

    Images are (height, width), (height, width, channels) or (channels, height, width), with at most 4 channels.
    """
    if len(sample_shape) == 2:
        return sample_shape[0], sample_shape[1], 1, True
    if len(sample_shape) == 3 and sample_shape[2] <= 4:
        return sample_shape[0], sample_shape[1], sample_shape[2], True
    if len(sample_shape) == 3 and sample_shape[0] <= 4:
        return sample_shape[1], sample_shape[2], sample_shape[0], False
    return None


def augmenter(torch: Any, cfg: TorchConfig, sample_shape: tuple[int, ...], generator: Any,
              device: Any) -> Callable[[Any], Any] | None:
    """What ``mirror`` and ``shift`` do to a minibatch of rows (B, D), drawn afresh for every minibatch; None when
    neither is on. A shift moves an image by whole pixels, the pixels it uncovers 0 (the training mean, once centred).
    """
    if not (cfg.mirror or cfg.shift):
        return None
    layout = image_layout(sample_shape)
    if layout is None:
        raise UserError(f"mirror and shift move the pixels of images; these rows are not images (sample_shape "
                        f"{tuple(sample_shape)}; preprocess pca, for one, turns images into components).")
    height, width, channels, last = layout
    reach = cfg.shift
    if reach >= min(height, width):
        raise UserError(f"shift {reach} moves a {height} x {width} image out of sight; it must be below "
                        f"{min(height, width)}.")

    def augment(rows: Any) -> Any:
        count = len(rows)
        images = rows.view(count, height, width, channels) if last else \
            rows.view(count, channels, height, width).permute(0, 2, 3, 1)  # (B, H, W, C)
        if cfg.mirror:
            flip = (torch.rand(count, generator=generator) < 0.5).to(device)
            images = torch.where(flip[:, None, None, None], images.flip(2), images)
        if reach:
            padded = torch.nn.functional.pad(images, (0, 0, reach, reach, reach, reach))  # (B, H + 2r, W + 2r, C)
            top = torch.randint(0, 2 * reach + 1, (count,), generator=generator).to(device)
            left = torch.randint(0, 2 * reach + 1, (count,), generator=generator).to(device)
            rows_at = top[:, None] + torch.arange(height, device=device)  # (B, H)
            cols_at = left[:, None] + torch.arange(width, device=device)  # (B, W)
            images = padded[torch.arange(count, device=device)[:, None, None], rows_at[:, :, None], cols_at[:, None, :]]
        return (images if last else images.permute(0, 3, 1, 2)).reshape(count, -1)

    return augment


def _optimizer(torch: Any, cfg: TorchConfig, parameters: Any) -> Any:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=cfg.learning_rate, weight_decay=cfg.reg)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=cfg.learning_rate, weight_decay=cfg.reg)
    return torch.optim.SGD(parameters, lr=cfg.learning_rate, momentum=cfg.momentum, nesterov=cfg.nesterov,
                           weight_decay=cfg.reg)


def _scores(torch: Any, module: Any, X: Any, y: Any, batch: int = 10_000) -> dict[str, float]:
    """``acc`` and ``loss`` (mean cross-entropy) of the module on tensors X (N, D), y (N,), in eval mode."""
    module.eval()
    correct, loss = 0, 0.0
    with torch.no_grad():
        for start in range(0, len(X), batch):
            scores = module(X[start:start + batch])
            correct += int((scores.argmax(dim=1) == y[start:start + batch]).sum())
            loss += float(torch.nn.functional.cross_entropy(scores, y[start:start + batch], reduction="sum"))
    rows = max(len(X), 1)
    return {"acc": correct / rows, "loss": loss / rows}


def train(
    config: dict[str, Any],
    data: Dataset,
    *,
    seed: int,
    on_epoch: Callable[[int, dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train one MLP: :class:`Training` advanced to ``num_epochs``."""
    return Training(config, data, seed=seed).advance(TorchConfig(**config).num_epochs, on_epoch=on_epoch)


class Training:
    """One MLP trained in stages along its budget, ``num_epochs``: ``advance(n)`` returns exactly what :func:`train`
    returns for the configuration with ``num_epochs: n`` and the same seed (on the CPU; CUDA kernels need not be
    deterministic), and the next ``advance`` goes on from there. Only the ``step`` schedule allows it: ``cosine`` and
    ``onecycle`` set every step's rate from ``num_epochs`` (see :func:`budget_blocker`).

    Minibatches walk a fresh permutation of the training split each epoch; the learning rate follows
    :func:`learning_rate_at` step by step (by default: multiplied by ``learning_rate_decay`` after each epoch), and
    ``on_epoch`` gets the epoch's mean loss, every step's loss, the running training accuracy of the epoch's
    minibatches, the validation accuracy and loss and the rate of the epoch's last step.

    The last, shorter minibatch of an epoch is kept, except a single row with ``batch_norm``: BatchNorm cannot take
    statistics of one row, so that row sits the epoch out (the next permutation gives it its chance). Every other
    configuration trains on every row of every epoch.

    Randomness: weights and dropout draw from torch's default generator, seeded here and kept with the run (other
    work between two ``advance`` calls cannot shift it); permutations and augmentation from the run's own generator.
    """

    def __init__(self, config: dict[str, Any], data: Dataset, *, seed: int) -> None:
        torch = self.torch = require()
        started = time.perf_counter()
        cfg = self.cfg = TorchConfig(**config)
        self.seed = seed
        self.data_identity = {"name": data.name, "fingerprint": data.fingerprint}
        device = self.device = resolve_device(cfg.device)
        # the data goes to the device once; minibatches are index views of it
        self.X = torch.as_tensor(data.X_train, dtype=torch.float32, device=device)
        self.y = torch.as_tensor(data.y_train, dtype=torch.long, device=device)
        self.X_val = torch.as_tensor(data.X_val, dtype=torch.float32, device=device)
        self.y_val = torch.as_tensor(data.y_val, dtype=torch.long, device=device)
        self.generator = torch.Generator().manual_seed(seed % 2**63)
        self.rng_state, self.cuda_rng_state = _seeded_states(torch, seed, device)
        with self._default_generator():
            self.module = build_mlp(self.X.shape[1], cfg.layers(), data.num_classes, dropout=cfg.dropout,
                                    batch_norm=cfg.batch_norm, init=cfg.init, init_std=cfg.init_std).to(device)
        self.optimizer = _optimizer(torch, cfg, self.module.parameters())
        self.augment = augmenter(torch, cfg, data.sample_shape, self.generator, device)
        self.loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        n = len(self.X)
        self.rows = n - 1 if cfg.batch_norm and n % cfg.batch_size == 1 else n  # rows trained on per epoch
        self.steps_per_epoch = -(-self.rows // cfg.batch_size)
        self.epoch = 0
        self.loss_history: list[float] = []
        self.history: dict[str, list[float]] = {"train_acc": [], "val_acc": [], "val_loss": []}
        self.seconds = time.perf_counter() - started

    @property
    def budget(self) -> int:
        """Epochs trained so far."""
        return self.epoch

    @property
    def examples(self) -> int:
        """Training examples processed so far: epochs x the rows an epoch trains on."""
        return self.epoch * self.rows

    def advance(self, num_epochs: int, *, on_epoch: Callable[[int, dict[str, Any]], None] | None = None) -> TrainResult:
        """Train on to ``num_epochs`` epochs in all; the result of the configuration with that ``num_epochs``."""
        if num_epochs < self.epoch:
            raise ValueError(f"the run stands at epoch {self.epoch}; it cannot go back to {num_epochs}")
        cfg = TorchConfig(**{**self.cfg.model_dump(), "num_epochs": num_epochs})  # the budget is validated too
        blocker = budget_blocker(cfg.model_dump())
        if blocker and self.epoch:
            raise ValueError(f"this run cannot go on from epoch {self.epoch} to {num_epochs}: {blocker}")
        torch, module = self.torch, self.module
        started = time.perf_counter()
        with self._default_generator():
            while self.epoch < num_epochs:
                self._epoch(cfg, on_epoch)
        val = _scores(torch, module, self.X_val, self.y_val)
        train_acc = _scores(torch, module, self.X, self.y)["acc"]
        self.seconds += time.perf_counter() - started
        return TrainResult(
            metrics={"val_acc": val["acc"], "val_loss": val["loss"], "train_acc": train_acc},
            history={name: list(values) for name, values in self.history.items()},
            loss_history=list(self.loss_history),
            seconds=self.seconds,
            config={**cfg.model_dump(), "hidden_sizes": cfg.layers(), "num_layers": None, "width": None},
            model=TorchModel(copy.deepcopy(module), self.device),  # the run trains on; the rung keeps this state
            examples=self.examples,
            device=self.device,
        )

    def _epoch(self, cfg: TorchConfig, on_epoch: Callable[[int, dict[str, Any]], None] | None) -> None:
        torch, module, optimizer, X, y = self.torch, self.module, self.optimizer, self.X, self.y
        epoch = self.epoch
        module.train()
        order = torch.randperm(len(X), generator=self.generator).to(self.device)
        step_losses, correct = [], torch.zeros((), device=self.device, dtype=torch.long)
        for k, first in enumerate(range(0, self.rows, cfg.batch_size)):
            lr = learning_rate_at(cfg, epoch * self.steps_per_epoch + k, self.steps_per_epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = order[first:first + cfg.batch_size]
            scores = module(X[batch] if self.augment is None else self.augment(X[batch]))
            loss = self.loss_fn(scores, y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(module.parameters(), cfg.grad_clip)
            optimizer.step()
            step_losses.append(loss.detach())
            correct += (scores.detach().argmax(dim=1) == y[batch]).sum()
        losses = torch.stack(step_losses).float().cpu().numpy()  # one device sync per epoch
        bad = np.flatnonzero(~np.isfinite(losses))
        if bad.size:
            raise DivergedError(len(self.loss_history) + int(bad[0]), float(losses[bad[0]]))
        self.loss_history.extend(float(v) for v in losses)
        train_acc = int(correct) / self.rows
        val = _scores(torch, module, self.X_val, self.y_val)
        for name, value in (("train_acc", train_acc), ("val_acc", val["acc"]), ("val_loss", val["loss"])):
            self.history[name].append(value)
        self.epoch += 1
        if on_epoch is not None:
            on_epoch(epoch, {"loss": float(losses.mean()), "step_losses": [float(v) for v in losses],
                             "train_acc": train_acc, "val_acc": val["acc"], "val_loss": val["loss"],
                             "lr": lr, "iteration": len(self.loss_history)})

    @contextlib.contextmanager
    def _default_generator(self) -> Iterator[None]:
        """torch's default generators (CPU, and the CUDA device's) set to this run's state while the block runs;
        the caller's state back afterwards."""
        torch = self.torch
        cuda = [torch.device(self.device)] if self.device.startswith("cuda") else []
        with torch.random.fork_rng(devices=cuda, device_type="cuda"):
            torch.set_rng_state(self.rng_state)
            if cuda:
                torch.cuda.set_rng_state(self.cuda_rng_state, cuda[0])
            try:
                yield
            finally:
                self.rng_state = torch.get_rng_state()
                self.cuda_rng_state = torch.cuda.get_rng_state(cuda[0]) if cuda else None

    def save(self, path: str | Path) -> None:
        """The run's whole state, loadable with ``weights_only=True``, for :func:`start`'s ``resume_from``; written
        beside ``path`` and renamed, so a crash never leaves half a file there."""
        torch = self.torch
        to_cpu = (lambda value: value.detach().cpu() if isinstance(value, torch.Tensor) else value)
        optimizer = self.optimizer.state_dict()
        optimizer["state"] = {key: {name: to_cpu(value) for name, value in state.items()}
                              for key, state in optimizer["state"].items()}
        state = {"identity": json.dumps(self._identity()), "epoch": self.epoch, "seconds": self.seconds,
                 "loss_history": self.loss_history, "history": self.history,
                 "module": {name: to_cpu(value) for name, value in self.module.state_dict().items()},
                 "optimizer": optimizer, "generator": self.generator.get_state(), "rng": self.rng_state,
                 "cuda_rng": None if self.cuda_rng_state is None else self.cuda_rng_state.cpu()}
        with replacing(path) as file:
            torch.save(state, file)

    def restore(self, path: str | Path) -> None:
        """Take up the run :meth:`save` wrote; ValueError for a file that is not one of this configuration's."""
        torch = self.torch
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError, UnpicklingError, EOFError... by file kind
            raise ValueError(f"{path}: not a saved run: {one_line(exc)}") from None
        if not isinstance(saved, dict) or saved.get("identity") != json.dumps(self._identity()):
            raise ValueError(f"{path} holds the run of another configuration, seed, dataset or device")
        try:
            self.module.load_state_dict(saved["module"])
            self.optimizer.load_state_dict(saved["optimizer"])
            self.generator.set_state(saved["generator"])
            self.rng_state = saved["rng"]
            self.cuda_rng_state = saved["cuda_rng"]
            self.epoch, self.seconds = saved["epoch"], saved["seconds"]
            self.loss_history, self.history = saved["loss_history"], saved["history"]
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise ValueError(f"{path}: not a saved run: {one_line(exc)}") from None

    def _identity(self) -> dict[str, Any]:
        """What a saved run must match to be taken up: the configuration without its budget, the seed, the shapes."""
        config = {name: value for name, value in self.cfg.model_dump().items() if name != "num_epochs"}
        return {"config": config, "seed": self.seed, "data": self.data_identity, "device": self.device}


def _seeded_states(torch: Any, seed: int, device: str) -> tuple[Any, Any]:
    """torch's default generator states (CPU, and the CUDA device's or None) seeded with ``seed``; the caller's
    states are left as they were."""
    cuda = [torch.device(device)] if device.startswith("cuda") else []
    with torch.random.fork_rng(devices=cuda, device_type="cuda"):
        torch.manual_seed(seed % 2**63)
        return torch.get_rng_state(), torch.cuda.get_rng_state(cuda[0]) if cuda else None


start = start_with(Training)  # at epoch 0, or where the run saved at ``resume_from`` stood


def budget_blocker(config: dict[str, Any]) -> str | None:
    """Why a shorter run of ``config`` is not the first part of its longer run, or None when it is."""
    schedule = TorchConfig(**config).schedule
    if schedule != "step":
        return (f"schedule {schedule!r} sets every step's learning rate from num_epochs, so a shorter run is not the "
                "first part of a longer one; use schedule 'step'")
    return None


def evaluate(model: TorchModel, X: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """The scores a study reports for a split (the test split, at its end): ``acc`` and ``loss``."""
    torch = require()
    X_t = torch.as_tensor(X, dtype=torch.float32, device=model.device)
    y_t = torch.as_tensor(y, dtype=torch.long, device=model.device)
    return _scores(torch, model.module, X_t, y_t)


def cost(config: dict[str, Any], data: Dataset) -> float:
    """Relative compute: multiply-adds of forward and backward passes over every epoch, plus validation."""
    cfg = TorchConfig(**config)
    widths = [data.input_size, *cfg.layers(), data.num_classes]
    per_sample = sum(a * b for a, b in zip(widths, widths[1:]))
    return float(per_sample * cfg.num_epochs * (3 * len(data.y_train) + len(data.y_val)))


def probe(config: dict[str, Any]) -> dict[str, Any]:
    return {**config, "num_epochs": 1}


TRAINABLE = Trainable(
    name="torch", train=train, config_model=TorchConfig, metrics=METRICS, evaluate=evaluate, tasks=("classification",),
    preprocess=PREPROCESS, model_suffix=MODEL_SUFFIX, save_model=save_model, load_model=load_model, probe=probe,
    cost=cost, require=require, budget="num_epochs", start=start, budget_blocker=budget_blocker,
)
