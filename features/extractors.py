"""Feature extractors: each backbone built and traced once per process, kept in a small cache, run in batches."""

import collections
import os
import threading
import time
from pathlib import Path

import numpy as np

import keras

from features.backbones import create_backbone
from features.hub_backbones import preset_weights_file

# Built feature extractors of this process, so that a second `precompute` (a notebook cell run
# again, a benchmark after its warm-up) skips building the model and tracing its predict step,
# which costs seconds per backbone. Least recently used first; bounded to cap memory.
_EXTRACTORS = collections.OrderedDict()
_EXTRACTORS_MAX = 8
_EXTRACTORS_LOCK = threading.Lock()


def _extractor_key(name, input_size, weights_file, pooling, seed, precision):
    # A weights file replaced in place must not hit a stale model: key on its size and mtime too.
    weights_id = None
    if weights_file:
        if Path(weights_file).is_dir():  # a KerasHub preset folder: its weights file is what changes
            weights_file = preset_weights_file(weights_file)
        status = os.stat(weights_file)
        weights_id = (str(Path(weights_file).resolve()), status.st_size, status.st_mtime_ns)
    return (name, input_size, weights_id, pooling, seed, precision, keras.backend.backend())


def feature_extractor(name, input_size, weights_file, pooling, seed, precision):
    """The built backbone for these settings, from this process's cache when there. Returns (model, built).

    Args:
        name: a registry name, see `list_backbones()`.
        input_size: the input size in pixels.
        weights_file: a Keras weights file or KerasHub preset folder, or None for random weights.
        pooling: "avg", "max", "cls", "cls+avg" or "none" (as the backbone takes).
        seed: seed of the random weights.
        precision: the Keras dtype policy to build under, e.g. "float32".

    Example:
        >>> model, built = feature_extractor("resnet50", 224, None, "avg", 0, "float32")
    """
    key = _extractor_key(name, input_size, weights_file, pooling, seed, precision)
    with _EXTRACTORS_LOCK:
        if key in _EXTRACTORS:
            _EXTRACTORS.move_to_end(key)
            return _EXTRACTORS[key], False
        model = _build(name, input_size, weights_file, pooling, seed, precision)
        _compile_fast_predict(model)
        _EXTRACTORS[key] = model
        while len(_EXTRACTORS) > _EXTRACTORS_MAX:
            _EXTRACTORS.popitem(last=False)
        return model, True


def _build(name, input_size, weights_file, pooling, seed, precision):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        return create_backbone(name, input_size=input_size, weights=weights_file or "none",
                               pooling=pooling, seed=seed)
    finally:
        keras.config.set_dtype_policy(previous)


def _compile_fast_predict(model):
    """TensorFlow-only fast path: give `model` one `tf.function` for any batch size, traced once now.

    The function takes float32 images of shape `[None, H, W, 3]` and returns the model's
    features in inference mode, as float32 also when the model was built under a mixed
    precision policy. Its unknown batch dimension means one trace serves every batch, the
    last, short one included, so nothing is padded: Keras's own predict step would need two
    traces (one per batch size seen, then one with the batch dimension unknown), which was
    most of a run's start-up. It runs once on one image here, so that the first batch of the
    run pays no one-time setup either. Without XLA (`jit_compile`): on a 2-core AVX-512 CPU
    it was within a few percent of this function for ResNet50 (either way) and a
    DINOv2-small-shaped ViT, over 10x slower for MobileNetV2 and slower for every model
    under mixed_bfloat16, and it compiles again, seconds each time, for each new batch size
    (the engines table of benchmarks/bench_precompute.py measures it). Other backends
    compile one program per shape and keep the padded `predict_on_batch` path of
    `predict_in_batches`.
    """
    if keras.backend.backend() != "tensorflow":
        return
    image_shape = tuple(model.input_shape[1:])

    def predict(images):
        return keras.ops.cast(model(images, training=False), "float32")

    # An export archive's endpoint is Keras's public way to `tf.function(predict, input_signature=...)`
    # (autograph off): features/ imports Keras, never TensorFlow (tests/test_backends.py). Never written out.
    function = keras.export.ExportArchive().add_endpoint(
        "predict", predict, input_signature=[keras.InputSpec(shape=(None,) + image_shape, dtype="float32")])
    function(np.zeros((1,) + image_shape, np.float32))
    model._fusionpipe_predict = function


def _fast_predict(model):
    """The fast path's `tf.function` of `model`, or None where it has none (other backends, a model built elsewhere)."""
    return getattr(model, "_fusionpipe_predict", None)


def predict_in_batches(model, images, batch_size):
    """Run `model` on `images` in batches of `batch_size`; returns float32 features, one row per image.

    With TensorFlow a model from `feature_extractor` runs through its one `tf.function` of any
    batch size (`_compile_fast_predict`), the last batch unpadded. Otherwise it runs through
    Keras's compiled predict step, the last batch padded to `batch_size` so that the step keeps
    one shape and is not compiled again.

    Example:
        >>> features = predict_in_batches(model, images, batch_size=32)
    """
    fast = _fast_predict(model)
    outputs = []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        count = len(batch)
        if fast is not None:
            outputs.append(fast(np.asarray(batch, np.float32)).numpy())
            continue
        if count < batch_size:
            batch = np.concatenate([batch, np.zeros((batch_size - count,) + batch.shape[1:], batch.dtype)])
        outputs.append(np.asarray(model.predict_on_batch(batch), np.float32)[:count])
    return np.concatenate(outputs) if outputs else np.zeros((0,) + tuple(model.output_shape[1:]), np.float32)


class ExtractorSet:
    """The feature extractors of one run by backbone name, each built (or taken from the cache) on first use.

    Args:
        input_sizes: backbone name -> input size.
        weight_files: backbone name -> weights file, or None for random weights.
        poolings: backbone name -> pooling ("avg", "max", "cls", "cls+avg" or "none").
        seed: seed of the random weights.
        precision: the Keras dtype policy to build under, e.g. "float32".

    Example:
        >>> extractors = ExtractorSet({"resnet50": 224}, {"resnet50": None}, {"resnet50": "avg"}, 0, "float32")
        >>> models = extractors.build(["resnet50"])
        >>> extractors.build_seconds  # 0.0 when this process had built it before
    """

    def __init__(self, input_sizes, weight_files, poolings, seed, precision):
        self.input_sizes = input_sizes
        self.weight_files = weight_files
        self.poolings = poolings
        self.seed = seed
        self.precision = precision
        self.models = {}
        self.build_seconds = 0.0  # building backbones not yet in this process's cache

    def build(self, names):
        """The models of `names` by name, building those this run has not got yet."""
        for name in names:
            if name not in self.models:
                building = time.perf_counter()
                self.models[name], built = feature_extractor(name, self.input_sizes[name], self.weight_files[name],
                                                             self.poolings[name], self.seed, self.precision)
                self.build_seconds += time.perf_counter() - building if built else 0.0
        return {name: self.models[name] for name in names}
