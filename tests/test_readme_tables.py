"""README.md's option and column tables match the scripts' parsers and the files the code writes.

Each table is marked by an HTML comment, `<!-- options: SCRIPT -->` or `<!-- columns: FILE -->`,
on the line before it, so a renamed option or column fails here instead of misleading a reader.
"""

import csv
import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
MARKER = re.compile(r"^<!-- (options|columns): (.+?) -->$", re.MULTILINE)


def _tables():
    """(kind, name) -> the first cells of the table under each marker."""
    tables = {}
    for match in MARKER.finditer(README):
        lines = README[match.end():].lstrip("\n").splitlines()
        assert lines[0].startswith("|") and lines[1].startswith("|---"), f"no table under {match.group(0)}"
        rows = []
        for line in lines[2:]:
            if not line.startswith("|"):
                break
            rows.append(re.split(r"(?<!\\)\|", line)[1].strip())
        tables[match.group(1), match.group(2)] = rows
    return tables


TABLES = _tables()


def _parser(script):
    spec = importlib.util.spec_from_file_location(script.removesuffix(".py"), ROOT / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_parser()


def _documented_options(cells):
    """{flag or positional metavar: the choices the cell lists, or None} from cells like "`--dtype float16\\|float32`"."""
    documented = {}
    for cell in cells:
        for code in re.findall(r"`([^`]+)`", cell):
            words = code.replace("\\|", "|").split()
            name = words[0].rstrip(".")
            if name.startswith("--") or re.fullmatch(r"[A-Z_]+", name):
                choices = words[1].split("|") if len(words) > 1 and "|" in words[1] else None
                documented[name] = choices
                # A flag that only goes with this one, written after it: `--export-only [--export-to FILE]`.
                documented.update({flag: None for flag in re.findall(r"\[(--[a-z0-9-]+)", code)})
    return documented


@pytest.mark.parametrize("script", ["run_precompute.py", "run_train.py", "run_predict.py"])
def test_every_option_of_a_script_is_in_its_readme_table_and_nothing_else(script):
    assert ("options", script) in TABLES, f"README.md has no <!-- options: {script} --> table"
    documented = _documented_options(TABLES["options", script])
    parser = _parser(script)
    actions = {}
    for action in parser._actions:
        if action.option_strings:
            actions.update({flag: action for flag in action.option_strings if flag.startswith("--") and flag != "--help"})
        else:
            actions[(action.metavar or action.dest).upper()] = action
    assert sorted(documented) == sorted(actions), (
        f"README table of {script}: missing {sorted(set(actions) - set(documented))}, "
        f"not options {sorted(set(documented) - set(actions))}")
    for name, choices in documented.items():
        if choices is not None and actions[name].choices is not None:
            assert sorted(choices) == sorted(actions[name].choices), f"{script} {name}: README lists {choices}"


def _header(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return next(csv.reader(handle))


def _column_names(cells, class_names):
    names = []
    for cell in cells:
        for name in (part.strip(" `") for part in cell.split(",")):
            names += [f"p_{c}" for c in class_names] if name == "p_<class>" else [name]
    return names


CLASS_NAMES = ("cat", "dog")


def test_prediction_columns_of_the_run_folder(tmp_path):
    from fusion.run_folder import write_test_predictions

    probabilities = np.array([[0.9, 0.1], [0.3, 0.7]])
    write_test_predictions(tmp_path, ["a.png", "b.png"], CLASS_NAMES, np.array([0, 1]), np.array([0, 1]),
                           {"fusion": probabilities})
    header = _header(tmp_path / "predictions" / "fusion.csv")
    assert header == _column_names(TABLES["columns", "predictions/<MODEL>.csv"], CLASS_NAMES)
    assert "predicted" in header and "prediction" not in header


def test_run_predict_csv_columns(tmp_path):
    from fusion.predict import Predictions, write_predictions_csv

    predictions = Predictions(["a.png"], np.array([[0.2, 0.8]]), CLASS_NAMES, [("b.png", "not an image")])
    write_predictions_csv(predictions, tmp_path / "out.csv", all_probabilities=True)
    assert _header(tmp_path / "out.csv") == _column_names(TABLES["columns", "run_predict.py --out"], CLASS_NAMES)


def test_skipped_csv_columns(tmp_path):
    from features.summary import write_skipped_csv

    write_skipped_csv(tmp_path / "cache.h5.skipped.csv", [("cat/broken.jpg", "not an image")])
    assert _header(tmp_path / "cache.h5.skipped.csv") == _column_names(TABLES["columns", "OUT.skipped.csv"], ())


def test_history_csv_columns(tmp_path):
    import keras

    from fusion.training import train_model

    inputs = keras.Input((3,), name="a")
    model = keras.Model({"a": inputs}, keras.layers.Dense(2, activation="softmax")(inputs))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    features = {"a": np.random.default_rng(0).normal(size=(16, 3)).astype("float32")}
    labels = np.arange(16) % 2
    train_model(model, (features, labels), (features, labels), epochs=1, patience=1,
                history_path=tmp_path / "history.csv")
    documented = _column_names(TABLES["columns", "history/<MODEL>.csv"], ())
    assert sorted(_header(tmp_path / "history.csv")) == sorted(documented)
