from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hpsearch.backends import DivergedError  # noqa: E402
from hpsearch.backends import torch_mlp  # noqa: E402
from hpsearch.backends.numpy_twolayer import TwoLayerNet  # noqa: E402
from hpsearch.errors import UserError  # noqa: E402


def test_mlp_with_the_numpy_net_s_weights_gives_the_same_scores(rng):
    net = TwoLayerNet(12, 7, 4, std=0.5, seed=0)
    X = rng.standard_normal((9, 12))
    module = torch_mlp.build_mlp(12, [7], 4).double()
    with torch.no_grad():
        module[0].weight.copy_(torch.from_numpy(net.params["W1"].T))
        module[0].bias.copy_(torch.from_numpy(net.params["b1"]))
        module[2].weight.copy_(torch.from_numpy(net.params["W2"].T))
        module[2].bias.copy_(torch.from_numpy(net.params["b2"]))
        scores = module(torch.from_numpy(X)).numpy()
    np.testing.assert_allclose(scores, net.loss(X), rtol=1e-12, atol=1e-12)


def test_tiny_mlp_overfits_a_small_batch(blobs):
    small = blobs.__class__(**{**blobs.__dict__, "X_train": blobs.X_train[:20], "y_train": blobs.y_train[:20],
                               "X_val": blobs.X_train[:20], "y_val": blobs.y_train[:20]})
    result = torch_mlp.train({"hidden_sizes": [32, 32], "init": "kaiming", "learning_rate": 1e-2, "reg": 0.0,
                              "num_epochs": 200, "batch_size": 20, "device": "cpu"}, small, seed=0)
    assert result.train_acc == 1.0 and result.loss_history[-1] < 0.01


def test_depth_width_dropout_batchnorm_and_reports(blobs):
    seen = []
    result = torch_mlp.train({"num_layers": 3, "width": 16, "dropout": 0.2, "batch_norm": True, "init": "kaiming",
                              "num_epochs": 3, "batch_size": 50, "device": "cpu", "optimizer": "sgd",
                              "learning_rate": 0.05}, blobs, seed=0,
                             on_epoch=lambda epoch, metrics: seen.append((epoch, metrics)))
    layers = [m for m in result.model.module if isinstance(m, torch.nn.Linear)]
    assert [l.out_features for l in layers] == [16, 16, 16, 3]
    assert any(isinstance(m, torch.nn.Dropout) for m in result.model.module)
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in result.model.module)
    assert [e for e, _ in seen] == [0, 1, 2]
    assert {"loss", "train_acc", "val_acc", "lr", "step_losses"} <= seen[0][1].keys()
    assert seen[1][1]["lr"] == pytest.approx(0.05 * 0.95)  # decayed after every epoch
    assert len(seen[0][1]["step_losses"]) == 10 and result.val_acc > 0.8
    assert result.config["hidden_sizes"] == [16, 16, 16]


def test_deterministic_on_cpu_with_a_seed(blobs):
    config = {"hidden_sizes": [16], "init": "kaiming", "num_epochs": 2, "batch_size": 50, "device": "cpu"}
    a, b = torch_mlp.train(config, blobs, seed=5), torch_mlp.train(config, blobs, seed=5)
    c = torch_mlp.train(config, blobs, seed=6)
    assert a.loss_history == b.loss_history and a.loss_history != c.loss_history


def test_device_selection(monkeypatch):
    assert torch_mlp.resolve_device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert torch_mlp.resolve_device("auto") == "cpu"
    with pytest.raises(UserError, match="device: cuda was asked for"):
        torch_mlp.resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert torch_mlp.resolve_device("auto") == "cuda"


def test_divergence_is_reported(blobs):
    with pytest.raises(DivergedError):
        torch_mlp.train({"hidden_sizes": [16], "init": "kaiming", "optimizer": "sgd", "learning_rate": 1e12,
                         "num_epochs": 3, "batch_size": 50, "device": "cpu"}, blobs, seed=0)


def test_saved_model_reloads_without_pickled_code(blobs, tmp_path):
    result = torch_mlp.train({"hidden_sizes": [8, 8], "init": "kaiming", "num_epochs": 2, "batch_size": 50,
                              "device": "cpu"}, blobs, seed=0)
    torch_mlp.save_model(result.model, result.config, tmp_path / "m.pt")
    model, config = torch_mlp.load_model(tmp_path / "m.pt")
    assert config["hidden_sizes"] == [8, 8]
    np.testing.assert_allclose(model.scores(blobs.X_val), result.model.scores(blobs.X_val), rtol=1e-6)


def test_config_validation():
    with pytest.raises(ValueError, match="both 'num_layers' and 'width'"):
        torch_mlp.TorchConfig(num_layers=2)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_training_matches_the_cpu_path_closely(blobs):
    config = {"hidden_sizes": [32, 16], "init": "kaiming", "num_epochs": 3, "batch_size": 50}
    cpu = torch_mlp.train({**config, "device": "cpu"}, blobs, seed=0)
    gpu = torch_mlp.train({**config, "device": "cuda"}, blobs, seed=0)
    assert gpu.model.device == "cuda" and next(gpu.model.module.parameters()).is_cuda
    assert abs(gpu.val_acc - cpu.val_acc) < 0.05


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_auto_device_uses_cuda_when_present(blobs):
    result = torch_mlp.train({"hidden_sizes": [8], "num_epochs": 1, "batch_size": 50}, blobs, seed=0)
    assert result.model.device == "cuda"


def test_batch_norm_with_a_one_row_last_minibatch_skips_that_row(blobs):
    """201 rows in batches of 50 leave one row: BatchNorm cannot train on it, so it sits the epoch out."""
    rows = blobs.__class__(**{**blobs.__dict__, "X_train": blobs.X_train[:201], "y_train": blobs.y_train[:201]})
    config = {"hidden_sizes": [8], "init": "kaiming", "num_epochs": 2, "batch_size": 50, "device": "cpu"}
    with_bn = torch_mlp.train({**config, "batch_norm": True}, rows, seed=0)
    without = torch_mlp.train(config, rows, seed=0)
    assert len(with_bn.loss_history) == 2 * 4  # four full batches per epoch, the lone row skipped
    assert len(without.loss_history) == 2 * 5  # without BatchNorm the one-row batch trains as before
    correct = [acc * 200 for acc in with_bn.train_acc_history]  # train accuracy is a share of the 200 rows seen
    assert all(c > 0 and abs(c - round(c)) < 1e-9 for c in correct), correct


def test_batch_norm_needs_two_rows_per_batch():
    with pytest.raises(ValueError, match="'batch_norm' needs 'batch_size' >= 2. Got 1 instead"):
        torch_mlp.TorchConfig(batch_norm=True, batch_size=1)
