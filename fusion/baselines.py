"""Baselines that combine per-backbone probabilities: plain average, fitted weights, stacking.

`WeightedAverage` and `LogisticStacking` are scikit-learn estimators (`get_params`, `clone`,
`predict`, `NotFittedError`) whose X is the models' probabilities: a list of (N, C) arrays, one
per model, or one (N, M, C) array. `to_layer()` turns a fitted one into the Keras layer of
`fusion.combiners`, which the run's `models/weighted_average.keras` and `models/stacking.keras` hold.
"""

import numpy as np
import scipy.optimize
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.utils.validation import check_is_fitted

_EPSILON = 1e-7

_NOT_FITTED = ("This %(name)s is not fitted yet. Call fit(probabilities, labels) on the validation probabilities "
               "before predict_proba.")


def _check_probabilities(probabilities, name="probabilities"):
    if isinstance(probabilities, np.ndarray) and probabilities.ndim != 1:
        # One array: (N, M, C), the models along axis 1 (a list of arrays has them first).
        if probabilities.ndim != 3:
            raise ValueError(
                f"{name} must be a non-empty list of (N, C) arrays of one shape, one per model, or an (N, M, C) "
                f"array. Received: an array of shape {probabilities.shape}"
            )
        probabilities = [probabilities[:, index] for index in range(probabilities.shape[1])]
    arrays = [np.asarray(p, dtype=np.float64) for p in probabilities]
    if not arrays or any(a.ndim != 2 or a.shape != arrays[0].shape for a in arrays):
        raise ValueError(
            f"{name} must be a non-empty list of (N, C) arrays of one shape, one per model. "
            f"Received: shapes={[a.shape for a in arrays]}"
        )
    return arrays


def _check_labels(labels, arrays):
    labels = np.asarray(labels)
    num_rows, num_classes = arrays[0].shape
    numeric = labels.dtype.kind in "iuf" and labels.size > 0
    if (labels.shape != (num_rows,) or not numeric or np.any(labels != np.round(labels))
            or labels.min() < 0 or labels.max() >= num_classes):
        values = f", values {labels.min()}..{labels.max()}" if numeric else ""
        raise ValueError(
            f"y must hold {num_rows} class indices in 0..{num_classes - 1}, one per row of the probabilities "
            f"(their columns are the classes). Received: y of shape {labels.shape}, dtype {labels.dtype}{values}"
        )
    return labels.astype(np.int64)


def average_probabilities(probabilities, weights=None):
    """Average the class probabilities of several models (the averaging baseline).

    Args:
        probabilities: list of (N, C) arrays, one per model, or an (N, M, C) array.
        weights: one non-negative weight per model (default: None, equal weights).

    Example:
        >>> average_probabilities([probs_resnet, probs_vgg])
    """
    arrays = _check_probabilities(probabilities)
    weights = np.full(len(arrays), 1.0 / len(arrays)) if weights is None else np.asarray(weights, dtype=np.float64)
    return np.tensordot(weights / weights.sum(), np.stack(arrays), axes=1)


class _ProbabilityCombiner(ClassifierMixin, BaseEstimator):
    """What both fitted combiners share: the checks of X against the fit, `predict` as the most probable class."""

    def _fitted_probabilities(self, probabilities):
        check_is_fitted(self, msg=_NOT_FITTED)
        arrays = _check_probabilities(probabilities)
        if len(arrays) != self.n_models_ or arrays[0].shape[1] != self.n_classes_:
            raise ValueError(
                f"This {type(self).__name__} was fitted on {self.n_models_} models of {self.n_classes_} classes; "
                f"pass their probabilities in the same order. Received: {len(arrays)} models of "
                f"{arrays[0].shape[1]} classes"
            )
        return arrays

    def _learn_shape(self, arrays):
        self.n_models_ = len(arrays)
        self.n_classes_ = arrays[0].shape[1]
        # The probabilities' columns are the classes, also one absent from the fit labels.
        self.classes_ = np.arange(self.n_classes_)

    def predict(self, X):
        """The most probable class of each row of the models' probabilities X: `classes_[argmax(predict_proba(X))]`."""
        probabilities = self.predict_proba(X)  # first: it says when the estimator is not fitted
        return self.classes_[np.argmax(probabilities, axis=1)]


class WeightedAverage(_ProbabilityCombiner):
    """Weighted average of model probabilities, weights fitted to minimise log loss on held-out data.

    A scikit-learn classifier whose X is the models' probabilities. Fitted attributes:
    `weights_` (one per model, non-negative, sum 1), `classes_` (0..C-1), `n_classes_`, `n_models_`.

    Args:
        None; the weights are learned by `fit`.

    Example:
        >>> combiner = WeightedAverage().fit([val_a, val_b], val_labels)
        >>> test_probabilities = combiner.predict_proba([test_a, test_b])
    """

    def fit(self, X, y):
        """Fit the weights on held-out probabilities X (list of (N, C) arrays, or (N, M, C)) and their labels y."""
        arrays = _check_probabilities(X)
        labels = _check_labels(y, arrays)
        picked = np.stack([a[np.arange(len(labels)), labels] for a in arrays], axis=1)

        def loss(logits):
            # Softmax keeps the weights on the simplex without constraints.
            weights = np.exp(logits - logits.max())
            weights /= weights.sum()
            return -np.mean(np.log(np.clip(picked @ weights, _EPSILON, None)))

        result = scipy.optimize.minimize(loss, np.zeros(len(arrays)), method="Nelder-Mead" if len(arrays) < 3 else "Powell")
        weights = np.exp(result.x - result.x.max())
        self._learn_shape(arrays)
        self.weights_ = weights / weights.sum()
        return self

    def predict_proba(self, X):
        """The weighted average of the models' probabilities X, (N, C)."""
        return average_probabilities(self._fitted_probabilities(X), self.weights_)

    def to_layer(self, name="weighted_average"):
        """The fitted weights as a `fusion.combiners.WeightedAverageCombiner` Keras layer.

        Example:
            >>> layer = WeightedAverage().fit([val_a, val_b], val_labels).to_layer()
        """
        check_is_fitted(self, msg=_NOT_FITTED)
        from fusion.combiners import WeightedAverageCombiner

        return WeightedAverageCombiner(model_weights=self.weights_.tolist(), name=name)


class LogisticStacking(_ProbabilityCombiner):
    """Stacking by a logistic regression on the models' log probabilities, fitted on held-out data.

    Unlike scikit-learn's `StackingClassifier`, it takes the models' probabilities, not the
    models. Fitted attributes: `model_` (the `LogisticRegression`), its `coef_` and `intercept_`
    (rows in the order of `model_.classes_`, the classes present in the fit labels; one row for
    two), `classes_` (0..C-1: a class absent from the labels gets probability 0), `n_classes_`,
    `n_models_`.

    Args:
        C: inverse L2 strength of the logistic regression (default: 1.0).
        max_iter: most iterations of its solver (default: 1000).
        random_state: random state of its solver (default: 0).

    Example:
        >>> stacker = LogisticStacking().fit([val_a, val_b], val_labels)
        >>> test_probabilities = stacker.predict_proba([test_a, test_b])
    """

    def __init__(self, C=1.0, max_iter=1000, random_state=0):
        self.C = C
        self.max_iter = max_iter
        self.random_state = random_state

    @staticmethod
    def _features(arrays):
        # Log probabilities: a linear model on them multiplies probabilities, as a product of experts.
        return np.concatenate([np.log(np.clip(a, _EPSILON, 1.0)) for a in arrays], axis=1)

    def fit(self, X, y):
        """Fit the regression on held-out probabilities X (list of (N, C) arrays, or (N, M, C)) and their labels y."""
        arrays = _check_probabilities(X)
        labels = _check_labels(y, arrays)
        self.model_ = LogisticRegression(C=self.C, max_iter=self.max_iter, random_state=self.random_state)
        self.model_.fit(self._features(arrays), labels)
        self._learn_shape(arrays)
        self.coef_ = self.model_.coef_
        self.intercept_ = self.model_.intercept_
        return self

    def predict_proba(self, X):
        """The stacked probabilities of the models' probabilities X, (N, C); classes absent from the fit get 0."""
        arrays = self._fitted_probabilities(X)
        output = np.zeros((arrays[0].shape[0], self.n_classes_))
        output[:, self.model_.classes_] = self.model_.predict_proba(self._features(arrays))
        return output

    def to_layer(self, name="stacking"):
        """The fitted regression as a `fusion.combiners.LogisticStackingCombiner` Keras layer.

        Example:
            >>> layer = LogisticStacking().fit([val_a, val_b], val_labels).to_layer()
        """
        check_is_fitted(self, msg=_NOT_FITTED)
        from fusion.combiners import LogisticStackingCombiner

        return LogisticStackingCombiner(coef=self.coef_.tolist(), intercept=self.intercept_.tolist(),
                                        classes=self.model_.classes_.tolist(), num_classes=self.n_classes_,
                                        name=name)
