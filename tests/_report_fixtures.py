"""A report built from made-up test predictions whose every number can be worked out by hand, for the report and plot tests."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np

CLASS_NAMES = ("cat", "dog", "<b>&")  # the last one must come out escaped in report.html
TEST_IMAGES = 200
# Wrong test images per model: each model errs on the first k images, so the sets are nested and
# McNemar's test of two models sees only the difference of their k.
WRONG = {"fusion": 10, "a": 20, "b": 24, "fusion_without_a": 22, "fusion_without_b": 18, "average": 16,
         "weighted_average": 14, "stacking": 12}
# The probability each model gives its predicted class, on every image: its ECE is |accuracy - confidence|.
CONFIDENCE = {"fusion": 0.9, "a": 0.8, "b": 0.97, "fusion_without_a": 0.85, "fusion_without_b": 0.85, "average": 0.7,
              "weighted_average": 0.75, "stacking": 0.94}
PRECOMPUTE_SECONDS_PER_IMAGE = {"a": 0.02, "b": 0.05}
TRAINING = {"fusion": {"epochs_run": 3, "best_epoch": 3, "best_val_loss": 0.2, "seconds": 30.0},
            "a": {"epochs_run": 3, "best_epoch": 2, "best_val_loss": 0.3, "seconds": 10.0},
            "b": {"epochs_run": 2, "best_epoch": 2, "best_val_loss": 0.4, "seconds": 20.0},
            "fusion_without_a": {"epochs_run": 3, "best_epoch": 3, "best_val_loss": 0.3, "seconds": 15.0},
            "fusion_without_b": {"epochs_run": 3, "best_epoch": 3, "best_val_loss": 0.3, "seconds": 12.0}}
HISTORIES = {name: {"loss": [1.0, 0.6, 0.4][:epochs], "val_loss": [1.1, 0.7, 0.5][:epochs],
                    "accuracy": [0.6, 0.8, 0.9][:epochs], "val_accuracy": [0.5, 0.75, 0.85][:epochs]}
             for name, epochs in (("fusion", 3), ("a", 3), ("b", 2), ("fusion_without_a", 3), ("fusion_without_b", 3))}


def image_labels():
    return np.arange(TEST_IMAGES) % len(CLASS_NAMES)


def probabilities(wrong, confidence):
    """(TEST_IMAGES, 3) probabilities: the first `wrong` images predicted as the next class, all with `confidence`."""
    labels = image_labels()
    predictions = labels.copy()
    predictions[:wrong] = (labels[:wrong] + 1) % len(CLASS_NAMES)
    result = np.full((TEST_IMAGES, len(CLASS_NAMES)), (1 - confidence) / (len(CLASS_NAMES) - 1))
    result[np.arange(TEST_IMAGES), predictions] = confidence
    return result


def built_report(wrong=None, precompute=PRECOMPUTE_SECONDS_PER_IMAGE, training=TRAINING, **build_options):
    """`build_report` over the made-up predictions; `wrong` overrides some models' error counts."""
    from fusion.report import build_report

    wrong = {**WRONG, **(wrong or {})}
    info = SimpleNamespace(path=Path("store.h5"), class_names=CLASS_NAMES)
    rows = {"train": np.arange(600), "val": np.arange(600, 800), "test": np.arange(800, 800 + TEST_IMAGES)}
    labels = {"train": np.arange(600) % 3, "val": np.arange(200) % 3, "test": image_labels()}
    test_probabilities = {name: probabilities(wrong[name], CONFIDENCE[name]) for name in WRONG}
    return build_report(info, ("a", "b"), rows, labels, test_probabilities, weighted_average_weights=np.array([0.4, 0.6]),
                        training=training, warnings=[], precompute_seconds_per_image=precompute, **build_options)
