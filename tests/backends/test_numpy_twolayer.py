from __future__ import annotations

import math

import numpy as np
import pytest

from hpsearch.backends import DivergedError
from hpsearch.backends.numpy_twolayer import TwoLayerNet, lr_at_epoch, start, train
from hpsearch.backends.sgd import _SGDStep


def _tiny_problem(rng: np.random.Generator, n: int = 5, d: int = 4, h: int = 10, c: int = 3):
    net = TwoLayerNet(d, h, c, std=1e-1, seed=0)
    X = 10 * rng.standard_normal((n, d))
    y = rng.integers(0, c, size=n)
    return net, X, y


def _rel_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b) / np.maximum(1e-8, np.abs(a) + np.abs(b))))


def test_params_have_documented_shapes_and_init():
    net = TwoLayerNet(7, 5, 3, std=1e-4, seed=0)
    assert {k: v.shape for k, v in net.params.items()} == {"W1": (7, 5), "b1": (5,), "W2": (5, 3), "b2": (3,)}
    assert not net.params["b1"].any() and not net.params["b2"].any()
    assert 0 < net.params["W1"].std() < 1e-3


def test_scores_without_labels(rng):
    net, X, _ = _tiny_problem(rng)
    scores = net.loss(X)
    assert scores.shape == (5, 3)
    W1, b1, W2, b2 = (net.params[k] for k in ("W1", "b1", "W2", "b2"))
    np.testing.assert_allclose(scores, np.maximum(X @ W1 + b1, 0) @ W2 + b2)


@pytest.mark.parametrize("reg", [0.0, 0.05])
def test_gradients_match_central_differences(rng, reg):
    net, X, y = _tiny_problem(rng)
    _, grads = net.loss(X, y, reg=reg)
    h = 1e-5
    for name, param in net.params.items():
        numeric = np.zeros_like(param)
        for index in np.ndindex(param.shape):
            old = param[index]
            param[index] = old + h
            plus, _ = net.loss(X, y, reg=reg)
            param[index] = old - h
            minus, _ = net.loss(X, y, reg=reg)
            param[index] = old
            numeric[index] = (plus - minus) / (2 * h)
        assert _rel_error(grads[name], numeric) < 1e-7, name


def test_loss_and_gradients_match_torch_autograd(rng):
    torch = pytest.importorskip("torch")
    net, X, y = _tiny_problem(rng)
    reg = 0.05
    loss, grads = net.loss(X, y, reg=reg)
    t = {k: torch.tensor(v, requires_grad=True) for k, v in net.params.items()}
    scores = torch.relu(torch.tensor(X) @ t["W1"] + t["b1"]) @ t["W2"] + t["b2"]
    t_loss = torch.nn.functional.cross_entropy(scores, torch.tensor(y)) + reg * (
        (t["W1"] ** 2).sum() + (t["W2"] ** 2).sum()
    )
    t_loss.backward()
    assert loss == pytest.approx(t_loss.item(), rel=1e-12)
    for name in net.params:
        np.testing.assert_allclose(grads[name], t[name].grad.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("reg", [0.0, 0.05])
def test_fast_step_matches_the_reference_loss(rng, reg):
    """The training loop's _SGDStep: same loss and gradients as loss() on the same batch, and the same update."""
    net, X, y = _tiny_problem(rng)
    loss, grads = net.loss(X, y, reg=reg)
    step = _SGDStep(net.params, batch_size=len(y))
    batch = rng.permutation(len(y))
    step.gather(X, y, batch)
    assert step.backward(reg, scale=1.0) == pytest.approx(loss, rel=1e-12)
    for name, param in net.params.items():  # grads hold the data loss's gradients; the L2 term is applied in update
        expected = grads[name] - (2 * reg * param if name.startswith("W") else 0)
        np.testing.assert_allclose(step.grads[name], expected, rtol=1e-10, atol=1e-12, err_msg=name)

    lr = 0.1
    before = {name: param.copy() for name, param in net.params.items()}
    assert step.run(X, y, batch, lr, reg) == pytest.approx(loss, rel=1e-12)
    for name, param in net.params.items():
        np.testing.assert_allclose(param, before[name] - lr * grads[name], rtol=1e-10, atol=1e-12, err_msg=name)


def test_each_epoch_walks_a_fresh_permutation(rng, monkeypatch):
    batches = []
    gather = _SGDStep.gather

    def recording_gather(self, X, y, batch):
        batches.append(batch.copy())
        gather(self, X, y, batch)

    monkeypatch.setattr(_SGDStep, "gather", recording_gather)
    X, y = rng.standard_normal((10, 4)), rng.integers(0, 3, size=10)
    net = TwoLayerNet(4, 5, 3, seed=0)
    history = net.train(X, y, X, y, num_iters=6, batch_size=3, seed=0)
    # 10 rows / batch 3 -> 3 iterations per epoch, the 10th row of each permutation left out of that epoch
    assert len(history["val_acc"]) == 2
    epochs = [np.concatenate(batches[:3]), np.concatenate(batches[3:])]
    assert all(len(set(rows)) == 9 for rows in epochs)
    assert not np.array_equal(epochs[0], epochs[1])


def test_batch_larger_than_the_training_set_is_the_whole_set(rng):
    X, y = rng.standard_normal((7, 4)), rng.integers(0, 3, size=7)
    net = TwoLayerNet(4, 5, 3, seed=0)
    history = net.train(X, y, X, y, num_iters=3, batch_size=50, seed=0)
    assert len(history["loss_history"]) == len(history["train_acc"]) == 3


def test_initial_loss_is_log_of_class_count(rng):
    net = TwoLayerNet(20, 30, 10, std=1e-4, seed=0)
    X = rng.standard_normal((200, 20))
    y = rng.integers(0, 10, size=200)
    loss, _ = net.loss(X, y, reg=0.0)
    assert loss == pytest.approx(math.log(10), abs=1e-3)


def test_softmax_is_stable_for_huge_scores(rng):
    net, X, y = _tiny_problem(rng)
    net.params["W2"] *= 1e6
    loss, grads = net.loss(X, y)
    assert math.isfinite(loss) and all(np.isfinite(g).all() for g in grads.values())


def test_small_net_overfits_twenty_samples(rng):
    X = rng.standard_normal((20, 15))
    y = rng.integers(0, 4, size=20)
    net = TwoLayerNet(15, 40, 4, std=1e-1, seed=0)
    history = net.train(X, y, X, y, learning_rate=0.5, learning_rate_decay=1.0, reg=0.0,
                        num_iters=400, batch_size=20, seed=0)
    assert net.accuracy(X, y) == 1.0
    assert history["loss_history"][-1] < 0.05 < history["loss_history"][0]


def test_train_records_one_accuracy_per_epoch_and_decays_lr(blobs):
    epochs = []
    net = TwoLayerNet(blobs.input_size, 16, 3, std=1e-2, seed=0)
    history = net.train(blobs.X_train, blobs.y_train, blobs.X_val, blobs.y_val, learning_rate=0.1,
                        learning_rate_decay=0.5, num_iters=25, batch_size=100, seed=0,
                        on_epoch=lambda epoch, metrics: epochs.append((epoch, metrics)))
    # 500 samples / batch 100 -> 5 iterations per epoch, 25 iterations -> 5 epochs
    assert len(history["loss_history"]) == 25
    assert len(history["train_acc"]) == len(history["val_acc"]) == 5
    assert [e for e, _ in epochs] == [0, 1, 2, 3, 4]
    assert [m["lr"] for _, m in epochs] == [0.1 * 0.5**k for k in range(5)]
    assert [len(m["step_losses"]) for _, m in epochs] == [5] * 5
    assert epochs[-1][1]["iteration"] == 25


def test_lr_schedule_is_a_function_of_the_epoch():
    assert lr_at_epoch(1.0, 0.9, 0) == 1.0
    assert lr_at_epoch(1.0, 0.9, 3) == pytest.approx(0.729)


def test_training_is_reproducible_with_a_seed(blobs):
    config = {"hidden_size": 16, "learning_rate": 0.1, "num_iters": 30, "batch_size": 50, "std": 1e-2}
    first = train(config, blobs, seed=3)
    again = train(config, blobs, seed=3)
    other = train(config, blobs, seed=4)
    assert first.loss_history == again.loss_history
    assert first.loss_history != other.loss_history


def test_backend_entry_learns_and_reports(blobs):
    seen = []
    result = train({"hidden_size": 16, "learning_rate": 0.1, "num_iters": 50, "batch_size": 50, "std": 1e-2},
                   blobs, seed=0, on_epoch=lambda epoch, metrics: seen.append(metrics["val_acc"]))
    assert result.val_acc > 0.9 and result.train_acc > 0.9
    assert len(seen) == 5 and result.val_acc_history == seen
    assert result.config["learning_rate_decay"] == 0.95  # the full resolved config, defaults included


def test_nan_loss_stops_training_at_once(blobs):
    with pytest.raises(DivergedError) as caught:
        train({"learning_rate": 1e30, "num_iters": 500, "batch_size": 50, "std": 1.0}, blobs, seed=0)
    assert caught.value.iteration < 20


def test_float32_and_float64_training(blobs):
    base = {"hidden_size": 8, "learning_rate": 0.1, "num_iters": 10, "batch_size": 50, "std": 1e-2}
    assert train({**base, "dtype": "float32"}, blobs, seed=0).model.params["W1"].dtype == np.float32
    assert train({**base, "dtype": "float64"}, blobs, seed=0).model.params["W1"].dtype == np.float64


# A budget ladder: 500 training rows / 64 = 7 iterations an epoch, so 13 stops inside the second epoch, 21 at the end
# of the third; the learning rate decays fast enough that a rung trained with the wrong rate or rows would show.
LADDER = {"hidden_size": 12, "learning_rate": 0.05, "learning_rate_decay": 0.7, "batch_size": 64, "std": 1e-2}
RUNGS = (13, 21, 40)


def _assert_same_run(alone, rung):
    """Two results of one configuration are the same to the last bit: scores, histories, parameters."""
    assert rung.metrics == alone.metrics
    assert rung.history == alone.history
    assert rung.loss_history == alone.loss_history
    assert rung.config == alone.config
    for name, param in alone.model.params.items():
        assert np.array_equal(rung.model.params[name], param), name


def test_a_ladder_trains_once_and_each_rung_is_its_point_trained_alone(blobs):
    training = start(LADDER, blobs, seed=5)
    reported = []
    for budget in RUNGS:
        rung = training.advance(budget, on_epoch=lambda epoch, metrics: reported.append((epoch, metrics)))
        alone_reports = []
        alone = train({**LADDER, "num_iters": budget}, blobs, seed=5,
                      on_epoch=lambda epoch, metrics: alone_reports.append((epoch, metrics)))
        _assert_same_run(alone, rung)
        assert reported == alone_reports  # the epochs the ladder reported so far, and nothing past the budget
        assert rung.config["num_iters"] == budget == training.budget
    assert len(reported) == 40 // 7
    with pytest.raises(ValueError, match="cannot go back"):
        training.advance(21)


def test_a_rung_s_model_is_its_own_while_the_ladder_trains_on(blobs):
    training = start(LADDER, blobs, seed=5)
    first = training.advance(13)
    kept = {name: param.copy() for name, param in first.model.params.items()}
    training.advance(40)
    assert all(np.array_equal(first.model.params[name], param) for name, param in kept.items())


def test_a_saved_run_goes_on_elsewhere_as_if_never_stopped(blobs, tmp_path):
    path = tmp_path / "run.npz"
    first = start(LADDER, blobs, seed=5)
    first.advance(13)  # inside an epoch: the permutation and the rate of the epoch must carry over
    first.save(path)
    resumed = start(LADDER, blobs, seed=5, resume_from=path)
    assert resumed.budget == 13
    _assert_same_run(train({**LADDER, "num_iters": 40}, blobs, seed=5), resumed.advance(40))


@pytest.mark.parametrize("other", [{"seed": 6}, {"config": {**LADDER, "learning_rate": 0.04}}, {"data": 1}])
def test_a_saved_run_of_another_configuration_seed_or_dataset_is_refused(blobs, tmp_path, other):
    from hpsearch.data import load_dataset

    path = tmp_path / "run.ckpt"  # saved at exactly this name, whatever its suffix
    start(LADDER, blobs, seed=5).save(path)
    data = load_dataset("synthetic", seed=other["data"]) if "data" in other else blobs  # same shapes, other rows
    with pytest.raises(ValueError, match="another configuration, seed or dataset"):
        start(other.get("config", LADDER), data, seed=other.get("seed", 5), resume_from=path)


def test_a_budget_the_configuration_refuses_is_refused(blobs):
    with pytest.raises(ValueError, match="num_iters"):
        start(LADDER, blobs, seed=5).advance(0)


def test_a_file_that_is_no_saved_run_is_refused(blobs, tmp_path):
    path = tmp_path / "run.npz"
    path.write_text("not a run")
    with pytest.raises(ValueError, match="not a saved run"):
        start(LADDER, blobs, seed=5, resume_from=path)
