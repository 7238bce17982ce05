"""The exported pixels-to-classes model: parity with the store path, safe reloading, errors."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest

import features
from features.recipe import FeatureRecipe
from _run_fixtures import BACKBONES, INPUT_SIZE, old_style_export
from features.store import StoreError
from fusion.classifier import FusionClassifier
from fusion.export import build_pixel_model, class_names_of, export_model, feature_recipes
from fusion.synthetic import write_synthetic_store


def stored_features(store, with_views=False):
    """The image paths of a store, its features per backbone and (with_views) its one extra view per backbone."""
    with h5py.File(store, "r") as handle:
        paths = [path.decode() if isinstance(path, bytes) else path for path in handle["images/path"][:]]
        stored = {name: handle[f"features/{name}"][:].astype("float32") for name in BACKBONES}
        views = {name: handle[f"views/{name}"][:, 0].astype("float32") for name in BACKBONES} if with_views else None
    return paths, stored, views


def store_path_probabilities(store, run_dir, model_name):
    """Probabilities of a model of the run (as the report names it) on the stored features, and the image paths."""
    run = __import__("fusion").load_run(run_dir)
    paths, stored, views = stored_features(store, with_views=model_name.endswith("+tta"))
    return paths, run.predict_proba(stored, model=model_name, view_features=[views] if views else None)


def _images(data, paths):
    # The test images are all of one size, so one batch holds them.
    return np.stack([features.load_image(data / path, min_size=INPUT_SIZE).astype("float32") for path in paths])


def exported_probabilities(model, data, paths):
    decode_size = INPUT_SIZE
    images = [features.load_image(data / path, min_size=decode_size).astype("float32") for path in paths]
    return np.concatenate([model.predict_on_batch(image[None]) for image in images])


@pytest.fixture(scope="module")
def reloaded():
    """`keras.saving.load_model(path, safe_mode=True)`, once per file, for the tests that only read the reloaded model.

    Loading an export rebuilds its backbones (about 2 s at 32 px); these tests check the reloaded model,
    not each its own reload. The test of calling a reloaded export directly loads its own.
    """
    models = {}

    def load(path):
        if path not in models:
            models[path] = keras.saving.load_model(path, safe_mode=True)
        return models[path]

    return load


@pytest.mark.parametrize("dtype, tolerance", [("float32", 1e-4), ("float16", 5e-3)])
def test_exported_model_matches_store_plus_head(request, reloaded, dtype, tolerance):
    data, store, run_dir = request.getfixturevalue(f"{dtype}_run")
    model = reloaded(run_dir / "exported.keras")
    paths, expected = store_path_probabilities(store, run_dir, model.model_name)
    actual = exported_probabilities(model, data, paths)
    assert actual.shape == (len(paths), 2)
    np.testing.assert_allclose(actual, expected, atol=tolerance)
    # The tolerance is tight enough to notice a wrong preprocessing or a missing resize.
    assert np.abs(actual - expected).max() < tolerance


def test_exported_model_carries_class_names_and_no_lambda(float32_run, reloaded):
    _, _, run_dir = float32_run
    model = reloaded(run_dir / "exported.keras")
    assert class_names_of(model) == ("class_0", "class_1")
    layer_types = {type(layer).__name__ for layer in model._flatten_layers()}
    assert "Lambda" not in layer_types
    assert {"Resizing", "PreprocessInput"} <= layer_types


def test_exported_model_holds_its_parts_as_attributes(float32_run, reloaded):
    _, store, run_dir = float32_run
    model = reloaded(run_dir / "exported.keras")
    run = __import__("fusion").load_run(run_dir)
    assert isinstance(model, FusionClassifier)
    assert model.class_names == ("class_0", "class_1")
    # By default the report's winner, with the backbones its model takes.
    assert model.model_name == run.report["summary"]["winner"] and model.test_time_views == ()
    backbones = sorted(tensor.name for tensor in run.keras_model(model.model_name).inputs)
    assert model.input_sizes == {name: INPUT_SIZE for name in backbones}
    assert sorted(model.backbones) == backbones and model.fusionpipe_version == features.__version__
    assert all(model.backbones[name].input_shape == (None, INPUT_SIZE, INPUT_SIZE, 3) for name in backbones)
    # The head attribute is that model of the run: on the stored features it gives the run's probabilities.
    _, stored, _ = stored_features(store)
    np.testing.assert_allclose(model.head.predict(stored, verbose=0),
                               run.predict_proba(stored, model=model.model_name), atol=1e-6)


def test_reloaded_model_matches_the_head_on_the_stored_features_within_1e_5(float32_run, reloaded):
    data, store, run_dir = float32_run
    model = reloaded(run_dir / "exported.keras")
    paths, expected = store_path_probabilities(store, run_dir, model.model_name)
    # The images resized as precompute resizes them: the extractors and head alone must give the stored path's numbers.
    resized = {name: np.stack([features.resize_image(features.load_image(data / path), size) for path in paths])
               for name, size in model.input_sizes.items()}
    np.testing.assert_allclose(model.resized_input_model().predict_on_batch(resized), expected, atol=1e-5)
    # Whole images through the model's own resize: the same operation, so the same numbers.
    np.testing.assert_allclose(exported_probabilities(model, data, paths), expected, atol=1e-5)


@pytest.mark.slow
def test_exported_model_reloads_in_a_fresh_process(float32_run, reloaded, tmp_path):
    data, _, run_dir = float32_run
    model_path = run_dir / "exported.keras"
    image_path = next((data / "class_1").glob("*.png"))
    here = reloaded(model_path).predict_on_batch(
        features.load_image(image_path).astype("float32")[None]
    )
    script = (
        "import json, sys, keras, fusion, features\n"
        f"model = keras.saving.load_model({str(model_path)!r}, safe_mode=True)\n"
        f"image = features.load_image({str(image_path)!r}).astype('float32')[None]\n"
        "print(json.dumps([type(model).__name__, list(model.class_names), model.input_sizes, sorted(model.backbones),\n"
        "                  model.fusionpipe_version]))\n"
        "print(json.dumps(model.predict_on_batch(image).tolist()))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180,
                            env={**__import__("os").environ, "TF_CPP_MIN_LOG_LEVEL": "3",
                                 "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    assert result.returncode == 0, result.stderr[-2000:]
    attributes, probabilities = result.stdout.strip().splitlines()[-2:]
    assert json.loads(attributes) == ["FusionClassifier", ["class_0", "class_1"],
                                      {name: INPUT_SIZE for name in sorted(BACKBONES)}, sorted(BACKBONES),
                                      features.__version__]
    np.testing.assert_allclose(np.array(json.loads(probabilities)), here, atol=1e-6)


def test_recipes_come_from_the_store(float32_run):
    _, store, _ = float32_run
    recipes = feature_recipes(store, BACKBONES)
    assert {name: (recipes[name].input_size, recipes[name].pooling, recipes[name].weights)
            for name in BACKBONES} == {name: (INPUT_SIZE, "avg", "none") for name in BACKBONES}


def test_missing_store_is_named(float32_run, tmp_path):
    _, _, run_dir = float32_run
    with pytest.raises(FileNotFoundError, match=r"Feature store not found: .*moved\.h5.*--store"):
        export_model(run_dir, tmp_path / "x.keras", store=tmp_path / "moved.h5")


def test_store_without_the_backbone_is_refused(float32_run, tmp_path):
    _, store, _ = float32_run
    with pytest.raises(ValueError, match="has no features for backbone 'xception'"):
        feature_recipes(store, ["xception"])


def test_foreign_store_without_recipes_is_refused(tmp_path):
    store = write_synthetic_store(tmp_path / "foreign.h5", "random", num_rows=20, backbones=("resnet50",))
    with pytest.raises(ValueError, match="do not record input_size, pooling, weights"):
        feature_recipes(store, ["resnet50"])


def test_an_unfinished_or_damaged_store_is_not_exported_from(float32_run, tmp_path):
    _, store, _ = float32_run
    unfinished = tmp_path / "unfinished.h5"
    shutil.copyfile(store, unfinished)
    with h5py.File(unfinished, "r+") as handle:
        backbone = sorted(handle["progress"])[0]
        handle["progress"][backbone][3] = 0
    with pytest.raises(StoreError, match=rf"is unfinished: 1 of \d+ rows of {backbone} were never computed"):
        feature_recipes(unfinished, [backbone])
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(Path(store).read_bytes()[:2000])
    with pytest.raises(StoreError, match="is damaged: HDF5 cannot open it"):
        feature_recipes(truncated, [backbone])


def test_export_file_must_be_keras_format(float32_run, tmp_path):
    _, _, run_dir = float32_run
    with pytest.raises(ValueError, match=r"name the file \*\.keras. Received: out="):
        export_model(run_dir, tmp_path / "model.h5")


def test_unfinished_run_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="Not a finished run"):
        export_model(tmp_path)


def test_class_names_of_a_plain_model_is_an_error():
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs), name="plain")
    with pytest.raises(ValueError, match=r"Model 'plain' carries no class names; it was not written by "
                                         r"fusion.export_model.*--export-only`. Received: model of type Functional"):
        class_names_of(model)


def tiny_classifier(sizes, class_names=("class_0", "class_1"), fusionpipe_version=None, model_name=None):
    """A FusionClassifier of pooling-only extractors, one per backbone of `sizes`, and a one-layer head."""
    extractors = {}
    for name, size in sizes.items():
        image = keras.Input((size, size, 3), name="image")
        extractors[name] = keras.Model(image, keras.layers.GlobalAveragePooling2D()(image), name=f"{name}_features")
    inputs = {name: keras.Input((3,), name=name) for name in sizes}
    joined = keras.layers.Concatenate()([inputs[name] for name in sorted(inputs)]) if len(inputs) > 1 else \
        next(iter(inputs.values()))
    head = keras.Model(inputs, keras.layers.Dense(len(class_names), activation="softmax")(joined), name="fusion")
    return FusionClassifier(extractors, head, class_names, fusionpipe_version=fusionpipe_version, model_name=model_name)


def test_fusion_classifier_round_trips_its_config():
    model = tiny_classifier({"mobilenet_v2": 8, "densenet121": 12}, ("cat", "dog"), fusionpipe_version="0.1.0")
    again = FusionClassifier.from_config(model.get_config())
    assert (again.class_names, again.input_sizes, again.fusionpipe_version) == (
        ("cat", "dog"), {"densenet121": 12, "mobilenet_v2": 8}, "0.1.0")
    assert sorted(again.backbones) == ["densenet121", "mobilenet_v2"] and again.output_shape == (None, 2)
    assert tiny_classifier({"vgg16": 8}).fusionpipe_version == features.__version__


def test_fusion_classifier_refuses_parts_that_do_not_fit():
    good = tiny_classifier({"mobilenet_v2": 8, "densenet121": 8})
    with pytest.raises(ValueError, match=r"The fusion head takes the backbones densenet121, mobilenet_v2, but "
                                         r"backbones names densenet121. .* Received: backbones=\['densenet121'\]"):
        FusionClassifier({"densenet121": good.backbones["densenet121"]}, good.head, ["a", "b"])
    image = keras.Input((None, None, 3))
    any_size = keras.Model(image, keras.layers.GlobalAveragePooling2D()(image))
    with pytest.raises(ValueError, match=r"The feature extractor of mobilenet_v2 takes images of shape "
                                         r"\(None, None, None, 3\). Expected square RGB images of one size"):
        FusionClassifier({**good.backbones, "mobilenet_v2": any_size}, good.head, ["a", "b"])


def test_build_pixel_model_takes_images_of_any_size(float32_run):
    _, store, run_dir = float32_run
    run = __import__("fusion").load_run(run_dir)
    model = build_pixel_model(run.fusion_model, feature_recipes(store, BACKBONES), run.class_names)
    for shape in ((40, 50, 3), (64, 33, 3)):
        probabilities = model.predict_on_batch(np.full((2,) + shape, 128, "float32"))
        assert probabilities.shape == (2, 2)
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_export_needs_no_store_when_the_run_recorded_the_recipes(float32_run, reloaded, tmp_path):
    data, store, run_dir = float32_run
    moved = tmp_path / "elsewhere.h5"
    store.rename(moved)
    try:
        model = keras.saving.load_model(export_model(run_dir, tmp_path / "again.keras"), safe_mode=True)
    finally:
        moved.rename(store)
    expected = reloaded(run_dir / "exported.keras")
    image = features.load_image(next((data / "class_0").glob("*.png"))).astype("float32")[None]
    np.testing.assert_allclose(model.predict_on_batch(image), expected.predict_on_batch(image), atol=1e-6)


def _store_with(store, tmp_path, backbone, **attrs):
    """A copy of `store` whose features of `backbone` say they were made otherwise (as another precompute would)."""
    import shutil

    copy = tmp_path / "other_recipe.h5"
    shutil.copy(store, copy)
    with h5py.File(copy, "r+") as handle:
        for key, value in attrs.items():
            handle[f"features/{backbone}"].attrs[key] = value
    return copy


@pytest.mark.parametrize("key, value, recorded", [
    ("input_size", 64, "32"), ("pooling", "max", "'avg'"), ("weights", "imagenet", "'none'"),
    ("views", "none", "'hflip'"), ("dtype", "float16", "'float32'"), ("seed", 7, "0"),
    ("preprocessing", "keras.applications.resnet.preprocess_input",
     "'keras.applications.mobilenet_v2.preprocess_input'"),
])
def test_a_store_made_with_another_recipe_is_refused(float32_run, tmp_path, key, value, recorded):
    from fusion.export import check_store_recipes
    from fusion.saved_run import read_run_config

    _, store, run_dir = float32_run
    other = _store_with(store, tmp_path, "mobilenet_v2", **{key: value})
    with pytest.raises(ValueError, match=(
            f"Store {other} was made with another recipe than the run was trained on: backbone 'mobilenet_v2' has "
            f"{key}={value!r} in the store, {key}={recorded} in the run's config.json. Pass the store the run was "
            f"trained on with --store")):
        check_store_recipes(other, read_run_config(run_dir)["feature_recipes"], BACKBONES)


def test_the_store_the_run_was_trained_on_passes_and_versions_may_differ(float32_run, tmp_path):
    from fusion.export import check_store_recipes, recorded_recipes, run_recipes
    from fusion.saved_run import read_run_config

    _, store, run_dir = float32_run
    recorded = recorded_recipes(read_run_config(run_dir))
    assert check_store_recipes(store, recorded, BACKBONES) == {name: recorded[name] for name in BACKBONES}
    newer = _store_with(store, tmp_path, "vgg16", keras_version="9.9.9", backend_version="0.0")
    assert run_recipes(run_dir, store=newer)["vgg16"].input_size == INPUT_SIZE


def test_export_with_another_recipe_is_refused_before_any_backbone_is_built(float32_run, tmp_path, monkeypatch):
    import fusion.export

    _, store, run_dir = float32_run
    monkeypatch.setattr(fusion.export, "build_pixel_model", lambda *args: pytest.fail("built a model"))
    other = _store_with(store, tmp_path, "vgg16", input_size=64)
    with pytest.raises(ValueError, match="backbone 'vgg16' has input_size=64 in the store, input_size=32 in"):
        export_model(run_dir, tmp_path / "x.keras", store=other)
    assert not (tmp_path / "x.keras").exists()


def test_a_failed_export_leaves_the_old_file_whole_and_no_temporary(float32_run, tmp_path, monkeypatch):
    import fusion.export

    _, _, run_dir = float32_run
    target = tmp_path / "model.keras"
    target.write_bytes(b"the previous export")
    inputs = keras.Input((None, None, 3))
    monkeypatch.setattr(fusion.export, "build_pixel_model",
                        lambda *args: keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(inputs)))

    def save_half_then_fail(self, path, *args, **kwargs):
        with open(path, "wb") as handle:
            handle.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt  # a Ctrl-C during the save

    monkeypatch.setattr(keras.Model, "save", save_half_then_fail)
    with pytest.raises(KeyboardInterrupt):
        export_model(run_dir, target)
    assert target.read_bytes() == b"the previous export" and sorted(p.name for p in tmp_path.iterdir()) == ["model.keras"]


def test_the_export_name_is_checked_before_the_run_is_read(tmp_path):
    with pytest.raises(ValueError, match=r"name the file \*\.keras"):
        export_model(tmp_path / "no_run_here", tmp_path / "model.h5")
    (tmp_path / "folder.keras").mkdir()
    with pytest.raises(ValueError, match=r"folder\.keras is a folder. Expected a \.keras file name"):
        export_model(tmp_path / "no_run_here", tmp_path / "folder.keras")


def test_a_cached_export_of_another_recipe_does_not_match_the_run(float32_run, reloaded):
    from fusion.export import matches_run

    _, _, run_dir = float32_run
    assert matches_run(reloaded(run_dir / "exported.keras"), run_dir)
    both = {"mobilenet_v2": 32, "vgg16": 32}
    assert matches_run(tiny_classifier(both, model_name="fusion"), run_dir, "fusion")
    assert not matches_run(tiny_classifier({"mobilenet_v2": 64, "vgg16": 32}, model_name="fusion"), run_dir,
                           "fusion")  # made from a 64 px store
    assert not matches_run(tiny_classifier({"mobilenet_v2": 32}, model_name="fusion"), run_dir, "fusion")
    assert not matches_run(tiny_classifier(both, ("cat", "dog"), model_name="fusion"), run_dir, "fusion")
    # An export of another model of the run is not the one asked for; one that names none holds the fusion head.
    assert not matches_run(tiny_classifier(both, model_name="stacking"), run_dir, "fusion")
    assert matches_run(tiny_classifier(both), run_dir, "fusion")
    assert matches_run(tiny_classifier({"mobilenet_v2": 32}, model_name="mobilenet_v2"), run_dir, "mobilenet_v2")
    assert not matches_run(tiny_classifier(both, model_name="mobilenet_v2"), run_dir, "mobilenet_v2")


def test_an_export_written_before_fusion_classifier_loads_but_does_not_match_the_run(float32_run, reloaded,
                                                                                     tmp_path):
    from fusion.export import matches_run

    _, _, run_dir = float32_run
    old_path = tmp_path / "old.keras"
    old_style_export(reloaded(run_dir / "exported.keras")).save(old_path)
    old = keras.saving.load_model(old_path, safe_mode=True)
    assert not isinstance(old, FusionClassifier) and not matches_run(old, run_dir)
    with pytest.raises(ValueError, match="Model 'fusionpipe_classifier' carries no class names; .* or by a version "
                                         "before FusionClassifier. Export the run again"):
        class_names_of(old)


def test_a_replaced_weights_file_is_refused_before_any_backbone_is_built(tmp_path):
    folder = tmp_path / "weights"
    folder.mkdir()
    weights_file = folder / features.get_backbone_spec("vgg16").weights_file
    weights_file.write_bytes(b"weights of another training run")
    head = keras.Sequential([keras.Input((4,), name="vgg16"), keras.layers.Dense(2, activation="softmax")])
    recipe = FeatureRecipe(backbone="vgg16", input_size=32, weights=str(folder), pooling="avg", seed=0,
                           weights_sha256="0" * 64)
    with pytest.raises(ValueError, match=r"The weights file of vgg16 \(.*\) has sha256 [0-9a-f]{64}, but the store's "
                                         r"features were made with a file of sha256 0{64}"):
        build_pixel_model(head, {"vgg16": recipe}, ["a", "b"])


@pytest.mark.slow
def test_a_cross_validated_run_exports_the_fold_ensemble_of_its_chosen_head(float32_run, tmp_path):
    # The attention head inside an export is tested in tests/test_heads.py; one head here keeps the suite short.
    data, store, _ = float32_run
    fusion = "gated"
    run_dir = tmp_path / "cv_run"
    run = __import__("fusion").train_run(store, run_dir, fusion=[fusion], folds=2, units=8, epochs=2, patience=2,
                                         batch_size=8, ablation=False, verbose=0)
    assert run.report["summary"]["fusion_head"] == f"{fusion}_fusion"
    model = keras.saving.load_model(export_model(run_dir, model=f"{fusion}_fusion"), safe_mode=True)
    # One graph: each backbone once, the head averaging the two fold models of the chosen head.
    fold_models = [layer.name for layer in model.head.layers if isinstance(layer, keras.Model)]
    assert fold_models == [f"{fusion}_fusion_repeat1_fold1", f"{fusion}_fusion_repeat1_fold2"]
    assert sorted(model.backbones) == sorted(BACKBONES)
    paths, expected = store_path_probabilities(store, run_dir, f"{fusion}_fusion")
    np.testing.assert_allclose(exported_probabilities(model, data, paths), expected, atol=1e-4)


def test_the_report_takes_each_backbones_extraction_cost_from_the_store(float32_run):
    # The store records the seconds each backbone's predict calls took; the run's report carries them per model.
    _, store, run_dir = float32_run
    report = json.loads((run_dir / "report.json").read_text())
    per_image = features.load_store(store).precompute_seconds_per_image
    assert set(per_image) == set(BACKBONES) and all(0 < seconds < 60 for seconds in per_image.values())
    assert report["cost"]["precompute_seconds_per_image"] == pytest.approx(per_image)
    assert report["cost"]["models"]["fusion"]["precompute_seconds_per_image"] == pytest.approx(sum(per_image.values()))
    assert report["cost"]["models"]["average"]["training_seconds_in_all"] > 0


def _with_tta_in_report(run_dir, tmp_path):
    """A copy of the run whose report lists `fusion+tta`, as a run trained with --tta does (its store has hflip views)."""
    copy = shutil.copytree(run_dir, tmp_path / "run", ignore=shutil.ignore_patterns("exported*.keras"))
    report = json.loads((copy / "report.json").read_text())
    report["test"]["fusion+tta"] = report["test"]["fusion"]
    (copy / "report.json").write_text(json.dumps(report))
    return copy


KINDS = ["fusion", "mobilenet_v2", "average", "weighted_average", "stacking", "fusion+tta"]


def test_export_model_puts_the_named_model_of_the_run_in_the_pixel_model(float32_run, tmp_path, monkeypatch):
    import fusion.export
    from fusion.saved_run import load_run

    _, _, run_dir = float32_run
    run_copy = _with_tta_in_report(run_dir, tmp_path)
    run = load_run(run_copy)

    class Built(Exception):
        pass

    def capture(head, recipes, class_names, model_name, test_time_views):
        raise Built([tensor.name for tensor in head.inputs], head.name, model_name, tuple(test_time_views))

    monkeypatch.setattr(fusion.export, "build_pixel_model", capture)
    for name in KINDS:
        with pytest.raises(Built) as built:
            export_model(run_copy, tmp_path / "x.keras", model=name)
        inputs, head_name, model_name, views = built.value.args
        assert (head_name, model_name) == (run.keras_model(name).name, name)
        assert sorted(inputs) == (["mobilenet_v2"] if name == "mobilenet_v2" else sorted(BACKBONES))
        assert views == (("hflip",) if name == "fusion+tta" else ())
    assert run.keras_model("fusion+tta") is run.keras_model("fusion") is run.models["fusion"]
    assert run.keras_model("stacking").name == "stacking"


def test_every_kind_of_model_in_the_pixel_model_matches_load_run(float32_run, tmp_path):
    # The extractors are built once and shared (a real export per kind would cost a backbone
    # build, save, load and trace each); test_predict exports a baseline through run_predict --model.
    from fusion.export import run_recipes
    from fusion.predict import predict_images
    from fusion.saved_run import load_run

    data, store, run_dir = float32_run
    run_copy = _with_tta_in_report(run_dir, tmp_path)
    run = load_run(run_copy)
    recipes = run_recipes(run_copy)
    extractors = {name: recipes[name].create_backbone() for name in BACKBONES}
    paths, stored, views = stored_features(store, with_views=True)
    images = _images(data, paths)
    seen = {}
    for name in KINDS:
        head = run.keras_model(name)
        model = FusionClassifier({tensor.name: extractors[tensor.name] for tensor in head.inputs}, head,
                                 run.class_names, model_name=name,
                                 test_time_views=("hflip",) if name.endswith("+tta") else ())
        expected = run.predict_proba(stored, model=name, view_features=[views] if name.endswith("+tta") else None)
        if name.endswith("+tta"):
            # predict_images averages over the recorded views, as training's TTA averaged the store's.
            actual = predict_images(model, [data / path for path in paths]).probabilities
        else:
            # Eagerly: predict_on_batch would trace each classifier's backbones again.
            actual = keras.ops.convert_to_numpy(model(images, training=False))
        np.testing.assert_allclose(actual, expected, atol=1e-4, err_msg=name)
        seen[name] = expected
    # Each kind is its own model, not the fusion head under another name (the weighted average
    # may put all its weight on one backbone, so it is not compared with that one).
    assert all(np.abs(seen[name] - seen["fusion"]).max() > 1e-4 for name in KINDS[1:])
    assert np.abs(seen["average"] - seen["mobilenet_v2"]).max() > 1e-4
    assert np.abs(seen["stacking"] - seen["average"]).max() > 1e-4


def test_an_unknown_model_name_is_refused_before_the_run_loads(float32_run, tmp_path, monkeypatch):
    import fusion.export

    _, _, run_dir = float32_run
    monkeypatch.setattr(fusion.export, "load_run", lambda *args: pytest.fail("loaded the run"))
    with pytest.raises(ValueError, match=rf"Unknown model 'stacked' of run {run_dir}. Valid names: fusion, "
                                         rf"mobilenet_v2, vgg16, average, weighted_average, stacking. "
                                         rf"Received: model='stacked'") as raised:
        export_model(run_dir, tmp_path / "x.keras", model="stacked")
    assert "\n" not in str(raised.value) and not (tmp_path / "x.keras").exists()


def test_the_default_is_the_winner_and_its_cached_file_is_exported_keras(float32_run, tmp_path, monkeypatch):
    import fusion.export
    from fusion.export import cached_export_path, export_model_name
    from fusion.saved_run import load_run

    _, _, run_dir = float32_run
    winner = json.loads((run_dir / "report.json").read_text())["summary"]["winner"]
    assert export_model_name(run_dir) == winner == load_run(run_dir).default_model
    assert cached_export_path(run_dir) == cached_export_path(run_dir, winner) == run_dir / "exported.keras"
    other = next(name for name in ("fusion", "stacking") if name != winner)
    assert cached_export_path(run_dir, other) == run_dir / f"exported_{other}.keras"
    # A run from before the baselines were saved as models, whose winner is one, deploys its fusion head, saying so.
    old_run = shutil.copytree(run_dir, tmp_path / "old_run", ignore=shutil.ignore_patterns("exported*.keras"))
    report = json.loads((old_run / "report.json").read_text())
    report["summary"]["winner"] = "stacking+tta"
    (old_run / "report.json").write_text(json.dumps(report))
    (old_run / "models" / "stacking.keras").unlink()
    assert export_model_name(old_run) == "fusion" and cached_export_path(old_run) == old_run / "exported.keras"

    class Stop(Exception):
        pass

    monkeypatch.setattr(fusion.export, "run_recipes", lambda *args: (_ for _ in ()).throw(Stop()))
    with pytest.warns(UserWarning, match=r"The winner 'stacking\+tta' of run .* has no models/stacking.keras \(runs "
                                         r"before the baselines were saved as models\); exporting its fusion head "
                                         r"'fusion' instead"), pytest.raises(Stop):
        export_model(old_run)


def test_calling_the_reloaded_export_directly_gives_what_predict_gives(float32_run):
    # `model(images)` leaves `training` unset; the graph fixes it to False, so a reloaded backbone's
    # BatchNormalization layers use their statistics, not the batch's (0.84 apart before it did).
    _, _, run_dir = float32_run
    model = keras.saving.load_model(run_dir / "exported.keras", safe_mode=True)
    # The test means something only while the export holds such layers (mobilenet_v2's; vgg16 has none).
    assert any(isinstance(layer, keras.layers.BatchNormalization) for layer in model._flatten_layers())
    images = np.random.default_rng(0).uniform(0, 255, (4, 44, 52, 3)).astype("float32")
    expected = model.predict_on_batch(images)
    np.testing.assert_allclose(np.asarray(model(images)), expected, atol=1e-5)
    resized = model.resized_input_model()
    inputs = {name: np.asarray(model.resizers[name](images)) for name in model.backbones}
    np.testing.assert_allclose(np.asarray(resized(inputs)), expected, atol=1e-5)
