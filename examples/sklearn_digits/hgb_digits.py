"""scikit-learn's HistGradientBoostingClassifier as an hpsearch trainable: the whole contract in one file.

hpsearch calls ``train(config, data, *, seed, on_epoch)`` once per trial with the trial's configuration (the spec's
``defaults`` overridden by the searched values, validated by ``HGBConfig``) and the data's train and validation
splits; the test split is kept back and scored by ``evaluate`` only for the study's winner.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from sklearn.ensemble import HistGradientBoostingClassifier
from threadpoolctl import threadpool_limits

import hpsearch


class HGBConfig(BaseModel):
    """What the spec may set or search; an unknown name or a bad value is a one-line error before any training."""

    model_config = ConfigDict(extra="forbid")

    learning_rate: float = Field(0.1, gt=0)
    max_iter: int = Field(100, ge=1)
    max_leaf_nodes: int = Field(31, ge=2)
    l2_regularization: float = Field(0.0, ge=0)
    min_samples_leaf: int = Field(20, ge=1)


def evaluate(model: HistGradientBoostingClassifier, X, y) -> dict[str, float]:
    return {"acc": float(model.score(X, y))}


@hpsearch.trainable(metrics={"val_acc": "maximize", "train_acc": "maximize"}, config=HGBConfig, evaluate=evaluate,
                    tasks=("classification",))
def train(config: dict, data: hpsearch.Dataset, *, seed: int, on_epoch) -> hpsearch.TrainResult:
    model = HistGradientBoostingClassifier(**config, early_stopping=False, random_state=seed % 2**32)
    with threadpool_limits(1, user_api="openmp"):  # 1,197 rows: threads cost more than they give
        model.fit(data.X_train, data.y_train)
    return hpsearch.TrainResult(
        metrics={"val_acc": model.score(data.X_val, data.y_val), "train_acc": model.score(data.X_train, data.y_train)},
        model=model,
    )
