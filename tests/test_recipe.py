"""The typed recipe: written as the store's attributes, read back equal, compared field by field, and rebuilding the backbone."""

import dataclasses
import json

import h5py
import numpy as np
import pytest

from features.recipe import FeatureRecipe
from features.store import feature_attrs, open_store, write_plain_store


def _recipe(**changes):
    recipe = FeatureRecipe.for_run("mobilenet_v2", 32, "avg", "none", seed=3, dtype="float16", precision="float32",
                                   views=("flip",))
    return dataclasses.replace(recipe, **changes)


def test_attrs_round_trip_through_a_store_and_json(tmp_path):
    recipe = _recipe()
    attrs = recipe.to_attrs()
    assert attrs["views"] == "flip" and attrs["input_size"] == 32 and attrs["weights_sha256"] == "none"
    store = tmp_path / "plain.h5"
    write_plain_store(store, ["a"], ["a.png"], [0], ["train"], {"mobilenet_v2": np.zeros((1, 4), np.float16)})
    with h5py.File(store, "r+") as store_file:  # as precompute's add_backbone writes them
        store_file["features/mobilenet_v2"].attrs.update(attrs)
    with open_store(store) as store_file:
        assert FeatureRecipe.from_attrs(feature_attrs(store_file, "mobilenet_v2")) == recipe
    assert FeatureRecipe.from_attrs(json.loads(json.dumps(attrs))) == recipe  # as config.json holds it
    assert FeatureRecipe.from_attrs(dict(attrs, views="none")).views == ()


def test_attrs_without_the_required_facts_give_no_recipe():
    assert FeatureRecipe.from_attrs({}) is None
    assert FeatureRecipe.from_attrs({"input_size": 64, "pooling": "avg"}, backbone="resnet50") is None
    older = FeatureRecipe.from_attrs({"input_size": 64, "pooling": "avg", "weights": "none"}, backbone="resnet50")
    assert older.backbone == "resnet50" and older.seed is None and older.weights_sha256 is None


def test_reuse_mismatch_names_the_first_setting_that_changes_the_features():
    recipe = _recipe()
    assert recipe.reuse_mismatch(_recipe(keras_version="0.0")) is None
    assert recipe.reuse_mismatch(_recipe(input_size=64)) == ("input_size", "64", "32")
    assert recipe.reuse_mismatch(_recipe(views=())) == ("views", "none", "flip")
    # The seed only matters for random weights.
    assert recipe.reuse_mismatch(_recipe(seed=4)) == ("seed", "4", "3")
    pretrained = _recipe(weights="/w/x.h5", weights_sha256="a" * 64)
    assert pretrained.reuse_mismatch(_recipe(weights="/w/x.h5", seed=4, weights_sha256="a" * 64)) is None
    assert pretrained.reuse_mismatch(_recipe(weights="/w/x.h5", weights_sha256="b" * 64)) == (
        "weights_sha256", "b" * 64, "a" * 64)
    # A store written before hashes were recorded is compared without them.
    assert pretrained.reuse_mismatch(_recipe(weights="/w/x.h5", weights_sha256=None)) is None


def test_export_mismatch_ignores_versions_and_what_the_run_did_not_record():
    run = _recipe()
    assert run.export_mismatch(_recipe(keras_version="9.9", backend_version="1")) is None
    assert run.export_mismatch(_recipe(pooling="max")) == ("pooling", "max", "avg")
    assert run.export_mismatch(_recipe(preprocessing=None)) == ("preprocessing", "(not recorded)",
                                                                 run.preprocessing)
    assert dataclasses.replace(run, preprocessing=None).export_mismatch(_recipe(preprocessing="other")) is None


def test_the_recipe_rebuilds_the_backbone_it_describes():
    model = _recipe().create_backbone()
    assert model.input_shape == (None, 32, 32, 3) and model.output_shape == (None, 1280)
    assert _recipe().backbone_kwargs() == {"name": "mobilenet_v2", "input_size": 32, "weights": "none",
                                           "pooling": "avg", "seed": 3}


def test_the_recipe_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        _recipe().input_size = 64
