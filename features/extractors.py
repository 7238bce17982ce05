"""Feature extractors: each backbone built and traced once per process, kept in a small cache, run in batches."""

import collections
import logging
import os
import threading
import time
from pathlib import Path

import numpy as np

import keras

from features.backbones import create_backbone

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
        status = os.stat(weights_file)
        weights_id = (str(Path(weights_file).resolve()), status.st_size, status.st_mtime_ns)
    return (name, input_size, weights_id, pooling, seed, precision, keras.backend.backend())


def feature_extractor(name, input_size, weights_file, pooling, seed, precision):
    """The built backbone for these settings, from this process's cache when there. Returns (model, built).

    Args:
        name: a registry name, see `list_backbones()`.
        input_size: the input size in pixels.
        weights_file: a Keras weights file, or None for random weights.
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
        _trace_for_any_batch_size(model)
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


def _trace_for_any_batch_size(model):
    """TensorFlow-only fast path: make `model`'s compiled predict step accept any batch size.

    Keras's predict step is a `tf.function` with `reduce_retracing=True`: a second call with a
    new batch size traces it once more with the batch dimension unknown, and no batch size
    traces again. The last, short batch of a run then needs no padding (up to a whole batch of
    wasted compute). Other backends compile one program per shape and keep padding.
    """
    if keras.backend.backend() != "tensorflow":
        return
    shape = tuple(model.input_shape[1:])
    # The second trace is on purpose; TensorFlow's logger would warn about "excessive retracing".
    tensorflow_logger = logging.getLogger("tensorflow")
    level = tensorflow_logger.level
    tensorflow_logger.setLevel(logging.ERROR)
    try:
        for batch_size in (1, 2):
            model.predict_on_batch(np.zeros((batch_size,) + shape, np.float32))
    finally:
        tensorflow_logger.setLevel(level)
    model._fusionpipe_any_batch_size = True


def predict_in_batches(model, images, batch_size):
    """Run `model` on `images` in batches of `batch_size`, through its compiled predict step.

    The last batch is padded to `batch_size` so that the step keeps one shape and is not
    traced again, unless the model went through `_trace_for_any_batch_size` (TensorFlow).

    Example:
        >>> features = predict_in_batches(model, images, batch_size=32)
    """
    pad = not getattr(model, "_fusionpipe_any_batch_size", False)
    outputs = []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        count = len(batch)
        if pad and count < batch_size:
            batch = np.concatenate([batch, np.zeros((batch_size - count,) + batch.shape[1:], batch.dtype)])
        outputs.append(np.asarray(model.predict_on_batch(batch))[:count])
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
