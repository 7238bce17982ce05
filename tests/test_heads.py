"""The gated and attention fusion heads: what each can learn that concatenation cannot, saving, JAX, export."""

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest

import features
from fusion.classifier import FusionClassifier
from fusion.heads import gate_weights
from fusion.model import FUSION_HEADS, build_fusion_model
from fusion.synthetic import write_synthetic_store
from fusion.training import train_model

REPO_ROOT = Path(__file__).resolve().parent.parent
# Small and quick to fit: the stores below are clear-cut, so light dropout and a high learning rate do.
OPTIONS = {"units": 16, "dropout": 0.1, "learning_rate": 1e-2, "attention_width": 16}


def _splits(path):
    """{split: (features dict, labels)} of a store, features as float32."""
    with h5py.File(path) as store_file:
        stored = {name: store_file["features"][name][()].astype("float32") for name in store_file["features"]}
        labels = store_file["images/label"][()]
        splits = np.array([split.decode() if isinstance(split, bytes) else split
                           for split in store_file["images/split"][()]])
    return {split: ({name: array[splits == split] for name, array in stored.items()}, labels[splits == split])
            for split in ("train", "val", "test")}


def _fit(data, backbones, **options):
    """A model over `backbones` trained on the train split (val for early stopping); its test probabilities."""
    keras.utils.set_random_seed(0)
    pick = {split: ({name: inputs[name] for name in backbones}, labels) for split, (inputs, labels) in data.items()}
    model = build_fusion_model({name: pick["train"][0][name].shape[1:] for name in backbones}, 2,
                               **{**OPTIONS, **options})
    train_model(model, pick["train"], pick["val"], epochs=25, patience=10)
    return model, model.predict(pick["test"][0], verbose=0)


def _accuracy(probabilities, labels):
    return float(np.mean(probabilities.argmax(axis=1) == labels))


def _switch_data(folder):
    path = write_synthetic_store(folder / "switch.h5", kind="switch", num_rows=800,
                                 backbones=("alpha", "beta", "selector"), dtype="float32")
    return _splits(path)


def _switch_results(switch_data):
    """Test accuracies of gated, concat and the average of single-backbone models; the gated model."""
    backbones = ["alpha", "beta", "selector"]
    labels = switch_data["test"][1]
    gated, gated_probabilities = _fit(switch_data, backbones, fusion="gated")
    _, concat_probabilities = _fit(switch_data, backbones, fusion="concat")
    single = [_fit(switch_data, [name])[1] for name in backbones]
    accuracies = {"gated": _accuracy(gated_probabilities, labels), "concat": _accuracy(concat_probabilities, labels),
                  "average": _accuracy(np.mean(single, axis=0), labels)}
    return accuracies, gated


@pytest.mark.slow
def test_gated_head_trusts_a_different_backbone_per_image_where_concat_and_average_cannot(tmp_path):
    # One test for the accuracies and the gate weights: a shared fixture would be trained once per xdist worker.
    switch_data = _switch_data(tmp_path)
    accuracies, gated = _switch_results(switch_data)
    # Measured (seed 0, 800 rows, 154 test images): gated 1.00, concat 0.73, average 0.77. Nothing but the
    # selector tells the class from the decoy, so models that add up the backbones' evidence stay near 0.75.
    assert accuracies["gated"] >= 0.9, accuracies
    assert accuracies["concat"] <= 0.85 and accuracies["average"] <= 0.85, accuracies
    assert accuracies["gated"] - max(accuracies["concat"], accuracies["average"]) >= 0.1, accuracies
    _check_gate_weighs_the_backbone_the_selector_names_highest(gated, switch_data)


def _check_gate_weighs_the_backbone_the_selector_names_highest(gated, switch_data):
    inputs, _ = switch_data["test"]
    weights = gate_weights(gated, inputs, batch_size=64)
    assert weights.shape == (len(inputs["alpha"]), 3)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-5)
    # The selector's bit: negative -> alpha shows the class, positive -> beta does.
    beta_shows_class = inputs["selector"][:, 0] > 0
    alpha_mean, beta_mean = weights[~beta_shows_class].mean(axis=0), weights[beta_shows_class].mean(axis=0)
    # Measured: alpha images weigh (0.95, 0.03, 0.03), beta images (0.00, 1.00, 0.00).
    assert alpha_mean[0] > alpha_mean[1] + 0.3, alpha_mean
    assert beta_mean[1] > beta_mean[0] + 0.3, beta_mean


@pytest.mark.slow
def test_attention_head_solves_xor_where_concat_without_head_layers_cannot(tmp_path):
    path = write_synthetic_store(tmp_path / "xor.h5", kind="xor", num_rows=800, dtype="float32")
    data = _splits(path)
    labels = data["test"][1]
    attention = _accuracy(_fit(data, ["alpha", "beta"], fusion="attention")[1], labels)
    concat = _accuracy(_fit(data, ["alpha", "beta"], fusion="concat")[1], labels)
    # Measured (seeds 0-2 of the store): attention 0.99-1.00, concat 0.48-0.57 (chance is 0.5).
    assert attention >= 0.85, (attention, concat)
    assert concat <= 0.65, (attention, concat)


def test_gated_model_layers_and_gate_weights_rows():
    model = build_fusion_model({"a": (6,), "b": (4,), "c": (3, 3, 5)}, 3, units=16, fusion="gated")
    assert model.get_layer("gate").output.shape == (None, 3)
    assert model.get_layer("gate_hidden").units == 4
    # Each branch is scaled, then concatenated: the softmax reads 3 x 16 values.
    assert model.get_layer("softmax").input.shape == (None, 48)
    rng = np.random.default_rng(0)
    inputs = {"a": rng.normal(size=(5, 6)), "b": rng.normal(size=(5, 4)), "c": rng.normal(size=(5, 3, 3, 5))}
    weights = gate_weights(model, inputs)
    assert weights.shape == (5, 3) and np.all(weights > 0)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-5)
    # The gated concatenation is branch_i * weight_i, branch by branch.
    branches = keras.Model(model.inputs, [model.get_layer(f"{name}_dropout").output for name in "abc"])(inputs)
    joined = keras.Model(model.inputs, model.get_layer("gated_concatenate").output)(inputs)
    expected = np.concatenate([keras.ops.convert_to_numpy(branch) * weights[:, [index]]
                               for index, branch in enumerate(branches)], axis=1)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(joined), expected, rtol=1e-4, atol=1e-6)


def test_attention_model_tokens_class_token_and_width():
    model = build_fusion_model({"a": (6,), "b": (4,)}, 3, units=8, attention_width=12, head_units=[5],
                               fusion="attention")
    assert model.get_layer("a_token").units == 12 and model.get_layer("b_token").units == 12
    # Two backbone tokens and the class token, each with its learned weights.
    assert model.get_layer("class_token").output.shape == (None, 3, 12)
    assert model.get_layer("backbone_embedding").embedding.shape == (2, 12)
    assert model.get_layer("class_token").token.shape == (1, 1, 12)
    assert model.get_layer("class_embedding").output.shape == (None, 12)
    assert model.get_layer("head_dense_0").input.shape == (None, 12)
    # Which backbone a token came from matters: swapping the two inputs' features changes the output.
    rng = np.random.default_rng(0)
    same = rng.normal(size=(4, 4)).astype("float32")
    symmetric = build_fusion_model({"a": (4,), "b": (4,)}, 2, units=8, fusion="attention")
    symmetric.get_layer("backbone_embedding").embedding.assign(np.zeros((2, 64), "float32"))
    for name in ("a", "b"):
        for part in ("dense", "batchnorm", "token"):
            symmetric.get_layer(f"{name}_{part}").set_weights(symmetric.get_layer(f"a_{part}").get_weights())
    other = rng.normal(size=(4, 4)).astype("float32")
    # With equal branches and no backbone embedding, attention cannot tell the order apart ...
    np.testing.assert_allclose(symmetric.predict({"a": same, "b": other}, verbose=0),
                               symmetric.predict({"a": other, "b": same}, verbose=0), rtol=1e-4, atol=1e-6)
    # ... the learned (here: set) per-backbone embedding lets it.
    symmetric.get_layer("backbone_embedding").embedding.assign(rng.normal(size=(2, 64)).astype("float32"))
    assert np.abs(symmetric.predict({"a": same, "b": other}, verbose=0)
                  - symmetric.predict({"a": other, "b": same}, verbose=0)).max() > 1e-3


@pytest.mark.parametrize("fusion", FUSION_HEADS)
def test_one_backbone_builds_the_plain_classifier_whatever_the_fusion(fusion):
    model = build_fusion_model({"alpha": (6,)}, num_classes=2, units=4, fusion=fusion)
    assert [type(layer).__name__ for layer in model.layers] == [
        "InputLayer", "Normalization", "Dense", "BatchNormalization", "Dropout", "Dense"]


def test_concat_is_the_default_and_keeps_its_layer_names():
    default = build_fusion_model({"a": (3,), "b": (3,)}, 2)
    named = build_fusion_model({"a": (3,), "b": (3,)}, 2, fusion="concat")
    assert [layer.name for layer in default.layers] == [layer.name for layer in named.layers]
    assert "concatenate" in [layer.name for layer in default.layers]


def _trained_for_a_step(fusion):
    model = build_fusion_model({"maps": (2, 2, 3), "vector": (4,)}, 3, pooling="avgmax", head_units=[5], units=8,
                               fusion=fusion)
    rng = np.random.default_rng(0)
    inputs = {"maps": rng.normal(size=(8, 2, 2, 3)).astype("float32"),
              "vector": rng.normal(size=(8, 4)).astype("float32")}
    model.fit(inputs, rng.integers(0, 3, 8), epochs=1, verbose=0)
    return model, inputs


@pytest.mark.parametrize("fusion", FUSION_HEADS)
def test_saved_head_reloads_in_safe_mode_and_predicts_the_same(tmp_path, fusion):
    model, inputs = _trained_for_a_step(fusion)
    model.save(tmp_path / "fusion.keras")
    reloaded = keras.saving.load_model(tmp_path / "fusion.keras", safe_mode=True)
    np.testing.assert_allclose(reloaded.predict(inputs, verbose=0), model.predict(inputs, verbose=0),
                               rtol=1e-5, atol=1e-6)
    if fusion == "gated":
        np.testing.assert_allclose(gate_weights(reloaded, inputs), gate_weights(model, inputs), rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("fusion", ["gated", "attention"])
def test_head_inside_the_exported_classifier_reloads_in_safe_mode(tmp_path, fusion):
    extractors = {name: features.create_backbone(name, input_size=32, weights="none")
                  for name in ("mobilenet_v2_035", "mobilenet_025")}
    head = build_fusion_model({name: extractor.output_shape[1:] for name, extractor in extractors.items()}, 2,
                              units=8, fusion=fusion)
    classifier = FusionClassifier(extractors, head, ["cat", "dog"])
    images = np.random.default_rng(0).uniform(0, 255, size=(3, 40, 36, 3)).astype("float32")
    classifier.save(tmp_path / "exported.keras")
    reloaded = keras.saving.load_model(tmp_path / "exported.keras", safe_mode=True)
    assert isinstance(reloaded, FusionClassifier) and reloaded.class_names == ("cat", "dog")
    expected = classifier.predict_on_batch(images)
    assert expected.shape == (3, 2)
    np.testing.assert_allclose(reloaded.predict_on_batch(images), expected, rtol=1e-5, atol=1e-6)


JAX_SCRIPT = """
import json
import keras, numpy as np
from fusion.heads import gate_weights
from fusion.model import build_fusion_model
rng = np.random.default_rng(0)
inputs = {{"maps": rng.normal(size=(32, 2, 2, 3)).astype("float32"), "vector": rng.normal(size=(32, 4)).astype("float32")}}
labels = rng.integers(0, 3, 32)
outcome = {{"backend": keras.backend.backend()}}
for fusion in ("gated", "attention"):
    model = build_fusion_model({{"maps": (2, 2, 3), "vector": (4,)}}, 3, units=8, head_units=[5], fusion=fusion)
    history = model.fit(inputs, labels, epochs=2, batch_size=8, verbose=0)
    path = {base!r} + f"/{{fusion}}.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)
    outcome[fusion] = {{
        "loss_finite": bool(np.all(np.isfinite(history.history["loss"]))),
        "difference": float(np.abs(model.predict(inputs, verbose=0) - reloaded.predict(inputs, verbose=0)).max()),
    }}
    if fusion == "gated":
        outcome[fusion]["gate_sums"] = gate_weights(reloaded, inputs).sum(axis=1).round(4).tolist()
print(json.dumps(outcome))
"""


@pytest.mark.slow
def test_gated_and_attention_heads_train_save_and_reload_under_jax(tmp_path):
    pytest.importorskip("jax")
    environment = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3", "JAX_PLATFORMS": "cpu",
                   "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "tests")])}
    result = subprocess.run([sys.executable, "-c", JAX_SCRIPT.format(base=str(tmp_path))], capture_output=True,
                            text=True, timeout=300, env=environment)
    assert result.returncode == 0, result.stderr[-3000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["backend"] == "jax"
    for fusion in ("gated", "attention"):
        assert outcome[fusion]["loss_finite"], outcome
        assert outcome[fusion]["difference"] < 1e-5, outcome
    assert outcome["gated"]["gate_sums"] == [1.0] * 32


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"fusion": "sum"}, r"Unknown fusion head 'sum'. Valid values: concat, gated, attention. Received: fusion='sum'"),
        ({"attention_width": 0}, r"attention_width must be at least 1, e.g. 64. Received: attention_width=0"),
    ],
)
def test_bad_fusion_options_give_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_fusion_model({"a": (3,), "b": (3,)}, 2, **kwargs)


def test_gate_weights_of_a_model_without_a_gate_is_refused():
    model = build_fusion_model({"a": (3,), "b": (3,)}, 2, fusion="attention", name="my_head")
    with pytest.raises(ValueError, match=r"Model 'my_head' has no 'gate' layer; gate_weights needs a model built "
                                         r"with build_fusion_model\(..., fusion='gated'\).*Received: model with layers a, b"):
        gate_weights(model, {"a": np.zeros((2, 3)), "b": np.zeros((2, 3))})
