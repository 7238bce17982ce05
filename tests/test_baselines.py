"""Averaging, weighted-average and stacking baselines on probabilities with a known answer."""

import numpy as np
import pytest

from fusion.baselines import LogisticStacking, WeightedAverage, average_probabilities


def _one_hot(labels, num_classes=3, confidence=0.9):
    probabilities = np.full((len(labels), num_classes), (1 - confidence) / (num_classes - 1))
    probabilities[np.arange(len(labels)), labels] = confidence
    return probabilities


LABELS = np.random.default_rng(0).integers(0, 3, 300)
GOOD = _one_hot(LABELS)
RANDOM = _one_hot(np.random.default_rng(1).integers(0, 3, 300))


def test_average_is_the_plain_mean():
    np.testing.assert_allclose(average_probabilities([GOOD, RANDOM]), (GOOD + RANDOM) / 2)
    np.testing.assert_allclose(average_probabilities([GOOD, RANDOM], weights=[3, 1]), 0.75 * GOOD + 0.25 * RANDOM)
    with pytest.raises(ValueError, match=r"one per model. Received: shapes=\[\(300, 3\), \(2, 3\)\]"):
        average_probabilities([GOOD, GOOD[:2]])


def test_weighted_average_puts_its_weight_on_the_informative_model():
    combiner = WeightedAverage().fit([RANDOM, GOOD], LABELS)
    assert combiner.weights_.sum() == pytest.approx(1.0)
    assert combiner.weights_[1] > 0.8
    assert np.mean(combiner.predict_proba([RANDOM, GOOD]).argmax(1) == LABELS) == 1.0


def test_stacking_learns_to_read_a_model_that_is_always_wrong_in_a_fixed_way():
    shifted = _one_hot((LABELS + 1) % 3)  # names the next class every time
    assert np.mean(average_probabilities([shifted, RANDOM]).argmax(1) == LABELS) < 0.5
    stacker = LogisticStacking().fit([shifted, RANDOM], LABELS)
    assert np.mean(stacker.predict_proba([shifted, RANDOM]).argmax(1) == LABELS) == 1.0
    saved = stacker.to_dict()
    assert saved["classes"] == [0, 1, 2] and np.shape(saved["coef"]) == (3, 6)


def test_predict_before_fit_raises():
    with pytest.raises(ValueError, match=r"This WeightedAverage is not fitted yet. Call fit"):
        WeightedAverage().predict_proba([GOOD])
    with pytest.raises(ValueError, match=r"This LogisticStacking is not fitted yet"):
        LogisticStacking().predict_proba([GOOD])
