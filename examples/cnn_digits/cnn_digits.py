"""A small convolutional network in PyTorch as an hpsearch trainable, with pruning, curves and a saved model.

The digits arrive flattened, one row of 64 pixels per image; ``data.sample_shape`` (1, 8, 8) gives them back their
channels-first shape. ``on_epoch`` after each epoch lets hpsearch draw learning curves and prune hopeless trials.
"""

from __future__ import annotations

import json

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

import hpsearch


class CNNConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    channels: int = Field(16, ge=1, le=256)  # the second convolution has twice as many
    hidden: int = Field(64, ge=1)
    dropout: float = Field(0.2, ge=0, lt=1)
    learning_rate: float = Field(3e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    num_epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=2)


def build(config: CNNConfig, shape: tuple[int, ...], num_classes: int) -> torch.nn.Module:
    """conv 3x3 -> ReLU -> conv 3x3 -> ReLU -> max-pool 2 -> linear -> ReLU -> dropout -> linear."""
    channels, height, width = shape
    c = config.channels
    return torch.nn.Sequential(
        torch.nn.Conv2d(channels, c, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(c, 2 * c, 3, padding=1), torch.nn.ReLU(),
        torch.nn.MaxPool2d(2), torch.nn.Flatten(),
        torch.nn.Linear(2 * c * (height // 2) * (width // 2), config.hidden), torch.nn.ReLU(),
        torch.nn.Dropout(config.dropout), torch.nn.Linear(config.hidden, num_classes),
    )


class DigitsCNN:
    """The trained network and the image shape it takes."""

    def __init__(self, module: torch.nn.Module, shape: tuple[int, ...]) -> None:
        self.module, self.shape = module, tuple(shape)

    def scores(self, X: np.ndarray) -> torch.Tensor:
        self.module.eval()
        with torch.no_grad():
            return self.module(torch.as_tensor(X, dtype=torch.float32).reshape(-1, *self.shape))


def evaluate(model: DigitsCNN, X: np.ndarray, y: np.ndarray) -> dict[str, float]:
    scores, labels = model.scores(X), torch.as_tensor(y, dtype=torch.long)
    return {"acc": float((scores.argmax(dim=1) == labels).float().mean()),
            "loss": float(torch.nn.functional.cross_entropy(scores, labels))}


def save_model(model: DigitsCNN, config: dict, path) -> None:
    torch.save({"state_dict": model.module.state_dict(), "config": json.dumps(config), "shape": list(model.shape),
                "num_classes": model.module[-1].out_features}, path)


def load_model(path) -> tuple[DigitsCNN, dict]:
    saved = torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain data only, no code
    config = json.loads(saved["config"])
    module = build(CNNConfig(**config), tuple(saved["shape"]), saved["num_classes"])
    module.load_state_dict(saved["state_dict"])
    return DigitsCNN(module, tuple(saved["shape"])), config


@hpsearch.trainable(metrics={"val_acc": "maximize", "val_loss": "minimize"}, config=CNNConfig, evaluate=evaluate,
                    tasks=("classification",), preprocess="unit_range", model_suffix=".pt", save_model=save_model,
                    load_model=load_model)
def train(config: dict, data: hpsearch.Dataset, *, seed: int, on_epoch) -> hpsearch.TrainResult:
    cfg = CNNConfig(**config)
    torch.manual_seed(seed % 2**63)
    order = torch.Generator().manual_seed(seed % 2**63)
    model = DigitsCNN(build(cfg, data.sample_shape, data.num_classes), data.sample_shape)
    X = torch.as_tensor(data.X_train, dtype=torch.float32).reshape(-1, *data.sample_shape)
    y = torch.as_tensor(data.y_train, dtype=torch.long)
    optimizer = torch.optim.AdamW(model.module.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    for epoch in range(cfg.num_epochs):
        model.module.train()
        losses = []
        for batch in torch.randperm(len(X), generator=order).split(cfg.batch_size):
            loss = torch.nn.functional.cross_entropy(model.module(X[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        val = evaluate(model, data.X_val, data.y_val)
        on_epoch(epoch, {"loss": float(np.mean(losses)), "val_acc": val["acc"], "val_loss": val["loss"]})
    val = evaluate(model, data.X_val, data.y_val)
    return hpsearch.TrainResult(metrics={"val_acc": val["acc"], "val_loss": val["loss"]}, model=model)
