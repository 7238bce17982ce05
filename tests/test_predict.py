"""Classifying image files with an exported model, and the CSV a user gets."""

import csv
import json
from pathlib import Path

import keras
import numpy as np
import pytest

import features
import run_predict
from fusion.predict import Predictions, load_classifier, predict_images, write_predictions_csv


@pytest.fixture(scope="module")
def classifier(float32_run):
    data, _, run_dir = float32_run
    return data, run_dir, load_classifier(run_dir)


def image_paths(data):
    return sorted(data.rglob("*.png"))


def one_by_one(model, paths, view="identity"):
    """The exported model called on each whole image, the reference that batching must match."""
    return np.concatenate([
        model.predict_on_batch(features.apply_view(features.load_image(path), view).astype("float32")[None])
        for path in paths
    ])


def test_batched_prediction_matches_the_exported_model_image_by_image(classifier):
    data, _, model = classifier
    paths = image_paths(data)
    # A batch size that does not divide the image count exercises the padded last batch.
    predictions = predict_images(model, paths, batch_size=5)
    assert predictions.paths == [str(path) for path in paths]
    np.testing.assert_allclose(predictions.probabilities, one_by_one(model, paths), atol=1e-5)
    np.testing.assert_allclose(predictions.probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_views_average_the_probabilities_of_each_view(classifier):
    data, _, model = classifier
    paths = image_paths(data)[:3]
    predictions = predict_images(model, paths, batch_size=4, views="hflip")
    expected = (one_by_one(model, paths) + one_by_one(model, paths, "hflip")) / 2
    np.testing.assert_allclose(predictions.probabilities, expected, atol=1e-5)
    # The flip changes the result by more than the tolerance above, so ignoring views would fail.
    assert np.abs(predictions.probabilities - one_by_one(model, paths)).max() > 2e-5


def test_unreadable_files_are_skipped_with_their_reason(classifier, tmp_path):
    data, _, model = classifier
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    good = image_paths(data)[0]
    predictions = predict_images(model, [broken, good, tmp_path / "gone.png"])
    assert predictions.paths == [str(good)]
    assert [path for path, _ in predictions.skipped] == [str(broken), str(tmp_path / "gone.png")]
    assert "file not found" in predictions.skipped[1][1]
    assert predictions.skipped[0][1]


def test_csv_has_prediction_top_k_probabilities_and_errors(tmp_path):
    predictions = Predictions(
        paths=["a.png", "b.png"],
        probabilities=np.array([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]], np.float32),
        class_names=("cat", "dog", "fox"),
        skipped=[("c.png", "file not found")],
    )
    out = write_predictions_csv(predictions, tmp_path / "p.csv", top_k=2, all_probabilities=True)
    rows = list(csv.DictReader(open(out, encoding="utf-8")))
    assert list(rows[0]) == ["path", "predicted_class", "probability", "top_k", "p_cat", "p_dog", "p_fox", "error"]
    assert (rows[0]["predicted_class"], rows[0]["probability"], rows[0]["top_k"]) == ("dog", "0.700000", "dog:0.7000;fox:0.2000")
    assert (rows[1]["predicted_class"], rows[1]["top_k"]) == ("cat", "cat:0.5000;fox:0.3000")
    assert float(rows[1]["p_dog"]) == pytest.approx(0.2)
    assert rows[2] == {"path": "c.png", "predicted_class": "", "probability": "", "top_k": "", "p_cat": "",
                       "p_dog": "", "p_fox": "", "error": "file not found"}


def test_top_k_beyond_the_class_count_lists_every_class(tmp_path):
    predictions = Predictions(["a.png"], np.array([[0.6, 0.4]], np.float32), ("x", "y"), [])
    rows = list(csv.DictReader(open(write_predictions_csv(predictions, tmp_path / "p.csv", top_k=9))))
    assert rows[0]["top_k"] == "x:0.6000;y:0.4000"
    assert "p_x" not in rows[0]


@pytest.mark.parametrize("kwargs, message", [
    ({"batch_size": 0}, "batch_size must be a positive number of images. Received: batch_size=0"),
    ({"views": "rot45"}, "Unknown views 'rot45'"),
])
def test_bad_prediction_options(classifier, kwargs, message):
    data, _, model = classifier
    with pytest.raises(ValueError, match=message):
        predict_images(model, image_paths(data)[:1], **kwargs)


def test_bad_top_k(tmp_path):
    predictions = Predictions(["a.png"], np.array([[1.0]], np.float32), ("x",), [])
    with pytest.raises(ValueError, match="top_k must be at least 1. Received: top_k=0"):
        write_predictions_csv(predictions, tmp_path / "p.csv", top_k=0)


def test_missing_model_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"Model not found: .*nothing\.keras"):
        load_classifier(tmp_path / "nothing.keras")


def test_cli_classifies_a_folder_and_a_csv_list(classifier, tmp_path, capsys):
    data, run_dir, _ = classifier
    listing = tmp_path / "list.csv"
    first = image_paths(data)[0]
    listing.write_text(f"path\n{first}\nmissing.png\n")
    out = tmp_path / "predictions.csv"
    # Options may stand between the model and the images.
    code = run_predict.main([str(run_dir), "--out", str(out), str(data / "class_0"), "--top-k", "1", str(listing),
                             "--no-progress", "--all-probabilities"])
    assert code == 0
    rows = list(csv.DictReader(open(out, encoding="utf-8")))
    assert len(rows) == 8 + 1 + 1
    assert rows[-1]["error"] == "file not found"
    assert all(row["predicted_class"] in ("class_0", "class_1") for row in rows[:-1])
    assert all(abs(float(row["p_class_0"]) + float(row["p_class_1"]) - 1) < 1e-4 for row in rows[:-1])
    assert (tmp_path / "predictions.csv.options.json").is_file()
    assert "classified 9 images, skipped 1" in capsys.readouterr().out


def test_cli_export_only_writes_a_loadable_model(classifier, tmp_path):
    _, run_dir, _ = classifier
    target = tmp_path / "model.keras"
    assert run_predict.main([str(run_dir), "--export-only", "--export-to", str(target)]) == 0
    assert keras.saving.load_model(target, safe_mode=True).output_shape == (None, 2)
    assert json.loads((tmp_path / "model.keras.options.json").read_text())["export_to"] == str(target)


@pytest.mark.parametrize("argv, message", [
    (["{tmp}/nothing"], "run_predict.py: error: No images given"),
    (["{tmp}/nothing", "x.png"], "run_predict.py: error: Model not found: "),
    (["{tmp}/nothing", "{tmp}/list.csv"], "run_predict.py: error: CSV file not found: "),
    (["{tmp}/file.keras", "--export-only"], "run_predict.py: error: --export-only needs a run folder"),
    (["{tmp}/file.keras", "{tmp}/empty"], "run_predict.py: error: No images found in "),
])
def test_cli_user_errors_are_one_line(tmp_path, capsys, argv, message):
    (tmp_path / "file.keras").write_text("")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as raised:
        run_predict.main([arg.format(tmp=tmp_path) for arg in argv])
    assert raised.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1


def _copy_run(run_dir, tmp_path, exported=True):
    import shutil

    copy = shutil.copytree(run_dir, tmp_path / "run", ignore=None if exported else shutil.ignore_patterns("exported.keras"))
    return copy


def _models_loaded_by_cli(monkeypatch):
    """The models run_predict loads, in a list filled as it loads them (load_classifier unchanged, only watched).

    A test checks the file the command line left by the model the command line loaded from it,
    rather than loading the backbones from the file once more (a build, load and trace each).
    """
    import fusion.predict

    loaded = []
    load_classifier_unwatched = fusion.predict.load_classifier

    def load_and_keep(*args, **kwargs):
        loaded.append(load_classifier_unwatched(*args, **kwargs))
        return loaded[-1]

    monkeypatch.setattr(fusion.predict, "load_classifier", load_and_keep)
    return loaded


def _run_cli(argv, capsys):
    """Exit code, stdout and stderr lines of run_predict.main."""
    try:
        code = run_predict.main([str(arg) for arg in argv])
    except SystemExit as raised:
        code = raised.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err.splitlines()


def test_a_cut_short_cached_export_is_exported_again_saying_so(float32_run, tmp_path, capsys, monkeypatch):
    from fusion.run_folder import _read_written

    data, _, run_dir = float32_run
    loaded = _models_loaded_by_cli(monkeypatch)
    run_copy = _copy_run(run_dir, tmp_path)
    exported = run_copy / "exported.keras"
    exported.write_bytes(exported.read_bytes()[:4096])  # as a kill during the first export left it
    out = tmp_path / "p.csv"
    code, _, err = _run_cli([run_copy, image_paths(data)[0], "--out", out, "--no-progress"], capsys)
    assert code == 0
    assert err == [f"run_predict.py: warning: {exported} is damaged: not a whole .keras file (4096 bytes, not a "
                   f"complete zip archive; cut short?); exporting the run again."]
    assert "exported.keras" in _read_written(run_copy)
    assert not [path for path in run_copy.iterdir() if ".tmp-" in path.name]
    # The second prediction reuses the whole file, without a word; the model it loaded from it is the run's.
    written = exported.read_bytes()
    assert _run_cli([run_copy, image_paths(data)[0], "--out", out, "--no-progress"], capsys)[::2] == (0, [])
    assert exported.read_bytes() == written and len(loaded) == 2 and loaded[-1].output_shape == (None, 2)


def test_a_cached_export_written_before_fusion_classifier_is_exported_again(classifier, tmp_path, capsys,
                                                                            monkeypatch):
    from _run_fixtures import old_style_export
    from fusion.classifier import FusionClassifier

    data, run_dir, reloaded = classifier  # the run's exported.keras, loaded once for the module
    run_copy = _copy_run(run_dir, tmp_path)
    exported = run_copy / "exported.keras"
    old_style_export(reloaded).save(exported)  # as the previous version left it
    loaded = _models_loaded_by_cli(monkeypatch)
    out = tmp_path / "p.csv"
    code, _, err = _run_cli([run_copy, image_paths(data)[0], "--out", out, "--no-progress"], capsys)
    assert code == 0
    assert err == [f"run_predict.py: warning: {exported} is not a FusionClassifier (an export of an older "
                   f"fusionpipe?); exporting the run again."]
    (model,) = loaded  # what the command line loaded from the new exported.keras, and predicted with
    assert isinstance(model, FusionClassifier) and model.class_names == ("class_0", "class_1")
    rows = list(csv.DictReader(open(out, encoding="utf-8")))
    expected = one_by_one(model, image_paths(data)[:1])[0]
    assert rows[0]["predicted_class"] == f"class_{expected.argmax()}"
    assert float(rows[0]["probability"]) == pytest.approx(expected.max(), abs=1e-5)


@pytest.mark.slow
def test_two_first_predictions_on_one_run_at_once_both_succeed(float32_run, tmp_path):
    import os
    import subprocess
    import sys

    data, _, run_dir = float32_run
    run_copy = _copy_run(run_dir, tmp_path, exported=False)
    outs = [tmp_path / f"p{index}.csv" for index in range(2)]
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(Path(run_predict.__file__).parent)}
    processes = [
        subprocess.Popen([sys.executable, run_predict.__file__, str(run_copy), str(data), "--out", str(out),
                          "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment)
        for out in outs
    ]
    results = [process.communicate(timeout=600) for process in processes]
    for process, (stdout, stderr) in zip(processes, results):
        assert process.returncode == 0, stderr[-2000:]
        assert "classified 16 images, skipped 0" in stdout
        # TensorFlow's start-up notices are held back (features.tensorflow_noise); nothing else was said.
        assert "absl::InitializeLog" not in stderr and "WARNING" not in stderr, stderr[-2000:]
    first, second = (list(csv.DictReader(open(out, encoding="utf-8"))) for out in outs)
    assert first == second and len(first) == 16
    assert keras.saving.load_model(run_copy / "exported.keras", safe_mode=True).output_shape == (None, 2)
    assert sorted(path.name for path in run_copy.iterdir() if "exported" in path.name) == ["exported.keras"]


def _crafted(exported, target, module):
    """A copy of an exported model whose PreprocessInput layers name another module."""
    import zipfile

    with zipfile.ZipFile(exported) as source, zipfile.ZipFile(target, "w") as crafted:
        for item in source.infolist():
            content = source.read(item.filename)
            if item.filename == "config.json":
                text = content.decode()
                assert '"module": "mobilenet_v2"' in text
                content = text.replace('"module": "mobilenet_v2"', json.dumps({"module": module})[1:-1]).encode()
            crafted.writestr(item, content)
    return target


def test_a_crafted_preprocess_module_is_one_line(float32_run, tmp_path, capsys, monkeypatch):
    import fusion.predict

    data, _, run_dir = float32_run
    crafted = _crafted(run_dir / "exported.keras", tmp_path / "crafted.keras", "os")
    monkeypatch.setattr(fusion.predict, "predict_images", lambda *args, **kwargs: pytest.fail("predicted"))
    code, _, err = _run_cli([crafted, image_paths(data)[0], "--out", tmp_path / "p.csv"], capsys)
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"run_predict.py: error: Model file {crafted} does not load as a fusionpipe model "
                             f"(Unknown preprocessing module 'os'. Valid names: convnext, ")
    assert "Received: module='os'" in err[0] and not (tmp_path / "p.csv").exists()


@pytest.mark.parametrize("extra, message", [
    (["--top-k", "0"], "--top-k must be at least 1. Received: top_k=0"),
    (["--batch-size", "0"], "--batch-size must be at least 1. Received: batch_size=0"),
    (["--out", "{tmp}/a_folder"], "--out {tmp}/a_folder is a folder. Expected a file name"),
    (["--out", "{tmp}/a_file/new/p.csv"], "--out {tmp}/a_file/new/p.csv cannot be written: {tmp}/a_file is a file"),
    (["--export-to", "{tmp}/m.keras"], "--export-to is where --export-only writes the model"),
    (["--store", "{tmp}/a_file"], "--store applies to a run folder, whose recipe it is checked against"),
])
def test_prediction_arguments_are_checked_before_any_work(float32_run, tmp_path, capsys, monkeypatch, extra, message):
    import fusion.export
    import fusion.predict

    data, _, run_dir = float32_run
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "a_folder").mkdir()
    for module, name in ((fusion.predict, "load_classifier"), (fusion.predict, "predict_images"),
                         (fusion.export, "export_model")):
        monkeypatch.setattr(module, name, lambda *args, **kwargs: pytest.fail("work began"))
    model = run_dir / "exported.keras" if "--store" in extra else run_dir
    argv = [model, image_paths(data)[0], "--out", tmp_path / "p.csv"] + [arg.format(tmp=tmp_path) for arg in extra]
    code, _, err = _run_cli(argv, capsys)
    assert code == 2 and err == [err[0]] and err[0].startswith(f"run_predict.py: error: {message.format(tmp=tmp_path)}")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a_file", "a_folder"]


def test_a_store_made_with_another_recipe_is_refused_before_any_work(float32_run, tmp_path, capsys, monkeypatch):
    import shutil

    import fusion.predict
    import h5py

    data, store, run_dir = float32_run
    other = tmp_path / "cache_64px.h5"
    shutil.copy(store, other)
    with h5py.File(other, "r+") as handle:  # what a precompute at --input-size 64 records
        handle["features/mobilenet_v2"].attrs["input_size"] = 64
    before = (run_dir / "exported.keras").stat().st_mtime_ns
    monkeypatch.setattr(fusion.predict, "predict_images", lambda *args, **kwargs: pytest.fail("predicted"))
    code, _, err = _run_cli([run_dir, image_paths(data)[0], "--store", other, "--out", tmp_path / "p.csv"], capsys)
    assert code == 2 and err == [
        f"run_predict.py: error: Store {other} was made with another recipe than the run was trained on: backbone "
        f"'mobilenet_v2' has input_size=64 in the store, input_size=32 in the run's config.json. Pass the store the "
        f"run was trained on with --store, or train a run on this store. Received: store={str(other)!r}"]
    assert not (tmp_path / "p.csv").exists() and (run_dir / "exported.keras").stat().st_mtime_ns == before


def test_the_matching_store_is_checked_and_the_cached_export_used(float32_run, tmp_path, capsys):
    data, store, run_dir = float32_run
    before = (run_dir / "exported.keras").read_bytes()
    code, out, err = _run_cli([run_dir, image_paths(data)[0], "--store", store, "--out", tmp_path / "p.csv",
                               "--no-progress"], capsys)
    assert (code, err) == (0, []) and "classified 1 images" in out
    assert (run_dir / "exported.keras").read_bytes() == before


def test_a_run_without_a_recorded_recipe_is_exported_again_from_store(float32_run, tmp_path, monkeypatch):
    import shutil

    import fusion.predict

    _, store, run_dir = float32_run
    run_copy = _copy_run(run_dir, tmp_path)
    config = json.loads((run_copy / "config.json").read_text())
    del config["feature_recipes"]  # as a run trained on a store of another tool
    (run_copy / "config.json").write_text(json.dumps(config))
    exports = []

    def export_copy(run, out, store=None):
        exports.append((run, out, store))
        shutil.copy(run_dir / "exported.keras", out)
        return out

    monkeypatch.setattr(fusion.predict, "export_model", export_copy)
    with pytest.warns(UserWarning, match=f"Run {run_copy} records no feature recipe to check .*exported.keras "
                                         f"against; exporting it again from --store {store}"):
        model = load_classifier(run_copy, store=store)
    assert exports == [(run_copy, run_copy / "exported.keras", store)] and model.output_shape == (None, 2)
    # Without --store the cached export is used as it is.
    assert load_classifier(run_copy).output_shape == (None, 2) and len(exports) == 1


@pytest.mark.parametrize("damage, message", [
    ("report.json", "{run}/report.json is damaged: not valid JSON"),
    ("models/fusion.keras", "Model file {run}/models/fusion.keras is damaged: not a whole .keras file"),
])
def test_a_damaged_run_is_one_line_naming_the_file(float32_run, tmp_path, capsys, damage, message):
    data, _, run_dir = float32_run
    run_copy = _copy_run(run_dir, tmp_path, exported=False)
    content = (run_copy / damage).read_bytes()
    (run_copy / damage).write_bytes(content[: len(content) // 2])
    code, _, err = _run_cli([run_copy, image_paths(data)[0], "--out", tmp_path / "p.csv"], capsys)
    assert code == 2 and err == [err[0]] and err[0].startswith(f"run_predict.py: error: {message.format(run=run_copy)}")
    assert not (tmp_path / "p.csv").exists() and not (run_copy / "exported.keras").exists()


@pytest.mark.parametrize("extra", [[], ["--export-only"]])
def test_an_unknown_model_name_is_one_line_listing_the_valid_ones_before_any_work(float32_run, tmp_path, capsys,
                                                                                   monkeypatch, extra):
    import fusion.export
    import fusion.predict

    data, _, run_dir = float32_run
    for module, name in ((fusion.predict, "load_classifier"), (fusion.predict, "predict_images"),
                         (fusion.export, "export_model"), (fusion.export, "load_run")):
        monkeypatch.setattr(module, name, lambda *args, **kwargs: pytest.fail("work began"))
    images = [] if extra else [image_paths(data)[0]]
    code, _, err = _run_cli([run_dir, *images, "--model", "stacked", "--out", tmp_path / "p.csv", *extra], capsys)
    assert code == 2 and err == [
        f"run_predict.py: error: Unknown model 'stacked' of run {run_dir}. Valid names: fusion, mobilenet_v2, "
        f"vgg16, average, weighted_average, stacking. Received: model='stacked'"]
    assert not (tmp_path / "p.csv").exists()


def test_model_applies_to_a_run_folder_not_an_exported_file(float32_run, tmp_path, capsys):
    data, _, run_dir = float32_run
    code, _, err = _run_cli([run_dir / "exported.keras", image_paths(data)[0], "--model", "fusion",
                             "--out", tmp_path / "p.csv"], capsys)
    assert code == 2 and err == [
        f"run_predict.py: error: --model applies to a run folder, whose report names its models; the exported model "
        f"{run_dir / 'exported.keras'} already holds its backbones and model and is used as it is. Drop --model, or "
        f"pass the run folder. Received: model='fusion'"]


def test_cli_model_deploys_a_baseline_and_does_not_reuse_an_export_of_another_model(float32_run, tmp_path, capsys,
                                                                                    monkeypatch):
    from fusion.run_folder import _read_written
    from fusion.saved_run import load_run

    data, store, run_dir = float32_run
    run_copy = _copy_run(run_dir, tmp_path)
    default_export = (run_copy / "exported.keras").read_bytes()  # the winner's export, the session fixture's
    loaded = _models_loaded_by_cli(monkeypatch)
    winner = load_run(run_copy).default_model
    name = next(name for name in ("stacking", "weighted_average") if name != winner)
    cached = run_copy / f"exported_{name}.keras"
    cached.write_bytes((run_copy / "exported.keras").read_bytes())  # an export of the winner, under this name
    out = tmp_path / "p.csv"
    argv = [run_copy, data, "--model", name, "--out", out, "--all-probabilities", "--no-progress"]
    code, _, err = _run_cli(argv, capsys)
    assert code == 0
    assert err == [f"run_predict.py: warning: {cached} holds model {winner!r}, not {name!r}; exporting the run again."]
    (model,) = loaded  # what the command line loaded from the new exported_<name>.keras, and predicted with
    assert model.model_name == name and f"exported_{name}.keras" in _read_written(run_copy)
    # The CSV's probabilities are the baseline's on the stored features of the same images.
    rows = {row["path"]: row for row in csv.DictReader(open(out, encoding="utf-8"))}
    import h5py

    with h5py.File(store, "r") as handle:
        paths = [path.decode() for path in handle["images/path"][:]]
        stored = {backbone: handle[f"features/{backbone}"][:].astype("float32") for backbone in handle["features"]}
    expected = load_run(run_copy).predict_proba(stored, model=name)
    actual = np.array([[float(rows[str(data / path)][f"p_class_{index}"]) for index in range(2)] for path in paths])
    np.testing.assert_allclose(actual, expected, atol=1e-4)
    # The default export is left as it was (reusing a matching cached export is tested above, for the default).
    assert (run_copy / "exported.keras").read_bytes() == default_export
