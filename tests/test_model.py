"""The fusion model: named inputs, the branch design, every option, and safe-mode reloading."""

import keras
import numpy as np
import pytest

from fusion.model import build_fusion_model


def _layer_classes(model):
    return [type(layer).__name__ for layer in model.layers]


def test_named_inputs_branch_order_and_dict_fit():
    model = build_fusion_model({"alpha": (6,), "beta": (4,)}, num_classes=3, units=8, dropout=0.25, l2=0.01)
    assert [tensor.name for tensor in model.inputs] == ["alpha", "beta"]
    assert model.output.shape == (None, 3)
    branch = [model.get_layer(f"alpha_{part}") for part in ("standardize", "dense", "batchnorm", "dropout")]
    assert [type(layer).__name__ for layer in branch] == ["Normalization", "Dense", "BatchNormalization", "Dropout"]
    assert branch[1].units == 8 and branch[1].activation.__name__ == "relu"
    assert branch[3].rate == 0.25
    assert branch[1].kernel_regularizer.l2 == pytest.approx(0.01)
    # No head layers by default: the concatenation goes straight into the softmax.
    assert model.get_layer("softmax").input.shape == (None, 16)
    rng = np.random.default_rng(0)
    history = model.fit({"beta": rng.normal(size=(16, 4)), "alpha": rng.normal(size=(16, 6))},
                        rng.integers(0, 3, 16), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_single_backbone_model_is_branch_then_softmax():
    model = build_fusion_model({"alpha": (6,)}, num_classes=2, units=4)
    assert _layer_classes(model) == ["InputLayer", "Normalization", "Dense", "BatchNormalization", "Dropout", "Dense"]


def _standardized(model, backbone, inputs):
    probe = keras.Model(model.inputs, model.get_layer(f"{backbone}_standardize").output)
    return keras.ops.convert_to_numpy(probe(inputs))


def test_feature_statistics_standardize_each_channel_and_survive_reloading(tmp_path):
    rng = np.random.default_rng(0)
    inputs = {"maps": rng.normal(3.0, 5.0, size=(4, 2, 2, 3)).astype("float32"),
              "vector": rng.normal(size=(4, 2)).astype("float32")}
    mean, variance = np.array([1.0, -2.0, 0.5], "float32"), np.array([4.0, 0.25, 9.0], "float32")
    model = build_fusion_model({"maps": (2, 2, 3), "vector": (2,)}, 2, feature_statistics={"maps": (mean, variance)})
    expected = (inputs["maps"] - mean) / np.sqrt(variance)
    np.testing.assert_allclose(_standardized(model, "maps", inputs), expected, rtol=1e-5, atol=1e-5)
    # A backbone without statistics passes unscaled.
    np.testing.assert_allclose(_standardized(model, "vector", inputs), inputs["vector"], rtol=1e-6)
    model.save(tmp_path / "fusion.keras")
    reloaded = keras.saving.load_model(tmp_path / "fusion.keras", safe_mode=True)
    np.testing.assert_allclose(_standardized(reloaded, "maps", inputs), expected, rtol=1e-5, atol=1e-5)


def test_head_units_learning_rate_and_no_l2():
    model = build_fusion_model({"a": (3,), "b": (3,)}, 2, units=4, head_units=[16, 8], learning_rate=0.05, l2=0)
    assert [model.get_layer(f"head_dense_{i}").units for i in (0, 1)] == [16, 8]
    assert model.get_layer("softmax").input.shape == (None, 8)
    assert float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)) == pytest.approx(0.05)
    assert model.get_layer("a_dense").kernel_regularizer is None


@pytest.mark.parametrize(
    "pooling, expected",
    [("avg", lambda x: x.mean(axis=(1, 2))), ("max", lambda x: x.max(axis=(1, 2))),
     ("avgmax", lambda x: np.concatenate([x.mean(axis=(1, 2)), x.max(axis=(1, 2))], axis=1))],
)
def test_pooling_of_spatial_maps_computes_what_it_says(pooling, expected):
    model = build_fusion_model({"maps": (3, 3, 5), "vector": (4,)}, 2, pooling=pooling)
    pooled_layer = model.get_layer("maps_dense").input
    pooled = keras.Model(model.inputs, pooled_layer)
    maps = np.random.default_rng(0).normal(size=(2, 3, 3, 5)).astype("float32")
    output = keras.ops.convert_to_numpy(pooled({"maps": maps, "vector": np.zeros((2, 4), "float32")}))
    np.testing.assert_allclose(output, expected(maps), rtol=1e-5, atol=1e-6)
    # Pooled vectors are used as they are.
    assert not [layer.name for layer in model.layers if layer.name.startswith("vector_") and "pool" in layer.name]


def test_saved_model_reloads_in_safe_mode_and_predicts_the_same(tmp_path):
    model = build_fusion_model({"maps": (2, 2, 3), "vector": (4,)}, 3, pooling="avgmax", head_units=[5])
    inputs = {"maps": np.ones((2, 2, 2, 3), "float32"), "vector": np.arange(8, dtype="float32").reshape(2, 4)}
    model.save(tmp_path / "fusion.keras")
    reloaded = keras.saving.load_model(tmp_path / "fusion.keras", safe_mode=True)
    np.testing.assert_allclose(reloaded.predict(inputs, verbose=0), model.predict(inputs, verbose=0), rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"units": 0}, "units must be at least 1. Received: units=0"),
        ({"dropout": 1.0}, r"dropout must lie in \[0, 1\). Received: dropout=1.0"),
        ({"l2": -1.0}, "l2 must be 0 or more. Received: l2=-1.0"),
        ({"learning_rate": 0}, "learning_rate must be positive. Received: learning_rate=0"),
        ({"head_units": [8, 0]}, r"head_units must be positive layer sizes.*Received: head_units=\[8, 0\]"),
        ({"pooling": "sum"}, "Unknown pooling 'sum'. Valid values: avg, max, avgmax"),
        ({"num_classes": 1}, "num_classes must be at least 2"),
        ({"feature_shapes": {}}, "must name at least one backbone"),
        ({"feature_shapes": {"x": (3, 3)}}, r"must be \(D,\) pooled or \(H, W, D\) spatial. Received: feature_shapes\['x'\]=\(3, 3\)"),
        ({"feature_statistics": {"b": (np.zeros(3), np.ones(3))}},
         r"feature_statistics names 'b', which is not a model input. Inputs: a. Received: feature_statistics keys=\['b'\]"),
        ({"feature_statistics": {"a": (np.zeros(4), np.ones(4))}},
         r"feature_statistics\['a'\] must be \(mean, variance\), each of shape \(3,\).*Received: shapes \(4,\) and \(4,\)"),
    ],
)
def test_bad_options_give_clear_errors(kwargs, message):
    arguments = {"feature_shapes": {"a": (3,)}, "num_classes": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        build_fusion_model(arguments.pop("feature_shapes"), arguments.pop("num_classes"), **arguments)
