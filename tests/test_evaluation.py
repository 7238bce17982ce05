"""Test-split metrics against hand-computed values, bootstrap intervals, calibration error, and McNemar's exact test."""

import math
import warnings

import numpy as np
import pytest
from sklearn.metrics import top_k_accuracy_score

import scipy.stats

from fusion.evaluation import (
    bootstrap_accuracy_interval,
    corrected_resampled_ttest,
    evaluate_probabilities,
    expected_calibration_error,
    mcnemar_test,
    reliability_bins,
)


def test_metrics_match_hand_computed_values():
    labels = np.array([0, 0, 1, 1])
    probabilities = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.3, 0.7]])
    result = evaluate_probabilities(labels, probabilities, ["cat", "dog"])
    assert result["accuracy"] == 0.75
    # 4 images: resampled accuracies are multiples of 1/4; the 2.5th and 97.5th percentiles are 1/4 and 1.
    assert result["accuracy_ci95"] == [0.25, 1.0]
    assert result["log_loss"] == pytest.approx(-np.mean(np.log([0.9, 0.4, 0.8, 0.7])), rel=1e-5)
    # cat: precision 1, recall 0.5, F1 2/3; dog: precision 2/3, recall 1, F1 0.8.
    assert result["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    assert result["per_class"]["cat"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}
    assert result["per_class"]["dog"] == {"precision": pytest.approx(2 / 3), "recall": 1.0, "f1": pytest.approx(0.8), "support": 2}
    assert result["classes_without_test_images"] == []
    assert result["confusion_matrix"] == [[1, 1], [0, 2]]
    assert "top5_accuracy" not in result and "top5_accuracy_ci95" not in result


def test_classes_without_test_images_are_left_out_of_macro_f1_and_per_class():
    labels = np.array([0, 0, 1, 1])
    # Image 2 is predicted as eel, a class with no test image.
    probabilities = np.array([[0.8, 0.1, 0.1], [0.1, 0.2, 0.7], [0.1, 0.8, 0.1], [0.2, 0.7, 0.1]])
    result = evaluate_probabilities(labels, probabilities, ["cat", "dog", "eel"])
    # cat: precision 1, recall 1/2, F1 2/3; dog: precision 1, recall 1, F1 1. With eel's F1 of 0
    # the average would be 5/9 = 0.556; without it, 5/6 = 0.833.
    assert result["macro_f1"] == pytest.approx((2 / 3 + 1) / 2)
    assert list(result["per_class"]) == ["cat", "dog"]
    assert result["per_class"]["cat"]["recall"] == 0.5 and result["per_class"]["dog"]["precision"] == 1.0
    assert result["classes_without_test_images"] == ["eel"]
    assert result["accuracy"] == 0.75
    # The confusion matrix keeps every class name: rows true, columns predicted.
    assert result["confusion_matrix"] == [[1, 0, 1], [0, 2, 0], [0, 0, 0]]


def test_top5_only_with_more_than_five_classes_that_have_test_images():
    class_names = [f"c{i:02d}" for i in range(60)]
    # The same scores for every image, falling with the class index: class k ranks k+1th.
    scores = np.linspace(1.0, 0.1, 60)
    probabilities = np.tile(scores / scores.sum(), (6, 1))
    five_present = evaluate_probabilities(np.arange(5), probabilities[:5], class_names)
    assert "top5_accuracy" not in five_present and "top5_accuracy_ci95" not in five_present
    assert five_present["classes_without_test_images"] == class_names[5:]
    six_present = evaluate_probabilities(np.arange(6), probabilities, class_names)
    assert six_present["top5_accuracy"] == pytest.approx(5 / 6) and six_present["accuracy"] == pytest.approx(1 / 6)
    low, high = six_present["top5_accuracy_ci95"]
    assert low <= 5 / 6 <= high < 1.0 + 1e-12 and low < 5 / 6
    with pytest.raises(ValueError, match=r"probabilities must have shape \(N, C\) = \(6, 3\).*Received: probabilities.shape=\(6, 60\)"):
        evaluate_probabilities(np.arange(6), probabilities, ["a", "b", "c"])


def test_top5_matches_scikit_learn_with_and_without_ties():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 10, size=300)
    probabilities = rng.dirichlet(np.ones(10), size=300)
    class_names = [f"c{i}" for i in range(10)]
    expected = top_k_accuracy_score(labels, probabilities, k=5, labels=range(10))
    assert 0.4 < expected < 0.6
    assert evaluate_probabilities(labels, probabilities, class_names)["top5_accuracy"] == pytest.approx(expected)
    # Rounded to one decimal most scores tie; scikit-learn ranks the higher class index first.
    rounded = np.round(probabilities, 1)
    expected = top_k_accuracy_score(labels, rounded, k=5, labels=range(10))
    assert evaluate_probabilities(labels, rounded, class_names)["top5_accuracy"] == pytest.approx(expected)


def test_labels_outside_the_class_names_are_refused():
    with pytest.raises(ValueError, match=r"class indices from 0 to 1 for 2 class names.*Received: labels with 2 entries, from 0 to 2"):
        evaluate_probabilities([0, 2], np.full((2, 2), 0.5), ["cat", "dog"])
    with pytest.raises(ValueError, match="Received: labels with 0 entries$"):
        evaluate_probabilities([], np.zeros((0, 2)), ["cat", "dog"])


def test_bootstrap_interval_of_half_right_matches_the_normal_approximation():
    correct = np.array([True, False] * 50)
    # Normal approximation: 0.5 +- 1.96 * sqrt(0.5 * 0.5 / 100) = 0.5 +- 0.098.
    low, high = bootstrap_accuracy_interval(correct)
    assert low == pytest.approx(0.402, abs=0.02) and high == pytest.approx(0.598, abs=0.02)
    assert bootstrap_accuracy_interval(correct, seed=0) == [low, high]
    narrower = bootstrap_accuracy_interval(correct, confidence=0.5)
    assert low < narrower[0] < 0.5 < narrower[1] < high
    # 45,000 right of 50,000 resamples in batches: 0.9 +- 1.96 * sqrt(0.9 * 0.1 / 50000) = 0.9 +- 0.0026.
    many = np.random.default_rng(0).permutation(np.arange(50_000) < 45_000)
    low, high = bootstrap_accuracy_interval(many)
    assert low == pytest.approx(0.8974, abs=0.001) and high == pytest.approx(0.9026, abs=0.001)


def test_evaluate_passes_its_seed_to_the_bootstrap():
    labels = np.arange(1000) % 2
    predictions = np.where(np.arange(1000) < 700, labels, 1 - labels)
    probabilities = np.eye(2)[predictions]
    correct = predictions == labels
    seeded = evaluate_probabilities(labels, probabilities, ["cat", "dog"], seed=7)
    assert seeded["accuracy_ci95"] == bootstrap_accuracy_interval(correct, seed=7)
    assert seeded["accuracy_ci95"] != evaluate_probabilities(labels, probabilities, ["cat", "dog"])["accuracy_ci95"]
    # Normal approximation: 0.7 +- 1.96 * sqrt(0.7 * 0.3 / 1000) = 0.7 +- 0.028.
    assert seeded["accuracy_ci95"] == [pytest.approx(0.672, abs=0.005), pytest.approx(0.728, abs=0.005)]


def test_bootstrap_interval_when_all_right_or_all_wrong_is_the_accuracy_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert bootstrap_accuracy_interval(np.ones(40, dtype=bool)) == [1.0, 1.0]
        assert bootstrap_accuracy_interval(np.zeros(40, dtype=bool)) == [0.0, 0.0]
        assert evaluate_probabilities([0, 1], np.eye(2), ["cat", "dog"])["accuracy_ci95"] == [1.0, 1.0]
    with pytest.raises(ValueError, match=r"one entry per test image.*Received: correct with shape \(0,\)"):
        bootstrap_accuracy_interval([])
    with pytest.raises(ValueError, match="between 0 and 1.*Received: confidence=95"):
        bootstrap_accuracy_interval([True, False], confidence=95)


def test_mcnemar_counts_and_exact_p_value():
    labels = np.zeros(20, dtype=int)
    model_a = np.zeros(20, dtype=int)
    model_b = np.array([1] * 10 + [0] * 10)
    result = mcnemar_test(labels, model_a, model_b)
    assert (result["only_a_correct"], result["only_b_correct"]) == (10, 0)
    assert result["p_value"] == pytest.approx(2 * 0.5**10)
    balanced = mcnemar_test(labels, np.array([1] * 5 + [0] * 15), np.array([0] * 5 + [1] * 5 + [0] * 10))
    assert balanced["p_value"] == pytest.approx(1.0)
    assert mcnemar_test(labels, model_a, model_a)["p_value"] == 1.0
    assert math.isclose(mcnemar_test(labels, model_b, model_a)["p_value"], result["p_value"])
    with pytest.raises(ValueError, match="one entry per test image. Received: lengths 20, 20, 3"):
        mcnemar_test(labels, model_a, model_b[:3])


def test_corrected_resampled_ttest_on_a_worked_example():
    # Five folds of 100 held-out and 400 training images; accuracy differences 2, 4, 0, 2, 2 points.
    # By hand: mean 0.02, sample variance 0.0002, corrected variance (1/5 + 100/400) * 0.0002 = 9e-5,
    # t = 0.02 / sqrt(9e-5) = 2.108 with 4 degrees of freedom, two-sided p = 0.1027.
    differences = [0.02, 0.04, 0.00, 0.02, 0.02]
    result = corrected_resampled_ttest(differences, n_train=400, n_test=100)
    assert result["t_statistic"] == pytest.approx(2.1082, abs=1e-4)
    assert result["degrees_of_freedom"] == 4 and result["folds"] == 5
    assert result["p_value"] == pytest.approx(0.1027, abs=1e-4)
    # The 95% interval: 0.02 -+ t(0.975, 4) * sqrt(9e-5) = 0.02 -+ 2.776 * 0.009487.
    assert result["ci95"] == pytest.approx([0.02 - 0.026340, 0.02 + 0.026340], abs=1e-5)
    # The plain paired t-test over folds calls the same differences significant (p = 0.034): the
    # correction is what keeps overlapping training sets from overstating certainty.
    plain = scipy.stats.ttest_1samp(differences, 0.0)
    assert plain.pvalue == pytest.approx(0.0341, abs=1e-4) and plain.pvalue < 0.05 < result["p_value"]


def test_corrected_resampled_ttest_edge_cases_and_errors():
    same = corrected_resampled_ttest([0.03, 0.03, 0.03], n_train=200, n_test=100)
    assert same["p_value"] == 0.0 and same["ci95"] == [0.03, 0.03]
    assert corrected_resampled_ttest([0.0, 0.0], n_train=10, n_test=10)["p_value"] == 1.0
    with pytest.raises(ValueError, match="at least 2 folds.*Received: 1 difference"):
        corrected_resampled_ttest([0.1], n_train=10, n_test=10)
    with pytest.raises(ValueError, match="n_train and n_test must be positive.*Received: n_train=0"):
        corrected_resampled_ttest([0.1, 0.2], n_train=0, n_test=10)


def test_expected_calibration_error_matches_a_worked_example():
    # Four images, 15 bins of width 1/15. Confidences 0.9 and 0.9 fall in bin 14, (13/15, 14/15] = (0.867, 0.933]:
    # one right, one wrong, so accuracy 0.5 against confidence 0.9, a gap of 0.4 over 2 of 4 images: 0.2.
    # Confidences 0.6 (exactly 9/15, the top of bin 9, (8/15, 9/15]) and 0.55 fall in bin 9: both right, so
    # accuracy 1 against confidence 0.575, a gap of 0.425 over 2 of 4 images: 0.2125. ECE = 0.2 + 0.2125.
    labels = [0, 1, 0, 0]
    probabilities = [[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.55, 0.45]]
    assert expected_calibration_error(labels, probabilities) == pytest.approx(0.4125)
    bins = reliability_bins(labels, probabilities)
    assert bins["counts"] == [0] * 8 + [2] + [0] * 4 + [2, 0]
    assert bins["accuracy"][8] == 1.0 and bins["confidence"][8] == pytest.approx(0.575)
    assert bins["accuracy"][13] == 0.5 and bins["confidence"][13] == pytest.approx(0.9)
    assert bins["accuracy"][0] is None and bins["bin_edges"][9] == 0.6 and len(bins["bin_edges"]) == 16
    # A model exactly as often right as it is confident: 0. Always sure and always right: 0.
    assert expected_calibration_error([0, 0, 0, 1], [[0.75, 0.25]] * 4) == pytest.approx(0.0)
    assert expected_calibration_error([0, 1], [[1.0, 0.0], [0.0, 1.0]]) == 0.0
    # Always sure and always wrong: 1. Fewer bins, the same definition.
    assert expected_calibration_error([1, 0], [[1.0, 0.0], [0.0, 1.0]], num_bins=5) == 1.0
    result = evaluate_probabilities(labels, probabilities, ["cat", "dog"])
    assert result["ece"] == pytest.approx(0.4125) and result["reliability"] == bins


def test_calibration_refuses_what_it_cannot_bin():
    with pytest.raises(ValueError, match=r"probabilities must have shape \(N, C\) with one row per label.*"
                                         r"Received: probabilities.shape=\(2, 2\), 3 labels"):
        expected_calibration_error([0, 1, 1], [[0.9, 0.1], [0.2, 0.8]])
    with pytest.raises(ValueError, match=r"num_bins must be a whole number of bins, 1 or more.*Received: num_bins=0"):
        reliability_bins([0], [[0.9, 0.1]], num_bins=0)
