"""Tuning a head with KerasTuner: values inside the search space, every trial recorded, seeded, the best found."""

import csv
import json
import shutil
import sys

import pytest

from _run_fixtures import logged_lines
from fusion.data import FeatureBatches, open_feature_source
from fusion.statistics import feature_statistics
from fusion.store import read_store_info
from fusion.synthetic import write_synthetic_store
from fusion.tuning import DEFAULT_SEARCH_SPACE, TRIALS_COLUMNS, tune_head

# Few epochs: enough to tell a learning head from one that does not learn, cheap enough for three trials.
EPOCHS, PATIENCE = 4, 2


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """(build_kwargs, train batches, val batches) of a small noisy_views store: 4 classes, 2 backbones."""
    store_path = tmp_path_factory.mktemp("tuning") / "noisy.h5"
    write_synthetic_store(store_path, kind="noisy_views", num_rows=300, feature_dims=8)
    info = read_store_info(store_path)
    backbones = list(info.feature_shapes)
    source = open_feature_source(info.path, backbones, stream=False)
    rows = {split: info.split_rows(split) for split in ("train", "val")}
    build_kwargs = {
        "feature_shapes": {name: info.feature_shapes[name] for name in backbones},
        "num_classes": len(info.class_names),
        "feature_statistics": feature_statistics(source.features, rows["train"]),
        "name": "fusion",
    }
    train = FeatureBatches(source, backbones, rows["train"], info.labels[rows["train"]], shuffle=True)
    val = FeatureBatches(source, backbones, rows["val"], info.labels[rows["val"]])
    return build_kwargs, train, val


def _tune(data, directory, **kwargs):
    build_kwargs, train, val = data
    options = {"trials": 3, "epochs": EPOCHS, "patience": PATIENCE, "seed": 0, **kwargs}
    with logged_lines("fusion.tuning") as lines:
        return tune_head(build_kwargs, train, val, directory=directory, **options), lines


@pytest.fixture(scope="module")
def searched(data, tmp_path_factory):
    """A three-trial search with seed 0 over the default space, and the lines it logged."""
    return _tune(data, tmp_path_factory.mktemp("search") / "tuning")


def _read_trials(project_dir):
    with open(project_dir / "trials.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_the_chosen_values_lie_in_the_search_space(searched):
    tuning, _ = searched
    best = tuning.best_hyperparameters
    assert list(best) == ["units", "dropout", "l2", "learning_rate"]
    assert isinstance(best["units"], int)
    for name, (low, high) in DEFAULT_SEARCH_SPACE.items():
        assert low <= best[name] <= high, (name, best[name])
    # Every trial drew its own values, inside the space too.
    for row in tuning.trials:
        assert all(low <= row[name] <= high for name, (low, high) in DEFAULT_SEARCH_SPACE.items()), row
    assert len({row["learning_rate"] for row in tuning.trials}) == 3


def test_trials_csv_holds_every_trial_and_its_best_is_the_one_reported(searched):
    tuning, lines = searched
    assert tuning.project_dir.name == "fusion" and tuning.project_dir.parent.name == "tuning"
    rows = _read_trials(tuning.project_dir)
    assert len(rows) == 3 and list(rows[0]) == list(TRIALS_COLUMNS)
    best_row = min(rows, key=lambda row: float(row["best_val_loss"]))
    assert float(best_row["best_val_loss"]) == tuning.best_val_loss
    assert best_row["trial"] == tuning.best_trial
    assert {name: float(best_row[name]) for name in DEFAULT_SEARCH_SPACE} == pytest.approx(tuning.best_hyperparameters)
    for row in rows:
        assert 1 <= int(row["best_epoch"]) <= int(row["epochs_run"]) <= EPOCHS
    written = json.loads((tuning.project_dir / "best.json").read_text(encoding="utf-8"))
    assert written == {"best_hyperparameters": tuning.best_hyperparameters, "best_val_loss": tuning.best_val_loss,
                       "best_trial": tuning.best_trial, "trials_run": 3}
    # KerasTuner's own project sits in the same folder, and `files` lists everything written there.
    assert (tuning.project_dir / "oracle.json").is_file()
    assert {tuning.project_dir / "trials.csv", tuning.project_dir / "best.json"} <= set(tuning.files)
    assert all(path.is_file() for path in tuning.files)
    assert len(lines) == 4 and lines[-1].startswith(f"tuning fusion: best trial {tuning.best_trial}, val_loss")


@pytest.mark.slow
def test_the_same_seed_chooses_the_same_values(data, searched, tmp_path):
    tuning, _ = searched
    again, _ = _tune(data, tmp_path / "tuning")
    assert again.best_hyperparameters == tuning.best_hyperparameters
    assert [row["best_val_loss"] for row in again.trials] == pytest.approx(
        [row["best_val_loss"] for row in tuning.trials], rel=1e-5)
    # Another seed draws other values (one trial is enough to see it).
    other, _ = _tune(data, tmp_path / "other", trials=1, seed=1)
    assert other.trials[0]["units"] != tuning.trials[0]["units"]


def test_a_rerun_replaces_the_previous_trials_instead_of_reusing_them(data, searched, tmp_path):
    tuning, _ = searched
    directory = tmp_path / "tuning"
    shutil.copytree(tuning.project_dir.parent, directory)
    rerun, _ = _tune(data, directory, trials=2, search_space={"units": 70})
    rows = _read_trials(rerun.project_dir)
    assert [int(row["units"]) for row in rows] == [70, 70]
    assert sorted(path.name for path in rerun.project_dir.glob("trial_*")) == ["trial_0", "trial_1"]
    assert rerun.best_hyperparameters["units"] == 70


def test_an_obvious_best_learning_rate_is_chosen(data, tmp_path):
    # A rate of 1e-7 leaves the head at its initial loss; 1e-2 learns. Minimising anything but the
    # validation loss, or maximising it, picks the wrong one.
    space = {"units": 32, "dropout": 0.0, "l2": 0.0, "learning_rate": [1e-7, 1e-2]}
    tuning, lines = _tune(data, tmp_path / "tuning", trials=4, search_space=space)
    assert tuning.best_hyperparameters == {"units": 32, "dropout": 0.0, "l2": 0.0, "learning_rate": 1e-2}
    losses = {row["learning_rate"]: row["best_val_loss"] for row in tuning.trials}
    assert sorted(losses) == [1e-7, 1e-2]
    assert losses[1e-2] < losses[1e-7] - 0.1, losses
    # Two distinct value sets: the search stops after two trials, and says so.
    assert len(_read_trials(tuning.project_dir)) == 2
    assert "only 2 distinct value sets, so 2 of 4 trials ran" in "\n".join(lines)


@pytest.mark.parametrize("trials", [0, -1, 2.5])
def test_fewer_than_one_trial_is_refused(data, tmp_path, trials):
    with pytest.raises(ValueError, match=rf"trials must be a whole number of at least 1, e.g. 20. Received: trials={trials}"):
        _tune(data, tmp_path / "tuning", trials=trials)
    assert not (tmp_path / "tuning").exists()


@pytest.mark.parametrize("verbose", [2, True])
def test_a_verbose_other_than_0_or_1_is_refused(data, tmp_path, verbose):
    with pytest.raises(ValueError, match=rf"verbose must be 0 \(silent\) or 1 \(a line per trial\). Received: verbose={verbose}"):
        _tune(data, tmp_path / "tuning", verbose=verbose)
    assert not (tmp_path / "tuning").exists()


def test_missing_keras_tuner_names_the_install_command(data, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "keras_tuner", None)  # `import keras_tuner` now raises ImportError
    with pytest.raises(ImportError, match="Tuning needs KerasTuner, which is not installed. Install it with: "
                                          "pip install keras-tuner"):
        _tune(data, tmp_path / "tuning")
    assert not (tmp_path / "tuning").exists()


@pytest.mark.parametrize(
    "search_space, message",
    [
        ({"batch_size": (16, 64)}, r"Unknown search space name\(s\) 'batch_size'. Valid names: units, dropout, l2, "
                                   r"learning_rate; .* Received: search_space=\{'batch_size': \(16, 64\)\}"),
        ({"l2": (0.0, 1e-2)}, r"search_space\['l2'\] is sampled in log space, so its low end must be positive. "
                              r".* Received: l2=\(0.0, 0.01\)"),
        ({"units": (512, 64)}, r"search_space\['units'\] as a tuple must be a range \(low, high\) with low < high. "
                               r".* Received: units=\(512, 64\)"),
        ({"dropout": [0.2, 1.0]}, r"search_space\['dropout'\] values must be in \[0, 1\). Received: dropout=\[0.2, 1.0\]"),
        ({"units": 32.5}, r"search_space\['units'\] values must be whole numbers of at least 1. Received: units=32.5"),
        ({"learning_rate": "1e-3"}, r"search_space\['learning_rate'\] must be a range \(low, high\), a list of choices "
                                    r"or one number, e.g. learning_rate=\(0.0001, 0.01\). Received: learning_rate='1e-3'"),
    ],
)
def test_a_bad_search_space_is_refused(data, tmp_path, search_space, message):
    with pytest.raises(ValueError, match=message):
        _tune(data, tmp_path / "tuning", search_space=search_space)
    assert not (tmp_path / "tuning").exists()


def test_bad_build_arguments_fail_before_any_trial(data, tmp_path):
    build_kwargs, train, val = data
    with pytest.raises(ValueError, match="Unknown pooling 'median'"):
        tune_head({**build_kwargs, "pooling": "median"}, train, val, trials=2, directory=tmp_path / "tuning")
    assert not (tmp_path / "tuning").exists()


def test_a_failing_trial_stops_the_search_with_its_own_error(data, tmp_path):
    # KerasTuner alone would log the error, mark the trial invalid and go on to the next one.
    build_kwargs, train, val = data
    arrays = {split: ({name: train.source.features[name][batches.rows] for name in batches.backbones}, batches.labels)
              for split, batches in (("train", train), ("val", val))}
    # A class weight without class 1: train_model cannot weigh the validation rows of class 1.
    with pytest.raises(KeyError, match="1"):
        tune_head(build_kwargs, arrays["train"], arrays["val"], trials=3, directory=tmp_path / "tuning",
                  epochs=EPOCHS, patience=PATIENCE, class_weight={0: 1.0}, verbose=0)
    project_dir = tmp_path / "tuning" / "fusion"
    assert [path.name for path in project_dir.glob("trial_*")] == ["trial_0"]
    assert not (project_dir / "trials.csv").exists() and not (project_dir / "best.json").exists()
