"""Fault injection: a store damaged in each way is refused with one StoreError line by every reader and script."""

import re
import shutil
import warnings
import zlib

import h5py
import numpy as np
import pytest

import run_precompute
import run_train
from features import precompute
from features.store import StoreError, load_store, rebuild_rows
from fusion.data import open_feature_source
from fusion.statistics import feature_statistics
from fusion.store import read_store_info
from tests._run_fixtures import write_two_class_images

BACKBONE = "mobilenet_v2"
OPTIONS = dict(weights="none", input_size=32, views="hflip", val_fraction=0.25, test_fraction=0.25)
COMMAND = ["--backbones", BACKBONE, "--weights", "none", "--input-size", "32", "--views", "hflip",
           "--val-fraction", "0.25", "--test-fraction", "0.25", "--no-progress"]


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """(images folder, a finished store with hflip views, its image paths): made once, copied per case."""
    base = tmp_path_factory.mktemp("damage")
    data = write_two_class_images(base / "images")
    store = base / "cache.h5"
    precompute(data, store, [BACKBONE], progress=False, **OPTIONS)
    return data, store, load_store(store).paths.tolist()


def _edit(action):
    def damage(path, paths):
        with h5py.File(path, "a") as store_file:
            action(store_file)
    return damage


def _replace(store_file, key, data):
    attrs = dict(store_file[key].attrs)
    del store_file[key]
    store_file[key] = data
    store_file[key].attrs.update(attrs)


def _row_offset(path, key, row):
    """Byte offset in the file of row `row` of dataset `key` (contiguous, or found through its chunk)."""
    with h5py.File(path, "r") as store_file:
        dataset = store_file[key]
        row_bytes = int(np.prod(dataset.shape[1:])) * dataset.dtype.itemsize
        if dataset.chunks is None:
            return dataset.id.get_offset() + row * row_bytes
        chunk_rows = dataset.chunks[0]
        info = dataset.id.get_chunk_info_by_coord((row - row % chunk_rows,) + (0,) * (dataset.ndim - 1))
        return info.byte_offset + (row % chunk_rows) * row_bytes


def _flip(path, offset, mask=0x01):
    with open(path, "r+b") as handle:
        handle.seek(offset)
        value = handle.read(1)[0]
        handle.seek(offset)
        handle.write(bytes([value ^ mask]))


def _flip_row(key, row):
    def damage(path, paths):
        # The low bit of one value: still a finite, plausible number, found only by the checksum.
        _flip(path, _row_offset(path, key, row) + 6)
    return damage


def _flip_object_header(path, paths):
    # The first object header after the root group's: HDF5 checksums it, so the change is an error.
    data = path.read_bytes()
    first = data.index(b"OHDR")
    _flip(path, data.index(b"OHDR", first + 4) + 12, 0xFF)


def _flip_path_string(path, paths):
    # An image path's first character, in HDF5's global heap: no longer UTF-8.
    _flip(path, path.read_bytes().index(paths[0].encode()), 0xFF)


def _truncate(path, paths):
    size = path.stat().st_size
    with open(path, "r+b") as handle:
        handle.truncate(size // 2)


# name -> (damage, message, where it is found: "info" by the store check, "rows" when feature rows are read)
CASES = {
    "labels deleted": (_edit(lambda f: f.__delitem__("images/label")),
                       r"has no /images/label dataset\..* It was deleted or damaged: Rebuild it", "info"),
    "features deleted, progress kept": (_edit(lambda f: f.__delitem__(f"features/{BACKBONE}")),
                                        rf"is damaged: /progress/{BACKBONE} has no /features/{BACKBONE} \(deleted\?\)",
                                        "info"),
    "progress deleted": (_edit(lambda f: f.__delitem__(f"progress/{BACKBONE}")),
                         rf"is damaged: /progress/{BACKBONE} is missing \(deleted\?\)", "info"),
    "checksums deleted": (_edit(lambda f: f.__delitem__("checksums")),
                          rf"is damaged: /checksums/features/{BACKBONE} is missing", "info"),
    "class_names shortened": (_edit(lambda f: f.attrs.__setitem__("class_names", ["class_0"])),
                              r"labels must lie in \[-1, 0\] for 1 class names .*class_names is shorter than the "
                              r"labels need.*Rebuild it", "info"),
    "features shorter than images": (_edit(lambda f: _replace(f, f"features/{BACKBONE}",
                                                              f[f"features/{BACKBONE}"][:-3])),
                                     rf"/features/{BACKBONE} does not line up with /images.*Rebuild it", "info"),
    "more paths than labels": (_edit(lambda f: _replace(f, "images/path", np.array([b"x.png"] * 40))),
                               r"/images datasets do not line up.*Received: path=40, label=16", "info"),
    "truncated to half": (_truncate, r"is damaged: HDF5 cannot open it \(.*truncated file.*\); the file is truncated "
                                     r"or its bytes were changed\. Rebuild it", "info"),
    "flipped superblock byte": (lambda path, paths: _flip(path, 8, 0xFF),
                                r"is damaged: HDF5 cannot open it \(.*superblock.*\)", "info"),
    "flipped object header byte": (_flip_object_header, r"is damaged: HDF5 cannot open it \(.*checksum.*\)|is damaged: "
                                                         r"HDF5 could not read it \(.*checksum.*\)", "info"),
    "flipped byte in an image path": (_flip_path_string, r"is damaged: a string in it is not valid UTF-8", "info"),
    "flipped byte in a feature row": (_flip_row(f"features/{BACKBONE}", 5),
                                      rf"is damaged: row 5 of /features/{BACKBONE} \(backbone {BACKBONE}, image "
                                      r"{path5}\) does not match the checksum written with it\. Rebuild it", "rows"),
    "flipped byte in a view row": (_flip_row(f"views/{BACKBONE}", 11),
                                   rf"is damaged: row 11 of /views/{BACKBONE} \(backbone {BACKBONE}, image "
                                   r"{path11}\) does not match the checksum", "rows"),
}


def _one_line_exit(capsys, main, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert re.search(message, lines[0]), lines[0]


@pytest.mark.parametrize("case", list(CASES))
def test_a_damaged_store_is_refused_with_one_line_everywhere(made, tmp_path, capsys, case):
    data, original, paths = made
    damage, message, where = CASES[case]
    message = message.replace("{path5}", re.escape(paths[5])).replace("{path11}", re.escape(paths[11]))
    path = tmp_path / "cache.h5"
    shutil.copyfile(original, path)
    damage(path, paths)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a damaged store is an error, never a warning
        with pytest.raises(StoreError, match=message):
            load_store(path, views=True)
        if where == "info":
            with pytest.raises(StoreError, match=message):
                read_store_info(path)
        else:
            info = read_store_info(path)  # the layout is whole; the rows are checked where they are read
            rows = np.arange(info.num_rows)
            with pytest.raises(StoreError, match=message):
                open_feature_source(path, [BACKBONE], stream=False, with_views=True)
            streamed = open_feature_source(path, [BACKBONE], stream=True, with_views=True)
            group = "views" if "view" in case else "features"
            with pytest.raises(StoreError, match=message):
                streamed.gather(BACKBONE, [(0, len(rows))], rows, views=group == "views")
            if group == "features":
                with pytest.raises(StoreError, match=message):  # the trainer's first read of a streamed store
                    feature_statistics(streamed.features, info.split_rows("train"))
            streamed.close()
    _one_line_exit(capsys, run_precompute.main, [str(data), "--out", str(path)] + COMMAND, message)
    _one_line_exit(capsys, run_train.main, [str(path), "--out", str(tmp_path / "run"), "--tta", "--epochs", "1",
                                            "--units", "4", "--no-ablation"], message)


def test_a_store_written_before_checksums_still_loads_and_says_so(made, tmp_path):
    _, original, _ = made
    path = tmp_path / "old.h5"
    shutil.copyfile(original, path)
    with h5py.File(path, "a") as store_file:
        del store_file["checksums"]
        store_file.attrs["format_version"] = 1
    with pytest.warns(UserWarning, match=rf"written before feature rows carried checksums: damage to the rows of "
                                         rf"{BACKBONE} cannot be detected\. Rebuild it"):
        assert load_store(path).features[BACKBONE].shape[0] == 16
    with pytest.warns(UserWarning, match="written before feature rows carried checksums"):
        assert read_store_info(path).backbones == (BACKBONE,)
    np.testing.assert_array_equal(open_feature_source(path, [BACKBONE], stream=False).features[BACKBONE],
                                  load_store(original).features[BACKBONE])


def test_checksums_are_written_with_the_rows_and_copied_when_rows_change(made, tmp_path):
    _, original, paths = made
    with h5py.File(original, "r") as store_file:
        features = store_file[f"features/{BACKBONE}"][()]
        stored = store_file[f"checksums/features/{BACKBONE}"][()]
        views = store_file[f"views/{BACKBONE}"][()]
        stored_views = store_file[f"checksums/views/{BACKBONE}"][()]
    assert stored.dtype == np.uint32 and stored.shape == (16,)
    assert stored.tolist() == [zlib.crc32(row.tobytes()) for row in features]
    assert stored_views.tolist() == [zlib.crc32(row.tobytes()) for row in views]
    # Dropping a row (as the end of a run drops unreadable ones) keeps the other rows' checksums.
    path = tmp_path / "rebuilt.h5"
    shutil.copyfile(original, path)
    keep = [row for row in range(16) if row != 2]
    rebuild_rows(path, keep)
    rebuilt = load_store(path, views=True)
    assert rebuilt.paths.tolist() == [paths[row] for row in keep]
    with h5py.File(path, "r") as store_file:
        assert store_file[f"checksums/features/{BACKBONE}"][()].tolist() == stored[keep].tolist()
        assert store_file[f"checksums/views/{BACKBONE}"][()].tolist() == stored_views[keep].tolist()
