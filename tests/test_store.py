import h5py
import numpy as np
import pytest

from features.store import (
    StoreBusyError,
    load_store,
    rewrite_store,
    store_lock,
)
from features.store._layout import _create_preallocated


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
