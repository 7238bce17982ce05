"""Averaging, weighted-average and stacking baselines on probabilities with a known answer."""

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.utils.estimator_checks import (
    check_get_params_invariance, check_no_attributes_set_in_init, check_parameters_default_constructible,
)

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
    # The fitted regression, as to_dict() gave it when stacking.json was written.
    assert stacker.model_.classes_.tolist() == [0, 1, 2] and stacker.coef_.shape == (3, 6)
    assert stacker.intercept_.shape == (3,)


def test_predict_before_fit_raises():
    with pytest.raises(ValueError, match=r"This WeightedAverage is not fitted yet. Call fit"):
        WeightedAverage().predict_proba([GOOD])
    with pytest.raises(ValueError, match=r"This LogisticStacking is not fitted yet"):
        LogisticStacking().predict_proba([GOOD])


def _dirichlet(rows, classes, seed):
    return np.random.default_rng(seed).dirichlet(np.ones(classes), rows)


# Two models' probabilities of 60 rows of 3 classes, and the numbers the baselines gave on them
# before they became scikit-learn estimators (regularization=1.0, seed=0 then; C, random_state now).
PROBABILITIES_A, PROBABILITIES_B = _dirichlet(60, 3, 1), _dirichlet(60, 3, 2)
FIT_LABELS = np.random.default_rng(5).integers(0, 3, 60)
WEIGHTS_BEFORE = [0.5385841633769932, 0.4614158366230068]
STACKED_BEFORE = [[0.23060956440084138, 0.35448802618005393, 0.4149024094191046],
                  [0.2036286744872364, 0.3104339969913011, 0.4859373285214625],
                  [0.32437811702773706, 0.29951518344725825, 0.37610669952500475]]


def test_the_defaults_give_the_same_numbers_as_before():
    weighted = WeightedAverage().fit([PROBABILITIES_A, PROBABILITIES_B], FIT_LABELS)
    np.testing.assert_allclose(weighted.weights_, WEIGHTS_BEFORE, rtol=1e-9)
    stacker = LogisticStacking().fit([PROBABILITIES_A, PROBABILITIES_B], FIT_LABELS)
    np.testing.assert_allclose(stacker.predict_proba([PROBABILITIES_A[:3], PROBABILITIES_B[:3]]), STACKED_BEFORE,
                               rtol=1e-7)


@pytest.mark.parametrize("estimator", [WeightedAverage(), LogisticStacking()], ids=["weighted", "stacking"])
def test_a_stacked_array_of_n_models_c_is_the_same_as_the_list(estimator):
    as_list = clone(estimator).fit([PROBABILITIES_A, PROBABILITIES_B], FIT_LABELS)
    stacked = np.stack([PROBABILITIES_A, PROBABILITIES_B], axis=1)  # (N, M, C)
    as_array = clone(estimator).fit(stacked, FIT_LABELS)
    np.testing.assert_allclose(as_array.predict_proba(stacked),
                               as_list.predict_proba([PROBABILITIES_A, PROBABILITIES_B]))
    with pytest.raises(ValueError, match=r"or an \(N, M, C\) array. Received: an array of shape \(60, 3\)"):
        clone(estimator).fit(PROBABILITIES_A, FIT_LABELS)


def test_scikit_learn_parameter_names_and_clone():
    assert WeightedAverage().get_params() == {}
    stacker = LogisticStacking(C=0.5, max_iter=200, random_state=3)
    assert stacker.get_params() == {"C": 0.5, "max_iter": 200, "random_state": 3}
    assert LogisticStacking().get_params() == {"C": 1.0, "max_iter": 1000, "random_state": 0}
    fitted = stacker.fit([PROBABILITIES_A, PROBABILITIES_B], FIT_LABELS)
    copy = clone(fitted)
    # clone keeps the parameters and drops what fit learned.
    assert copy.get_params() == stacker.get_params() and not hasattr(copy, "model_")
    assert copy.set_params(C=2.0) is copy and copy.C == 2.0
    assert fitted.model_.C == 0.5 and fitted.model_.max_iter == 200 and fitted.model_.random_state == 3
    with pytest.raises(ValueError, match="Invalid parameter 'seed' for estimator LogisticStacking"):
        LogisticStacking().set_params(seed=1)


@pytest.mark.parametrize("estimator", [WeightedAverage(), LogisticStacking()], ids=["weighted", "stacking"])
def test_scikit_learn_estimator_checks_that_apply(estimator):
    # X is a list of the models' probabilities, not a (samples, features) matrix, so the checks
    # that feed one (check_estimator's input validation) do not apply; these check the API contract.
    name = type(estimator).__name__
    check_parameters_default_constructible(name, estimator)
    check_no_attributes_set_in_init(name, estimator)
    check_get_params_invariance(name, estimator)


@pytest.mark.parametrize("estimator", [WeightedAverage(), LogisticStacking()], ids=["weighted", "stacking"])
def test_fitted_attributes_predict_and_score(estimator):
    probabilities = [PROBABILITIES_A, PROBABILITIES_B]
    fitted = clone(estimator).fit(probabilities, FIT_LABELS)
    assert fitted.classes_.tolist() == [0, 1, 2] and fitted.n_classes_ == 3 and fitted.n_models_ == 2
    predicted = fitted.predict(probabilities)
    np.testing.assert_array_equal(predicted, fitted.predict_proba(probabilities).argmax(axis=1))
    assert fitted.score(probabilities, FIT_LABELS) == pytest.approx(np.mean(predicted == FIT_LABELS))
    with pytest.raises(ValueError, match=r"was fitted on 2 models of 3 classes; pass their probabilities in the same "
                                         r"order. Received: 1 models of 3 classes"):
        fitted.predict_proba([PROBABILITIES_A])
    with pytest.raises(ValueError, match=r"y must hold 60 class indices in 0..2, one per row .* Received: y of shape "
                                         r"\(60,\), dtype int64, values 0..3"):
        clone(estimator).fit(probabilities, np.where(FIT_LABELS == 2, 3, FIT_LABELS))


def test_a_class_absent_from_the_labels_keeps_its_column_at_zero():
    labels = np.where(FIT_LABELS == 1, 0, FIT_LABELS)  # class 1 never seen
    stacker = LogisticStacking().fit([PROBABILITIES_A, PROBABILITIES_B], labels)
    assert stacker.classes_.tolist() == [0, 1, 2] and stacker.model_.classes_.tolist() == [0, 2]
    assert stacker.coef_.shape == (1, 6)  # two fitted classes: scikit-learn keeps one row
    probabilities = stacker.predict_proba([PROBABILITIES_A, PROBABILITIES_B])
    assert probabilities.shape == (60, 3) and np.all(probabilities[:, 1] == 0)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)
    assert set(stacker.predict([PROBABILITIES_A, PROBABILITIES_B])) <= {0, 2}


@pytest.mark.parametrize("estimator", [WeightedAverage(), LogisticStacking()], ids=["weighted", "stacking"])
def test_predict_before_fit_is_scikit_learns_not_fitted_error(estimator):
    for method in (estimator.predict_proba, estimator.predict, estimator.to_layer):
        with pytest.raises(NotFittedError, match=rf"This {type(estimator).__name__} is not fitted yet. Call fit"):
            method([GOOD])
