"""Rows that live in shard files: `/features/<backbone>` and `/views/<backbone>` as HDF5 virtual datasets.

A run sharded over Ray workers (`features.ray_precompute`) writes each shard's rows into a file
of its own in `OUT.shards/`; the store then maps its rows onto them with an HDF5 virtual dataset
instead of copying them, so a terabyte of features is never copied at the end. A mapping is a
list of `RowSpan`s: store rows [start, stop) are rows [source_start, source_start + stop - start)
of a shard file's dataset. Shard paths are relative to the store's folder, which HDF5 resolves
from the store's own location, so the store and its shards folder move together.

Rows a mapping does not cover read as zeros; `/progress` never marks them done, and
`check_sources` refuses a store whose done rows point at a shard file that is gone.
"""

import collections
import os
from pathlib import Path

import h5py
import numpy as np

from features.store._files import StoreError, rewrite_store
from features.store._layout import _create_preallocated

RowSpan = collections.namedtuple("RowSpan", "start stop file dataset source_start source_rows")
RowSpan.__doc__ = "Store rows [start, stop) are rows [source_start, ...) of `dataset` in shard file `file` (relative)."

# Groups whose per-backbone datasets may be virtual.
VIRTUAL_GROUPS = ("features", "views")


def is_virtual(dataset):
    """Whether `dataset` is an HDF5 virtual dataset (its rows live in other files)."""
    return dataset.is_virtual


def read_spans(dataset):
    """The `RowSpan`s of virtual `dataset`, sorted by store row; [] for a dataset that is not virtual.

    Example:
        >>> read_spans(store_file["features/resnet50"])[0]
        RowSpan(start=0, stop=1024, file='cache.h5.shards/...h5', dataset='features/resnet50', source_start=0, ...)
    """
    if not dataset.is_virtual:
        return []
    spans = []
    for source in dataset.virtual_sources():
        (start, *_), (last, *_) = source.vspace.get_select_bounds()
        (source_start, *_), _ = source.src_space.get_select_bounds()
        spans.append(RowSpan(int(start), int(last) + 1, source.file_name, source.dset_name.lstrip("/"),
                             int(source_start), int(source.src_space.shape[0])))
    return sorted(spans)


def create_virtual(group, name, shape, dtype, spans):
    """Create `group[name]`, a virtual dataset of `shape` whose rows are `spans`; uncovered rows read 0.

    Args:
        group: an open group of the store (or of its temporary copy).
        name: the dataset's name, e.g. the backbone.
        shape: the full shape, one row per image.
        dtype: the dtype of the rows (the shard files' dtype).
        spans: `RowSpan`s, each within [0, shape[0]).
    """
    layout = h5py.VirtualLayout(shape=tuple(shape), dtype=dtype)
    row_shape = tuple(shape[1:])
    for span in spans:
        source = h5py.VirtualSource(span.file, span.dataset, shape=(span.source_rows,) + row_shape, dtype=dtype)
        count = span.stop - span.start
        layout[span.start:span.stop] = source[span.source_start:span.source_start + count]
    return group.create_virtual_dataset(name, layout, fillvalue=0)


def spans_of_rows(rows, source_rows_used, file, dataset, source_rows):
    """`RowSpan`s mapping sorted store `rows` onto rows `source_rows_used` of `dataset` in `file`: one per run.

    A run ends where either sequence skips a row.

    Example:
        >>> spans_of_rows(np.array([4, 5, 9]), np.array([0, 1, 2]), "s.h5", "features/x", 3)
        [RowSpan(4, 6, 's.h5', 'features/x', 0, 3), RowSpan(9, 10, 's.h5', 'features/x', 2, 3)]
    """
    rows = np.asarray(rows, dtype=np.int64)
    used = np.asarray(source_rows_used, dtype=np.int64)
    spans = []
    begin = 0
    for end in range(1, len(rows) + 1):
        if end == len(rows) or rows[end] != rows[end - 1] + 1 or used[end] != used[end - 1] + 1:
            spans.append(RowSpan(int(rows[begin]), int(rows[end - 1]) + 1, file, dataset, int(used[begin]),
                                 source_rows))
            begin = end
    return spans


def spans_after_keeping(spans, keep_rows):
    """The spans of a store rebuilt with only rows `keep_rows` (sorted): dropped rows leave gaps that close up.

    Example:
        >>> spans_after_keeping([RowSpan(0, 4, "s.h5", "f", 0, 4)], np.array([0, 1, 3]))
        [RowSpan(0, 2, 's.h5', 'f', 0, 4), RowSpan(2, 3, 's.h5', 'f', 3, 4)]
    """
    keep_rows = np.asarray(keep_rows, dtype=np.int64)
    kept = []
    for span in spans:
        first, last = np.searchsorted(keep_rows, [span.start, span.stop])
        old_rows = keep_rows[first:last]  # the span's rows that stay, in order
        begin = 0
        for end in range(1, len(old_rows) + 1):
            if end == len(old_rows) or old_rows[end] != old_rows[end - 1] + 1:
                kept.append(RowSpan(int(first + begin), int(first + end), span.file, span.dataset,
                                    span.source_start + int(old_rows[begin] - span.start), span.source_rows))
                begin = end
    return kept


def copy_dataset(source, group, name, keep_rows, extra_rows):
    """Copy `source` into `group[name]` with only rows `keep_rows` and `extra_rows` uncovered rows after them.

    A virtual dataset stays virtual (its spans remapped, nothing copied); any other dataset is
    copied row by row into a preallocated one. Returns the new dataset.
    """
    shape = (len(keep_rows) + extra_rows,) + source.shape[1:]
    if source.is_virtual:
        target = create_virtual(group, name, shape, source.dtype, spans_after_keeping(read_spans(source), keep_rows))
    else:
        target = _create_preallocated(group, name, shape, source.dtype)
        for start in range(0, len(keep_rows), 256):  # in blocks: memory stays bounded
            rows = keep_rows[start:start + 256]
            target[start:start + len(rows)] = source[rows] if len(rows) else source[:0]
    for key, value in source.attrs.items():
        target.attrs[key] = value
    return target


def virtual_backbones(store_file):
    """Backbones whose features or views live in shard files (virtual datasets), in store order."""
    names = []
    for group in VIRTUAL_GROUPS:
        for name, dataset in (store_file[group].items() if group in store_file else ()):
            if dataset.is_virtual and name not in names:
                names.append(name)
    return names


def shard_files(store_file):
    """Every shard file (relative to the store's folder) that the store's virtual datasets read."""
    files = set()
    for group in VIRTUAL_GROUPS:
        for dataset in (store_file[group].values() if group in store_file else ()):
            files.update(span.file for span in read_spans(dataset))
    return files


def check_sources(store_file, path, backbones):
    """Refuse a store whose done rows of `backbones` read from a shard file that is missing.

    HDF5 reads a missing source file as zeros, which would train a model on nothing without a
    word; this makes it one `StoreError` line instead.
    """
    folder = Path(path).resolve().parent
    for backbone in backbones:
        for group in VIRTUAL_GROUPS:
            if group not in store_file or backbone not in store_file[group]:
                continue
            spans = read_spans(store_file[group][backbone])
            if not spans:
                continue
            done = None
            if "progress" in store_file and backbone in store_file["progress"]:
                done = np.asarray(store_file["progress"][backbone][()]).reshape(-1) == 1
            missing = sorted({span.file for span in spans
                              if (done is None or done[span.start:span.stop].any())
                              and not (folder / span.file).is_file()})
            if missing:
                raise StoreError(
                    f"Feature store {path} keeps the /{group}/{backbone} rows in shard files, and {len(missing)} of "
                    f"them are missing, e.g. {folder / missing[0]}. Keep the folder {Path(missing[0]).parts[0]} "
                    f"beside the store (move both together), or run run_precompute.py with --merge to make a "
                    f"self-contained store. Received: {len(missing)} missing shard file(s)")


def merge_shards(store_path, block_bytes=64 << 20):
    """Copy every virtual dataset's rows into the store itself, atomically: the store becomes self-contained.

    Returns the shard files (relative to the store's folder) the store no longer reads; the caller
    may delete them. The copy goes block by block, so memory stays bounded.
    """
    store_path = Path(store_path)
    with h5py.File(store_path, "r") as store_file:
        files = shard_files(store_file)
        targets = [(group, name) for group in VIRTUAL_GROUPS if group in store_file
                   for name, dataset in store_file[group].items() if dataset.is_virtual]
    if not targets:
        return files
    with rewrite_store(store_path) as store, h5py.File(store_path, "r") as original:
        for group, name in targets:
            source = original[group][name]
            attrs = dict(source.attrs.items())
            del store[group][name]
            target = _create_preallocated(store[group], name, source.shape, source.dtype)
            row_bytes = max(1, int(np.prod(source.shape[1:])) * source.dtype.itemsize)
            step = max(1, block_bytes // row_bytes)
            for start in range(0, source.shape[0], step):
                target[start:start + step] = source[start:start + step]
            for key, value in attrs.items():
                target.attrs[key] = value
    return files


def remove_unused_shards(store_path, files):
    """Delete shard files `files` (relative to the store's folder), and the shards folder once it is empty."""
    folder = Path(store_path).resolve().parent
    for file in files:
        (folder / file).unlink(missing_ok=True)
    for directory in {(folder / file).parent for file in files}:
        try:
            os.rmdir(directory)
        except OSError:  # not empty (another run's files), or already gone
            pass
