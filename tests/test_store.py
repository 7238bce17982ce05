import h5py
import numpy as np
import pytest

from features.store import (
    RowFiller,
    StoreBusyError,
    add_backbone,
    create_store,
    load_store,
    read_cost,
    rebuild_rows,
    rewrite_store,
    store_lock,
    write_plain_store,
)
from features.store._layout import _create_cost, _create_preallocated


def test_a_second_writer_is_refused_at_once(tmp_path):
    with store_lock(tmp_path / "cache.h5"):
        with pytest.raises(StoreBusyError, match=r"Another run is writing .*cache\.h5 \(lock file .*cache\.h5\.lock is held\)"):
            with store_lock(tmp_path / "cache.h5"):
                pass
    with store_lock(tmp_path / "cache.h5"):  # released after the first run
        pass


def test_structural_change_is_all_or_nothing(tmp_path):
    path = tmp_path / "cache.h5"
    with rewrite_store(path, copy=False) as store:
        store["a"] = np.arange(3)
    with pytest.raises(RuntimeError, match="boom"):
        with rewrite_store(path) as store:
            store["b"] = np.arange(4)
            raise RuntimeError("boom")
    with h5py.File(path, "r") as store:
        assert list(store.keys()) == ["a"]
    assert not (tmp_path / "cache.h5.tmp").exists()


def test_preallocated_rows_write_raw_data_only(tmp_path):
    path = tmp_path / "cache.h5"
    with h5py.File(path, "w") as store:
        _create_preallocated(store, "features", (100, 64), np.float16)
    size = path.stat().st_size
    assert size > 100 * 64 * 2  # chunks are on disk before any row is written
    with h5py.File(path, "r+") as store:
        store["features"][10:20] = 1.0
    assert path.stat().st_size == size
    with h5py.File(path, "r") as store:
        assert store["features"].chunks[1] == 64 and store["features"].compression is None
        assert store["features"][15, 0] == 1.0 and store["features"][25, 0] == 0.0


def test_load_store_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="Feature store not found: .*missing.h5"):
        load_store(tmp_path / "missing.h5")


def _store_with_backbone(path, count=4):
    create_store(path, class_names=["cat", "dog"], paths=[f"{index}.png" for index in range(count)],
                 labels=[0, 1] * (count // 2), splits=["train"] * count, fingerprints=np.zeros((count, 2)),
                 root_attrs={})
    with rewrite_store(path) as store:
        add_backbone(store, "alpha", (3,), np.float16, {"backbone": "alpha"})


def test_costs_add_up_as_raw_data_and_survive_rebuilds(tmp_path):
    path = tmp_path / "cache.h5"
    _store_with_backbone(path)
    with h5py.File(path, "r") as store:
        assert read_cost(store, "features/alpha") is None and read_cost(store, "decode") is None  # nothing measured
        assert read_cost(store, "features/beta") is None  # no such backbone
    size = path.stat().st_size
    with RowFiller(path) as filler:
        filler.add_compute_cost("alpha", 1.5, 3)
        filler.add_compute_cost("alpha", 0.5, 1)
        filler.add_decode_cost(0.25, 4)
        filler.add_compute_cost("beta", 9.0, 9)  # a backbone without /cost records nothing
    assert path.stat().st_size == size  # preallocated: adding writes raw data only, like the rows
    with h5py.File(path, "r") as store:
        assert read_cost(store, "features/alpha") == (2.0, 4.0) and read_cost(store, "decode") == (0.25, 4.0)
        assert "beta" not in store["cost/features"]
        assert "compute_seconds" not in store["features/alpha"].attrs  # measurements stay out of the recipe
    rebuild_rows(path, np.array([0, 2]))  # rows dropped: the measured runs stay whole
    with h5py.File(path, "r") as store:
        assert read_cost(store, "features/alpha") == (2.0, 4.0) and read_cost(store, "decode") == (0.25, 4.0)
        assert store["features/alpha"].shape == (2, 3)
    with h5py.File(path, "r+") as store:
        store["cost/decode"][...] = [np.nan, 4.0]
        store["cost/features/alpha"][...] = [-1.0, 4.0]
        assert read_cost(store, "decode") is None and read_cost(store, "features/alpha") is None


def test_summary_and_class_counts_of_a_store_of_another_tool(tmp_path):
    path = tmp_path / "plain.h5"
    write_plain_store(path, ["cat", "dog"], [f"{index}.png" for index in range(7)], [0, 0, 1, 1, 0, -1, 1],
                      ["train", "train", "train", "val", "test", "train", "test"],
                      {"beta": np.zeros((7, 2, 2, 5), np.float32), "alpha": np.zeros((7, 3), np.float16)})
    loaded = load_store(path)
    table = loaded.summary()
    assert list(table.columns) == ["backbone", "feature_shape", "dtype", "images", "input_size", "pooling", "weights",
                                   "views", "precompute_seconds_per_image"]
    assert table["backbone"].tolist() == ["alpha", "beta"] and table["images"].tolist() == [7, 7]
    assert table["feature_shape"].tolist() == [(3,), (2, 2, 5)] and table["dtype"].tolist() == ["float16", "float32"]
    assert table["input_size"].isna().all() and table["precompute_seconds_per_image"].isna().all()
    counts = loaded.class_counts()
    assert counts.index.tolist() == ["cat", "dog", "(unlabeled)"] and counts.index.name == "class"
    assert counts.to_dict("list") == {"train": [2, 1, 1], "val": [0, 1, 0], "test": [1, 1, 0], "total": [3, 3, 1]}
    assert loaded.select("train").class_counts()["total"].tolist() == [2, 1, 1]
    with h5py.File(path, "r+") as store:
        _create_cost(store, "features/alpha")[...] = [3.0, 12.0]
    assert load_store(path).summary()["precompute_seconds_per_image"].tolist()[0] == 0.25
