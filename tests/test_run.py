"""A whole run: the XOR and noisy-views answers, every output file, TTA, and reloading in a fresh process."""

import csv
import json
import os
import subprocess
import sys

import h5py
import keras
import numpy as np
import pytest

from fusion.evaluation import mcnemar_test
from fusion.model import build_fusion_model
from fusion.run import train_run
from fusion.run_folder import _read_written
from fusion.saved_run import load_run
from fusion.store import read_store_info
from fusion.synthetic import write_synthetic_store
from _run_fixtures import logged_lines, unconfigured_logging

QUIET = {"verbose": 0}
SMALL = {"units": 32, "epochs": 20, "patience": 5, **QUIET}


@pytest.fixture(scope="module")
def xor_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("xor")
    store = write_synthetic_store(folder / "xor.h5", kind="xor", num_rows=400, feature_dims=16, num_views=2, seed=1)
    return train_run(store, folder / "run", head_units=[32], tta=True, seed=1, **SMALL)


def _accuracy(run, name):
    return run.report["test"][name]["accuracy"]


def test_xor_fusion_with_head_units_clearly_beats_every_backbone_and_the_average(xor_run):
    fusion = _accuracy(xor_run, "fusion")
    others = {name: _accuracy(xor_run, name) for name in ("alpha", "beta", "average")}
    assert fusion > 0.8 and all(fusion - accuracy > 0.2 for accuracy in others.values()), (fusion, others)
    assert xor_run.report["summary"]["winner"].startswith("fusion")
    assert xor_run.report["mcnemar"]["fusion_vs_average"]["p_value"] < 0.001
    # Without either backbone the XOR is undecidable: the ablation shows what each adds.
    assert all(fusion - _accuracy(xor_run, f"fusion_without_{name}") > 0.2 for name in ("alpha", "beta"))


def test_xor_fusion_without_head_units_does_not_beat_them(xor_run):
    # The additive model on the same store, split and budget as the run above.
    from fusion.data import FeatureBatches, open_feature_source
    from fusion.training import train_model
    import keras

    info = read_store_info(xor_run.report["store"])
    source = open_feature_source(info.path, info.backbones, stream=False)

    def batches(split, **kwargs):
        rows = info.split_rows(split)
        return FeatureBatches(source, info.backbones, rows, info.labels[rows], seed=1, **kwargs)

    keras.utils.set_random_seed(1)
    model = build_fusion_model({name: info.feature_shapes[name] for name in info.backbones}, 2, units=32)
    train_model(model, batches("train", shuffle=True), batches("val"), epochs=20, patience=5)
    accuracy = np.mean(model.predict(batches("test"), verbose=0).argmax(1) == info.labels[info.split_rows("test")])
    best_other = max(_accuracy(xor_run, name) for name in ("alpha", "beta", "average"))
    assert accuracy < best_other + 0.1 and accuracy < 0.7, (accuracy, best_other)


def test_noisy_views_averaging_beats_every_single_backbone(tmp_path):
    store = write_synthetic_store(
        tmp_path / "noisy.h5", kind="noisy_views", num_rows=500, backbones=("a", "b", "c"), feature_dims=16,
        noise=2.0, split_fractions=(0.5, 0.2, 0.3), seed=2,
    )
    run = train_run(store, tmp_path / "run", ablation=False, seed=2, **{**SMALL, "epochs": 12})
    average = _accuracy(run, "average")
    singles = [_accuracy(run, name) for name in ("a", "b", "c")]
    # Measured: average 0.78 against 0.70 / 0.54 / 0.60 (seed 2), 0.79 against 0.51-0.54 (seed 3).
    assert all(average - single > 0.05 for single in singles), (average, singles)
    assert not any(name.startswith("fusion_without_") for name in run.report["test"])


def test_features_on_any_scale_train_the_same_model(tmp_path):
    # Backbones give features on scales orders of magnitude apart; each branch standardises its
    # input with the training rows' statistics, so rescaling a backbone changes nothing.
    plain = write_synthetic_store(tmp_path / "plain.h5", kind="noisy_views", num_rows=300, backbones=("a", "b"),
                                  dtype="float32", seed=4)
    scaled = tmp_path / "scaled.h5"
    scaled.write_bytes(plain.read_bytes())
    with h5py.File(scaled, "r+") as store:
        store["features/a"][...] = store["features/a"][()] * 1e-3 + 0.01
        store["features/b"][...] = store["features/b"][()] * 40.0 + 100.0
    settings = {**SMALL, "epochs": 8, "ablation": False}
    runs = [train_run(path, tmp_path / path.stem, **settings) for path in (plain, scaled)]
    standardize = runs[1].models["fusion"].get_layer("a_standardize")
    info = read_store_info(scaled)
    with h5py.File(scaled, "r") as store:
        train_features = store["features/a"][()][info.split_rows("train")]
    np.testing.assert_allclose(np.asarray(standardize.adapt_mean), train_features.mean(0), rtol=1e-4)
    for name in ("fusion", "a", "b"):
        assert _accuracy(runs[0], name) == pytest.approx(_accuracy(runs[1], name), abs=0.02), name
    assert _accuracy(runs[1], "fusion") > 0.6


@pytest.mark.slow
def test_the_same_seed_repeats_a_run_exactly(tmp_path):
    store = write_synthetic_store(tmp_path / "store.h5", kind="noisy_views", num_rows=150, backbones=("a", "b"), seed=6)
    settings = {"units": 8, "epochs": 3, "ablation": False, **QUIET}
    runs = [train_run(store, tmp_path / name, seed=seed, **settings) for name, seed in (("one", 1), ("two", 1), ("three", 2))]
    probabilities = [np.load(run.run_dir / "predictions" / "test_probabilities.npz") for run in runs]
    for name in ("fusion", "a", "b", "stacking"):
        np.testing.assert_array_equal(probabilities[0][name], probabilities[1][name])
    assert not np.array_equal(probabilities[0]["fusion"], probabilities[2]["fusion"])


def test_report_warns_about_a_backbone_whose_features_never_change(tmp_path, capsys):
    store = write_synthetic_store(tmp_path / "store.h5", kind="noisy_views", num_rows=120, backbones=("a", "b"), seed=2)
    with h5py.File(store, "r+") as store_file:
        store_file["features/b"][...] = 0.0  # a collapsed backbone, as random MobileNetV2 weights give
    with unconfigured_logging(), logged_lines("fusion") as logged:
        run = train_run(store, tmp_path / "run", units=8, epochs=2, ablation=False, **QUIET)
    assert logged == [] and capsys.readouterr().out == ""  # verbose=0 is silent, even where lines would show
    assert run.report["warnings"] == [
        "The features of b are the same for every training image, so this backbone carries no information here: "
        "a randomly initialised network can collapse like this; with ImageNet weights, check the weight file."
    ]
    assert "The features of b are the same for every training image" in (tmp_path / "run" / "report.md").read_text()


def test_report_json_holds_every_model_and_matches_the_predictions(xor_run):
    test = xor_run.report["test"]
    expected = {"fusion", "average", "weighted_average", "stacking", "alpha", "beta", "fusion_without_alpha",
                "fusion_without_beta", "fusion+tta", "alpha+tta", "beta+tta", "average+tta"}
    assert set(test) == expected
    on_disk = json.loads((xor_run.run_dir / "report.json").read_text())
    assert on_disk["test"].keys() == test.keys()
    for name, metrics in on_disk["test"].items():
        assert {"accuracy", "log_loss", "macro_f1", "per_class", "confusion_matrix"} <= set(metrics)
        with open(xor_run.run_dir / "predictions" / f"{name}.csv") as handle:
            rows = list(csv.DictReader(handle))
        assert len(rows) == metrics["num_images"] == on_disk["images_per_split"]["test"]
        assert np.mean([row["label"] == row["predicted"] for row in rows]) == pytest.approx(metrics["accuracy"])
    saved = np.load(xor_run.run_dir / "predictions" / "test_probabilities.npz")
    recomputed = mcnemar_test(saved["labels"], saved["fusion"].argmax(1), saved["average"].argmax(1))
    assert recomputed["p_value"] == pytest.approx(on_disk["mcnemar"]["fusion_vs_average"]["p_value"])


def test_tta_averages_the_identity_and_every_view(xor_run):
    info = read_store_info(xor_run.report["store"])
    rows = info.split_rows("test")
    with h5py.File(info.path) as store_file:
        identity = {name: store_file["features"][name][()][rows].astype("float32") for name in info.backbones}
        views = {name: store_file["views"][name][()][rows].astype("float32") for name in info.backbones}
    model = xor_run.fusion_model
    per_view = [model.predict(identity, verbose=0)] + [
        model.predict({name: views[name][:, v] for name in info.backbones}, verbose=0) for v in range(2)
    ]
    saved = np.load(xor_run.run_dir / "predictions" / "test_probabilities.npz")
    np.testing.assert_allclose(saved["fusion_plus_tta"], np.mean(per_view, axis=0), rtol=1e-5, atol=1e-6)
    # The views carry fresh noise, so averaging them decides at least as many images right.
    assert xor_run.report["test"]["fusion+tta"]["accuracy"] >= xor_run.report["test"]["fusion"]["accuracy"]


def _test_features(run):
    """The test rows' features and their two extra views, per backbone, as the store holds them."""
    info = read_store_info(run.report["store"])
    rows = info.split_rows("test")
    with h5py.File(info.path) as store_file:
        identity = {name: store_file["features"][name][()][rows] for name in info.backbones}
        views = [{name: store_file["views"][name][()][rows][:, index] for name in info.backbones} for index in range(2)]
    return identity, views


def test_load_run_predicts_every_model_the_report_lists_as_the_report_does(xor_run):
    run = load_run(xor_run.run_dir)
    assert run.model_names == list(xor_run.report["test"])
    identity, views = _test_features(run)
    saved = np.load(run.run_dir / "predictions" / "test_probabilities.npz")
    for name in run.model_names:  # trained models, baselines, ablations and +tta
        probabilities = run.predict_proba(identity, model=name, view_features=views if name.endswith("+tta") else None)
        np.testing.assert_allclose(probabilities, saved[name.replace("+", "_plus_")], atol=1e-5, err_msg=name)
    # The baselines' model files, loaded in safe mode, give the report's test probabilities.
    for name in ("average", "weighted_average", "stacking"):
        model = keras.saving.load_model(run.run_dir / "models" / f"{name}.keras", safe_mode=True)
        assert [tensor.name for tensor in model.inputs] == ["alpha", "beta"]
        np.testing.assert_allclose(model.predict(identity, verbose=0), saved[name], atol=1e-5, err_msg=name)
    # Loading stays cheap: the baselines load on first use, not with the run.
    assert sorted(load_run(run.run_dir).models) == sorted(xor_run.models)


def test_predict_proba_refuses_unknown_names_and_misplaced_views_in_one_line(xor_run):
    run = load_run(xor_run.run_dir)
    identity, views = _test_features(run)
    cases = [
        ({"model": "stacked"}, rf"Unknown model 'stacked' of run {run.run_dir}. Valid names: fusion, alpha, beta, "
                               r"fusion_without_alpha, .*, stacking, fusion\+tta, .*, average\+tta. "
                               r"Received: model='stacked'"),
        ({"model": "fusion+tta"}, r"Model 'fusion\+tta' averages over the test-time views: pass view_features="
                                  r"\[\{backbone: features of view 1\}, ...\], one dict per extra view .* "
                                  r"Received: view_features=None"),
        ({"model": "fusion", "view_features": views}, r"Model 'fusion' sees the identity view only; view_features are "
                                                      r"for the test-time augmentation models \('fusion\+tta' where "
                                                      r"the run has it\).* Received: view_features with 2 views"),
        ({"model": "stacking+tta", "view_features": views}, r"Unknown model 'stacking\+tta'"),
        ({"model": "alpha+tta", "view_features": [{"gamma": identity["alpha"]}]},
         r"view_features name backbones the run does not have: \['gamma'\]. Expected some of \['alpha', 'beta'\]"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message) as raised:
            run.predict_proba(identity, **kwargs)
        assert "\n" not in str(raised.value)
    # A view that leaves a backbone out uses its identity features, as training does for a backbone with fewer views.
    only_alpha = [{"alpha": view["alpha"]} for view in views]
    mixed = [{"alpha": view["alpha"], "beta": identity["beta"]} for view in views]
    np.testing.assert_allclose(run.predict_proba(identity, model="fusion+tta", view_features=only_alpha),
                               run.predict_proba(identity, model="fusion+tta", view_features=mixed), atol=1e-7)


def test_run_folder_holds_models_histories_plots_and_config(xor_run):
    run_dir = xor_run.run_dir
    # Every file of the run is in its record, so that --overwrite can remove it and nothing else.
    written = set(_read_written(run_dir))
    present = {path.relative_to(run_dir).as_posix() for path in run_dir.rglob("*") if path.is_file()}
    assert present - written == {"written_files.json"} and "report.md" in written
    models = sorted(path.name for path in (run_dir / "models").iterdir())
    assert models == ["alpha.keras", "average.keras", "beta.keras", "fusion.keras", "fusion_without_alpha.keras",
                      "fusion_without_beta.keras", "stacking.keras", "weighted_average.keras"]
    for name, training in xor_run.report["training"].items():
        with open(run_dir / "history" / f"{name}.csv") as handle:
            assert len(list(csv.DictReader(handle))) == training["epochs_run"] <= 20
    markdown = (run_dir / "report.md").read_text()
    for relative in xor_run.report["plots"].values():
        assert (run_dir / relative).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({relative})" in markdown
    config = json.loads((run_dir / "config.json").read_text())
    assert set(config["versions"]) == {"python", "keras", "backend", "numpy", "h5py", "sklearn"}
    assert config["arguments"]["head_units"] == [32] and config["arguments"]["streamed"] is False


def test_config_records_the_fusionpipe_version_that_trained_the_run(xor_run):
    import features

    on_disk = json.loads((xor_run.run_dir / "config.json").read_text())
    assert on_disk["fusionpipe_version"] == features.__version__
    assert xor_run.config["fusionpipe_version"] == features.__version__  # the config train_run returns
    assert load_run(xor_run.run_dir).config["fusionpipe_version"] == features.__version__


@pytest.mark.slow
def test_loaded_run_predicts_the_same_in_a_fresh_process(xor_run, tmp_path):
    script = (
        "import sys, h5py, numpy as np\n"
        "from fusion import load_run, read_store_info\n"
        "run = load_run(sys.argv[1])\n"
        "info = read_store_info(run.report['store'])\n"
        "rows = info.split_rows('test')\n"
        "with h5py.File(info.path) as f:\n"
        "    features = {b: f['features'][b][()][rows] for b in run.backbones}\n"
        "np.save(sys.argv[2], run.predict_proba(features))\n"
        "print(run.class_names, run.backbones, sorted(run.models))\n"
    )
    output = tmp_path / "reloaded.npy"
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run([sys.executable, "-c", script, str(xor_run.run_dir), str(output)],
                            capture_output=True, text=True, env=environment, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "('class_0', 'class_1') ('alpha', 'beta')" in result.stdout
    saved = np.load(xor_run.run_dir / "predictions" / "test_probabilities.npz")
    np.testing.assert_allclose(np.load(output), saved["fusion"], rtol=1e-5, atol=1e-6)


def test_load_run_of_an_unfinished_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"Not a finished run: {tmp_path / 'config.json'} is missing"):
        load_run(tmp_path)


def test_errors_come_before_any_work(tmp_path):
    store = write_synthetic_store(tmp_path / "plain.h5", kind="xor", num_rows=60)
    out = tmp_path / "run"
    cases = [
        ({"tta": True}, r"--tta needs extra views in the store \(/views/<backbone>\)"),
        ({"view_augment": True}, "--view-augment needs extra views"),
        ({"backbones": ["gamma"]}, r"Unknown backbone 'gamma'.*Valid names: alpha, beta"),
        ({"units": 0}, "units must be at least 1"),
        ({"epochs": 0}, "epochs must be at least 1. Received: epochs=0"),
        ({"block_rows": 0}, "block_rows must be at least 1"),
        ({"class_weight": "auto"}, "Unknown class weight mode 'auto'"),
        ({"batch_size": 0}, "batch_size must be at least 1. Received: batch_size=0"),
        ({"patience": 0}, "patience must be at least 1. Received: patience=0"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            train_run(store, out, **kwargs, **QUIET)
        assert not out.exists()
    (out / "notes").mkdir(parents=True)
    with pytest.raises(FileExistsError, match=r"is not empty. Choose a new --out, or pass --overwrite"):
        train_run(store, out, **QUIET)
    with pytest.raises(FileExistsError, match="holds no written_files.json, the record of the files a run wrote, so "
                                              "it is not a run folder"):
        train_run(store, out, overwrite=True, **QUIET)
    assert (out / "notes").is_dir()
    (tmp_path / "file").write_text("")
    with pytest.raises(FileExistsError, match=r"Run folder .*file is a file. Expected a folder"):
        train_run(store, tmp_path / "file", **QUIET)


def test_a_split_with_one_class_is_refused_before_training(tmp_path):
    store = write_synthetic_store(tmp_path / "store.h5", kind="xor", num_rows=60)
    with h5py.File(store, "r+") as store_file:
        labels = store_file["images/label"][()]
        splits = store_file["images/split"].asstr()[()]
        labels[splits == "val"] = 1
        store_file["images/label"][...] = labels
    with pytest.raises(ValueError, match=r"The val split of .* holds only class 'class_1' \(\d+ labeled rows\): "
                                         r"training and the fitted baselines need at least 2 classes"):
        train_run(store, tmp_path / "run", **QUIET)
    assert not (tmp_path / "run").exists()


def test_with_two_backbones_the_ablation_reuses_the_single_backbone_models(tmp_path):
    store = write_synthetic_store(tmp_path / "store.h5", kind="noisy_views", num_rows=160, backbones=("a", "b"), seed=3)
    with logged_lines("fusion.run") as logged:
        run = train_run(store, tmp_path / "run", units=8, epochs=3)
    trained = [line.split(":")[0] for line in logged if " epochs, best val_loss " in line]
    assert trained == ["fusion", "a", "b"]  # three models trained, not five
    assert "[4/5] fusion_without_a: the same model as b (two backbones, no head units), not trained again" in logged
    test = run.report["test"]
    assert test["fusion_without_a"]["accuracy"] == test["b"]["accuracy"]
    assert test["fusion_without_b"]["log_loss"] == test["a"]["log_loss"]
    assert run.report["training"]["fusion_without_a"]["same_as"] == "b"
    assert not (tmp_path / "run" / "models" / "fusion_without_a.keras").exists()
    markdown = (tmp_path / "run" / "report.md").read_text()
    assert "| a |" in markdown.split("drop-one ablation")[1]
    assert ("fusion without one backbone is the other backbone's own model: fusion_without_a is b, fusion_without_b "
            "is a, reused rather than trained again.") in markdown
    reloaded = load_run(tmp_path / "run")
    assert reloaded.models["fusion_without_b"] is reloaded.models["a"]
    # The reused ablation predicts under its own name, as the model it is.
    info = read_store_info(store)
    with h5py.File(store) as store_file:
        features = {name: store_file["features"][name][()][info.split_rows("test")] for name in ("a", "b")}
    np.testing.assert_array_equal(reloaded.predict_proba(features, model="fusion_without_b"),
                                  reloaded.predict_proba(features, model="a"))


def test_a_class_absent_from_train_is_refused_before_training(tmp_path):
    store = write_synthetic_store(tmp_path / "store.h5", kind="noisy_views", num_rows=120, num_classes=3, seed=2)
    with h5py.File(store, "r+") as store_file:
        labels = store_file["images/label"][()]
        splits = store_file["images/split"].asstr()[()]
        labels[(splits == "train") & (labels == 2)] = 1
        store_file["images/label"][...] = labels
    with pytest.raises(ValueError, match=r"1 class\(es\) of .* have no labeled image in the train split, so no model "
                                         r"can learn them: class_2. Re-run precompute .*--min-images-per-class"):
        train_run(store, tmp_path / "run", **QUIET)
    assert not (tmp_path / "run").exists()


def test_sixty_classes_some_without_test_images(tmp_path):
    store = write_synthetic_store(tmp_path / "store.h5", kind="noisy_views", num_rows=600, num_classes=60,
                                  backbones=("a", "b"), seed=4)
    with h5py.File(store, "r+") as store_file:
        # Classes 50..59 lose their test images to train: the report must not average over them.
        labels = store_file["images/label"][()]
        splits = store_file["images/split"].asstr()[()]
        splits[(splits == "test") & (labels >= 50)] = "train"
        for label in set(labels.tolist()) - set(labels[splits == "train"].tolist()):
            splits[labels == label] = "train"  # the random split left this class out of train
        del store_file["images/split"]
        store_file["images/split"] = splits.astype(object)
    run = train_run(store, tmp_path / "run", units=16, epochs=4, ablation=False, **QUIET)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    fusion = report["test"]["fusion"]
    assert len(fusion["confusion_matrix"]) == 60  # the full matrix stays in report.json
    info = read_store_info(store)
    tested = set(info.labels[info.split_rows("test")].tolist())
    assert sorted(fusion["per_class"]) == sorted(info.class_names[label] for label in tested) and len(tested) <= 50
    untested = fusion["classes_without_test_images"]
    assert untested == [name for label, name in enumerate(info.class_names) if label not in tested]
    assert {f"class_{index}" for index in range(50, 60)} <= set(untested)
    # Macro F1 averages the tested classes only: over all 60 it would be lower by their share.
    assert fusion["macro_f1"] == pytest.approx(np.mean([scores["f1"] for scores in fusion["per_class"].values()]))
    low, high = fusion["accuracy_ci95"]
    assert low <= fusion["accuracy"] <= high and high - low > 0.02
    markdown = (tmp_path / "run" / "report.md").read_text()
    assert "Most confused pairs" in markdown and "confusion_matrix.png" not in markdown


@pytest.mark.parametrize("name", ["report.json", "config.json"])
def test_a_truncated_json_file_of_a_run_is_named_in_one_line(xor_run, tmp_path, name):
    import shutil

    run_dir = shutil.copytree(xor_run.run_dir, tmp_path / "run")
    text = (run_dir / name).read_text()
    (run_dir / name).write_text(text[: len(text) // 2])
    with pytest.raises(ValueError, match=f"{run_dir / name} is damaged: not valid JSON .*train the run again") as raised:
        load_run(run_dir)
    assert "\n" not in str(raised.value)


def test_a_truncated_model_of_a_run_is_damaged_not_missing(xor_run, tmp_path):
    import shutil

    run_dir = shutil.copytree(xor_run.run_dir, tmp_path / "run")
    model = run_dir / "models" / "fusion.keras"
    model.write_bytes(model.read_bytes()[:1000])
    with pytest.raises(ValueError, match=f"Model file {model} is damaged: not a whole .keras file \\(1000 bytes, not a "
                                         f"complete zip archive; cut short\\?\\); train the run again") as raised:
        load_run(run_dir)
    assert "not found" not in str(raised.value) and "\n" not in str(raised.value)


class _FitRecorder(keras.callbacks.Callback):
    """The name of the model of each fit, and the epochs each fit ran."""

    def __init__(self):
        super().__init__()
        self.fits = []

    def on_train_begin(self, logs=None):
        self.fits.append([self.model.name, 0])

    def on_epoch_end(self, epoch, logs=None):
        self.fits[-1][1] += 1


def _epoch_losses(folder):
    import tensorflow as tf

    (events,) = folder.glob("events.out.tfevents.*")
    records = [tf.compat.v1.Event.FromString(record.numpy()) for record in tf.data.TFRecordDataset(str(events))]
    return [value.tag for event in records for value in event.summary.value if value.tag == "epoch_loss"]


@pytest.mark.slow
def test_progress_lines_keras_output_callbacks_and_tensorboard_reach_every_fold_of_every_model(tmp_path, capsys):
    store = write_synthetic_store(tmp_path / "store.h5", kind="noisy_views", num_rows=80, backbones=("a",), seed=5)
    recorder, run_dir = _FitRecorder(), tmp_path / "run"
    with unconfigured_logging():  # as in a notebook: the lines come on stdout without configuring logging
        run = train_run(store, run_dir, units=8, epochs=2, patience=2, folds=2, ablation=False, verbose=2,
                        callbacks=[recorder], tensorboard_dir=run_dir / "tensorboard")
    printed = capsys.readouterr().out.splitlines()
    epochs_run = {(name, fold): training["epochs_run"] for name in ("fusion", "a")
                  for fold, training in run.report["training"][name]["folds"].items()}
    # One callback object saw every epoch of every fold of every model, in training order.
    assert recorder.fits == [[f"{name}_{fold}", epochs] for (name, fold), epochs in epochs_run.items()]
    for number, name in enumerate(("fusion", "a"), start=1):
        assert f"[{number}/2] {name}: training (2 folds, up to 2 epochs each)" in printed
        assert f"{name}: fold repeat1_fold2 (2/2)" in printed
        assert any(line.startswith(f"{name}: 2 folds, out-of-fold accuracy ") for line in printed)
    assert printed[-1] == f"report: {run_dir / 'report.md'}"
    # Keras's own lines, one per epoch (stdout is no terminal here): as many as all folds ran.
    assert sum(line.startswith("Epoch ") for line in printed) == sum(epochs_run.values())
    # One TensorBoard folder per model and fold, each epoch in it, every file recorded for --overwrite.
    written = set(_read_written(run_dir))
    for (name, fold), epochs in epochs_run.items():
        for part in ("train", "validation"):
            folder = run_dir / "tensorboard" / name / fold / part
            assert len(_epoch_losses(folder)) == epochs, (name, fold, part)
            assert {path.relative_to(run_dir).as_posix() for path in folder.iterdir()} <= written
    assert sorted(path.name for path in (run_dir / "tensorboard").iterdir()) == ["a", "fusion"]


def test_bad_verbose_callbacks_or_tensorboard_folder_are_refused_before_any_work(tmp_path):
    store = write_synthetic_store(tmp_path / "store.h5", kind="noisy_views", num_rows=60, backbones=("a", "b"))
    out = tmp_path / "run"
    cases = [
        ({"verbose": 3}, ValueError, r"verbose must be 0 \(silent\), 1 \(a line per model\) or 2 .*Received: verbose=3"),
        ({"verbose": True}, ValueError, "Received: verbose=True"),
        ({"callbacks": keras.callbacks.History()}, ValueError,
         r"callbacks must be a list of keras.callbacks.Callback objects.*Received: callbacks=<keras"),
        ({"callbacks": ["log.csv"]}, ValueError, r"Received: callbacks=\['log.csv'\]"),
        ({"tensorboard_dir": out}, ValueError, "The TensorBoard folder is the run folder itself"),
    ]
    (tmp_path / "file").write_text("")
    (tmp_path / "logs" / "fusion").mkdir(parents=True)
    cases += [
        ({"tensorboard_dir": tmp_path / "file"}, FileExistsError, r"TensorBoard folder .*file is a file"),
        ({"tensorboard_dir": tmp_path / "logs"}, FileExistsError,
         r"TensorBoard folder .*logs is not empty: TensorBoard would show this run's curves mixed .*Received: "
         r"tensorboard_dir=.*logs"),
    ]
    for kwargs, error, message in cases:
        with pytest.raises(error, match=message):
            train_run(store, out, **kwargs)
        assert not out.exists()
