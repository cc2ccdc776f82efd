from __future__ import annotations

from pathlib import Path

import pytest

from hpsearch.errors import SpecError
from hpsearch.spec import load_spec

REPO = Path(__file__).resolve().parents[1]

MINIMAL = """
name: tiny
data: {dataset: synthetic, path: blobs}
defaults: {hidden_size: 8, learning_rate: 1e-4, reg: .5}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(text)
    return path


def test_numbers_as_people_write_them(tmp_path):
    spec = load_spec(write(tmp_path, MINIMAL))
    assert spec.defaults == {"hidden_size": 8, "learning_rate": 1e-4, "reg": 0.5}


def test_relative_data_path_is_relative_to_the_spec_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    spec = load_spec(write(tmp_path, MINIMAL))
    assert spec.data.path == str((tmp_path / "blobs").resolve())
    spec = load_spec(write(tmp_path, MINIMAL), ["data.path=somewhere"])
    assert spec.data.path == str(REPO / "somewhere")  # a path given on the command line is relative to the cwd


def test_overrides_keep_their_yaml_types(tmp_path):
    spec = load_spec(write(tmp_path, MINIMAL), ["defaults.hidden_size=100", "defaults.learning_rate=1e-3",
                                               "seed=7", "data.num_train=50"])
    assert spec.defaults["hidden_size"] == 100 and spec.defaults["learning_rate"] == 1e-3
    assert spec.seed == 7 and spec.data.num_train == 50


@pytest.mark.parametrize(
    "text, overrides, expected",
    [
        (MINIMAL + "colour: red\n", [], r"study.yaml: unknown key 'colour'"),
        (MINIMAL, ["data.shuffle=true"], r"unknown key 'data.shuffle'"),
        (MINIMAL, ["seed=abc"], r"study.yaml: seed must be a valid integer.*Got 'abc'"),
        (MINIMAL, ["defaults.learning_rate=-1"], r"study.yaml: defaults.learning_rate must be greater than 0. Got -1"),
        (MINIMAL, ["defaults.momentum=0.9"], r"study.yaml: defaults.momentum is not a parameter of the numpy backend; it takes batch_size"),
        (MINIMAL, ["model.backend=jax"], r"model.backend must be one of numpy.*Got 'jax'"),
        (MINIMAL, ["data.dataset=mnist"], r"data.dataset must be one of cifar10, digits, synthetic"),
        ("name: x\nbad: !!python/object/apply:os.system ['touch /tmp/x']\n", [], r"study.yaml: invalid YAML"),
        ("name: [unclosed\n", [], r"study.yaml: invalid YAML \(line"),
        ("- just\n- a list\n", [], r"must be a YAML mapping"),
        ("", [], r"the spec is empty"),
        (MINIMAL, ["nonsense"], r"--set 'nonsense': expected KEY=VALUE"),
        (MINIMAL, ["objective.direction=minimize"],
         r"study.yaml: objective.direction must be 'maximize' for the metric 'val_acc' \(higher is better\), or left "
         r"out. Got 'minimize' instead.$"),
        (MINIMAL, ["objective.metric=val_loss"], r"study.yaml: objective.metric must be one of val_acc. Got 'val_loss'"),
    ],
)
def test_bad_specs_give_one_line_naming_file_and_path(tmp_path, text, overrides, expected):
    with pytest.raises(SpecError, match=expected) as caught:
        load_spec(write(tmp_path, text), overrides)
    assert "\n" not in str(caught.value)


def test_missing_spec_file(tmp_path):
    with pytest.raises(SpecError, match="nope.yaml: spec file not found"):
        load_spec(tmp_path / "nope.yaml")


def test_objective_direction_follows_the_metric(tmp_path):
    assert load_spec(write(tmp_path, MINIMAL)).objective.direction == "maximize"
    spec = load_spec(write(tmp_path, MINIMAL + "objective: {metric: val_acc, direction: maximize}\n"))
    assert (spec.objective.metric, spec.objective.direction) == ("val_acc", "maximize")


def test_shipped_specs_validate():
    paths = sorted((REPO / "studies").glob("*.yaml"))
    assert len(paths) == 4
    for path in paths:
        spec = load_spec(path)
        assert spec.name == path.stem and spec.phases  # the name that the README's storage paths use
        assert (spec.objective.metric, spec.objective.direction) == ("val_acc", "maximize")


def test_cifar_spec_has_the_assignment_defaults():
    spec = load_spec(REPO / "studies" / "cifar10-twolayer.yaml")
    assert {k: spec.defaults[k] for k in ("hidden_size", "learning_rate", "num_iters", "batch_size", "reg",
                                          "learning_rate_decay")} == {
        "hidden_size": 50, "learning_rate": 1e-4, "num_iters": 1000, "batch_size": 200, "reg": 0.25,
        "learning_rate_decay": 0.95}
    assert spec.data.path == str(REPO / "data" / "cifar-10-batches-py")
