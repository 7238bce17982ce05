"""Test-split metrics against hand-computed values, and McNemar's exact test."""

import math

import numpy as np
import pytest

from fusion.evaluation import evaluate_probabilities, mcnemar_test


def test_metrics_match_hand_computed_values():
    labels = np.array([0, 0, 1, 1])
    probabilities = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.3, 0.7]])
    result = evaluate_probabilities(labels, probabilities, ["cat", "dog"])
    assert result["accuracy"] == 0.75
    assert result["log_loss"] == pytest.approx(-np.mean(np.log([0.9, 0.4, 0.8, 0.7])), rel=1e-5)
    # cat: precision 1, recall 0.5, F1 2/3; dog: precision 2/3, recall 1, F1 0.8.
    assert result["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    assert result["per_class"]["cat"] == {"precision": 1.0, "recall": 0.5, "support": 2}
    assert result["confusion_matrix"] == [[1, 1], [0, 2]]
    assert "top5_accuracy" not in result


def test_top5_only_with_more_than_five_classes():
    labels = np.arange(6)
    probabilities = np.tile(np.array([[0.3, 0.25, 0.2, 0.15, 0.06, 0.04]]), (6, 1))
    result = evaluate_probabilities(labels, probabilities, [f"c{i}" for i in range(6)])
    assert result["top5_accuracy"] == pytest.approx(5 / 6) and result["accuracy"] == pytest.approx(1 / 6)
    with pytest.raises(ValueError, match=r"probabilities must have shape \(N, C\) = \(6, 3\).*Received: probabilities.shape=\(6, 6\)"):
        evaluate_probabilities(labels, probabilities, ["a", "b", "c"])


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
