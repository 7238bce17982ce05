"""--overwrite removes exactly the files a run wrote, and refuses a folder that holds anything else."""

import csv
import json

import numpy as np
import pytest

from fusion.run_folder import (
    MANIFEST_NAME,
    prepare_run_folder,
    _read_written,
    record_written,
    write_run_json,
    write_test_predictions,
)


def _write(path, text="x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_a_new_run_folder_starts_an_empty_record(tmp_path):
    run_dir = prepare_run_folder(tmp_path / "run", overwrite=False)
    assert _read_written(run_dir) == [] and (run_dir / MANIFEST_NAME).is_file()
    record_written(run_dir, "config.json", run_dir / "models" / "fusion.keras", tmp_path / "elsewhere.csv")
    assert _read_written(run_dir) == ["config.json", "models/fusion.keras"]  # outside the folder: not the run's


def test_overwrite_removes_exactly_what_a_run_wrote(tmp_path):
    run_dir = prepare_run_folder(tmp_path / "run", overwrite=False)
    record_written(run_dir, "config.json", "models/fusion.keras", "models/a.keras", "plots/p.png")
    for name in ("config.json", "models/fusion.keras", "plots/p.png"):  # models/a.keras was never written: a killed run
        _write(run_dir / name)
    prepare_run_folder(run_dir, overwrite=True)
    assert sorted(path.name for path in run_dir.iterdir()) == [MANIFEST_NAME]
    assert _read_written(run_dir) == []


def test_overwrite_refuses_a_folder_with_anything_a_run_did_not_write(tmp_path):
    run_dir = prepare_run_folder(tmp_path / "run", overwrite=False)
    record_written(run_dir, "config.json", "models/fusion.keras")
    _write(run_dir / "config.json")
    _write(run_dir / "models" / "fusion.keras")
    _write(run_dir / "models" / "my_notes.txt", "keep me")
    (run_dir / "empty_folder_of_mine").mkdir()
    with pytest.raises(FileExistsError, match=r"it holds files that no run wrote \(empty_folder_of_mine, "
                                              r"models/my_notes.txt\). Move them out, or choose a new --out"):
        prepare_run_folder(run_dir, overwrite=True)
    assert (run_dir / "models" / "my_notes.txt").read_text() == "keep me" and (run_dir / "config.json").is_file()
    with pytest.raises(FileExistsError, match="is not empty. Choose a new --out, or pass --overwrite"):
        prepare_run_folder(run_dir, overwrite=False)


def test_a_folder_with_its_own_config_json_is_never_wiped(tmp_path):
    # The user's project folder: a config.json of their own, notes and sources.
    project = tmp_path / "project"
    _write(project / "config.json", json.dumps({"mine": True}))
    _write(project / "notes.md", "notes")
    _write(project / "src" / "model.py", "code")
    with pytest.raises(FileExistsError, match=f"holds no {MANIFEST_NAME}, the record of the files a run wrote, so it "
                                              f"is not a run folder"):
        prepare_run_folder(project, overwrite=True)
    assert sorted(path.relative_to(project).as_posix() for path in project.rglob("*")) == [
        "config.json", "notes.md", "src", "src/model.py"]
    _write(tmp_path / "file")
    with pytest.raises(FileExistsError, match=r"Run folder .*file is a file. Expected a folder"):
        prepare_run_folder(tmp_path / "file", overwrite=True)
    (project / MANIFEST_NAME).write_text("not json")
    with pytest.raises(ValueError, match="is not a record of written files"):
        prepare_run_folder(project, overwrite=True)


def test_paths_are_relative_to_the_run_folder_or_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    prepare_run_folder("runs/exp1", overwrite=False)
    record_written("runs/exp1", "exported.keras", (tmp_path / "runs" / "exp1" / "p.csv"), (tmp_path / "p.csv"))
    assert _read_written("runs/exp1") == ["exported.keras", "p.csv"]


def test_a_killed_writers_temporary_of_a_recorded_file_goes_with_the_run(tmp_path):
    from features.atomic_files import _temporary_path

    run_dir = prepare_run_folder(tmp_path / "run", overwrite=False)
    record_written(run_dir, "models/fusion.keras")
    _write(run_dir / "models" / "fusion.keras")
    leftover = _temporary_path(run_dir / "models" / "fusion.keras")  # as a kill during the save leaves it
    _write(leftover)
    prepare_run_folder(run_dir, overwrite=True)
    assert sorted(path.name for path in run_dir.rglob("*")) == [MANIFEST_NAME]
    # The same name for a file no run recorded is the user's: refused, kept.
    record_written(run_dir, "config.json")
    _write(run_dir / "config.json")
    theirs = _temporary_path(run_dir / "notes.md")
    _write(theirs, "mine")
    with pytest.raises(FileExistsError, match=f"it holds files that no run wrote \\({theirs.name}\\)"):
        prepare_run_folder(run_dir, overwrite=True)
    assert theirs.read_text() == "mine"


def test_concurrent_records_keep_every_entry(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    run_dir = prepare_run_folder(tmp_path / "run", overwrite=False)
    names = [f"predictions_{index}.csv" for index in range(40)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda name: record_written(run_dir, name), names))
    assert _read_written(run_dir) == sorted(names)
    assert sorted(path.name for path in run_dir.iterdir()) == [MANIFEST_NAME]  # no temporary left behind


def test_the_writers_record_each_file_before_writing_it(tmp_path):
    run_dir = prepare_run_folder(tmp_path / "run", overwrite=False)
    write_run_json(run_dir, "models/stacking.json", {"backbones": ["a", "b"]})
    assert json.loads((run_dir / "models" / "stacking.json").read_text()) == {"backbones": ["a", "b"]}
    probabilities = {"fusion": np.array([[0.9, 0.1], [0.25, 0.75]]), "fusion+tta": np.array([[0.6, 0.4], [0.7, 0.3]])}
    write_test_predictions(run_dir, ("x/0.png", "x/1.png", "y/2.png"), ("cat", "dog"), np.array([2, 0]),
                           np.array([1, 0]), probabilities)
    assert _read_written(run_dir) == ["models/stacking.json", "predictions/fusion+tta.csv", "predictions/fusion.csv",
                                     "predictions/test_probabilities.npz"]
    with open(run_dir / "predictions" / "fusion.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows == [["path", "label", "predicted", "confidence", "p_cat", "p_dog"],
                    ["y/2.png", "dog", "cat", "0.900000", "0.900000", "0.100000"],
                    ["x/0.png", "cat", "dog", "0.750000", "0.250000", "0.750000"]]
    saved = np.load(run_dir / "predictions" / "test_probabilities.npz")
    assert sorted(saved) == ["fusion", "fusion_plus_tta", "labels", "rows"]
    np.testing.assert_array_equal(saved["fusion_plus_tta"], probabilities["fusion+tta"])
    np.testing.assert_array_equal(saved["rows"], [2, 0])
