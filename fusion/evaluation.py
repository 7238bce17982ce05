"""Test-split metrics with scikit-learn, bootstrap intervals of accuracy, calibration (ECE), McNemar's paired test,
and the corrected resampled t-test over cross-validation folds."""

import math

import numpy as np
import scipy.stats
from sklearn import metrics as sk_metrics

# Test images resampled per bootstrap batch: bounds the batch's index array to about 32 MB at
# 100k test images, where all 2000 resamples at once would take 1.6 GB.
_BOOTSTRAP_DRAWS_PER_BATCH = 4_000_000
# Equal-width confidence bins of the expected calibration error, as in Guo et al. (2017).
CALIBRATION_BINS = 15


def bootstrap_accuracy_interval(correct, confidence=0.95, n_resamples=2000, seed=0):
    """Percentile bootstrap confidence interval of an accuracy, resampling the test images.

    Args:
        correct: (N,) booleans, whether each test image was classified right.
        confidence: the interval's confidence level, between 0 and 1 (default: 0.95).
        n_resamples: how many bootstrap resamples to draw (default: 2000).
        seed: seed of the resampling, so that a run repeats exactly (default: 0).

    Example:
        >>> bootstrap_accuracy_interval(predictions == test_labels)
        [0.944, 0.989]
    """
    correct = np.asarray(correct, dtype=bool).reshape(-1)
    if len(correct) == 0:
        raise ValueError(
            "correct must hold one entry per test image, and there is none. Evaluate on a non-empty "
            f"test split. Received: correct with shape {np.shape(correct)}"
        )
    if not 0 < confidence < 1:
        raise ValueError(
            f"confidence must be between 0 and 1, e.g. 0.95 for a 95% interval. Received: confidence={confidence}"
        )
    accuracy = float(correct.mean())
    if correct.all() or not correct.any():
        # Every resample has the same accuracy; the interval is that point, without resampling.
        return [accuracy, accuracy]
    result = scipy.stats.bootstrap(
        (correct,),
        np.mean,
        n_resamples=n_resamples,
        batch=max(1, min(n_resamples, _BOOTSTRAP_DRAWS_PER_BATCH // len(correct))),
        vectorized=True,
        confidence_level=confidence,
        method="percentile",
        random_state=np.random.default_rng(seed),  # not rng=, which SciPy only accepts from 1.15 on
    )
    return [float(result.confidence_interval.low), float(result.confidence_interval.high)]


def clipped_log_loss(labels, probabilities):
    """Log loss over all C columns, with probabilities clipped away from 0 and renormalized so it stays finite.

    float32 softmax outputs can hold exact zeros; scikit-learn would score such a miss as infinite.

    Example:
        >>> clipped_log_loss([0, 1], [[1.0, 0.0], [0.0, 1.0]])
        9.99...e-08
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    clipped = np.clip(probabilities, 1e-7, 1.0)
    return float(sk_metrics.log_loss(labels, clipped / clipped.sum(axis=1, keepdims=True),
                                     labels=np.arange(probabilities.shape[1])))


def reliability_bins(labels, probabilities, num_bins=CALIBRATION_BINS):
    """The test images grouped by confidence into equal-width bins: per bin its images, mean confidence and accuracy.

    Confidence is the top class probability; bin m holds the images with confidence in
    ((m - 1) / M, m / M] (the first bin also holds 0), as in Guo et al., "On Calibration of Modern
    Neural Networks" (ICML 2017). A bin without images has `None` as its confidence and accuracy.

    Args:
        labels: (N,) true class indices.
        probabilities: (N, C) predicted class probabilities.
        num_bins: M, the number of bins over [0, 1] (default: 15).

    Example:
        >>> bins = reliability_bins([0, 1], [[0.9, 0.1], [0.7, 0.3]], num_bins=5)
        >>> bins["counts"], bins["accuracy"][3], bins["accuracy"][4]
        ([0, 0, 0, 1, 1], 0.0, 1.0)
    """
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2 or len(probabilities) != len(labels) or len(labels) == 0:
        raise ValueError(
            "probabilities must have shape (N, C) with one row per label, and N at least 1. "
            f"Received: probabilities.shape={probabilities.shape}, {len(labels)} labels"
        )
    if int(num_bins) != num_bins or num_bins < 1:
        raise ValueError(f"num_bins must be a whole number of bins, 1 or more (Guo et al. use 15). Received: num_bins={num_bins}")
    num_bins = int(num_bins)
    # m / M, each correctly rounded, so that a confidence of exactly 0.6 falls in the bin ending at 0.6.
    edges = np.arange(num_bins + 1) / num_bins
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    index = np.searchsorted(edges[1:-1], confidence, side="left")
    counts = np.bincount(index, minlength=num_bins)
    confidence_sums = np.bincount(index, weights=confidence, minlength=num_bins)
    correct_sums = np.bincount(index, weights=correct, minlength=num_bins)
    return {
        "bin_edges": edges.tolist(),
        "counts": counts.tolist(),
        "confidence": [float(total / count) if count else None for total, count in zip(confidence_sums, counts)],
        "accuracy": [float(total / count) if count else None for total, count in zip(correct_sums, counts)],
    }


def expected_calibration_error(labels, probabilities, num_bins=CALIBRATION_BINS):
    """Expected calibration error: the gap between confidence and accuracy, averaged over confidence bins.

    ECE = sum over bins m of |B_m| / N * |accuracy(B_m) - confidence(B_m)|, with M equal-width bins
    of the top class probability (see `reliability_bins`): Guo et al., "On Calibration of Modern
    Neural Networks" (ICML 2017), eq. 3. 0 is perfectly calibrated; a model right on 80% of the
    images it gives 0.95 is overconfident by 0.15 there.

    Args:
        labels: (N,) true class indices.
        probabilities: (N, C) predicted class probabilities.
        num_bins: M, the number of bins over [0, 1] (default: 15).

    Example:
        >>> round(expected_calibration_error([0, 1, 0, 0], [[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.55, 0.45]]), 4)
        0.4125
    """
    return _ece_of_bins(reliability_bins(labels, probabilities, num_bins))


def _ece_of_bins(bins):
    total = sum(bins["counts"])
    return float(sum(count / total * abs(accuracy - confidence)
                     for count, accuracy, confidence in zip(bins["counts"], bins["accuracy"], bins["confidence"])
                     if count))


def evaluate_probabilities(labels, probabilities, class_names, seed=0):
    """Accuracy and top-5 accuracy with 95% intervals, log loss, macro F1, calibration, per-class scores, confusion matrix.

    Everything averaged over classes (macro F1) and `per_class` cover only the classes with at
    least one test image; the others are named in `classes_without_test_images`. Top-5 accuracy
    is reported only when more than 5 classes have test images. `confusion_matrix` is C x C over
    all class names, rows true and columns predicted. `ece` is the expected calibration error over
    15 confidence bins and `reliability` those bins (see `reliability_bins`).

    Args:
        labels: (N,) true class indices.
        probabilities: (N, C) predicted class probabilities.
        class_names: the C class names.
        seed: seed of the bootstrap resampling behind `accuracy_ci95` and `top5_accuracy_ci95`
            (default: 0).

    Example:
        >>> metrics = evaluate_probabilities(test_labels, model.predict(test_inputs), class_names)
        >>> metrics["accuracy"], metrics["accuracy_ci95"]
        (0.972, [0.944, 0.989])
    """
    labels = np.asarray(labels, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    num_classes = len(class_names)
    if probabilities.shape != (len(labels), num_classes):
        raise ValueError(
            f"probabilities must have shape (N, C) = ({len(labels)}, {num_classes}) for {len(labels)} labels "
            f"and {num_classes} class names. Received: probabilities.shape={probabilities.shape}"
        )
    if len(labels) == 0 or labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(
            f"labels must be one or more class indices from 0 to {num_classes - 1} for {num_classes} class "
            "names. Pass the class indices of the test images, in the order of class_names. "
            f"Received: labels with {len(labels)} entries"
            + (f", from {labels.min()} to {labels.max()}" if len(labels) else "")
        )
    classes = list(range(num_classes))
    present = np.unique(labels).tolist()
    predictions = probabilities.argmax(axis=1)
    # Scores only for classes with test images: a class without any has no recall, and counting
    # its F1 as 0 would pull the macro average down for a gap in the data, not in the model.
    precision, recall, f1, support = sk_metrics.precision_recall_fscore_support(
        labels, predictions, labels=present, zero_division=0
    )
    correct = predictions == labels
    result = {
        "accuracy": float(correct.mean()),
        "accuracy_ci95": bootstrap_accuracy_interval(correct, seed=seed),
        "log_loss": clipped_log_loss(labels, probabilities),
        "macro_f1": float(f1.mean()),
    }
    reliability = reliability_bins(labels, probabilities)
    result["ece"] = _ece_of_bins(reliability)
    # Top-5 only says more than accuracy when more than 5 classes compete for the test images.
    if len(present) > 5:
        # A hit when fewer than 5 classes rank above the true one. Ties rank the higher class index
        # first, as in scikit-learn's top_k_accuracy_score, which sorts all N x C scores to get there.
        true_scores = probabilities[np.arange(len(labels)), labels][:, None]
        tied_after = (probabilities == true_scores) & (np.arange(num_classes) > labels[:, None])
        top5_correct = (probabilities > true_scores).sum(axis=1) + tied_after.sum(axis=1) < 5
        result["top5_accuracy"] = float(top5_correct.mean())
        result["top5_accuracy_ci95"] = bootstrap_accuracy_interval(top5_correct, seed=seed)
    result["num_images"] = int(len(labels))
    result["per_class"] = {
        class_names[index]: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for index, p, r, f, s in zip(present, precision, recall, f1, support)
    }
    result["classes_without_test_images"] = [class_names[index] for index in sorted(set(classes) - set(present))]
    result["confusion_matrix"] = sk_metrics.confusion_matrix(labels, predictions, labels=classes).tolist()
    result["reliability"] = reliability
    return result


def mcnemar_test(labels, predictions_a, predictions_b):
    """McNemar's exact test: do two models err on the same test images at different rates?

    Counts the images that only model A gets right (`only_a_correct`) and only B gets right
    (`only_b_correct`); the two-sided p-value is the exact binomial test of those counts.

    Args:
        labels: (N,) true class indices.
        predictions_a: (N,) class indices predicted by model A.
        predictions_b: (N,) class indices predicted by model B.

    Example:
        >>> mcnemar_test(test_labels, fusion_probs.argmax(1), average_probs.argmax(1))["p_value"]
    """
    labels, predictions_a, predictions_b = (np.asarray(a).reshape(-1) for a in (labels, predictions_a, predictions_b))
    if not len(labels) == len(predictions_a) == len(predictions_b):
        raise ValueError(
            "labels and both predictions must have one entry per test image. "
            f"Received: lengths {len(labels)}, {len(predictions_a)}, {len(predictions_b)}"
        )
    correct_a, correct_b = predictions_a == labels, predictions_b == labels
    only_a = int(np.sum(correct_a & ~correct_b))
    only_b = int(np.sum(~correct_a & correct_b))
    discordant = only_a + only_b
    p_value = 1.0 if discordant == 0 else float(scipy.stats.binomtest(only_a, discordant, 0.5).pvalue)
    return {"only_a_correct": only_a, "only_b_correct": only_b, "p_value": p_value, "method": "exact binomial"}


def corrected_resampled_ttest(differences, n_train, n_test):
    """The corrected resampled t-test of Nadeau and Bengio (2003) for a score difference measured over folds.

    The plain paired t-test over k folds treats the folds as independent, but their training sets
    overlap, so it reports differences as surer than they are. Nadeau and Bengio ("Inference for
    the Generalization Error", Machine Learning 52, 2003, eq. 9) widen the variance of the mean
    difference from s²/J to (1/J + n_test/n_train) s², for J = folds x repeats; the statistic
    follows Student's t with J - 1 degrees of freedom (as in Bouckaert and Frank, 2004). `ci95` is the
    95% interval of the mean difference under the same corrected variance.

    Args:
        differences: the J per-fold differences of a score, model A minus model B.
        n_train: images each fold's models trained on (the mean, when folds differ).
        n_test: images each fold held out (the mean, when folds differ).

    Example:
        >>> corrected_resampled_ttest([0.02, 0.04, 0.00, 0.02, 0.02], n_train=400, n_test=100)["p_value"]
        0.1026...
    """
    differences = np.asarray(differences, dtype=np.float64).reshape(-1)
    if len(differences) < 2:
        raise ValueError(
            "The corrected resampled t-test needs the differences of at least 2 folds. Run cross-validation "
            f"with --folds 2 or more. Received: {len(differences)} difference(s)"
        )
    if n_train <= 0 or n_test <= 0:
        raise ValueError(f"n_train and n_test must be positive image counts. Received: n_train={n_train}, n_test={n_test}")
    folds = len(differences)
    mean = float(differences.mean())
    variance = float(differences.var(ddof=1)) * (1.0 / folds + n_test / n_train)
    degrees = folds - 1
    if variance == 0.0:
        # Every fold gave the same difference: no spread to test against.
        t_statistic = 0.0 if mean == 0 else math.copysign(math.inf, mean)
        p_value = 1.0 if mean == 0 else 0.0
        half_width = 0.0
    else:
        t_statistic = mean / math.sqrt(variance)
        p_value = float(2 * scipy.stats.t.sf(abs(t_statistic), degrees))
        half_width = float(scipy.stats.t.ppf(0.975, degrees) * math.sqrt(variance))
    return {
        "mean_difference": mean,
        "ci95": [mean - half_width, mean + half_width],
        "t_statistic": t_statistic,
        "degrees_of_freedom": degrees,
        "p_value": p_value,
        "folds": folds,
        "method": "corrected resampled t-test (Nadeau and Bengio, 2003)",
    }
