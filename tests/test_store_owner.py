"""The store has one owner: only the package features/store/ imports h5py; the rest go through it."""

import ast
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest

from features.store import FeatureRows, StoreError, read_index, write_plain_store
from fusion.synthetic import write_synthetic_store

REPO_ROOT = Path(__file__).resolve().parent.parent
OWNER = REPO_ROOT / "features" / "store"


def _project_sources():
    for folder in ("features", "fusion", "examples", "benchmarks"):
        yield from sorted((REPO_ROOT / folder).rglob("*.py"))
    yield from sorted(REPO_ROOT.glob("run_*.py"))


def _imports_h5py(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(alias.name.split(".")[0] == "h5py" for alias in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "h5py":
            return True
    return False


def _outside_the_owner(paths, root=REPO_ROOT, owner=OWNER):
    """The modules among `paths` that import h5py and do not lie inside the package `owner`."""
    return [path.relative_to(root).as_posix() for path in paths if owner not in path.parents and _imports_h5py(path)]


def test_only_the_store_package_imports_h5py():
    sources = list(_project_sources())
    assert _imports_h5py(OWNER / "_files.py"), "the check would pass vacuously: the store package imports no h5py"
    importers = _outside_the_owner(sources)
    assert importers == [], f"h5py is imported outside the store's owner (features/store/): {importers}"


def test_the_owner_check_catches_a_module_outside_the_store_package(tmp_path):
    # The check above must be able to fail: a module beside the package, even one named like it, is caught.
    (tmp_path / "features" / "store").mkdir(parents=True)
    names = ("store/_files.py", "sneaky.py", "store_extra.py", "clean.py")
    sources = {name: tmp_path / "features" / name for name in names}
    for name, path in sources.items():
        path.write_text("import numpy\n" if name == "clean.py" else "from h5py import File\n", encoding="utf-8")
    found = _outside_the_owner(sources.values(), root=tmp_path, owner=tmp_path / "features" / "store")
    assert found == ["features/sneaky.py", "features/store_extra.py"]


def test_read_index_reads_what_the_generator_wrote(tmp_path):
    store = write_synthetic_store(tmp_path / "store.h5", num_rows=30, backbones=("alpha", "beta"), feature_dims=(4, 6),
                                  num_views=2, with_extras=True)
    index = read_index(store)
    assert index.backbones == ("alpha", "beta")
    assert index.feature_shapes == {"alpha": (4,), "beta": (6,)}
    assert index.view_names == {"alpha": ("view1", "view2"), "beta": ("view1", "view2")}
    assert len(index.paths) == len(index.labels) == len(index.splits) == 30
    assert index.skipped == (("broken/not_an_image.png", "cannot identify image file"),)
    assert set(index.splits) <= {"train", "val", "test"}


def test_feature_rows_reads_the_rows_asked_for(tmp_path):
    features = np.arange(40, dtype=np.float32).reshape(10, 4)
    store = tmp_path / "plain.h5"
    write_plain_store(store, ["a", "b"], [f"{i}.png" for i in range(10)], [i % 2 for i in range(10)],
                      ["train"] * 6 + ["val"] * 2 + ["test"] * 2, {"alpha": features})
    with FeatureRows(store) as rows:
        np.testing.assert_array_equal(rows.read("features", "alpha", [1, 2, 7]), features[[1, 2, 7]])
        np.testing.assert_array_equal(rows.read("features", "alpha"), features)
        assert rows.shape("features", "alpha") == (10, 4) and not rows.has("views", "alpha")


def test_feature_rows_reads_blocks_in_the_order_given_and_checks_them(tmp_path):
    features = np.arange(200, dtype=np.float16).reshape(50, 4)
    store = tmp_path / "plain.h5"
    write_plain_store(store, ["a", "b"], [f"{i}.png" for i in range(50)], [i % 2 for i in range(50)],
                      ["train"] * 50, {"alpha": features})
    checksums = np.array([zlib.crc32(row.tobytes()) for row in features], np.uint32)
    checksums[37] ^= 1  # as if row 37 had changed on disk since it was written
    with h5py.File(store, "a") as store_file:
        store_file["checksums/features/alpha"] = checksums
    blocks = [np.arange(20, 28), np.array([3, 5, 6]), np.arange(0, 0), np.array([49])]
    with FeatureRows(store) as rows:
        values = rows.read_blocks("features", "alpha", blocks)
        np.testing.assert_array_equal(values, features[np.concatenate(blocks)])
        assert values.dtype == np.float16
        np.testing.assert_array_equal(values, np.concatenate([rows.read("features", "alpha", block) for block in blocks]))
        with pytest.raises(StoreError, match=r"row 37 of /features/alpha \(backbone alpha, image 37.png\) does not match "
                                             r"the checksum written with it.*Received: 1 damaged row\(s\) among 10 read"):
            rows.read_blocks("features", "alpha", [np.arange(32, 40), np.arange(2)])
        rows.close()  # a closed reader opens the file again on its next read
        np.testing.assert_array_equal(rows.read_blocks("features", "alpha", [np.arange(4)]), features[:4])
        assert rows.read_blocks("features", "alpha", []).shape == (0, 4)


def test_write_plain_store_refuses_an_unknown_string_format(tmp_path):
    with pytest.raises(ValueError, match="Unknown string_format 'latin1'.*Received"):
        write_plain_store(tmp_path / "x.h5", ["a"], ["a.png"], [0], ["train"], {"alpha": np.zeros((1, 2))},
                          string_format="latin1")


def test_read_index_refuses_a_file_that_is_not_a_store(tmp_path):
    path = tmp_path / "notes.h5"
    path.write_text("not HDF5")
    with pytest.raises(StoreError, match="not a readable HDF5 feature store"):
        read_index(path)
