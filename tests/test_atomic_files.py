"""Files written whole or not at all: a failure half way leaves the old file (or none) and no temporary."""

import os

import keras
import numpy as np
import pytest

from features.atomic_files import (
    _temporary_path,
    atomic_path,
    check_writable_file,
    open_atomic,
    save_model_atomic,
    temporary_target,
    write_text_atomic,
)


class Injected(RuntimeError):
    pass


def _listing(folder):
    return sorted(path.name for path in folder.iterdir())


def test_a_write_replaces_the_file_whole(tmp_path):
    target = tmp_path / "report.json"
    write_text_atomic(target, "old")
    write_text_atomic(target, "new")
    assert target.read_text() == "new" and _listing(tmp_path) == ["report.json"]


@pytest.mark.parametrize("existed", [True, False])
def test_a_failure_half_way_leaves_the_old_file_or_none_and_no_temporary(tmp_path, existed):
    target = tmp_path / "predictions.csv"
    if existed:
        target.write_text("path,class\nold.png,cat\n")
    with pytest.raises(Injected):
        with open_atomic(target, newline="") as handle:
            handle.write("path,class\nnew.png,")
            handle.flush()
            raise Injected("disk full half way")
    assert _listing(tmp_path) == (["predictions.csv"] if existed else [])
    if existed:
        assert target.read_text() == "path,class\nold.png,cat\n"


def test_a_failed_model_save_leaves_the_old_model_and_no_temporary(tmp_path, monkeypatch):
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    target = tmp_path / "fusion.keras"
    save_model_atomic(model, target)
    old_bytes = target.read_bytes()
    saved_to = []

    def save_half_then_fail(self, path, *args, **kwargs):
        saved_to.append(path)
        with open(path, "wb") as handle:
            handle.write(old_bytes[: len(old_bytes) // 2])
        raise Injected("killed during save")

    monkeypatch.setattr(keras.Model, "save", save_half_then_fail)
    with pytest.raises(Injected):
        save_model_atomic(model, target)
    # Keras was given a .keras name in the same folder, never the target itself.
    assert saved_to[0].parent == tmp_path and saved_to[0].suffix == ".keras" and saved_to[0] != target
    assert target.read_bytes() == old_bytes and _listing(tmp_path) == ["fusion.keras"]
    with pytest.raises(ValueError, match=r"name the file \*\.keras. Received: path="):
        save_model_atomic(model, tmp_path / "model.h5")


def test_numpy_and_matplotlib_keep_the_temporary_name_and_its_suffix(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with atomic_path(tmp_path / "probabilities.npz") as temporary:
        np.savez_compressed(temporary, values=np.arange(3))
    figure = plt.figure()
    with atomic_path(tmp_path / "plot.png") as temporary:
        figure.savefig(temporary)
    plt.close(figure)
    assert _listing(tmp_path) == ["plot.png", "probabilities.npz"]
    np.testing.assert_array_equal(np.load(tmp_path / "probabilities.npz")["values"], [0, 1, 2])
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"


def test_a_writer_that_writes_nothing_is_an_error_and_leaves_the_old_file(tmp_path):
    target = tmp_path / "config.json"
    target.write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"Nothing was written for .*config\.json"):
        with atomic_path(target):
            pass
    assert target.read_text() == "{}" and _listing(tmp_path) == ["config.json"]


def test_temporary_names_are_unique_keep_the_suffix_and_map_back():
    first, second = _temporary_path("runs/exp1/exported.keras"), _temporary_path("runs/exp1/exported.keras")
    assert first != second and first.suffix == ".keras" and first.parent.as_posix() == "runs/exp1"
    assert first.name.startswith(f"exported.keras.tmp-{os.getpid()}-")
    assert temporary_target(first.name) == "exported.keras"
    assert temporary_target(_temporary_path("notes").name) == "notes"
    for name in ("exported.keras", "exported.keras.tmp", "a.keras.tmp-1-0a1b2c3d.json", "a.tmp-x-0a1b2c3d"):
        assert temporary_target(name) is None, name


def test_unwritable_outputs_are_refused_without_creating_anything(tmp_path, monkeypatch):
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "a_folder").mkdir()
    assert check_writable_file(tmp_path / "new" / "deeper" / "p.csv") == tmp_path / "new" / "deeper" / "p.csv"
    with pytest.raises(ValueError, match=r"--out .*a_folder is a folder. Expected a file name"):
        check_writable_file(tmp_path / "a_folder")
    with pytest.raises(ValueError, match=r"cannot be written: .*a_file is a file, not a folder. Choose another --out"):
        check_writable_file(tmp_path / "a_file" / "sub" / "p.csv")
    # The tests may run as root, who may write anywhere: the permission answer is simulated.
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(ValueError, match=r"--export-to .*m\.keras cannot be written: no permission to write in"):
        check_writable_file(tmp_path / "m.keras", "--export-to")
    assert _listing(tmp_path) == ["a_file", "a_folder"]
