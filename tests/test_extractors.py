"""Feature extractors: the TensorFlow fast path gives Keras's predict numbers, for any batch size, traced once."""

import os

import numpy as np
import pytest

from features import create_backbone, extractors

TENSORFLOW = os.environ.get("KERAS_BACKEND", "tensorflow") == "tensorflow"


def _images(count, size=32, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (count, size, size, 3)).astype("float32")


def _relative_error(result, expected):
    return np.abs(result - expected).max() / np.abs(expected).max()


@pytest.mark.parametrize("batch_size", [1, 3, 4, 11, 16])
@pytest.mark.parametrize("pooling", ["avg", "none"])
def test_any_batch_size_gives_keras_predict_numbers(batch_size, pooling):
    model, _ = extractors.feature_extractor("mobilenet_v2", 32, None, pooling, 0, "float32")
    images = _images(11)
    batched = extractors.predict_in_batches(model, images, batch_size)  # a short last batch unless 1 or 11
    one_at_a_time = np.concatenate([np.asarray(model.predict_on_batch(image[None])) for image in images])
    assert batched.dtype == np.float32
    assert batched.shape == (11,) + tuple(model.output_shape[1:])
    assert batched.shape == ((11, 1280) if pooling == "avg" else (11, 1, 1, 1280))
    assert _relative_error(batched, one_at_a_time) < 1e-5


@pytest.mark.skipif(not TENSORFLOW, reason="TensorFlow fast path")
def test_fast_path_is_traced_once_with_an_unknown_batch_dimension():
    model, _ = extractors.feature_extractor("mobilenet_v2", 32, None, "avg", 1, "float32")
    function = extractors._fast_predict(model)
    assert function.experimental_get_tracing_count() == 1
    assert function.input_signature[0].shape.as_list() == [None, 32, 32, 3]
    for batch_size in (1, 2, 5, 7):
        extractors.predict_in_batches(model, _images(7), batch_size)
    assert function.experimental_get_tracing_count() == 1


@pytest.mark.skipif(not TENSORFLOW, reason="TensorFlow fast path")
def test_fast_path_equals_the_padded_predict_on_batch_fallback():
    # A model built outside `feature_extractor` has no fast path and takes the padded one.
    fallback_model = create_backbone("resnet50", input_size=32, weights="none", seed=2)
    assert extractors._fast_predict(fallback_model) is None
    model, _ = extractors.feature_extractor("resnet50", 32, None, "avg", 2, "float32")
    images = _images(10, seed=4)
    fast = extractors.predict_in_batches(model, images, 4)
    padded = extractors.predict_in_batches(fallback_model, images, 4)
    assert _relative_error(fast, padded) < 1e-5


def test_mixed_bfloat16_features_come_back_as_float32():
    model, _ = extractors.feature_extractor("mobilenet_v2", 32, None, "avg", 0, "mixed_bfloat16")
    reference, _ = extractors.feature_extractor("mobilenet_v2", 32, None, "avg", 0, "float32")
    images = _images(5)
    features = extractors.predict_in_batches(model, images, 4)
    assert features.dtype == np.float32 and features.shape == (5, 1280)
    # bfloat16 keeps 8 bits of mantissa: close to float32, not equal.
    assert 0 < _relative_error(features, extractors.predict_in_batches(reference, images, 4)) < 0.1


def test_no_images_give_no_rows_of_the_feature_shape():
    model, _ = extractors.feature_extractor("mobilenet_v2", 32, None, "none", 0, "float32")
    features = extractors.predict_in_batches(model, np.zeros((0, 32, 32, 3), np.float32), 4)
    assert features.shape == (0, 1, 1, 1280) and features.dtype == np.float32


@pytest.mark.parametrize("pooling", ["cls+avg", "none"])
def test_a_foundation_model_gives_keras_predict_numbers_for_any_batch_size(pooling):
    pytest.importorskip("keras_hub")
    # 42 px: a multiple of DINOv2's patch size 14, a 3x3 grid of patch tokens.
    model, _ = extractors.feature_extractor("dinov2_small", 42, None, pooling, 0, "float32")
    images = _images(5, size=42, seed=5)
    batched = extractors.predict_in_batches(model, images, 2)  # 2 + 2 + 1
    one_at_a_time = np.concatenate([np.asarray(model.predict_on_batch(image[None])) for image in images])
    assert batched.dtype == np.float32
    assert batched.shape == ((5, 768) if pooling == "cls+avg" else (5, 3, 3, 384))
    assert _relative_error(batched, one_at_a_time) < 1e-5
