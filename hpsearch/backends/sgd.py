"""Minibatch SGD of the two-layer network (:mod:`hpsearch.backends.numpy_twolayer`): a run that stops at any
iteration and goes on later, and the fused step it runs on.

Named dimensions: N samples, D input features, H hidden units, C classes, B minibatch size.
"""

from __future__ import annotations

import json
import math
from typing import Any, Callable, Mapping, Protocol

import numpy as np

from hpsearch.backends.base import DivergedError
__all__ = ["Network", "SGDRun", "lr_at_epoch"]


class Network(Protocol):
    """What SGD needs of a network (:class:`~hpsearch.backends.numpy_twolayer.TwoLayerNet` is one): its parameters
    by name, updated in place, their dtype, and its scores on a split."""

    params: dict[str, np.ndarray]
    dtype: np.dtype

    def accuracy(self, X: np.ndarray, y: np.ndarray) -> float: ...

    def score(self, X: np.ndarray, y: np.ndarray) -> dict[str, float]: ...


class SGDRun:
    """Minibatch SGD of a :class:`TwoLayerNet` that stops at any iteration and goes on later, step for step the
    same as one uninterrupted run: the run that stops at 1000 iterations is the first 1000 iterations of the run to
    3000 (a grid's budget ladder trains once).

    Sampling: every epoch draws a fresh permutation of the N training rows and walks it in ``N // B`` minibatches of
    ``B = batch_size`` rows, so within an epoch no row repeats; the ``N % B`` rows left at the end of the permutation
    are dropped for that epoch (the next epoch's permutation gives them their chance). A batch size above N is cut
    to N: each epoch is then one step on the whole training set in a fresh order. The learning rate is decayed once
    per epoch. A run may stop inside an epoch; it goes on with the same permutation and rate.

    After every epoch the minibatch (train) accuracy of the epoch's last minibatch, measured after its update
    (CS231n's convention), the validation accuracy and loss are recorded in ``history`` and
    ``on_epoch(epoch, metrics)`` is called with ``loss`` (the epoch's mean), ``step_losses`` (every iteration's loss
    in that epoch), ``train_acc``, ``val_acc``, ``val_loss``, ``lr`` (the rate used during the epoch) and
    ``iteration``. A non-finite loss raises :class:`DivergedError` at once.

    State, all of it in :meth:`state`: the network's parameters, ``iteration`` (steps taken), the batch generator,
    the current epoch's permutation ``order`` (N,) and ``history``.
    X is converted once to a C-contiguous array of the network's dtype; the steps run on :class:`_SGDStep`.
    """

    def __init__(
        self,
        net: Network,
        X: np.ndarray,
        y: np.ndarray,
        X_val: np.ndarray,
        y_val: np.ndarray,
        *,
        learning_rate: float,
        learning_rate_decay: float,
        reg: float,
        batch_size: int,
        seed: int | np.random.SeedSequence | None = None,
        verbose: bool = False,
    ) -> None:
        self.net = net
        self.X = np.ascontiguousarray(X, dtype=net.dtype)  # (N, D); no copy when it already is one
        self.y = np.asarray(y, dtype=np.intp)
        self.X_val, self.y_val = X_val, y_val
        self.learning_rate, self.learning_rate_decay, self.reg = learning_rate, learning_rate_decay, reg
        self.batch_size = min(batch_size, self.X.shape[0])
        self.iterations_per_epoch = self.X.shape[0] // self.batch_size
        self.rng = np.random.default_rng(seed)
        self.verbose = verbose
        self.step = _SGDStep(net.params, self.batch_size)
        self.iteration = 0
        self.order: np.ndarray | None = None  # the current epoch's permutation of the training rows, (N,)
        self.history: dict[str, list[float]] = {"loss_history": [], "train_acc": [], "val_acc": [], "val_loss": []}

    def advance(self, num_iters: int, *, on_epoch: Callable[[int, dict[str, Any]], None] | None = None) -> None:
        """Go on until ``num_iters`` iterations in all have run (from where the run stands)."""
        if num_iters < self.iteration:
            raise ValueError(f"the run stands at iteration {self.iteration}; it cannot go back to {num_iters}")
        B, per_epoch = self.batch_size, self.iterations_per_epoch
        while self.iteration < num_iters:
            epoch, k = divmod(self.iteration, per_epoch)
            if k == 0:
                self.order = self.rng.permutation(self.X.shape[0])  # (N,)
            lr = lr_at_epoch(self.learning_rate, self.learning_rate_decay, epoch)
            loss = self.step.run(self.X, self.y, self.order[k * B:(k + 1) * B], lr, self.reg)
            if not math.isfinite(loss):
                raise DivergedError(self.iteration, loss)
            self.history["loss_history"].append(loss)
            if self.verbose and self.iteration % 100 == 0:
                print(f"iteration {self.iteration} / {num_iters}: loss {loss:f}")
            self.iteration += 1
            if k + 1 == per_epoch:
                self._end_epoch(epoch, lr, on_epoch)

    def _end_epoch(self, epoch: int, lr: float, on_epoch: Callable[[int, dict[str, Any]], None] | None) -> None:
        train_acc = self.net.accuracy(self.step.X, self.step.y)
        val = self.net.score(self.X_val, self.y_val)
        self.history["train_acc"].append(train_acc)
        self.history["val_acc"].append(val["acc"])
        self.history["val_loss"].append(val["loss"])
        if on_epoch is not None:
            step_losses = self.history["loss_history"][epoch * self.iterations_per_epoch:]
            on_epoch(epoch, {
                "loss": float(np.mean(step_losses)),
                "step_losses": list(step_losses),
                "train_acc": train_acc,
                "val_acc": val["acc"],
                "val_loss": val["loss"],
                "lr": lr,
                "iteration": self.iteration,
            })

    def state(self) -> dict[str, np.ndarray]:
        """Everything the run goes on from, as arrays (no pickle): see :meth:`restore`."""
        state = {f"param_{name}": param for name, param in self.net.params.items()}
        state |= {f"history_{name}": np.asarray(values, dtype=np.float64) for name, values in self.history.items()}
        state["iteration"] = np.array(self.iteration)
        state["rng"] = np.array(json.dumps(self.rng.bit_generator.state))
        if self.iteration % self.iterations_per_epoch:
            state["order"] = self.order
        return state

    def restore(self, state: Mapping[str, np.ndarray]) -> None:
        """Take up a run where :meth:`state` left it; the run must be built with the same data and settings."""
        for name, param in self.net.params.items():
            param[...] = state[f"param_{name}"]  # in place: the step's buffers hold these arrays
        self.history = {name: [float(v) for v in state[f"history_{name}"]] for name in self.history}
        self.iteration = int(state["iteration"])
        self.rng.bit_generator.state = json.loads(str(state["rng"][()]))
        self.order = np.asarray(state["order"], dtype=np.intp) if "order" in state else None


class _SGDStep:
    """One minibatch SGD step of a :class:`TwoLayerNet`, on buffers allocated once: the training loop's fast path.

    ``TwoLayerNet.loss`` stays the reference; this computes the same loss and gradients (the tests hold the two
    equal) without temporaries of size (B, D) or (D, H): the minibatch is gathered into one buffer, bias and ReLU
    are applied in place on the hidden buffer, every product writes into its own buffer (``np.matmul(out=)``), and
    the learning rate is folded into the score gradient (B, C), so that the update of a weight matrix is one
    in-place subtraction after the L2 decay ``W *= 1 - 2 * lr * reg`` (the same step as
    ``W -= lr * (dW + 2 * reg * W)``).

    Buffers, with B the batch size:
      X: the minibatch, shape (B, D); y: its labels, shape (B,)
      hidden: z2 = X W1 + b1, then a2 = relu(z2) in place, shape (B, H)
      scores: z3, then softmax probabilities, then the (scaled) score gradient, shape (B, C)
      grads: ``scale`` times the data loss's gradients, same keys and shapes as ``params``
    """

    def __init__(self, params: dict[str, np.ndarray], batch_size: int) -> None:
        W1, W2 = params["W1"], params["W2"]
        (D, H), C = W1.shape, W2.shape[1]
        dtype = W1.dtype
        self.params = params
        self.X = np.empty((batch_size, D), dtype)
        self.y = np.empty(batch_size, np.intp)
        self.hidden = np.empty((batch_size, H), dtype)
        self.active = np.empty((batch_size, H), bool)  # ReLU mask
        self.dhidden = np.empty((batch_size, H), dtype)
        self.scores = np.empty((batch_size, C), dtype)
        self.rows = np.arange(batch_size)
        self.grads = {name: np.empty_like(param) for name, param in params.items()}

    def gather(self, X: np.ndarray, y: np.ndarray, batch: np.ndarray) -> None:
        """Copy rows ``batch`` of X (N, D) and y (N,) into the minibatch buffers."""
        # mode="clip": the indices come from a permutation, so nothing is clipped, and unlike the default "raise"
        # NumPy then writes straight into `out` instead of through a temporary copy
        np.take(X, batch, axis=0, out=self.X, mode="clip")
        np.take(y, batch, out=self.y, mode="clip")

    def backward(self, reg: float, scale: float) -> float:
        """Loss of the gathered minibatch (data loss plus L2 term); ``grads`` get ``scale`` x the data gradients."""
        W1, b1, W2, b2 = (self.params[k] for k in ("W1", "b1", "W2", "b2"))
        X, y, hidden, scores, rows, grads = self.X, self.y, self.hidden, self.scores, self.rows, self.grads
        n = X.shape[0]
        np.matmul(X, W1, out=hidden)  # (B, H)
        hidden += b1
        np.maximum(hidden, 0, out=hidden)  # a2 = relu(z2), (B, H)
        np.matmul(hidden, W2, out=scores)  # (B, C)
        scores += b2
        scores -= scores.max(axis=1, keepdims=True)  # max 0 per row: exp cannot overflow
        true_class = scores[rows, y]  # (B,)
        np.exp(scores, out=scores)
        norm = scores.sum(axis=1)  # (B,)
        data_loss = float(np.log(norm).sum() - true_class.sum()) / n  # mean of -log softmax[y]
        loss = data_loss + reg * (float(np.vdot(W1, W1)) + float(np.vdot(W2, W2)))

        scores /= norm[:, None]  # softmax, (B, C)
        scores[rows, y] -= 1
        scores *= scale / n  # d(scale * data_loss)/dz3, (B, C)
        np.matmul(hidden.T, scores, out=grads["W2"])  # (H, C)
        np.sum(scores, axis=0, out=grads["b2"])  # (C,)
        np.matmul(scores, W2.T, out=self.dhidden)  # (B, H)
        np.greater(hidden, 0, out=self.active)  # a2 > 0 exactly where z2 > 0
        self.dhidden *= self.active
        np.matmul(X.T, self.dhidden, out=grads["W1"])  # (D, H)
        np.sum(self.dhidden, axis=0, out=grads["b1"])  # (H,)
        return loss

    def update(self, lr: float, reg: float) -> None:
        """SGD on ``params`` in place, with ``grads`` already scaled by ``lr``."""
        decay = 1 - 2 * lr * reg
        for name, grad in self.grads.items():
            param = self.params[name]
            if name.startswith("W") and decay != 1:
                param *= decay
            param -= grad

    def run(self, X: np.ndarray, y: np.ndarray, batch: np.ndarray, lr: float, reg: float) -> float:
        """One SGD step on rows ``batch`` of (X, y); returns the loss before the update."""
        self.gather(X, y, batch)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # divergence is the caller's check
            loss = self.backward(reg, scale=lr)
            self.update(lr, reg)
        return loss


def lr_at_epoch(learning_rate: float, learning_rate_decay: float, epoch: int) -> float:
    """The step size during ``epoch`` (0-based): decayed once at the end of every finished epoch."""
    return learning_rate * learning_rate_decay**epoch
