"""Tune a fusion head's units, dropout, L2 and learning rate with KerasTuner, each trial trained like a run's models.

KerasTuner is imported only when `tune_head` runs, so that `import fusion` (and every script's
`--help`) stays free of it: install it with `pip install keras-tuner`.
"""

import csv
import dataclasses
import json
import logging
import math
import numbers
from pathlib import Path

import keras
import numpy as np

from features.atomic_files import open_atomic
from features.progress_log import progress_shown
from features.tensorflow_noise import retracing_warnings_silenced
from fusion.data import FeatureBatches
from fusion.model import build_fusion_model
from fusion.training import train_model

# name -> (low, high) of the default search space; `_LOG_SCALED` are sampled evenly in log space,
# because a step from 1e-5 to 1e-4 matters as much as one from 1e-3 to 1e-2.
DEFAULT_SEARCH_SPACE = {
    "units": (64, 512),
    "dropout": (0.0, 0.6),
    "l2": (1e-6, 1e-2),
    "learning_rate": (1e-4, 1e-2),
}
_LOG_SCALED = ("units", "l2", "learning_rate")
logger = logging.getLogger(__name__)
TRIALS_COLUMNS = ("trial", *DEFAULT_SEARCH_SPACE, "best_val_loss", "best_epoch", "epochs_run")


@dataclasses.dataclass(frozen=True)
class HeadTuning:
    """The outcome of `tune_head`: the best hyperparameters and every trial, as trials.csv holds them.

    Attributes:
        best_hyperparameters: dict `units`, `dropout`, `l2`, `learning_rate` of the trial with the
            lowest validation loss; pass it to `build_fusion_model` with the same `build_kwargs`.
        best_val_loss: that trial's validation loss at its best epoch.
        best_trial: that trial's id.
        trials: one dict per trial run, in order, with the columns of trials.csv.
        project_dir: the folder holding KerasTuner's project, trials.csv and best.json.
        files: every file written under `project_dir`, e.g. to record them in a run folder.
    """

    best_hyperparameters: dict
    best_val_loss: float
    best_trial: str
    trials: list
    project_dir: Path
    files: list

    def to_dict(self):
        """The outcome as plain JSON values, as best.json holds it (without the file list)."""
        return {"best_hyperparameters": dict(self.best_hyperparameters), "best_val_loss": self.best_val_loss,
                "best_trial": self.best_trial, "trials_run": len(self.trials)}


def tune_head(
    build_kwargs,
    train_data,
    val_data,
    *,
    trials,
    directory,
    epochs=60,
    patience=10,
    class_weight=None,
    seed=0,
    search_space=None,
    verbose=1,
):
    """Search a fusion head's `units`, `dropout`, `l2` and `learning_rate` for the lowest validation loss.

    Random search (KerasTuner's `RandomSearch`, seeded): every trial builds
    `build_fusion_model(**build_kwargs, **trial_values)` and trains it with `train_model`'s early
    stopping (the same `epochs` and `patience`, and the same weight seed and batch order for
    every trial, so trials differ only by their values). A trial scores its best epoch's
    `val_loss` on `val_data`: the validation split, or the held-out fold in cross-validation.
    Writes under `directory/<build_kwargs["name"]>/`: KerasTuner's project (replaced on every call,
    so a re-run never reuses the trials of other data or another search space), `trials.csv`
    (one row per trial, rewritten after each) and `best.json`, both written whole.

    Args:
        build_kwargs: the fixed arguments of `build_fusion_model` (feature_shapes, num_classes,
            pooling, head_units, feature_statistics, name, fusion, ...), passed through unchanged;
            values it gives for the four tuned names are replaced by each trial's.
        train_data: training batches (e.g. a shuffling `FeatureBatches`) or a tuple `(inputs, labels)`.
        val_data: validation batches or tuple; the objective is the loss on it.
        trials: most trials; fewer run when a small search space is exhausted first.
        directory: folder of the tuning projects, e.g. `RUN/tuning`.
        epochs: most epochs per trial (default: 60).
        patience: early-stopping patience per trial (default: 10).
        class_weight: dict class -> loss weight, as for `train_model` (default: None).
        seed: seed of the sampled values, the weights and the batch order; the same seed and data
            repeat the search on CPU (default: 0).
        search_space: dict overriding entries of `DEFAULT_SEARCH_SPACE`, by name: a tuple
            `(low, high)` is a range (log-scaled for units, l2 and learning_rate), a list is a set
            of choices, a single number is fixed (default: None, `DEFAULT_SEARCH_SPACE`: units
            64..512, dropout 0..0.6, l2 1e-6..1e-2, learning_rate 1e-4..1e-2).
        verbose: 0 silent, 1 a line per trial and one for the best, logged at INFO on the
            `fusion.tuning` logger and shown on stdout when logging is not configured (default: 1).

    Returns:
        A `HeadTuning`: `best_hyperparameters` {units, dropout, l2, learning_rate}, `best_val_loss`,
        `trials` (the rows of trials.csv), `project_dir` and `files`.

    Example:
        >>> tuning = tune_head({"feature_shapes": {"resnet50": (2048,)}, "num_classes": 10, "name": "fusion"},
        ...                    train_batches, val_batches, trials=20, directory="runs/exp1/tuning")
        >>> model = build_fusion_model({"resnet50": (2048,)}, 10, **tuning.best_hyperparameters)
    """
    if isinstance(trials, bool) or not isinstance(trials, numbers.Integral) or trials < 1:
        raise ValueError(f"trials must be a whole number of at least 1, e.g. 20. Received: trials={trials!r}")
    if isinstance(verbose, bool) or verbose not in (0, 1):
        raise ValueError(f"verbose must be 0 (silent) or 1 (a line per trial). Received: verbose={verbose!r}")

    def log(line):
        if verbose:
            with progress_shown("fusion"):
                logger.info(line)

    space = _search_space(search_space)
    keras_tuner = _import_keras_tuner()
    name = build_kwargs.get("name", "fusion")
    # Bad build arguments fail here, once and before any folder is made, not inside a trial.
    build_fusion_model(**{**build_kwargs, **{key: _first_value(value) for key, value in space.items()}})

    records = {}

    class _HeadTuner(keras_tuner.RandomSearch):
        # Random search, not BayesianOptimization: with four hyperparameters the Bayesian oracle
        # draws its first 3 * 4 = 12 trials at random anyway, more than the budgets a head search
        # gets here, and random search has no surrogate model that a noisy val_loss can mislead
        # (Bergstra and Bengio, 2012).

        def run_trial(self, trial, train_data, val_data, **search_kwargs):
            # `search_kwargs` holds `search`'s own `verbose`, which KerasTuner passes on; trials are quiet.
            values = _trial_values(trial.hyperparameters.values)
            try:
                return self._fit(trial.trial_id, values, train_data, val_data)
            except Exception as error:
                # KerasTuner records a crashed trial and carries on, which would hide a broken
                # search behind a best of the trials left: stop at once; tune_head raises `error`.
                raise keras_tuner.errors.FatalError(f"Trial {trial.trial_id} failed: {error}") from error

        def _fit(self, trial_id, values, train_data, val_data):
            keras.utils.set_random_seed(seed)
            model = build_fusion_model(**{**build_kwargs, **values})
            history = train_model(model, _restarted(train_data), _restarted(val_data), epochs=epochs,
                                  patience=patience, class_weight=class_weight)
            val_losses = np.asarray(history["val_loss"], dtype=float)
            finite = np.isfinite(val_losses)
            # A diverged trial (NaN loss) scores infinity, so it can never be the best.
            best_epoch = int(np.argmin(np.where(finite, val_losses, np.inf))) if finite.any() else 0
            best_val_loss = float(val_losses[best_epoch]) if finite.any() else math.inf
            records[trial_id] = {"trial": trial_id, **values, "best_val_loss": best_val_loss,
                                 "best_epoch": best_epoch + 1, "epochs_run": len(val_losses)}
            _write_trials_csv(self.project_dir, list(records.values()))
            log(f"tuning {name}: trial {trial_id} ({len(records)}/{trials}) "
                + ", ".join(f"{key}={_shown(value)}" for key, value in values.items())
                + f": best val_loss {best_val_loss:.4f} at epoch {best_epoch + 1} of {len(val_losses)}")
            return {"val_loss": best_val_loss}

    tuner = _HeadTuner(
        objective=keras_tuner.Objective("val_loss", direction="min"),
        max_trials=int(trials),
        # KerasTuner replaces a seed of 0 by a random one (`seed or random.randint(...)`): shift it.
        seed=int(seed) + 1,
        hyperparameters=_hyperparameters(keras_tuner, space),
        directory=str(directory),
        project_name=name,
        # Replace a previous search: resuming would reuse its trials even when the data (another
        # fold) or the search space changed, and say nothing.
        overwrite=True,
    )
    try:
        # Every trial is a new model: see `features.tensorflow_noise`.
        with retracing_warnings_silenced():
            tuner.search(train_data, val_data, verbose=0)
    except keras_tuner.errors.FatalError as error:
        if error.__cause__ is not None:
            raise error.__cause__ from None
        raise
    return _finish(tuner, records, trials, name, log)


def _import_keras_tuner():
    try:
        import keras_tuner
    except ImportError as error:
        raise ImportError(
            "Tuning needs KerasTuner, which is not installed. Install it with: pip install keras-tuner "
            f"(or pip install -r requirements.txt). Received: {error}"
        ) from error
    return keras_tuner


def _search_space(search_space):
    """The default search space with the entries of `search_space` in place, each checked."""
    search_space = dict(search_space or {})
    unknown = sorted(set(search_space) - set(DEFAULT_SEARCH_SPACE))
    if unknown:
        raise ValueError(
            f"Unknown search space name(s) {', '.join(map(repr, unknown))}. Valid names: "
            f"{', '.join(DEFAULT_SEARCH_SPACE)}; fix other build arguments in build_kwargs. "
            f"Received: search_space={search_space!r}"
        )
    space = {**DEFAULT_SEARCH_SPACE, **search_space}
    for key, value in space.items():
        _check_entry(key, value)
    return space


def _check_entry(key, value):
    expected = f"a range (low, high), a list of choices or one number, e.g. {key}={DEFAULT_SEARCH_SPACE[key]}"
    if isinstance(value, tuple):
        if len(value) != 2 or not all(_is_number(bound) for bound in value) or not value[0] < value[1]:
            raise ValueError(f"search_space[{key!r}] as a tuple must be a range (low, high) with low < high. "
                             f"Expected {expected}. Received: {key}={value!r}")
        if key in _LOG_SCALED and value[0] <= 0:
            raise ValueError(f"search_space[{key!r}] is sampled in log space, so its low end must be positive. "
                             f"Expected {expected}. Received: {key}={value!r}")
        candidates = value
    elif isinstance(value, list):
        if not value or not all(_is_number(choice) for choice in value) or len(set(value)) != len(value):
            raise ValueError(f"search_space[{key!r}] as a list must be distinct numbers to choose from. "
                             f"Expected {expected}. Received: {key}={value!r}")
        candidates = value
    elif _is_number(value):
        candidates = [value]
    else:
        raise ValueError(f"search_space[{key!r}] must be {expected}. Received: {key}={value!r}")
    valid = {"units": lambda v: v >= 1 and float(v).is_integer(), "dropout": lambda v: 0 <= v < 1,
             "l2": lambda v: v >= 0, "learning_rate": lambda v: v > 0}[key]
    wanted = {"units": "whole numbers of at least 1", "dropout": "in [0, 1)", "l2": "0 or more",
              "learning_rate": "positive"}[key]
    if not all(valid(candidate) for candidate in candidates):
        raise ValueError(f"search_space[{key!r}] values must be {wanted}. Received: {key}={value!r}")


def _is_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _first_value(value):
    return value[0] if isinstance(value, (tuple, list)) else value


def _hyperparameters(keras_tuner, space):
    """KerasTuner's search space, in the order of `DEFAULT_SEARCH_SPACE` (the order values are drawn in)."""
    hyperparameters = keras_tuner.HyperParameters()
    for key, value in space.items():
        sampling = "log" if key in _LOG_SCALED else "linear"
        if isinstance(value, tuple) and key == "units":
            hyperparameters.Int(key, int(value[0]), int(value[1]), sampling=sampling)
        elif isinstance(value, tuple):
            hyperparameters.Float(key, float(value[0]), float(value[1]), sampling=sampling)
        elif isinstance(value, list):
            hyperparameters.Choice(key, [int(v) if key == "units" else float(v) for v in value])
        else:
            hyperparameters.Fixed(key, int(value) if key == "units" else float(value))
    return hyperparameters


def _trial_values(values):
    return {key: int(values[key]) if key == "units" else float(values[key]) for key in DEFAULT_SEARCH_SPACE}


def _restarted(data):
    # `FeatureBatches` counts epochs to reshuffle: each trial starts from epoch 0 on a copy, so every
    # trial sees the same batch order and the caller's batches are left as they were.
    return data.restarted() if isinstance(data, FeatureBatches) else data


def _shown(value):
    return str(value) if isinstance(value, int) else f"{value:.3g}"


def _write_trials_csv(project_dir, rows):
    with open_atomic(Path(project_dir) / "trials.csv", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, TRIALS_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def _finish(tuner, records, trials, name, log):
    """Read the best trial back from KerasTuner's oracle, write best.json and return the `HeadTuning`."""
    best = tuner.oracle.get_best_trials(1)[0]
    project_dir = Path(tuner.project_dir)
    outcome = HeadTuning(
        best_hyperparameters=_trial_values(best.hyperparameters.values), best_val_loss=float(best.score),
        best_trial=best.trial_id, trials=list(records.values()), project_dir=project_dir, files=[],
    )
    with open_atomic(project_dir / "best.json", encoding="utf-8") as handle:
        json.dump(outcome.to_dict(), handle, indent=1)
        handle.write("\n")
    if len(records) < trials:
        log(f"tuning {name}: the search space holds only {len(records)} distinct value sets, so "
            f"{len(records)} of {trials} trials ran")
    log(f"tuning {name}: best trial {outcome.best_trial}, val_loss {outcome.best_val_loss:.4f}: "
        + ", ".join(f"{key}={_shown(value)}" for key, value in outcome.best_hyperparameters.items()))
    files = sorted(path for path in project_dir.rglob("*") if path.is_file())
    return dataclasses.replace(outcome, files=files)
