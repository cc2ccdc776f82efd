from __future__ import annotations

import re

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


def test_a_device_is_named_as_the_machine_numbers_it(monkeypatch):
    from hpsearch.backends.base import device_name

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert [device_name(d) for d in ("cpu", "cuda", "cuda:1")] == ["cpu", "cuda:0", "cuda:1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,GPU-8f6b")  # a worker given GPUs 2 and GPU-8f6b
    assert [device_name(d) for d in ("cpu", "cuda", "cuda:0", "cuda:1")] == ["cpu", "cuda:2", "cuda:2", "cuda:GPU-8f6b"]
    assert [device_name(d) for d in ("cuda:7", "mps", "cuda:x")] == ["cuda:7", "mps", "cuda:x"]  # as it is


def test_a_result_says_what_it_trained_on(blobs):
    result = torch_mlp.train({"hidden_sizes": [8], "num_epochs": 1, "batch_size": 50, "device": "cpu"}, blobs, seed=0)
    assert result.device == "cpu"


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


def schedule(**changes):
    return torch_mlp.TorchConfig(**{"num_epochs": 4, "learning_rate": 1.0, **changes})


def test_step_schedule_gives_exactly_the_rates_exponential_lr_gave():
    cfg = torch_mlp.TorchConfig(learning_rate=1e-3, learning_rate_decay=0.95, num_epochs=12)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.learning_rate)
    decay = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=cfg.learning_rate_decay)
    for epoch in range(12):  # what the backend used before schedules: one ExponentialLR step after every epoch
        rates = [torch_mlp.learning_rate_at(cfg, 3 * epoch + k, 3) for k in range(3)]
        assert rates == [optimizer.param_groups[0]["lr"]] * 3
        optimizer.step()
        decay.step()


def test_cosine_warm_up_and_one_cycle_schedules():
    cosine = [torch_mlp.learning_rate_at(schedule(schedule="cosine"), step, 5) for step in range(20)]
    assert cosine[0] == 1.0 and cosine == sorted(cosine, reverse=True)
    assert cosine[-1] == pytest.approx(0.00616, abs=1e-5)
    warm = [torch_mlp.learning_rate_at(schedule(schedule="cosine", warmup_epochs=1), step, 4) for step in range(16)]
    assert warm[:4] == [0.25, 0.5, 0.75, 1.0] and warm[4:] == sorted(warm[4:], reverse=True)
    half = [torch_mlp.learning_rate_at(schedule(schedule="cosine", warmup_epochs=0.5), step, 5) for step in range(4)]
    assert half[:3] == [0.4, 0.8, 1.0]  # a fractional warm-up never overshoots the rate
    cycle = [torch_mlp.learning_rate_at(schedule(schedule="onecycle"), step, 10) for step in range(40)]
    peak = cycle.index(max(cycle))
    assert peak == 11 and cycle[0] == pytest.approx(1 / 12) and cycle[peak] == 1.0  # 30 % of 40 steps: 12 up
    assert cycle[:peak + 1] == sorted(cycle[:peak + 1]) and cycle[peak:] == sorted(cycle[peak:], reverse=True)


def test_training_reports_the_schedule_s_rate(blobs):
    seen = []
    config = {"hidden_sizes": [8], "num_epochs": 3, "batch_size": 100, "device": "cpu", "schedule": "cosine",
              "learning_rate": 0.01}
    torch_mlp.train(config, blobs, seed=0, on_epoch=lambda epoch, metrics: seen.append(metrics["lr"]))
    cfg = torch_mlp.TorchConfig(**config)  # 500 rows / 100: 5 steps an epoch, the rate of each epoch's last step
    assert seen == [torch_mlp.learning_rate_at(cfg, 5 * epoch + 4, 5) for epoch in range(3)]


@pytest.mark.parametrize("options", [
    {"optimizer": "adamw", "reg": 0.05},
    {"optimizer": "sgd", "nesterov": True, "learning_rate": 0.05},
    {"schedule": "onecycle", "learning_rate": 0.01},
    {"label_smoothing": 0.1},
    {"grad_clip": 0.5},
])
def test_each_training_option_learns_and_changes_the_training(blobs, options):
    base = {"hidden_sizes": [16], "init": "kaiming", "num_epochs": 4, "batch_size": 50, "device": "cpu",
            "learning_rate": 0.01}
    plain = torch_mlp.train(base, blobs, seed=3)
    result = torch_mlp.train({**base, **options}, blobs, seed=3)
    assert result.val_acc > 0.9 and result.loss_history != plain.loss_history
    assert {key: result.config[key] for key in options} == options


def test_label_smoothing_keeps_the_loss_of_a_confident_model_above_its_floor(blobs):
    config = {"hidden_sizes": [16], "init": "kaiming", "num_epochs": 4, "batch_size": 50, "device": "cpu",
              "learning_rate": 0.01}
    # separable blobs: the plain loss goes to zero; smoothed targets (0.933, 0.033, 0.033) keep it near their entropy
    assert torch_mlp.train(config, blobs, seed=3).loss_history[-1] < 1e-3
    assert min(torch_mlp.train({**config, "label_smoothing": 0.1}, blobs, seed=3).loss_history) > 0.3


def test_gradient_clipping_bounds_each_step(blobs):
    config = {"hidden_sizes": [16], "num_epochs": 1, "batch_size": 50, "device": "cpu", "optimizer": "sgd",
              "momentum": 0.0, "learning_rate": 1.0, "reg": 0.0, "init": "kaiming"}
    clipped = torch_mlp.train({**config, "grad_clip": 1e-3}, blobs, seed=0)
    # ten SGD steps of norm <= 1e-3 at rate 1 move the weights by at most 1e-2 in all
    torch.manual_seed(0)
    start = torch_mlp.build_mlp(blobs.input_size, [16], 3, init="kaiming")
    moved = sum(float((a - b).pow(2).sum()) for a, b in zip(clipped.model.module.parameters(), start.parameters()))
    assert moved ** 0.5 <= 1e-2 + 1e-6


@pytest.mark.parametrize("options, message", [
    ({"optimizer": "adam", "nesterov": True}, "'nesterov' needs optimizer 'sgd' and a 'momentum' above 0"),
    ({"num_epochs": 2, "warmup_epochs": 2}, "'warmup_epochs' (2.0) must be fewer than 'num_epochs' (2)"),
    ({"label_smoothing": 1.0}, "less than 1"),
    ({"grad_clip": 0}, "greater than 0"),
])
def test_training_options_are_validated(options, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        torch_mlp.TorchConfig(**options)


@pytest.mark.parametrize("shape, layout", [
    ((32, 32, 3), (32, 32, 3, True)), ((1, 8, 8), (8, 8, 1, False)), ((28, 28), (28, 28, 1, True)),
    ((512,), None), ((10, 10, 10), None),
])
def test_image_layouts(shape, layout):
    assert torch_mlp.image_layout(shape) == layout


def _translations(image: np.ndarray, reach: int) -> list[np.ndarray]:
    """``image`` (H, W, C) moved by every offset within ``reach`` pixels, the uncovered pixels 0."""
    height, width = image.shape[:2]
    padded = np.pad(image, ((reach, reach), (reach, reach), (0, 0)))
    return [padded[top:top + height, left:left + width] for top in range(2 * reach + 1)
            for left in range(2 * reach + 1)]


@pytest.mark.parametrize("shape", [(5, 6, 3), (3, 5, 6)])
def test_mirror_and_shift_move_whole_images(shape):
    last = shape[-1] == 3
    rows = torch.arange(200 * 90, dtype=torch.float32).reshape(200, 90) + 1  # no pixel is 0 before a shift
    generator = torch.Generator().manual_seed(0)

    def hwc(batch: torch.Tensor) -> np.ndarray:
        images = batch.numpy().reshape(len(batch), *shape)
        return images if last else images.transpose(0, 2, 3, 1)

    mirrored = torch_mlp.augmenter(torch, torch_mlp.TorchConfig(mirror=True), shape, generator, "cpu")(rows)
    flipped = [bool(np.array_equal(out, image[:, ::-1])) for out, image in zip(hwc(mirrored), hwc(rows))]
    kept = [bool(np.array_equal(out, image)) for out, image in zip(hwc(mirrored), hwc(rows))]
    assert all(a != b for a, b in zip(flipped, kept)) and 70 < sum(flipped) < 130  # each row one or the other

    shifted = torch_mlp.augmenter(torch, torch_mlp.TorchConfig(shift=2), shape, generator, "cpu")(rows)
    offsets = []
    for out, image in zip(hwc(shifted), hwc(rows)):
        matches = [k for k, moved in enumerate(_translations(image, 2)) if np.array_equal(out, moved)]
        assert len(matches) == 1
        offsets.append(matches[0])
    assert len(set(offsets)) == 25  # every offset within 2 pixels turns up


def test_augmented_training_is_seeded_and_needs_images(blobs):
    from hpsearch.data import load_dataset

    digits = load_dataset("digits", num_train=300, num_val=100, num_test=0, preprocess="standardize")
    config = {"hidden_sizes": [32], "init": "kaiming", "num_epochs": 8, "batch_size": 30, "device": "cpu",
              "learning_rate": 0.01, "mirror": True, "shift": 1}
    first, again = torch_mlp.train(config, digits, seed=4), torch_mlp.train(config, digits, seed=4)
    assert first.loss_history == again.loss_history and first.val_acc > 0.5
    plain = torch_mlp.train({**config, "mirror": False, "shift": 0}, digits, seed=4)
    assert plain.loss_history != first.loss_history
    with pytest.raises(UserError, match=r"these rows are not images \(sample_shape \(20,\)"):
        torch_mlp.train(config, blobs, seed=0)
    with pytest.raises(UserError, match=r"shift 8 moves a 8 x 8 image out of sight; it must be below 8.$"):
        torch_mlp.train({**config, "shift": 8}, digits, seed=0)


# Dropout draws from torch's default generator, batch norm keeps running statistics, Adam its moments: a ladder
# must carry all three from rung to rung for each rung to be its point trained alone.
LADDER = {"hidden_sizes": [16, 8], "dropout": 0.3, "batch_norm": True, "learning_rate": 1e-2, "batch_size": 64,
          "learning_rate_decay": 0.8, "warmup_epochs": 0.5, "device": "cpu"}


def _assert_same_run(alone, rung):
    assert rung.metrics == alone.metrics
    assert rung.history == alone.history
    assert rung.loss_history == alone.loss_history
    assert rung.config == alone.config
    expected, got = alone.model.module.state_dict(), rung.model.module.state_dict()
    assert expected.keys() == got.keys() and all(torch.equal(got[name], expected[name]) for name in expected)


def test_a_ladder_trains_once_and_each_rung_is_its_point_trained_alone(blobs):
    training = torch_mlp.start(LADDER, blobs, seed=5)
    reported = []
    for budget in (1, 3, 4):
        rung = training.advance(budget, on_epoch=lambda epoch, metrics: reported.append((epoch, metrics)))
        torch_mlp.train({**LADDER, "num_epochs": 2}, blobs, seed=9)  # other work between rungs draws random numbers
        alone_reports = []
        alone = torch_mlp.train({**LADDER, "num_epochs": budget}, blobs, seed=5,
                                on_epoch=lambda epoch, metrics: alone_reports.append((epoch, metrics)))
        _assert_same_run(alone, rung)
        assert reported == alone_reports and training.budget == budget
    with pytest.raises(ValueError, match="cannot go back"):
        training.advance(3)


def test_a_saved_run_goes_on_elsewhere_as_if_never_stopped(blobs, tmp_path):
    path = tmp_path / "run.pt"
    first = torch_mlp.start(LADDER, blobs, seed=5)
    first.advance(2)
    first.save(path)
    torch.manual_seed(123)  # a process that resumes the run has its own default generator state
    resumed = torch_mlp.start(LADDER, blobs, seed=5, resume_from=path)
    assert resumed.budget == 2
    _assert_same_run(torch_mlp.train({**LADDER, "num_epochs": 4}, blobs, seed=5), resumed.advance(4))


def test_a_rung_s_model_is_its_own_while_the_ladder_trains_on(blobs):
    training = torch_mlp.start(LADDER, blobs, seed=5)
    first = training.advance(1)
    kept = {name: value.clone() for name, value in first.model.module.state_dict().items()}
    training.advance(3)
    assert all(torch.equal(first.model.module.state_dict()[name], value) for name, value in kept.items())


@pytest.mark.parametrize("other", [{"seed": 6}, {"config": {**LADDER, "dropout": 0.2}}, {"data": 1}])
def test_a_saved_run_of_another_configuration_seed_or_dataset_is_refused(blobs, tmp_path, other):
    from hpsearch.data import load_dataset

    path = tmp_path / "run.ckpt"
    torch_mlp.start(LADDER, blobs, seed=5).save(path)
    data = load_dataset("synthetic", seed=other["data"]) if "data" in other else blobs  # same shapes, other rows
    with pytest.raises(ValueError, match="another configuration, seed, dataset or device"):
        torch_mlp.start(other.get("config", LADDER), data, seed=other.get("seed", 5), resume_from=path)


def test_a_file_that_is_no_saved_run_is_refused(blobs, tmp_path):
    path = tmp_path / "run.pt"
    path.write_text("not a run")
    with pytest.raises(ValueError, match="not a saved run"):
        torch_mlp.start(LADDER, blobs, seed=5, resume_from=path)


@pytest.mark.parametrize("schedule", ["cosine", "onecycle"])
def test_only_the_step_schedule_makes_a_shorter_run_the_start_of_a_longer_one(blobs, schedule):
    assert torch_mlp.budget_blocker(LADDER) is None
    training = torch_mlp.start({**LADDER, "schedule": schedule, "warmup_epochs": 0}, blobs, seed=5)
    training.advance(2)  # a whole run of 2 epochs is fine; going on from it is not
    with pytest.raises(ValueError, match="cannot go on from epoch 2 to 4"):
        training.advance(4)
    blocker = torch_mlp.budget_blocker({**LADDER, "schedule": schedule})
    assert blocker.startswith(f"schedule {schedule!r} sets every step's learning rate from num_epochs")
