"""What every trainable shares: the contract, the result of one training run and the errors a run can end with.

A trainable is a function ``train(config, data, *, seed, on_epoch)``. It imports neither Optuna nor MLflow: it calls
``on_epoch(epoch, metrics)`` after every epoch (if it has epochs) and the caller decides what that means. It returns
a :class:`TrainResult`, or just a mapping of metric names to numbers. The built-in backends and a user's own function
are described alike, by a :class:`Trainable`: what the function takes, reports and can do besides training.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Mapping, Protocol

__all__ = ["DivergedError", "ModelFileError", "TrainResult", "Trainable", "TrainableError", "Training", "add_epoch",
           "device_name", "is_number", "metric_on_test", "replacing", "scores_on_test", "start_with", "trainable",
           "visible_devices"]

Direction = Literal["maximize", "minimize"]
Task = Literal["classification", "regression"]
OnEpoch = Callable[[int, dict[str, Any]], None]


class ModelFileError(ValueError):
    """A model file that is not what a study saves: another kind of file, wrong keys or shapes, absurd sizes."""


class DivergedError(ArithmeticError):
    """The training loss became NaN or infinite."""

    def __init__(self, iteration: int, loss: float) -> None:
        super().__init__(f"loss became {loss} at iteration {iteration}")
        self.iteration = iteration
        self.loss = loss


class TrainableError(TypeError):
    """A trainable broke its contract: it returned something that is not a result, or a metric that is no number."""


def visible_devices(value: str | None) -> list[str]:
    """The devices a CUDA_VISIBLE_DEVICES value names, in its order (none for an unset or empty one)."""
    return [entry.strip() for entry in (value or "").split(",") if entry.strip()]


def device_name(device: str) -> str:
    """A device as the machine numbers it: ``cuda:N`` of a process is the N-th GPU its CUDA_VISIBLE_DEVICES gives it,
    named as that names it (``cuda:0`` of a worker given GPUs 2 and 3 is ``cuda:2``); anything else as it is."""
    kind, _, index = device.partition(":")
    if kind != "cuda" or not (index or "0").isdigit():
        return device
    given = visible_devices(os.environ.get("CUDA_VISIBLE_DEVICES"))
    position = int(index or 0)
    return f"cuda:{given[position]}" if position < len(given) else f"cuda:{position}"


@dataclass
class TrainResult:
    """Metrics and histories of one training run.

    metrics: the final model's scores by name (``val_acc``, ``train_acc``, ``val_rmse``, ...).
    history: one value per epoch, by metric name. loss_history: one training loss per iteration, where the trainable
    has iterations. config: the full resolved configuration it trained with. model: the trained model, if kept.
    examples: training examples processed (minibatch rows summed over the steps), where the trainable counts them.
    device: what it trained on as this process sees it (``cpu``, ``cuda``, ``cuda:1``), where the trainable says;
    the study records it as the machine numbers it (see :func:`device_name`).
    """

    metrics: dict[str, float]
    history: dict[str, list[float]] = field(default_factory=dict)
    loss_history: list[float] = field(default_factory=list)
    seconds: float = 0.0
    config: dict[str, Any] = field(default_factory=dict)
    model: Any = None
    examples: int | None = None
    device: str | None = None

    @property
    def loss(self) -> float:
        """The last iteration's training loss."""
        return self.loss_history[-1] if self.loss_history else float("nan")

    # the built-in backends' classification scores, by the names the assignment used
    @property
    def val_acc(self) -> float:
        return self.metrics["val_acc"]

    @property
    def train_acc(self) -> float:
        return self.metrics["train_acc"]

    @property
    def val_acc_history(self) -> list[float]:
        return self.history.get("val_acc", [])

    @property
    def train_acc_history(self) -> list[float]:
        return self.history.get("train_acc", [])


class Training(Protocol):
    """One configuration trained in stages along its budget (see :attr:`Trainable.start`)."""

    @property
    def budget(self) -> int:
        """The budget trained so far."""

    @property
    def examples(self) -> int:
        """Training examples processed so far (minibatch rows summed over the steps)."""

    def advance(self, budget: int, *, on_epoch: OnEpoch | None = None) -> TrainResult:
        """Train on to ``budget`` in all; the result the configuration with that budget gets when trained alone."""

    def save(self, path: str | Path) -> None:
        """The whole state, in one file at ``path``, for ``start(..., resume_from=path)`` in this process or
        another."""


@dataclass(frozen=True)
class Trainable:
    """A training function and what hpsearch may rely on about it.

    config_model: a pydantic model of the configuration; it validates the spec's ``defaults`` and searched values,
    and fills in defaults. None: values pass through as the YAML gives them.
    metrics: the metrics it reports, each with the direction that improves it. None: whatever it returns, checked on
    the first trial, and a study must give ``objective.direction``.
    evaluate: ``evaluate(model, X, y) -> {name: value}`` scores a trained model on a split (the test split, at the end
    of a study); names are the metrics' without their ``val_`` prefix (``acc`` for ``val_acc``).
    tasks: the kinds of targets it learns. preprocess: the input preprocessing it expects by default.
    model_suffix, save_model, load_model: how its models are kept on disk (``hpsearch train --save``, MLflow).
    probe, cost: how ``hpsearch plan`` prices a configuration (without them every trial is priced the same).
    require: called before any data is loaded, to fail early with one line (e.g. an optional package missing).
    budget, start: training that goes on in stages. ``budget`` names the configuration key that counts training
    (``num_iters``, ``num_epochs``); ``start(config, data, *, seed, resume_from=None)`` returns a :class:`Training`
    whose ``advance(value)`` gives exactly the result of the configuration with ``budget: value`` trained alone.
    budget_blocker: ``budget_blocker(config)`` says why a configuration's shorter runs are not the first part of its
    longer one (a schedule that depends on the total length), or None when they are; absent means they always are.
    """

    name: str
    train: Callable[..., Any]
    config_model: Any = None
    metrics: Mapping[str, Direction] | None = None
    evaluate: Callable[[Any, Any, Any], Mapping[str, float]] | None = None
    tasks: tuple[Task, ...] = ("classification", "regression")
    preprocess: str = "none"
    model_suffix: str | None = None
    save_model: Callable[[Any, dict[str, Any], Any], None] | None = None
    load_model: Callable[[Any], tuple[Any, dict[str, Any]]] | None = None
    probe: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    cost: Callable[[dict[str, Any], Any], float] | None = None
    require: Callable[[], Any] | None = None
    budget: str | None = None
    start: Callable[..., Training] | None = None
    budget_blocker: Callable[[dict[str, Any]], str | None] | None = None

    def __call__(self, config: dict[str, Any], data: Any, *, seed: int, on_epoch: OnEpoch | None = None) -> Any:
        return self.train(config, data, seed=seed, on_epoch=on_epoch)

    @property
    def keeps_models(self) -> bool:
        """Whether a trained model can be saved and loaded again (a user's trainable may do neither)."""
        return self.save_model is not None and self.load_model is not None

    def named(self, name: str) -> Trainable:
        return replace(self, name=name)

    def resolve(self, config: dict[str, Any]) -> dict[str, Any]:
        """Every setting the function trains with: the config model's defaults filled in (raises ValidationError)."""
        return self.config_model(**config).model_dump() if self.config_model is not None else dict(config)

    def run(self, config: dict[str, Any], data: Any, *, seed: int, on_epoch: OnEpoch | None = None) -> TrainResult:
        """Train, and return a :class:`TrainResult` whatever the function returned.

        The history of a function that returns only final metrics is what it passed to ``on_epoch``.
        """
        history: dict[str, list[float]] = {}
        start = time.perf_counter()
        returned = self.train(config, data, seed=seed, on_epoch=_recording(history, on_epoch))
        if isinstance(returned, TrainResult):
            return self._completed(returned, config, history, time.perf_counter() - start)
        return TrainResult(metrics=self._numbers(returned), history=history, seconds=time.perf_counter() - start,
                           config=dict(config))

    def advance(self, training: Training, budget: int, *, config: dict[str, Any], history: dict[str, list[float]],
                on_epoch: OnEpoch | None = None) -> TrainResult:
        """``training.advance(budget)`` for ``config``, its result held to the contract as :meth:`run` holds a
        function's. ``history``: the run's epochs before this advance; this advance's epochs are added to it, and a
        result without a history gets a copy of it (the run's whole curve, as the configuration trained alone)."""
        start = time.perf_counter()
        result = training.advance(budget, on_epoch=_recording(history, on_epoch))
        if not isinstance(result, TrainResult):
            raise TrainableError(f"the trainable {self.name}'s advance returned {type(result).__name__}; it must "
                                 "return a TrainResult")
        return self._completed(result, config, {name: list(values) for name, values in history.items()},
                               time.perf_counter() - start)

    def _completed(self, result: TrainResult, config: dict[str, Any], history: dict[str, list[float]],
                   seconds: float) -> TrainResult:
        """``result`` with numbers for metrics, and what it leaves out filled in: history, seconds, config."""
        return replace(result, metrics=self._numbers(result.metrics), history=result.history or history,
                       seconds=result.seconds or seconds, config=result.config or dict(config))

    def _numbers(self, metrics: Any) -> dict[str, float]:
        """Metric names to Python floats (NumPy scalars included; None left out); anything else breaks the contract."""
        if not isinstance(metrics, Mapping):
            raise TrainableError(f"the trainable {self.name} returned {type(metrics).__name__}; it must return a "
                                 "TrainResult or a mapping of metric names to numbers")
        numbers = {}
        for name, value in metrics.items():
            if value is None:
                continue  # a metric it could not compute this time
            if not is_number(value):
                raise TrainableError(f"the trainable {self.name} returned {name!r}: {value!r}, which is not a number")
            numbers[str(name)] = float(value)
        return numbers


def start_with(training: Callable[..., Any]) -> Callable[..., Training]:
    """A trainable's ``start`` when its runs are ``training(config, data, seed=seed)`` objects that can
    ``restore(path)`` what their ``save(path)`` wrote: the run at its beginning, or where the saved run stood."""

    def start(config: dict[str, Any], data: Any, *, seed: int, resume_from: str | Path | None = None) -> Training:
        run = training(config, data, seed=seed)
        if resume_from is not None:
            run.restore(resume_from)
        return run

    return start


@contextlib.contextmanager
def replacing(path: str | Path) -> Iterator[Any]:
    """A binary file that becomes ``path`` when the block ends without an error; nothing changes at ``path`` if not."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    try:
        with open(partial, "wb") as file:
            yield file
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def _recording(history: dict[str, list[float]], on_epoch: OnEpoch | None) -> OnEpoch:
    """An ``on_epoch`` that adds each epoch to ``history``, then passes it on."""

    def record(epoch: int, metrics: dict[str, Any]) -> None:
        add_epoch(history, metrics)
        if on_epoch is not None:
            on_epoch(epoch, metrics)

    return record


def add_epoch(history: dict[str, list[float]], metrics: Mapping[str, Any]) -> None:
    """Append one epoch's numbers to a history by metric name (anything that is not a number is left out)."""
    for name, value in metrics.items():
        if is_number(value):
            history.setdefault(name, []).append(float(value))


def is_number(value: Any) -> bool:
    """A real number a metric can be: int, float or a NumPy scalar; not a bool, a string or an array."""
    if isinstance(value, (bool, str, bytes)):
        return False
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return getattr(value, "ndim", 0) == 0


def trainable(
    function: Callable[..., Any] | None = None,
    *,
    metrics: Mapping[str, Direction] | None = None,
    config: Any = None,
    evaluate: Callable[[Any, Any, Any], Mapping[str, float]] | None = None,
    tasks: tuple[Task, ...] = ("classification", "regression"),
    preprocess: str = "none",
    model_suffix: str | None = None,
    save_model: Callable[[Any, dict[str, Any], Any], None] | None = None,
    load_model: Callable[[Any], tuple[Any, dict[str, Any]]] | None = None,
    budget: str | None = None,
    start: Callable[..., Training] | None = None,
    budget_blocker: Callable[[dict[str, Any]], str | None] | None = None,
) -> Any:
    """Declare a training function for hpsearch; used bare (``@trainable``) or with what it reports::

        @trainable(metrics={"val_rmse": "minimize"}, config=MyConfig)
        def train(config, data, *, seed, on_epoch):
            ...
            return {"val_rmse": rmse}

    The result is still callable like the function. ``budget`` and ``start`` let a grid phase's budget ladders train
    once (see :class:`Trainable`).
    """

    def wrap(train: Callable[..., Any]) -> Trainable:
        for name, direction in (metrics or {}).items():
            if direction not in ("maximize", "minimize"):
                raise ValueError(f"the direction of metric {name!r} must be 'maximize' or 'minimize'. Got "
                                 f"{direction!r} instead")
        return Trainable(name=f"{train.__module__}:{train.__qualname__}", train=train, config_model=config,
                         metrics=dict(metrics) if metrics is not None else None, evaluate=evaluate, tasks=tuple(tasks),
                         preprocess=preprocess, model_suffix=model_suffix, save_model=save_model,
                         load_model=load_model, budget=budget, start=start, budget_blocker=budget_blocker)

    return wrap(function) if function is not None else wrap


def scores_on_test(record: dict[str, Any]) -> dict[str, float]:
    """The test scores (``test_acc``, ``test_loss``, ...) among a record's keys: numbers named ``test_*``."""
    return {key: float(value) for key, value in record.items() if key.startswith("test_") and is_number(value)}


def metric_on_test(metric: str) -> str:
    """The test split's counterpart of an objective metric: ``val_acc`` -> ``test_acc``, ``rmse`` -> ``test_rmse``."""
    return "test_" + metric.removeprefix("val_")
