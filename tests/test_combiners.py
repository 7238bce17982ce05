"""The baselines' combiners as Keras layers: the estimators' numbers, safe-mode reloading, the model around them."""

import keras
import numpy as np
import pytest

import fusion  # noqa: F401 - registers the layers for safe-mode loading
from fusion.baselines import LogisticStacking, WeightedAverage, average_probabilities
from fusion.combiners import LogisticStackingCombiner, WeightedAverageCombiner, combined_model


def _probabilities(rows, classes, models, seed):
    rng = np.random.default_rng(seed)
    # Some near-zero probabilities, so the clip before the log matters.
    return [rng.dirichlet(np.full(classes, 0.3), rows).astype("float32") for _ in range(models)]


def _layer_output(layer, probabilities):
    return keras.ops.convert_to_numpy(layer([keras.ops.convert_to_tensor(p) for p in probabilities]))


# (classes, labels drawn from): binary, multiclass, and classes 1 and 3 of 5 absent from the fit.
CASES = {"binary": (2, [0, 1]), "multiclass": (4, [0, 1, 2, 3]), "missing_classes": (5, [0, 2, 4]),
         "binary_fit_of_three": (3, [0, 2])}


@pytest.mark.parametrize("case", CASES)
def test_stacking_layer_gives_the_estimators_probabilities(case):
    classes, present = CASES[case]
    fit = _probabilities(80, classes, 3, seed=1)
    labels = np.random.default_rng(2).choice(present, 80)
    stacker = LogisticStacking().fit(fit, labels)
    new = _probabilities(50, classes, 3, seed=3)
    layer = stacker.to_layer()
    expected = stacker.predict_proba(new)
    np.testing.assert_allclose(_layer_output(layer, new), expected, atol=1e-5)
    absent = sorted(set(range(classes)) - set(present))
    assert np.all(_layer_output(layer, new)[:, absent] == 0)
    # Not a copy of a constant: another fit gives other numbers.
    assert np.abs(expected - average_probabilities(new)).max() > 1e-2


@pytest.mark.parametrize("case", ["binary", "multiclass"])
def test_weighted_average_layer_gives_the_estimators_probabilities(case):
    classes, present = CASES[case]
    fit = _probabilities(80, classes, 3, seed=4)
    labels = np.random.default_rng(5).choice(present, 80)
    fit[1] = np.eye(classes, dtype="float32")[labels] * 0.9 + 0.1 / classes  # an informative model
    weighted = WeightedAverage().fit(fit, labels)
    new = _probabilities(50, classes, 3, seed=6)
    np.testing.assert_allclose(_layer_output(weighted.to_layer(), new), weighted.predict_proba(new), atol=1e-6)
    assert weighted.weights_[1] > 0.5  # the informative model: unequal weights, so the test can fail
    # Without weights, the plain average.
    np.testing.assert_allclose(_layer_output(WeightedAverageCombiner(), new), average_probabilities(new), atol=1e-6)


def test_layers_round_trip_through_their_config():
    layer = WeightedAverageCombiner([0.2, 0.8], name="weighted_average")
    again = WeightedAverageCombiner.from_config(layer.get_config())
    assert again.model_weights == [0.2, 0.8] and again.name == "weighted_average"
    stacking = LogisticStackingCombiner(classes=[0, 2], num_classes=3, num_models=2, name="stacking")
    config = stacking.get_config()
    assert (config["classes"], config["num_classes"], config["num_models"]) == ([0, 2], 3, 2)
    assert "coef" not in config  # the coefficients are weights, saved with the model's weights
    assert [tuple(weight.shape) for weight in stacking.weights] == [(1, 6), (1,)]
    assert stacking.trainable_weights == []


def _tiny_backbone_model(name, classes, seed):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4,), name=name)
    return keras.Model({name: inputs}, keras.layers.Dense(classes, activation="softmax")(inputs), name=name)


def test_combined_model_saves_and_reloads_in_safe_mode(tmp_path):
    models = [_tiny_backbone_model("alpha", 3, 0), _tiny_backbone_model("beta", 3, 1)]
    features = {name: np.random.default_rng(index).normal(size=(40, 4)).astype("float32")
                for index, name in enumerate(("alpha", "beta"))}
    singles = [model.predict({model.name: features[model.name]}, verbose=0) for model in models]
    labels = np.random.default_rng(7).integers(0, 3, 40)
    stacker = LogisticStacking().fit(singles, labels)
    model = combined_model(models, stacker.to_layer(), "stacking")
    assert [tensor.name for tensor in model.inputs] == ["alpha", "beta"] and model.name == "stacking"
    model.save(tmp_path / "stacking.keras")
    reloaded = keras.saving.load_model(tmp_path / "stacking.keras", safe_mode=True)
    np.testing.assert_allclose(reloaded.predict(features, verbose=0), stacker.predict_proba(singles), atol=1e-5)
    # The backbones' models keep their weights inside it, nested beside the inputs named by backbone.
    assert [layer.name for layer in reloaded.layers if isinstance(layer, keras.Model)] == ["alpha_model", "beta_model"]


def test_wrong_inputs_and_parameters_are_one_line_errors():
    layer = LogisticStackingCombiner(classes=[0, 1, 2], num_classes=3, num_models=2, name="stacking")
    with pytest.raises(ValueError, match=r"LogisticStackingCombiner 'stacking' combines the probabilities of 2 models: "
                                         r"call it on a list of \(N, C\) tensors, one per model, .* Received: 1"):
        layer([keras.ops.ones((2, 3))])
    with pytest.raises(ValueError, match=r"classes must be at least 2 increasing class indices in 0..2, the "
                                         r"regression's classes_. Received: classes=\[2, 0\]"):
        LogisticStackingCombiner(classes=[2, 0], num_classes=3, num_models=1)
    with pytest.raises(ValueError, match=r"coef must have shape \(3, 6\) for 3 fitted classes of 3 and 2 models. "
                                         r"Received: coef of shape \(3, 4\)"):
        LogisticStackingCombiner(classes=[0, 1, 2], num_classes=3, num_models=2, coef=np.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"model_weights must be one non-negative weight per model, not all 0. "
                                         r"Received: model_weights=\[0.0, 0.0\]"):
        WeightedAverageCombiner([0, 0])
