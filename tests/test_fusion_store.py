"""fusion.store (the store reader of stage 2; tests/test_store.py tests features.store): layout, encodings, errors."""

import h5py
import numpy as np
import pytest

from features.store import load_store
from features.store._layout import _create_cost
from fusion.store import read_store_info, select_backbones
from fusion.synthetic import write_synthetic_store


@pytest.mark.parametrize("string_format", ["utf8", "bytes"])
def test_reads_layout_in_both_string_encodings_and_ignores_extras(tmp_path, string_format):
    path = write_synthetic_store(
        tmp_path / "store.h5", kind="noisy_views", num_rows=50, backbones=("a", "b"), feature_dims=[6, 4],
        num_views=2, string_format=string_format, with_extras=True,
    )
    info = read_store_info(path)
    assert info.backbones == ("a", "b")
    assert info.class_names == ("class_0", "class_1", "class_2", "class_3")
    assert info.feature_shapes == {"a": (6,), "b": (4,)}
    assert info.view_names == {"a": ("view1", "view2"), "b": ("view1", "view2")}
    assert info.paths[0].endswith(".png") and isinstance(info.paths[0], str)
    counts = [len(info.split_rows(split)) for split in ("train", "val", "test")]
    assert sum(counts) == 50 and min(counts) > 0
    with h5py.File(path) as store_file:
        np.testing.assert_array_equal(info.labels, store_file["images/label"][()])
    # float16 rows: 50 * (6 + 4) * 2 bytes, and three times that with two views each.
    assert info.feature_bytes(("a", "b")) == 1000
    assert info.feature_bytes(("a", "b"), with_views=True) == 3000


def test_unlabeled_rows_are_left_out_of_every_split(tmp_path):
    path = write_synthetic_store(tmp_path / "store.h5", kind="random", num_rows=40)
    with h5py.File(path, "a") as store_file:
        labels = store_file["images/label"][()]
        labels[:5] = -1
        store_file["images/label"][...] = labels
    info = read_store_info(path)
    used = np.concatenate([info.split_rows(split) for split in ("train", "val", "test")])
    assert len(used) == 35 and not set(range(5)) & set(used.tolist())


def _edit(path, action):
    with h5py.File(path, "a") as store_file:
        action(store_file)
    return path


def _replace(store_file, name, data):
    del store_file[name]
    store_file[name] = data


BAD_STORES = {
    "no class names": (lambda f: f.attrs.__delitem__("class_names"), "no root attribute 'class_names'"),
    "no labels": (lambda f: f.__delitem__("images/label"), r"no /images/label dataset"),
    "no features": (lambda f: [f["features"].__delitem__(n) for n in list(f["features"])], "no datasets under /features"),
    "rows do not line up": (lambda f: _replace(f, "features/beta", np.zeros((39, 16), "float16")),
                            r"/features/beta does not line up with /images.*Received: shape=\(39, 16\)"),
    "paths do not line up": (lambda f: _replace(f, "images/path", np.array([b"x"] * 3)), "/images datasets do not line up"),
    "label out of range": (lambda f: _replace(f, "images/label", np.full(40, 7)), r"labels must lie in \[-1, 1\].*Received: labels=\[7\]"),
    "float labels": (lambda f: _replace(f, "images/label", np.zeros(40)), "must hold integers"),
    "unknown split": (lambda f: _replace(f, "images/split", np.array([b"valid"] * 40)), r"unknown split names.*\['valid'\]"),
    "missing split": (lambda f: _replace(f, "images/split", np.array([b"train"] * 30 + [b"test"] * 10)),
                      r"no labeled rows in split 'val'.*'val': 0"),
    "views do not line up": (lambda f: f.create_dataset("views/alpha", data=np.zeros((40, 2, 5), "float16")),
                             r"/views/alpha does not line up with /features/alpha"),
    "view names do not match": (lambda f: f.create_dataset("views/alpha", data=np.zeros((40, 2, 16), "float16")).attrs.create("view_names", ["hflip"]),
                                "has 2 views but 1 view_names"),
}


@pytest.mark.parametrize("case", sorted(BAD_STORES))
def test_bad_store_gives_a_clear_error(tmp_path, case):
    action, message = BAD_STORES[case]
    path = _edit(write_synthetic_store(tmp_path / "store.h5", kind="xor", num_rows=40), action)
    with pytest.raises(ValueError, match=message):
        read_store_info(path)


def test_missing_file_and_non_hdf5_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"Feature store not found: {tmp_path / 'nope.h5'}"):
        read_store_info(tmp_path / "nope.h5")
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(ValueError, match="is not a readable HDF5 feature store"):
        read_store_info(tmp_path / "text.h5")


def test_select_backbones(tmp_path):
    info = read_store_info(write_synthetic_store(tmp_path / "s.h5", kind="xor", num_rows=40, backbones=("a", "b", "c")))
    assert select_backbones(info) == ("a", "b", "c")
    assert select_backbones(info, ["c", "a"]) == ("c", "a")
    with pytest.raises(ValueError, match=r"Unknown backbone 'resnet5'.*Valid names: a, b, c. Received: backbones=\['resnet5'\]"):
        select_backbones(info, ["resnet5"])
    with pytest.raises(ValueError, match="Each backbone may be given once"):
        select_backbones(info, ["a", "a"])


def test_a_store_a_precompute_run_left_unfinished_is_refused(tmp_path):
    path = write_synthetic_store(tmp_path / "store.h5", kind="random", num_rows=40, backbones=("a", "b"))
    with h5py.File(path, "a") as store_file:
        progress = np.ones(40, np.uint8)
        store_file["progress/a"] = progress
        progress[15:] = 0  # a run killed after 15 rows of b: the rest are zeros, not features
        store_file["progress/b"] = progress
        store_file["pending/unreadable"] = np.zeros(40, np.uint8)
    with pytest.raises(ValueError, match=r"store.h5 is unfinished: 25 of 40 rows of b were never computed \(a precompute "
                                         r"run stopped before the end\). Run the same run_precompute.py command again"):
        read_store_info(path)
    with pytest.raises(ValueError, match=r"store.h5 is unfinished: 25 of 40 rows of b were never computed"):
        load_store(path)  # stage 1's loader refuses it through the same check
    with h5py.File(path, "a") as store_file:
        store_file["progress/b"][...] = 1
        store_file["pending/unreadable"][3] = 1
    with pytest.raises(ValueError, match=r"is unfinished: 1 unreadable image\(s\) are still pending"):
        read_store_info(path)
    with h5py.File(path, "a") as store_file:
        store_file["pending/unreadable"][3] = 0
    assert read_store_info(path).backbones == ("a", "b")


def test_precompute_seconds_per_image_is_none_unless_the_store_records_it(tmp_path):
    path = write_synthetic_store(tmp_path / "store.h5", kind="random", num_rows=40, backbones=("a", "b"))
    info = read_store_info(path)
    assert info.precompute_seconds_per_image == {"a": None, "b": None} and info.decode_seconds_per_image is None
    with h5py.File(path, "a") as store_file:
        _create_cost(store_file, "features/a")[...] = [2.0, 8.0]
        _create_cost(store_file, "features/b")  # created, nothing measured yet
        _create_cost(store_file, "decode")[...] = [1.0, 40.0]
    info = read_store_info(path)
    assert info.precompute_seconds_per_image == {"a": 0.25, "b": None} and info.decode_seconds_per_image == 0.025
