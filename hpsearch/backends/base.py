"""What every backend shares: the result of one training run and the errors a run can end with.

A backend is a module with ``train(config, data, *, seed, on_epoch) -> TrainResult``. It imports neither Optuna
nor MLflow: it calls ``on_epoch(epoch, metrics)`` after every epoch and the caller decides what that means.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class ModelFileError(ValueError):
    """A model file that is not what a study saves: another kind of file, wrong keys or shapes, absurd sizes."""


class DivergedError(ArithmeticError):
    """The training loss became NaN or infinite."""

    def __init__(self, iteration: int, loss: float) -> None:
        super().__init__(f"loss became {loss} at iteration {iteration}")
        self.iteration = iteration
        self.loss = loss


@dataclass
class TrainResult:
    """Histories and final scores of one training run.

    loss_history: one loss per iteration. train_acc_history, val_acc_history: one accuracy per epoch.
    val_acc, train_acc: accuracy of the final model on the whole validation and training splits.
    config: the full resolved configuration the backend trained with. model: the trained model.
    """

    loss_history: list[float]
    train_acc_history: list[float]
    val_acc_history: list[float]
    val_acc: float
    train_acc: float
    seconds: float
    config: dict[str, Any] = field(default_factory=dict)
    model: Any = None

    @property
    def loss(self) -> float:
        """The last iteration's training loss."""
        return self.loss_history[-1] if self.loss_history else float("nan")
