"""A store of a transformer (DINOv2) and a CNN, through precompute, training, export and prediction."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import features
from _run_fixtures import write_two_class_images

pytest.importorskip("keras_hub")

# A multiple of DINOv2's patch size (14) and above MobileNetV2's smallest input (32).
INPUT_SIZE = 42
BACKBONES = ["mobilenet_v2", "dinov2_small"]


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory):
    import fusion
    from fusion.export import export_model

    base = tmp_path_factory.mktemp("mixed")
    data = write_two_class_images(base / "images")
    store = base / "cache.h5"
    summary = features.precompute(data, store, BACKBONES, weights="none", input_size=INPUT_SIZE, views="hflip",
                                  val_fraction=0.25, test_fraction=0.25, progress=False)
    fusion.train_run(store, base / "run", units=8, epochs=2, patience=2, batch_size=8, ablation=False,
                     verbose=0)
    export_model(base / "run")
    return data, store, base / "run", summary


def test_the_store_records_each_backbones_recipe(mixed_run):
    _, store, _, summary = mixed_run
    assert summary.computed == {"mobilenet_v2": 16, "dinov2_small": 16}
    loaded = features.load_store(store, views=True)
    assert loaded.features["dinov2_small"].shape == (16, 2 * 384)  # auto: cls+avg for DINOv2
    assert loaded.features["mobilenet_v2"].shape == (16, 1280)
    assert loaded.views["dinov2_small"].shape == (16, 1, 768)
    from fusion.store import read_store_info

    recipes = read_store_info(store).feature_recipes
    assert recipes["dinov2_small"].pooling == "cls+avg" and recipes["mobilenet_v2"].pooling == "avg"
    assert recipes["dinov2_small"].preset == "kaggle://keras/dinov2/keras/dinov2_small/1"
    assert recipes["dinov2_small"].preprocessing.startswith("Rescaling(scale=[0.01712475")  # 1 / (255 * 0.229)
    assert recipes["mobilenet_v2"].preset is None


def test_a_second_run_reuses_the_stored_transformer_features(mixed_run, tmp_path):
    data, store, _, _ = mixed_run
    copy = tmp_path / "cache.h5"
    copy.write_bytes(store.read_bytes())
    summary = features.precompute(data, copy, BACKBONES, weights="none", input_size=INPUT_SIZE, views="hflip",
                                  val_fraction=0.25, test_fraction=0.25, progress=False)
    assert summary.computed == {"mobilenet_v2": 0, "dinov2_small": 0}
    assert summary.reused == {"mobilenet_v2": 16, "dinov2_small": 16}
    with pytest.raises(ValueError, match=r"made with pooling=cls\+avg, but this run asks for pooling=cls"):
        features.precompute(data, copy, BACKBONES, weights="none", input_size=INPUT_SIZE, views="hflip",
                            pooling={"dinov2_small": "cls"}, val_fraction=0.25, test_fraction=0.25, progress=False)


def test_exported_model_matches_the_store_path(mixed_run):
    import fusion
    from fusion.saved_run import load_keras_file

    data, store, run_dir, _ = mixed_run
    run = fusion.load_run(run_dir)
    loaded = features.load_store(store)
    stored = {name: loaded.features[name].astype("float32") for name in run.backbones}
    model = load_keras_file(run_dir / "exported.keras", "export it again")
    expected = run.predict_proba(stored, model=model.model_name)  # the report's winner, exported by default
    images = [features.load_image(data / path, min_size=INPUT_SIZE).astype("float32") for path in loaded.paths]
    actual = np.concatenate([model.predict_on_batch(image[None]) for image in images])
    # float16 storage: the store path's features are rounded, the exported model's are not.
    np.testing.assert_allclose(actual, expected, atol=5e-3)


def test_prediction_through_the_cli_on_the_mixed_export(mixed_run, tmp_path):
    import csv

    import run_predict

    data, _, run_dir, _ = mixed_run
    out = tmp_path / "predictions.csv"
    assert run_predict.main([str(run_dir), str(data), "--out", str(out)]) in (0, None)
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 16 and {row["predicted_class"] for row in rows} <= {"class_0", "class_1"}


@pytest.mark.slow
def test_the_mixed_export_reloads_in_safe_mode_in_a_fresh_process(mixed_run):
    _, _, run_dir, _ = mixed_run
    script = ("import keras, fusion, numpy as np\n"
              "from fusion.saved_run import load_keras_file\n"
              f"model = load_keras_file({str(run_dir / 'exported.keras')!r}, 'x')\n"
              "p = model.predict_on_batch(np.full((1, 50, 60, 3), 128, 'float32'))\n"
              "print(p.shape, model.class_names)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parent.parent, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "(1, 2) ('class_0', 'class_1')" in result.stdout


def test_a_transformer_under_mixed_bfloat16_gives_the_float32_features_within_bfloat16_rounding(tmp_path):
    data = write_two_class_images(tmp_path / "images", per_class=3)
    stored = {}
    for precision in ("float32", "mixed_bfloat16"):
        features.precompute(data, tmp_path / f"{precision}.h5", ["dinov2_small"], weights="none", input_size=28,
                            precision=precision, dtype="float32", progress=False)
        stored[precision] = features.load_store(tmp_path / f"{precision}.h5").features["dinov2_small"]
    assert stored["mixed_bfloat16"].dtype == np.float32
    assert np.corrcoef(stored["float32"].ravel(), stored["mixed_bfloat16"].ravel())[0, 1] > 0.999
    assert 0 < np.abs(stored["float32"] - stored["mixed_bfloat16"]).max() < 0.2  # computed in bfloat16, not ignored
