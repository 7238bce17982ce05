"""Baselines that combine per-backbone probabilities: plain average, fitted weights, stacking."""

import numpy as np
import scipy.optimize
from sklearn.linear_model import LogisticRegression

_EPSILON = 1e-7


def _check_probabilities(probabilities, name="probabilities"):
    arrays = [np.asarray(p, dtype=np.float64) for p in probabilities]
    if not arrays or any(a.ndim != 2 or a.shape != arrays[0].shape for a in arrays):
        raise ValueError(
            f"{name} must be a non-empty list of (N, C) arrays of one shape, one per model. "
            f"Received: shapes={[a.shape for a in arrays]}"
        )
    return arrays


def average_probabilities(probabilities, weights=None):
    """Average the class probabilities of several models (the averaging baseline).

    Args:
        probabilities: list of (N, C) arrays, one per model.
        weights: one non-negative weight per model (default: None, equal weights).

    Example:
        >>> average_probabilities([probs_resnet, probs_vgg])
    """
    arrays = _check_probabilities(probabilities)
    weights = np.full(len(arrays), 1.0 / len(arrays)) if weights is None else np.asarray(weights, dtype=np.float64)
    return np.tensordot(weights / weights.sum(), np.stack(arrays), axes=1)


def _not_fitted(estimator):
    return ValueError(
        f"This {type(estimator).__name__} is not fitted yet. Call fit(probabilities, labels) on the "
        f"validation probabilities before predict_proba."
    )


class WeightedAverage:
    """Weighted average of model probabilities, weights fitted to minimise log loss on held-out data.

    Args:
        None; the weights are learned by `fit` and end up in `weights_` (non-negative, sum 1).

    Example:
        >>> combiner = WeightedAverage().fit([val_a, val_b], val_labels)
        >>> test_probabilities = combiner.predict_proba([test_a, test_b])
    """

    def fit(self, probabilities, labels):
        arrays = _check_probabilities(probabilities)
        labels = np.asarray(labels, dtype=np.int64)
        picked = np.stack([a[np.arange(len(labels)), labels] for a in arrays], axis=1)

        def loss(logits):
            # Softmax keeps the weights on the simplex without constraints.
            weights = np.exp(logits - logits.max())
            weights /= weights.sum()
            return -np.mean(np.log(np.clip(picked @ weights, _EPSILON, None)))

        result = scipy.optimize.minimize(loss, np.zeros(len(arrays)), method="Nelder-Mead" if len(arrays) < 3 else "Powell")
        weights = np.exp(result.x - result.x.max())
        self.weights_ = weights / weights.sum()
        return self

    def predict_proba(self, probabilities):
        if not hasattr(self, "weights_"):
            raise _not_fitted(self)
        return average_probabilities(probabilities, self.weights_)


class LogisticStacking:
    """Stacking by a logistic regression on the models' log probabilities, fitted on held-out data.

    Unlike scikit-learn's `StackingClassifier`, it takes the models' probabilities, not the models.

    Args:
        regularization: inverse L2 strength `C` of the logistic regression (default: 1.0).
        seed: random state of the solver (default: 0).

    Example:
        >>> stacker = LogisticStacking().fit([val_a, val_b], val_labels)
        >>> test_probabilities = stacker.predict_proba([test_a, test_b])
    """

    def __init__(self, regularization=1.0, seed=0):
        self.regularization = regularization
        self.seed = seed

    @staticmethod
    def _features(arrays):
        # Log probabilities: a linear model on them multiplies probabilities, as a product of experts.
        return np.concatenate([np.log(np.clip(a, _EPSILON, 1.0)) for a in arrays], axis=1)

    def fit(self, probabilities, labels):
        arrays = _check_probabilities(probabilities)
        labels = np.asarray(labels, dtype=np.int64)
        self.num_classes_ = arrays[0].shape[1]
        self.model_ = LogisticRegression(C=self.regularization, max_iter=1000, random_state=self.seed)
        self.model_.fit(self._features(arrays), labels)
        return self

    def predict_proba(self, probabilities):
        if not hasattr(self, "model_"):
            raise _not_fitted(self)
        arrays = _check_probabilities(probabilities)
        # Classes missing from the held-out labels get probability 0.
        output = np.zeros((arrays[0].shape[0], self.num_classes_))
        output[:, self.model_.classes_] = self.model_.predict_proba(self._features(arrays))
        return output

    def to_dict(self):
        """The fitted coefficients as plain lists, to save the stacker as JSON."""
        if not hasattr(self, "model_"):
            raise _not_fitted(self)
        return {
            "classes": self.model_.classes_.tolist(),
            "coef": self.model_.coef_.tolist(),
            "intercept": self.model_.intercept_.tolist(),
            "num_classes": self.num_classes_,
        }
