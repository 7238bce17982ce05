"""Cross-validation folds and what is measured over them: out-of-fold probabilities, per-fold scores, tests between models."""

import dataclasses
import warnings

import numpy as np
from sklearn import metrics as sk_metrics
from sklearn.model_selection import RepeatedStratifiedKFold

from fusion.evaluation import clipped_log_loss, corrected_resampled_ttest, mcnemar_test

# The scores kept per fold, as report.json's `cv: {MODEL: {METRIC: ...}}`.
CV_METRICS = ("accuracy", "log_loss", "macro_f1")


@dataclasses.dataclass(frozen=True)
class Fold:
    """One training split of a run: the rows a model learns from and the rows it is stopped and scored on.

    Attributes:
        repeat: 0-based repeat of the k-fold split (0 for a single split).
        index: 0-based fold within its repeat.
        train_rows, val_rows: sorted store rows; `val_rows` is the held-out fold (or the val split).
        seed: the seed of this fold's weights and batches.
        name: `repeat1_fold1`, ..., or `split` for the store's own train/val split.
    """

    repeat: int
    index: int
    train_rows: np.ndarray
    val_rows: np.ndarray
    seed: int
    name: str


def store_split(train_rows, val_rows, seed):
    """The store's own train/val split as the one fold of a run without cross-validation."""
    return [Fold(0, 0, np.asarray(train_rows), np.asarray(val_rows), seed, "split")]


def check_fold_options(folds, repeats):
    """Refuse a fold count or repeat count that cannot make folds, before any work."""
    if folds == 1 or folds < 0:
        raise ValueError(
            f"folds must be 0 (the store's train/val split) or at least 2 (k-fold cross-validation over train+val). "
            f"Received: folds={folds}"
        )
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1. Received: repeats={repeats}")
    if repeats > 1 and folds == 0:
        raise ValueError(
            f"repeats repeats k-fold cross-validation with other fold seeds; give --folds 2 or more with it. "
            f"Received: folds={folds}, repeats={repeats}"
        )


def make_folds(rows, labels, folds, repeats=1, seed=0):
    """Stratified k-fold splits of the labelled non-test rows, repeated with other fold seeds.

    Args:
        rows: sorted store rows to split (train and val).
        labels: their class indices.
        folds: folds per repeat, 2 or more.
        repeats: how many times to split again with another seed (default: 1).
        seed: seed of the first split and of the models (default: 0).

    Example:
        >>> folds = make_folds(pool_rows, info.labels[pool_rows], folds=5)
        >>> [fold.name for fold in folds][:2]
        ['repeat1_fold1', 'repeat1_fold2']
    """
    check_fold_options(folds, repeats)
    rows, labels = np.asarray(rows), np.asarray(labels)
    largest_class = int(np.bincount(labels).max()) if len(labels) else 0
    if folds > largest_class:
        raise ValueError(
            f"{folds} folds need at least {folds} labelled train+val images in some class, and the largest class has "
            f"{largest_class}. Use fewer --folds. Received: folds={folds}, {len(rows)} train+val images"
        )
    splitter = RepeatedStratifiedKFold(n_splits=folds, n_repeats=repeats, random_state=seed)
    with warnings.catch_warnings():
        # Classes smaller than `folds` are named in the report's warnings (see `small_class_warning`).
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        splits = list(splitter.split(rows, labels))
    return [
        Fold(number // folds, number % folds, rows[train], rows[held_out], seed + number,
             f"repeat{number // folds + 1}_fold{number % folds + 1}")
        for number, (train, held_out) in enumerate(splits)
    ]


def small_class_warning(labels, class_names, folds):
    """A report warning naming the classes with fewer train+val images than folds; None when there are none."""
    counts = np.bincount(np.asarray(labels), minlength=len(class_names))
    small = [f"{class_names[index]} ({count})" for index, count in enumerate(counts) if count < folds]
    if not small:
        return None
    return (f"{len(small)} class(es) have fewer labelled train+val images than the {folds} folds, so some folds hold "
            f"none of them out and score nothing on them: {', '.join(small[:10])}{' ...' if len(small) > 10 else ''}.")


def out_of_fold(folds, fold_probabilities, pool_rows):
    """Each repeat's out-of-fold probabilities of the pool rows: every row predicted by the model that did not see it.

    Args:
        folds: the folds of `make_folds`.
        fold_probabilities: per fold, the (len(fold.val_rows), C) probabilities of its held-out rows.
        pool_rows: the sorted rows the folds split.

    Example:
        >>> out_of_fold(folds, [result.val_probabilities for result in fusion_folds], pool_rows)[0].shape
        (800, 10)
    """
    repeats = max(fold.repeat for fold in folds) + 1
    num_classes = np.shape(fold_probabilities[0])[1]
    oof = [np.full((len(pool_rows), num_classes), np.nan) for _ in range(repeats)]
    for fold, probabilities in zip(folds, fold_probabilities):
        oof[fold.repeat][np.searchsorted(pool_rows, fold.val_rows)] = probabilities
    return oof


def fold_scores(labels, probabilities):
    """Accuracy, log loss and macro F1 (over the classes present) of one fold's held-out rows."""
    labels = np.asarray(labels, dtype=np.int64)
    predictions = np.asarray(probabilities).argmax(axis=1)
    present = np.unique(labels)
    return {
        "accuracy": float(np.mean(predictions == labels)),
        "log_loss": clipped_log_loss(labels, probabilities),
        "macro_f1": float(sk_metrics.f1_score(labels, predictions, labels=present, average="macro", zero_division=0)),
    }


def summarize_folds(per_fold_scores):
    """report.json's `{METRIC: {"mean", "std", "folds": [...]}}` from a list of per-fold score dicts.

    `std` is the sample standard deviation over folds (and repeats).

    Example:
        >>> summarize_folds([{"accuracy": 0.9}, {"accuracy": 0.8}])["accuracy"]["mean"]
        0.85
    """
    summary = {}
    for metric in per_fold_scores[0]:
        values = [float(scores[metric]) for scores in per_fold_scores]
        summary[metric] = {"mean": float(np.mean(values)),
                           "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                           "folds": values}
    return summary


def cross_fitted(folds, single_fold_probabilities, pool_rows, pool_labels, make_combiner):
    """Per fold, a combiner (weighted average, stacking) fitted on the other folds' out-of-fold probabilities.

    It never sees the labels of the fold it predicts, so its per-fold scores are comparable to a
    trained model's.

    Args:
        folds: the folds of `make_folds`.
        single_fold_probabilities: per backbone, its per-fold held-out probabilities.
        pool_rows, pool_labels: the sorted rows the folds split and their labels.
        make_combiner: a function returning an unfitted combiner with `fit(probabilities, labels)`
            and `predict_proba(probabilities)`.

    Example:
        >>> cross_fitted(folds, singles, pool_rows, pool_labels, WeightedAverage)[0].shape
        (160, 10)
    """
    oof_by_single = [out_of_fold(folds, per_fold, pool_rows) for per_fold in single_fold_probabilities]
    predicted = []
    for fold in folds:
        held_out = np.zeros(len(pool_rows), bool)
        held_out[np.searchsorted(pool_rows, fold.val_rows)] = True
        combiner = make_combiner().fit([oof[fold.repeat][~held_out] for oof in oof_by_single], pool_labels[~held_out])
        predicted.append(combiner.predict_proba([oof[fold.repeat][held_out] for oof in oof_by_single]))
    return predicted


def compare_models(name_a, name_b, folds, scores_a, scores_b, oof_a, oof_b, pool_labels, test_a, test_b, test_labels):
    """Model A against model B: over folds (corrected resampled t-test), on out-of-fold predictions and on test (McNemar).

    Args:
        name_a, name_b: the two models' names.
        folds: the folds of `make_folds`.
        scores_a, scores_b: per fold, the score dicts of `fold_scores`.
        oof_a, oof_b: the first repeat's out-of-fold probabilities of the pool rows.
        pool_labels: the labels of the pool rows.
        test_a, test_b: the test probabilities (each model's fold ensemble).
        test_labels: the test labels.

    Example:
        >>> compare_models("fusion", "average", folds, ...)["cv"]["p_value"]
    """
    differences = [a["accuracy"] - b["accuracy"] for a, b in zip(scores_a, scores_b)]
    n_test = float(np.mean([len(fold.val_rows) for fold in folds]))
    n_train = float(np.mean([len(fold.train_rows) for fold in folds]))
    return {
        "model_a": name_a,
        "model_b": name_b,
        "metric": "accuracy",
        "cv": corrected_resampled_ttest(differences, n_train=n_train, n_test=n_test),
        "oof_mcnemar": mcnemar_test(pool_labels, oof_a.argmax(1), oof_b.argmax(1)),
        "test_difference": float(np.mean(test_a.argmax(1) == test_labels) - np.mean(test_b.argmax(1) == test_labels)),
        "test_mcnemar": mcnemar_test(test_labels, test_a.argmax(1), test_b.argmax(1)),
    }


@dataclasses.dataclass(frozen=True)
class CrossValidation:
    """What a cross-validated run measured on its train+val rows, for the report.

    Attributes:
        folds: the folds of `make_folds`.
        pool_rows, pool_labels: the sorted rows the folds split and their labels.
        scores: model name -> per fold, the `fold_scores` of its held-out rows.
        out_of_fold: model name -> the first repeat's out-of-fold probabilities of the pool rows.
    """

    folds: list
    pool_rows: np.ndarray
    pool_labels: np.ndarray
    scores: dict
    out_of_fold: dict

    @property
    def num_folds(self):
        return max(fold.index for fold in self.folds) + 1

    @property
    def num_repeats(self):
        return max(fold.repeat for fold in self.folds) + 1

    def summary(self):
        """report.json's `cv`: model -> metric -> {"mean", "std", "folds"}."""
        return {name: summarize_folds(scores) for name, scores in self.scores.items()}

    def ranked(self, names):
        """`names` best first by mean out-of-fold accuracy, then by lower mean log loss."""
        means = {name: summarize_folds(self.scores[name]) for name in names}
        return sorted(names, key=lambda name: (-means[name]["accuracy"]["mean"], means[name]["log_loss"]["mean"]))

    def compare(self, name_a, name_b, test_probabilities, test_labels):
        """`compare_models` of two models of the run."""
        return compare_models(name_a, name_b, self.folds, self.scores[name_a], self.scores[name_b],
                              self.out_of_fold[name_a], self.out_of_fold[name_b], self.pool_labels,
                              test_probabilities[name_a], test_probabilities[name_b], test_labels)
