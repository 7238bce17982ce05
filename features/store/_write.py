"""Writing a store: creating it, filling its rows in place, rebuilding them, and plain stores of other tools."""

import os

import h5py
import numpy as np

from features.store._files import rewrite_store
from features.store._layout import (
    FORMAT_VERSION,
    _REASON_DTYPE,
    STRING_DTYPE,
    _create_cost,
    _create_preallocated,
    _read_skipped,
    _read_strings,
    _set_strings_attr,
    _write_images,
    _write_skipped,
)
from features.store._checks import _row_checksums
from features.store._virtual import copy_dataset


def _copy_rows(source, target, keep_rows, block=256):
    for start in range(0, len(keep_rows), block):
        rows = keep_rows[start:start + block]
        target[start:start + len(rows)] = source[rows] if len(rows) else source[:0]


def _copy_costs(old, new):
    # Not per row: a run's measurements stay whole when rows are added or dropped.
    keys = (["decode"] if "cost/decode" in old else []) + [
        f"features/{name}" for name in (old["cost/features"] if "cost/features" in old else ())]
    for key in keys:
        _create_cost(new, key)[...] = old[f"cost/{key}"][()]


def rebuild_rows(store_path, keep_rows, new_rows=None, class_names=None, skipped=None, relabel=None):
    """Rewrite the store atomically with only rows `keep_rows`, then `new_rows` appended.

    Used to drop unreadable images at the end of a run and to add new images.

    Args:
        store_path: the store.
        keep_rows: sorted indices of the rows to keep.
        new_rows: None, or a dict with `paths`, `labels`, `splits`, `fingerprints` of images to
            append; their features are computed later (default: None).
        class_names: new root `class_names` (default: None, keep).
        skipped: None, or (paths, reasons, fingerprints) for `/skipped` (default: None, keep).
        relabel: None, or an int array mapping each kept row's old label to its new one, with
            `relabel[-1] == -1` for unlabeled rows; used when classes are dropped (default: None).
    """
    keep_rows = np.asarray(keep_rows, dtype=np.int64)
    new_rows = new_rows or {"paths": [], "labels": [], "splits": [], "fingerprints": np.zeros((0, 2))}
    with h5py.File(store_path, "r") as old, rewrite_store(store_path, copy=False) as new:
        for key, value in old.attrs.items():
            new.attrs[key] = value
        if class_names is not None:
            _set_strings_attr(new, "class_names", class_names)
        old_paths = _read_strings(old["images/path"])
        old_splits = _read_strings(old["images/split"])
        kept_labels = old["images/label"][()][keep_rows]
        if relabel is not None:
            kept_labels = np.asarray(relabel)[kept_labels]
        _write_images(
            new,
            [old_paths[i] for i in keep_rows] + list(new_rows["paths"]),
            np.concatenate([kept_labels, np.asarray(new_rows["labels"], np.int64)]),
            [old_splits[i] for i in keep_rows] + list(new_rows["splits"]),
            np.concatenate([old["images/fingerprint"][()][keep_rows],
                            np.asarray(new_rows["fingerprints"], np.int64).reshape(-1, 2)]),
        )
        _copy_rows(old["pending/unreadable"], new["pending/unreadable"], keep_rows)
        _copy_rows(old["pending/reason"], new["pending/reason"], keep_rows)
        for group_name in ("features", "views", "progress", "checksums/features", "checksums/views"):
            if group_name not in old:
                continue
            for name, dataset in old[group_name].items():
                # Rows in shard files stay there: only their mapping changes (`_virtual.copy_dataset`).
                copy_dataset(dataset, new.require_group(group_name), name, keep_rows, len(new_rows["paths"]))
        _copy_costs(old, new)
        if skipped is None:
            skipped = _read_skipped(old)
        _write_skipped(new, *skipped)


def write_plain_store(path, class_names, paths, labels, splits, features, views=None, string_format="utf8",
                      skipped=(), extra_attrs=None, extra_image_columns=None):
    """Write a store with only the required layout, as another tool would (no bookkeeping, no checksums).

    Used for generated data sets (`fusion.write_synthetic_store`) and to test that stores of other
    tools are read.

    Args:
        path: the `.h5` file to write (replaced when present).
        class_names: label i is `class_names[i]`.
        paths, labels, splits: one per image.
        features: dict backbone -> array (N, ...).
        views: dict backbone -> (array (N, V, ...), view names) (default: None).
        string_format: "utf8" (variable-length UTF-8) or "bytes" (fixed-length bytes) (default: "utf8").
        skipped: (path, reason) pairs written to `/skipped` when any (default: ()).
        extra_attrs: more root attributes (default: None).
        extra_image_columns: dict name -> array, more `/images/<name>` datasets (default: None).

    Example:
        >>> write_plain_store("plain.h5", ["cat", "dog"], ["a.png"], [0], ["train"], {"resnet50": np.zeros((1, 4))})
    """
    if string_format not in ("utf8", "bytes"):
        raise ValueError(f"Unknown string_format {string_format!r}. Valid values: utf8, bytes. "
                         f"Received: string_format={string_format!r}")

    def strings(values):
        values = [str(value) for value in values]
        if string_format == "bytes":
            encoded = [value.encode("utf-8") for value in values]
            return np.array(encoded, dtype=f"S{max([1] + [len(value) for value in encoded])}")
        return np.array(values, dtype=STRING_DTYPE)

    with h5py.File(path, "w") as store_file:
        store_file.attrs["class_names"] = strings(class_names)
        for key, value in (extra_attrs or {}).items():
            store_file.attrs[key] = value
        images = store_file.create_group("images")
        images["path"] = strings(paths)
        images["label"] = np.asarray(labels, dtype=np.int64)
        images["split"] = strings(splits)
        for key, value in (extra_image_columns or {}).items():
            images[key] = value
        group = store_file.create_group("features")
        for backbone, values in features.items():
            group[backbone] = values
        for backbone, (values, names) in (views or {}).items():
            dataset = store_file.require_group("views").create_dataset(backbone, data=values)
            dataset.attrs["view_names"] = strings(names)
        if skipped:
            group = store_file.create_group("skipped")
            group["path"] = strings([path for path, _ in skipped])
            group["reason"] = strings([reason for _, reason in skipped])


class RowFiller:
    """The store open read-write to fill the rows of its datasets in place, and for nothing else.

    Only raw rows go through it (features, views, their checksums, progress and pending marks, and
    the measured cost in `/cost`):
    their datasets were made at full size with their chunks allocated, so writing them changes no
    structure. Every structural change goes through `rewrite_store` instead. A row is marked done
    (`mark_done`, `mark_unreadable`) only after `sync` has put what it marks on disk.

    Args:
        path: the store.

    Example:
        >>> with RowFiller("cache.h5") as filler:
        ...     filler.write_reasons(np.array([3]), ["cannot identify image file"])
        ...     filler.sync()
        ...     filler.mark_unreadable(np.array([3]))
    """

    def __init__(self, path):
        self._file = h5py.File(path, "r+")
        self._descriptor = self._file.id.get_vfd_handle()

    def write_rows(self, group, backbone, rows, values):
        """Write rows `rows` (sorted) of `/<group>/<backbone>` ("features" or "views") and then their CRC32."""
        dataset = self._file[group][backbone]
        values = np.asarray(values).astype(dataset.dtype, copy=False)
        _fill_rows(dataset, rows, values)
        key = f"checksums/{group}/{backbone}"
        if key in self._file:  # a backbone of a store written before checksums has none
            _fill_rows(self._file[key], rows, _row_checksums(values))

    def mark_done(self, backbone, rows):
        """Mark rows `rows` of `backbone` computed (`/progress/<backbone>`)."""
        _fill_rows(self._file["progress"][backbone], rows, np.ones(len(rows), np.uint8))

    def write_reasons(self, rows, reasons):
        """Record why rows `rows` could not be read (`/pending/reason`, cut to 200 bytes)."""
        _fill_rows(self._file["pending/reason"], rows,
                   np.asarray([reason.encode("utf-8")[:200] for reason in reasons], dtype=_REASON_DTYPE))

    def mark_unreadable(self, rows):
        """Mark rows `rows` unreadable (`/pending/unreadable`); they move to `/skipped` when the run ends."""
        _fill_rows(self._file["pending/unreadable"], rows, np.ones(len(rows), np.uint8))

    def add_compute_cost(self, backbone, seconds, images):
        """Add the seconds `backbone`'s predict calls took for `images` images to `/cost/features/<backbone>`.

        A backbone of a store written before costs were recorded has none, and records none.
        """
        self._add_cost(f"cost/features/{backbone}", seconds, images)

    def add_decode_cost(self, seconds, images):
        """Add the seconds decoding and resizing `images` images took to `/cost/decode`, where the store has it."""
        self._add_cost("cost/decode", seconds, images)

    def _add_cost(self, path, seconds, images):
        if path in self._file:
            dataset = self._file[path]
            # One write of both values: one chunk, raw data only.
            dataset[...] = dataset[()] + np.array([seconds, images], np.float64)

    def sync(self):
        """Put everything written so far on disk (flush, then fsync)."""
        self._file.flush()
        os.fsync(self._descriptor)

    def close(self):
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def _fill_rows(dataset, rows, values):
    # Rows come sorted; consecutive runs become slice writes (fast, no fancy indexing).
    values = np.asarray(values).astype(dataset.dtype, copy=False)
    start = 0
    for end in range(1, len(rows) + 1):
        if end == len(rows) or rows[end] != rows[end - 1] + 1:
            dataset[rows[start]:rows[end - 1] + 1] = values[start:end]
            start = end


def create_store(store_path, *, class_names, paths, labels, splits, fingerprints, root_attrs):
    """Write a new store for N images with no backbone yet, atomically.

    Args:
        store_path: the store to create (under the writer lock).
        class_names: label i is `class_names[i]`.
        paths, labels, splits: one per image.
        fingerprints: (N, 2) size and mtime_ns of each image file.
        root_attrs: more root attributes (data root, layout, options, version).
    """
    with rewrite_store(store_path, copy=False) as store:
        store.attrs["format_version"] = FORMAT_VERSION
        for key, value in root_attrs.items():
            store.attrs[key] = value
        _set_strings_attr(store, "class_names", class_names)
        _write_images(store, paths, labels, splits, fingerprints)
        _write_skipped(store, [], [], np.zeros((0, 2), np.int64))
        _create_cost(store, "decode")
