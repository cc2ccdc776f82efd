from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpsearch.errors import SpecError
from hpsearch.spec.build import load_spec

REPO = Path(__file__).resolve().parents[2]

MINIMAL = """
name: tiny
data: {dataset: synthetic, path: blobs}
defaults: {hidden_size: 8, learning_rate: 1e-4, reg: .5}
"""
DERIVED = """
phases:
  - {name: random, sampler: random, n_trials: 4, space: {learning_rate: {type: float, low: 0.001, high: 0.1}}}
  - {name: grid, sampler: grid, grid: {from: random, top_k: 2, points: 3}}
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
        (MINIMAL, ["time_box=5d"], r"study.yaml: time_box must be a duration such as 3300, '55m' or '1h'. Got '5d'"),
        (MINIMAL, ["time_box=0"], r"study.yaml: time_box must be a finite duration greater than 0. Got 0 instead"),
        (MINIMAL, ["objective.direction=minimize"],
         r"study.yaml: objective.direction must be 'maximize' for the metric 'val_acc' \(higher is better\), or left "
         r"out. Got 'minimize' instead.$"),
        (MINIMAL, ["objective.metric=val_rmse"],
         r"study.yaml: objective.metric must be one of val_acc, val_loss, train_acc \(what the numpy trainable "
         r"reports\). Got 'val_rmse' instead.$"),
        (MINIMAL, ["objective.metric=val_loss", "objective.direction=maximize"],
         r"objective.direction must be 'minimize' for the metric 'val_loss' \(lower is better\)"),
        # a grid is a mapping of lists or a derived grid: the error is the one of the form the value was meant as
        (MINIMAL + DERIVED, ["phases.1.grid.top_k=0"],
         r"study.yaml: phases\[1\].grid.top_k must be greater than or equal to 1. Got 0 instead.$"),
        (MINIMAL + DERIVED, ["phases.1.grid.points=1e9"],
         r"study.yaml: phases\[1\].grid.points must be less than or equal to 1000000. Got 1000000000.0 instead.$"),
        (MINIMAL + DERIVED, ["phases.1.grid={learning_rate: 0.1}"],
         r"study.yaml: phases\[1\].grid.learning_rate must be a valid list. Got 0.1 instead.$"),
    ],
)
def test_bad_specs_give_one_line_naming_file_and_path(tmp_path, text, overrides, expected):
    with pytest.raises(SpecError, match=expected) as caught:
        load_spec(write(tmp_path, text), overrides)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("value, seconds", [(3300, 3300.0), ("55m", 3300.0), ("1h", 3600.0), ("1.5h", 5400.0),
                                            ("90s", 90.0), ("2 min", 120.0)])
def test_a_time_box_is_seconds_or_a_duration_with_its_unit(tmp_path, value, seconds):
    assert load_spec(write(tmp_path, MINIMAL), [f"time_box={value}"]).time_box == seconds
    assert load_spec(write(tmp_path, MINIMAL)).time_box is None


def test_missing_spec_file(tmp_path):
    with pytest.raises(SpecError, match="nope.yaml: spec file not found"):
        load_spec(tmp_path / "nope.yaml")


@pytest.mark.parametrize("make, message", [
    (lambda path: path.symlink_to("/dev/zero"), "a character device, not a regular file; a spec is a YAML file."),
    (os.mkfifo, "a FIFO (named pipe), not a regular file; a spec is a YAML file."),
    (Path.mkdir, "a folder, not a file; a spec is a YAML file."),
    (lambda path: path.write_text(MINIMAL + "#" * 2**20), "a spec must be at most 1 MiB. Got 1.0 MiB instead."),
])
def test_a_spec_that_is_no_file_or_too_large_is_one_line_read_no_further(tmp_path, make, message):
    """/dev/zero never ends and a FIFO waits for a writer: both are refused before a byte is read."""
    path = tmp_path / "study.yaml"
    make(path)
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    assert str(caught.value) == f"{path}: {message}"


def test_objective_direction_follows_the_metric(tmp_path):
    assert load_spec(write(tmp_path, MINIMAL)).objective.direction == "maximize"
    assert load_spec(write(tmp_path, MINIMAL), ["objective.metric=val_loss"]).objective.direction == "minimize"
    spec = load_spec(write(tmp_path, MINIMAL + "objective: {metric: val_acc, direction: maximize}\n"))
    assert (spec.objective.metric, spec.objective.direction) == ("val_acc", "maximize")


def test_shipped_specs_validate():
    paths = sorted((REPO / "studies").glob("*.yaml"))
    assert len(paths) == 7
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


# ---- hostile specs: every one is a SpecError of one line, none a traceback or a hang (#15.11, #15.12) ----------------

ALIAS_BOMB = "\n".join(["name: bomb", "data:", "  dataset: synthetic", "  options:",
                        "    a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
                       + [f"    a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]) + "\n"


@pytest.mark.parametrize(
    "text, overrides, expected",
    [
        (MINIMAL, ["seed=-1"], r"study.yaml: seed must be greater than or equal to 0. Got -1 instead."),
        (MINIMAL, ["data.seed=-3"], r"data.seed must be greater than or equal to 0. Got -3 instead."),
        (MINIMAL, [f"seed={2**64}"], r"seed must be less than 9223372036854775808"),
        (MINIMAL, ["name=x.b"], r"name must be letters, digits, '_' and '-' only \(phases are stored as "
                                r"<study>.<phase>, so no '.'\). Got 'x.b' instead."),
        (MINIMAL, ['name="../../etc/x"'], r"Got '\.\./\.\./etc/x' instead\."),  # quoted verbatim
        (MINIMAL, ["defaults.learning_rate=.inf"], r"defaults.learning_rate must be a finite number. Got inf"),
        (MINIMAL, ["defaults.std=.nan"], r"defaults.std must be a finite number. Got nan"),
        (MINIMAL, ["defaults.hidden_size=true"], r"defaults.hidden_size must be a number, not true or false"),
        (MINIMAL, ["data.num_train=true"], r"data.num_train must be a number, not true or false"),
        (MINIMAL, ["data.dataset=digits", "data.options.num_classes=5"],
         r"data.options.num_classes is not an option of the digits dataset; it takes none."),
        (MINIMAL, ["data.options.colour=red"], r"data.options.colour is not an option of the synthetic dataset; it "
                                               r"takes num_classes, num_features, spread."),
        (MINIMAL, ["data.options.num_classes=0"], r"data.options.num_classes must be greater than or equal to 2"),
        (MINIMAL, ["data.options.spread=.inf"], r"data.options.spread must be a finite number"),
        (MINIMAL, ["data.options.num_features=abc"], r"data.options.num_features must be a valid integer"),
        (MINIMAL + "seed: 1\nseed: 2\n", [], r"study.yaml: invalid YAML \(line 6, column 1\): the key 'seed' "
                                             r"appears twice in one mapping."),
        (MINIMAL, ["defaults={a: 1, a: 2}"], r"--set defaults: invalid YAML .*the key 'a' appears twice"),
        (MINIMAL, ["phases.٣.name=x"], r"study.yaml: phases must be a valid list."),  # '٣' is a key, not int('٣')
        (MINIMAL, ["data.path=~no-such-user-here/cifar"], r"data.path '~no-such-user-here/cifar' names a user's "
                                                          r"home folder that does not exist."),
        (MINIMAL.replace("path: blobs", "path: ~no-such-user-here/x"), [], r"names a user's home folder"),
        (ALIAS_BOMB, [], r"study.yaml: holds more than 100,000 values once its YAML aliases are expanded"),
        ("name: x\ndata: &d {options: {self: *d}}\n", [], r"nested more than 32 levels deep"),
        ("name: x\ndefaults: " + "[" * 40 + "]" * 40 + "\n", [], r"nested more than 32 levels deep"),
        ("name: x\ndefaults: " + "[" * 5000 + "]" * 5000 + "\n", [], r"nested more than 32 levels deep"),
        (MINIMAL, [".".join(["defaults"] * 600) + "=1"],
         r"--set 'defaults\.defaults\.defaults.{31}\.\.\.': the path must have at most 32 parts. Got 600 instead\.$"),
        (MINIMAL, ["name=" + "a" * 600], r"study.yaml: name must be at most 100 characters long \(it names the "
                                         r"study's storage, files and MLflow runs\). Got 600 characters \(a{20}\.\.\.\) "
                                         r"instead\.$"),
        (MINIMAL, ["phases=[{name: " + "p" * 101 + ", sampler: grid, grid: {hidden_size: [4]}}]"],
         r"phases\[0\].name must be at most 100 characters long"),
    ],
)
def test_hostile_specs_are_one_line(tmp_path, text, overrides, expected):
    with pytest.raises(SpecError, match=expected) as caught:
        load_spec(write(tmp_path, text), overrides)
    assert "\n" not in str(caught.value)


def test_yaml_merge_keys_may_be_overridden(tmp_path):
    spec = load_spec(write(tmp_path, "name: x\nbase: &base {hidden_size: 8, reg: 0.5}\n".replace("base:", "x-base:")
                           .replace("x-base:", "defaults:") + "data: {dataset: synthetic}\n"))
    assert spec.defaults == {"hidden_size": 8, "reg": 0.5}
    merged = load_spec(write(tmp_path, "name: x\ndata: &d {dataset: synthetic, seed: 1}\n"
                                       "defaults: {<<: {hidden_size: 8, reg: 0.5}, reg: 0.25}\n"))
    assert merged.defaults == {"hidden_size": 8, "reg": 0.25}


def test_synthetic_options_reach_the_data(tmp_path):
    from hpsearch.engine.training import load_data

    spec = load_spec(write(tmp_path, MINIMAL), ["data.options={num_classes: 4, num_features: 6}"])
    data = load_data(spec)
    assert data.num_classes == 4 and data.input_size == 6


# ---- the user's own data (#16) -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["data.dataset=arrays", "data.path=null"], "data.path is required for the arrays dataset (an .npz file)."),
        (["data.dataset=csv"], "data.target is required for the csv dataset (the name of the column to predict)."),
        (["data.target=label"],
         "data.target names the column to predict of a csv table; the synthetic dataset takes none."),
        (["data.dataset=arrays", "data.options={task: ranking}"],
         "data.options.task must be 'classification' or 'regression'. Got 'ranking' instead."),
        (["data.dataset=csv", "data.target=y", "data.options={num_classes: 3}"],
         "data.options.num_classes is not an option of the csv dataset; it takes task."),
        (["data.dataset=my-data:load"],
         "data.dataset must be 'package.module:function' with Python names. Got 'my-data:load' instead."),
        (["data.dataset=mnist"], "data.dataset must be one of cifar10, digits, synthetic, arrays, csv, "
                                 "'package.module:function'. Got 'mnist' instead."),
        (["data.dataset=mydata:load", "data.options={path: raw}"],
         "data.options.path is passed to the loader from data.path; set that instead."),
        (["data.dataset=mydata:load", "data.options={task: [1]}"],
         "data.options.task must be 'classification' or 'regression'. Got [1] instead."),
    ],
)
def test_user_data_is_checked_when_the_spec_loads(tmp_path, overrides, expected):
    path = write(tmp_path, MINIMAL)
    with pytest.raises(SpecError) as caught:
        load_spec(path, overrides)
    assert str(caught.value) == f"{path}: {expected}"


def test_user_data_specs_that_load(tmp_path):
    table = load_spec(write(tmp_path, MINIMAL), ["data={dataset: csv, path: t.csv, target: label, "
                                                 "options: {task: regression}, preprocess: none}"])
    assert (table.data.target, table.data.options, table.data.preprocess) == ("label", {"task": "regression"}, "none")
    assert table.data.path == str(tmp_path / "t.csv")
    loader = load_spec(write(tmp_path, MINIMAL.replace("path: blobs", "path: raw, dataset: mydata.io:load_it")
                             .replace("dataset: synthetic, ", "")), ["data.options={rows: 5, task: regression}"])
    assert (loader.data.dataset, loader.data.path) == ("mydata.io:load_it", str(tmp_path / "raw"))
    assert loader.data.options == {"rows": 5, "task": "regression"}


yaml_text = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8)),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=30,
)
SPEC_KEYS = ["name", "seed", "data", "data.dataset", "data.options", "data.num_train", "data.path", "defaults",
             "defaults.hidden_size", "defaults.learning_rate", "phases", "phases.0", "phases.0.grid", "phases.0.name",
             "phases.0.space", "phases.0.n_trials", "phases.0.sampler", "model.backend", "pruner", "heartbeat",
             "storage", "tracking.enabled"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(overrides=st.lists(st.tuples(st.sampled_from(SPEC_KEYS) | st.text(min_size=1, max_size=12),
                                    yaml_text.map(lambda v: yaml.safe_dump(v, default_flow_style=True).strip())
                                    | st.text(max_size=20)),
                          max_size=4))
def test_any_override_loads_or_is_a_spec_error(tmp_path, overrides):
    spec = write(tmp_path, MINIMAL + "phases:\n  - {name: g, sampler: grid, grid: {hidden_size: [4, 8]}}\n")
    try:
        load_spec(spec, [f"{key}={value}" for key, value in overrides])
    except SpecError as exc:
        assert "\n" not in str(exc)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=200) | yaml_text.map(lambda v: yaml.safe_dump({"name": "x", **(
    v if isinstance(v, dict) else {"defaults": v})})))
def test_any_yaml_text_loads_or_is_a_spec_error(tmp_path, text):
    try:
        load_spec(write(tmp_path, text))
    except SpecError as exc:
        assert "\n" not in str(exc)


# ---- a searched parameter's range: refused when the spec loads, or drawn from without fail -------------------------

@pytest.mark.parametrize("param, expected", [
    ("{type: int, low: 4, high: 16, step: 0}", r"hidden_size.step must be greater than 0. Got 0 instead.$"),
    ("{type: float, low: 1, high: 16, step: -4}", r"hidden_size.step must be greater than 0. Got -4 instead.$"),
    ("{type: int, low: 4, high: 1e30}", r"hidden_size an int parameter needs 'low' and 'high' strictly between "
                                        r"-2\*\*53 and 2\*\*53. Got 4 to 1e\+30 instead.$"),
    ("{type: float, low: 0, high: 1, step: 1e-300}", r"hidden_size 'step' must be at least \('high' - 'low'\) / 2\*\*53. "
                                                     r"Got 1e-300 instead.$"),
    ("{type: float, low: -1e308, high: 1e308}", r"hidden_size 'high' - 'low' must be a finite number. Got -1e\+308 to "
                                                r"1e\+308 instead.$"),
])
def test_a_space_that_cannot_be_drawn_from_is_refused_when_the_spec_loads(tmp_path, param, expected):
    with pytest.raises(SpecError, match=r"study.yaml: phases\[0\].space." + expected):
        load_spec(write(tmp_path, MINIMAL), [f"phases=[{{name: r, sampler: random, n_trials: 2, "
                                             f"space: {{hidden_size: {param}}}}}]"])


bound = st.one_of(st.integers(-2**60, 2**60), st.floats(allow_nan=False, allow_infinity=False), st.sampled_from([
    0, 1, -1, 2**53, 2**53 + 2, 1e308, -1e308]))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(["int", "float"]), low=bound, high=bound, step=st.none() | bound, log=st.booleans())
def test_every_space_that_loads_can_be_drawn_from(tmp_path, kind, low, high, step, log):
    from hpsearch.search.grid import random_points

    (tmp_path / "takes_any.py").write_text("def train(config, data, *, seed, on_epoch=None):\n    return {}\n")
    param = {"type": kind, "low": low, "high": high, "log": log, **({"step": step} if step is not None else {})}
    try:  # a trainable without a configuration model: any range of x is its own
        spec = load_spec(write(tmp_path, yaml.safe_dump({
            **yaml.safe_load(MINIMAL), "defaults": {}, "model": {"backend": "takes_any:train"},
            "objective": {"metric": "val_acc", "direction": "maximize"},
            "phases": [{"name": "r", "sampler": "random", "n_trials": 3, "space": {"x": param}}]})))
    except SpecError as exc:
        assert "\n" not in str(exc)
        # an everyday range is never among the refused
        whole = kind == "float" or (float(low).is_integer() and float(high).is_integer())
        assert not (step is None and not log and whole and -1e6 <= low <= high <= 1e6), exc
        return
    for point in random_points(spec.phases[0].space, 3, 0, "r"):
        assert float(low) <= point["x"] <= float(high)  # as the spec reads them: floats


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
# a pattern of parts repeated up to 1,000 times: deep enough to exhaust the stack where the depth is not bounded
@given(pattern=st.lists(st.sampled_from(["defaults", "data", "0", "phases", "x"]), min_size=1, max_size=5),
       repeats=st.integers(1, 1000))
def test_any_override_path_loads_or_is_a_spec_error(tmp_path, pattern, repeats):
    try:
        load_spec(write(tmp_path, MINIMAL), [".".join(pattern * repeats) + "=1"])
    except SpecError as exc:
        assert "\n" not in str(exc)
