"""Train one model the Keras way: Adam, early stopping, checkpoint, learning-rate schedule, CSV history."""

import csv
import math
import time
from pathlib import Path

import keras
import numpy as np

from features.atomic_files import open_atomic, save_model_atomic

_CLASS_WEIGHTS = ("none", "balanced")
# Writing a small head's `.keras` file costs about as much as one of its epochs (~80 ms): a better
# epoch is written at once only when the checkpoint is older than this, and at the end in any case.
CHECKPOINT_MIN_SECONDS = 30.0


def class_weights(labels, num_classes, mode="balanced"):
    """Per-class loss weights that make every class count alike, as a dict for `Model.fit`.

    Args:
        labels: the training labels.
        num_classes: number of classes.
        mode: `balanced` (weight n / (C * count)) or `none` (default: "balanced").

    Example:
        >>> class_weights([0, 0, 0, 1], num_classes=2)
        {0: 0.666..., 1: 2.0}
    """
    if mode not in _CLASS_WEIGHTS:
        raise ValueError(
            f"Unknown class weight mode {mode!r}. Valid values: {', '.join(_CLASS_WEIGHTS)}. "
            f"Received: class_weight={mode!r}"
        )
    if mode == "none":
        return None
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)
    # A class absent from training keeps weight 1: there is nothing to rebalance.
    return {
        index: (len(labels) / (num_classes * count) if count else 1.0) for index, count in enumerate(counts)
    }


class _AtomicCheckpoint(keras.callbacks.Callback):
    """Keep the model of the best `val_loss` on disk, whole or not at all (`ModelCheckpoint` writes in place).

    A better epoch is written at once when the file is `min_seconds` old or more; a better epoch
    that comes sooner is written by the next write or at the end of training, when EarlyStopping
    (an earlier callback) has restored the best weights. A crash loses at most `min_seconds` of
    progress on the checkpoint; a finished fit always leaves the best epoch.
    """

    def __init__(self, path, min_seconds=None):
        super().__init__()
        self.path = Path(path)
        self.min_seconds = CHECKPOINT_MIN_SECONDS if min_seconds is None else min_seconds
        self.best = math.inf
        self.unwritten = False
        self.written_at = -math.inf

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("val_loss")
        if loss is not None and loss < self.best:
            self.best = float(loss)
            self.unwritten = True
            if time.monotonic() - self.written_at >= self.min_seconds:
                self._write()

    def on_train_end(self, logs=None):
        if self.unwritten:
            self._write()

    def _write(self):
        save_model_atomic(self.model, self.path)
        self.written_at, self.unwritten = time.monotonic(), False


class _AtomicHistory(keras.callbacks.Callback):
    """The per-epoch history as CSV, rewritten whole after each epoch (`CSVLogger`'s columns: epoch, then sorted)."""

    def __init__(self, path):
        super().__init__()
        self.path = Path(path)
        self.rows = []

    def on_epoch_end(self, epoch, logs=None):
        self.rows.append({"epoch": epoch, **{key: float(value) for key, value in (logs or {}).items()}})
        columns = ["epoch"] + sorted({key for row in self.rows for key in row} - {"epoch"})
        with open_atomic(self.path, newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, columns, restval="NA")
            writer.writeheader()
            writer.writerows(self.rows)


def _build_before_tracing(model):
    """Create the optimizer's and the metrics' variables before `fit` traces its train step.

    TensorFlow fast path: without a distribution strategy, Keras on TensorFlow creates them inside
    the first trace of the train step, and TensorFlow traces a step that created variables a
    second time; built here from the model's input shapes, the step is traced once, which saves
    about a third of the fit of a small head (`tests/test_training.py` counts the traces). JAX and
    the other backends build before tracing already; a Keras without `_symbolic_build` falls
    back to building in the trace.
    """
    build = getattr(model, "_symbolic_build", None)
    if keras.backend.backend() != "tensorflow" or build is None:
        return
    # Only shapes and dtypes matter: Keras turns the batch into symbolic tensors.
    inputs = {tensor.name: np.zeros((1, *tensor.shape[1:]), tensor.dtype) for tensor in model.inputs}
    build(data_batch=(inputs, np.zeros((1,), "int32")))


def train_model(
    model,
    train_data,
    val_data,
    *,
    epochs=60,
    patience=10,
    class_weight=None,
    checkpoint_path=None,
    history_path=None,
    verbose=0,
    callbacks=None,
):
    """Fit a compiled model with early stopping on validation loss, keeping the best weights.

    Callbacks: EarlyStopping(val_loss, best weights restored), ReduceLROnPlateau(val_loss,
    halving after a third of `patience`), and, when the paths are given, a checkpoint of the best
    model (`.keras`; a better epoch within `CHECKPOINT_MIN_SECONDS` of the last write waits for the
    next write or the end of training) and the per-epoch history (CSV), both written whole or not at all. The data shuffles itself (see `FeatureBatches`), so
    Keras does not shuffle again.

    Args:
        model: a compiled `keras.Model`, e.g. from `build_fusion_model`.
        train_data: training batches, e.g. a `FeatureBatches`, or a tuple `(inputs, labels)`.
        val_data: validation batches or tuple, for early stopping.
        epochs: most epochs (default: 60).
        patience: epochs without a better validation loss before stopping (default: 10).
        class_weight: dict class -> loss weight; give `val_data` the same weights (a
            `FeatureBatches(class_weight=...)`; tuples are weighted here) so that early stopping
            judges the weighted loss (default: None).
        checkpoint_path: `.keras` file for the best model (default: None, no checkpoint).
        history_path: CSV file of the per-epoch history (default: None).
        verbose: `Model.fit`'s verbosity: 0 silent, 1 a progress bar, 2 one line per epoch (default: 0).
        callbacks: more `keras.callbacks.Callback`s, called after the ones above, so that they
            see each epoch's logs once the checkpoint and history are written (default: None).

    Example:
        >>> history = train_model(model, train_batches, val_batches, epochs=30, checkpoint_path="best.keras")
    """
    if epochs < 1 or patience < 1:
        raise ValueError(f"epochs and patience must be at least 1. Received: epochs={epochs}, patience={patience}")
    fit_callbacks = [
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True),
        keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=max(1, patience // 3), min_lr=1e-6),
    ]
    if checkpoint_path is not None:
        Path(checkpoint_path).parent.mkdir(parents=True, exist_ok=True)
        fit_callbacks.append(_AtomicCheckpoint(checkpoint_path))
    if history_path is not None:
        Path(history_path).parent.mkdir(parents=True, exist_ok=True)
        fit_callbacks.append(_AtomicHistory(history_path))
    fit_callbacks += list(callbacks or ())
    if class_weight is not None and isinstance(val_data, tuple) and len(val_data) == 2:
        # Early stopping must judge the objective being trained: weigh the validation loss alike.
        val_inputs, val_labels = val_data
        val_data = (val_inputs, val_labels, np.array([class_weight[int(label)] for label in val_labels], "float32"))
    _build_before_tracing(model)
    if isinstance(train_data, tuple):
        train_inputs, train_labels = train_data
        fit_arguments = {"x": train_inputs, "y": train_labels, "shuffle": True}
    else:
        fit_arguments = {"x": train_data, "shuffle": False}
    history = model.fit(
        **fit_arguments,
        validation_data=val_data,
        epochs=epochs,
        callbacks=fit_callbacks,
        class_weight=class_weight,
        verbose=verbose,
    )
    return history.history
