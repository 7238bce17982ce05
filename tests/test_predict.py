"""Classifying image files with an exported model, and the CSV a user gets."""

import csv
import json

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
