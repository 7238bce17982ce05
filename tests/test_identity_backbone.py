"""The zero-cost `identity` backbone end to end: precompute with weights "imagenet", train, export."""

import numpy as np
import pytest
from PIL import Image

import keras

# One solid colour per image: resized to any size it stays that colour, so its features are known.
COLOURS = {"red": [(200 + 5 * index, 30, 40) for index in range(8)],
           "blue": [(30, 40, 180 + 5 * index) for index in range(8)]}


def _write_solid_images(root):
    for class_name, colours in COLOURS.items():
        (root / class_name).mkdir(parents=True)
        for index, colour in enumerate(colours):
            Image.fromarray(np.full((20, 24, 3), colour, np.uint8)).save(root / class_name / f"{index}.png")
    return root


@pytest.mark.slow
def test_identity_precomputes_the_mean_colour_trains_and_exports(tmp_path, monkeypatch):
    import features
    from features import downloads
    from fusion import train_run
    from fusion.export import export_model

    monkeypatch.setenv(downloads.OFFLINE_VARIABLE, "1")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty_keras_home"))  # no weight file anywhere
    data = _write_solid_images(tmp_path / "images")
    store_path = tmp_path / "cache.h5"
    summary = features.precompute(data, store_path, ["identity"], weights="imagenet", input_size=16,
                                  val_fraction=0.25, test_fraction=0.25, progress=False)
    assert summary.computed == {"identity": 16}
    store = features.load_store(store_path)
    expected = {f"{class_name}/{index}.png": np.array(colour) / 255
                for class_name, colours in COLOURS.items() for index, colour in enumerate(colours)}
    stored = {str(path).replace("\\", "/"): row for path, row in zip(store.paths, store.features["identity"])}
    assert len(stored) == 16
    for path, row in stored.items():
        np.testing.assert_allclose(row, expected[path], atol=1e-3)  # float16 store
    assert store.backbone_info["identity"]["weights"] == "imagenet"

    run = train_run(store_path, tmp_path / "run", units=8, epochs=2, patience=2, batch_size=8, ablation=False,
                    verbose=0)
    assert run.backbones == ("identity",) and run.config["feature_shapes"] == {"identity": [3]}
    recipe = run.config["feature_recipes"]["identity"]
    assert (recipe["weights"], recipe["weights_sha256"], "weights_file" in recipe) == ("imagenet", "none", False)
    assert 0.0 <= run.report["test"]["identity"]["accuracy"] <= 1.0

    exported = keras.saving.load_model(export_model(tmp_path / "run"), safe_mode=True)
    assert exported.input_sizes == {"identity": 16}
    solid = np.full((1, 16, 16, 3), (210, 30, 40), "float32")
    np.testing.assert_allclose(exported.backbones["identity"].predict_on_batch(solid), [[210 / 255, 30 / 255, 40 / 255]],
                               atol=1e-5)  # a float32 mean of 256 pixels
