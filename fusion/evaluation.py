"""Test-split metrics with scikit-learn, and McNemar's paired test between two models."""

import numpy as np
import scipy.stats
from sklearn import metrics as sk_metrics


def evaluate_probabilities(labels, probabilities, class_names):
    """Accuracy, top-5 accuracy (more than 5 classes), log loss, macro F1, per-class scores, confusion matrix.

    Args:
        labels: (N,) true class indices.
        probabilities: (N, C) predicted class probabilities.
        class_names: the C class names.

    Example:
        >>> evaluate_probabilities(test_labels, model.predict(test_inputs), class_names)["accuracy"]
    """
    labels = np.asarray(labels, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    num_classes = len(class_names)
    if probabilities.shape != (len(labels), num_classes):
        raise ValueError(
            f"probabilities must have shape (N, C) = ({len(labels)}, {num_classes}) for {len(labels)} labels "
            f"and {num_classes} class names. Received: probabilities.shape={probabilities.shape}"
        )
    classes = list(range(num_classes))
    predictions = probabilities.argmax(axis=1)
    # float32 softmax outputs are clipped away from 0 and renormalized so log loss stays finite.
    clipped = np.clip(probabilities, 1e-7, 1.0)
    precision, recall, _, support = sk_metrics.precision_recall_fscore_support(
        labels, predictions, labels=classes, zero_division=0
    )
    result = {
        "accuracy": float(sk_metrics.accuracy_score(labels, predictions)),
        "log_loss": float(sk_metrics.log_loss(labels, clipped / clipped.sum(axis=1, keepdims=True), labels=classes)),
        "macro_f1": float(sk_metrics.f1_score(labels, predictions, labels=classes, average="macro", zero_division=0)),
    }
    if num_classes > 5:
        result["top5_accuracy"] = float(sk_metrics.top_k_accuracy_score(labels, probabilities, k=5, labels=classes))
    result["num_images"] = int(len(labels))
    result["per_class"] = {
        name: {"precision": float(p), "recall": float(r), "support": int(s)}
        for name, p, r, s in zip(class_names, precision, recall, support)
    }
    result["confusion_matrix"] = sk_metrics.confusion_matrix(labels, predictions, labels=classes).tolist()
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
