"""Training the Keras way: early stopping with best weights, checkpoint, CSV history, class weights."""

import csv
import math

import keras
import numpy as np
import pytest

import fusion.training
from fusion.model import build_fusion_model
from fusion.training import class_weights, train_model


def test_class_weights_balance_the_classes():
    weights = class_weights([0, 0, 0, 1], num_classes=3, mode="balanced")
    # n / (C * count): 4 / (3 * 3), 4 / (3 * 1); an absent class keeps 1.
    assert weights == pytest.approx({0: 4 / 9, 1: 4 / 3, 2: 1.0})
    assert class_weights([0, 1], 2, mode="none") is None
    with pytest.raises(ValueError, match="Unknown class weight mode 'auto'. Valid values: none, balanced"):
        class_weights([0, 1], 2, mode="auto")


def _noise(seed, rows=64, minority=0.5):
    rng = np.random.default_rng(seed)
    return {"a": rng.normal(size=(rows, 4)).astype("float32")}, (rng.random(rows) < minority).astype("int64")


def test_early_stopping_restores_the_best_epoch_and_writes_checkpoint_and_history(tmp_path):
    keras.utils.set_random_seed(0)
    model = build_fusion_model({"a": (4,)}, 2, units=8, learning_rate=0.05)
    # Pure noise: validation loss soon stops improving, so training stops early.
    history = train_model(model, _noise(0), _noise(1), epochs=40, patience=3,
                          checkpoint_path=tmp_path / "best.keras", history_path=tmp_path / "history.csv")
    epochs_run, best = len(history["val_loss"]), int(np.argmin(history["val_loss"]))
    assert epochs_run == best + 1 + 3 < 40
    val_inputs, val_labels = _noise(1)
    restored_loss = model.evaluate(val_inputs, val_labels, verbose=0)[0]
    assert restored_loss == pytest.approx(history["val_loss"][best], rel=1e-4)
    checkpoint = keras.saving.load_model(tmp_path / "best.keras")
    assert checkpoint.evaluate(val_inputs, val_labels, verbose=0)[0] == pytest.approx(restored_loss, rel=1e-4)
    with open(tmp_path / "history.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == epochs_run and {"loss", "val_loss", "learning_rate"} <= set(rows[0])
    # ReduceLROnPlateau halved the rate on the plateau before stopping.
    assert float(rows[-1]["learning_rate"]) < 0.05


@pytest.mark.parametrize("min_seconds", [0.0, 3600.0])
def test_the_checkpoint_ends_as_the_best_epoch_however_often_it_is_written(tmp_path, monkeypatch, min_seconds):
    monkeypatch.setattr("fusion.training.CHECKPOINT_MIN_SECONDS", min_seconds)
    writes = []

    def counted_save(model, path, save=fusion.training.save_model_atomic):
        writes.append(path)
        save(model, path)

    monkeypatch.setattr("fusion.training.save_model_atomic", counted_save)
    rng = np.random.default_rng(0)
    inputs = {"a": rng.normal(size=(96, 4)).astype("float32")}
    labels = (inputs["a"][:, 0] > 0).astype("int64")  # learnable: val_loss improves over several epochs
    keras.utils.set_random_seed(0)
    model = build_fusion_model({"a": (4,)}, 2, units=8, learning_rate=0.05)
    history = train_model(model, (inputs, labels), (inputs, labels), epochs=8, patience=8,
                          checkpoint_path=tmp_path / "best.keras")
    losses = history["val_loss"]
    improvements = sum(loss < min(losses[:epoch], default=math.inf) for epoch, loss in enumerate(losses))
    assert improvements >= 3
    # Every better epoch at once; or, all within the interval, the first at once and the best when training ends.
    assert len(writes) == (improvements if min_seconds == 0 else 2)
    checkpoint = keras.saving.load_model(tmp_path / "best.keras")
    assert checkpoint.evaluate(inputs, labels, verbose=0)[0] == pytest.approx(min(losses), rel=1e-4)


def test_balanced_class_weight_shifts_predictions_to_the_minority_class():
    inputs, labels = _noise(2, rows=200, minority=0.1)
    minority_share = {}
    for mode in ("none", "balanced"):
        keras.utils.set_random_seed(0)
        model = build_fusion_model({"a": (4,)}, 2, units=8, learning_rate=0.1)
        train_model(model, (inputs, labels), (inputs, labels), epochs=8, patience=8,
                    class_weight=class_weights(labels, 2, mode))
        minority_share[mode] = float(model.predict(inputs, verbose=0)[:, 1].mean())
    assert minority_share["none"] < 0.15 < 0.25 < minority_share["balanced"], minority_share


def test_bad_epochs_or_patience():
    model = build_fusion_model({"a": (4,)}, 2)
    with pytest.raises(ValueError, match="epochs and patience must be at least 1. Received: epochs=0, patience=3"):
        train_model(model, _noise(0), _noise(1), epochs=0, patience=3)


class _EpochRecorder(keras.callbacks.Callback):
    """Each fit's model name and, per epoch, its logs and whether the history file already held that epoch."""

    def __init__(self, history_path=None):
        super().__init__()
        self.history_path = history_path
        self.fits, self.epochs = [], []

    def on_train_begin(self, logs=None):
        self.fits.append(self.model.name)

    def on_epoch_end(self, epoch, logs=None):
        written = self.history_path is not None and len(self.history_path.read_text().splitlines()) == epoch + 2
        self.epochs.append((self.model.name, epoch, dict(logs), written))


def test_given_callbacks_see_every_epoch_after_the_history_is_written(tmp_path):
    keras.utils.set_random_seed(0)
    recorder = _EpochRecorder(tmp_path / "history.csv")
    model = build_fusion_model({"a": (4,)}, 2, units=8, name="first")
    history = train_model(model, _noise(0), _noise(1), epochs=3, patience=3, history_path=tmp_path / "history.csv",
                          callbacks=[recorder])
    assert [epoch for _, epoch, _, _ in recorder.epochs] == [0, 1, 2]
    assert all(written for *_, written in recorder.epochs)  # called after the run's own callbacks
    assert [logs["val_loss"] for _, _, logs, _ in recorder.epochs] == pytest.approx(history["val_loss"])
    # The same object through a second fit: it sees that model's epochs too.
    other = build_fusion_model({"a": (4,)}, 2, units=8, name="second")
    train_model(other, _noise(0), _noise(1), epochs=2, patience=2, callbacks=[recorder])
    assert recorder.fits == ["first", "second"]
    assert [(name, epoch) for name, epoch, _, _ in recorder.epochs[3:]] == [("second", 0), ("second", 1)]


def test_verbose_shows_keras_lines_per_epoch(capsys):
    model = build_fusion_model({"a": (4,)}, 2, units=8)
    train_model(model, _noise(0), _noise(1), epochs=2, patience=2, verbose=2)
    printed = capsys.readouterr().out
    assert printed.count("Epoch 1/2") == 1 and printed.count("Epoch 2/2") == 1 and printed.count("val_loss: ") == 2
    train_model(model, _noise(0), _noise(1), epochs=2, patience=2)
    assert capsys.readouterr().out == ""


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="the TensorFlow trainer's tracing")
def test_the_train_step_is_traced_once_per_model_and_trains_the_same(monkeypatch):
    from keras.src.backend.tensorflow.trainer import TensorFlowTrainer

    traces = []
    train_step = TensorFlowTrainer.train_step

    def counted_train_step(self, data):
        traces.append(self.name)  # Python runs only while TensorFlow traces the step
        return train_step(self, data)

    monkeypatch.setattr(TensorFlowTrainer, "train_step", counted_train_step)

    def trained_weights(model_name):
        keras.utils.set_random_seed(0)
        model = build_fusion_model({"a": (4,)}, 2, units=8, name=model_name)
        train_model(model, _noise(0, rows=70), _noise(1), epochs=3, patience=3)  # 70 rows: a short last batch
        return model.get_weights()

    built_first = trained_weights("built_first")
    # Keras's own lazy build, as before: the variables are made in the first trace, which is then traced again.
    monkeypatch.setattr("fusion.training._build_before_tracing", lambda model: None)
    lazily_built = trained_weights("lazily_built")
    assert traces.count("built_first") == 1 and traces.count("lazily_built") == 2
    for ours, theirs in zip(built_first, lazily_built, strict=True):
        np.testing.assert_array_equal(ours, theirs)
