"""Shard files: the rows one Ray worker computed for a run, each file written whole or not at all.

A shard is a run of contiguous store rows, [start, stop), and the backbones that lack some of
them. Its file in `OUT.shards/` holds, for the rows it computed:

    /rows                          int64 (n,)   the store rows, sorted
    /paths                         str (n,)     their paths relative to DATA (checked on reuse)
    /features/<backbone>           (n, ...)     the stored dtype
    /views/<backbone>              (n, V, ...)  with --views
    /checksums/features/<backbone> uint32 (n,)  CRC32 of each row, as in the store
    /checksums/views/<backbone>    uint32 (n,)
    /unreadable                    uint8 (n,)   1 where the image could not be read
    /reason                        S200 (n,)    why
    /cost/features/<backbone>, /cost/decode      float64 [seconds, images]

and the root attributes `key` (what it was computed from, see `shard_key`), `host`, `pid` and
`seconds` (the worker's wall time for it). It is written under a temporary name, fsynced and
renamed, so a file under its final name is complete; its name carries `key`, so a run that
plans the same work (the same command again after the driver was killed) finds it and reuses it.
"""

import hashlib
import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from features.store._checks import _row_checksums
from features.store._files import rewrite_store
from features.store._layout import STRING_DTYPE
from features.store._virtual import create_virtual, read_spans, spans_of_rows
from features.store._write import RowFiller, _fill_rows

SHARD_FORMAT = 1
_REASON_DTYPE = np.dtype("S200")


def shards_folder(store_path):
    """The folder beside the store that holds its shard files: `OUT.shards`."""
    store_path = Path(store_path)
    return store_path.with_name(store_path.name + ".shards")


def shard_key(rows, paths, fingerprints, recipes, view_names):
    """A digest of what a shard computes: its rows, their paths and files, and each backbone's recipe.

    Args:
        rows: the store rows.
        paths: their paths relative to DATA.
        fingerprints: (n, 2) size and mtime_ns of their files, so an image replaced under the same
            name makes another shard.
        recipes: backbone -> its recipe attributes (`FeatureRecipe.to_attrs()`), which name the
            weights (and their sha256), input size, pooling, dtype, precision and views.
        view_names: the extra views.
    """
    digest = hashlib.sha256()
    digest.update(np.asarray(rows, np.int64).tobytes())
    digest.update("\0".join(paths).encode("utf-8"))
    digest.update(np.asarray(fingerprints, np.int64).tobytes())
    digest.update(json.dumps({"recipes": recipes, "views": list(view_names), "format": SHARD_FORMAT},
                             sort_keys=True, default=str).encode("utf-8"))
    return digest.hexdigest()[:16]


@dataclass(frozen=True, eq=False)
class ShardTask:
    """One shard of a run: what a worker computes and where it writes it.

    Args:
        index: its place in the run's plan.
        start, stop: the store rows it spans.
        rows: the store rows it computes (sorted; rows already unreadable are left out).
        paths: their paths relative to DATA.
        backbones: the backbones it computes, each for every row of `rows`.
        file: its file, relative to the store's folder.
        key: `shard_key` of the above.
    """

    index: int
    start: int
    stop: int
    rows: np.ndarray = field(repr=False)
    paths: tuple = field(repr=False)
    backbones: tuple
    file: str
    key: str


def plan_shards(store_path, paths, fingerprints, todo_rows, lacking, shard_rows, recipes, view_names):
    """Split `todo_rows` into shards of contiguous rows, [k * shard_rows, (k + 1) * shard_rows).

    The boundaries are fixed multiples of `shard_rows`, so the same command run again plans the
    same shards for the rows still to do, and finds those finished before.

    Args:
        store_path: the store.
        paths: the stored path of every row.
        fingerprints: (N, 2) the stored size and mtime_ns of every row's file.
        todo_rows: sorted rows some backbone lacks (unreadable ones left out).
        lacking: backbone -> bool array, the rows it lacks.
        shard_rows: rows per shard.
        recipes: backbone -> recipe attributes.
        view_names: the extra views.
    """
    folder = shards_folder(store_path).name
    tasks = []
    todo_rows = np.asarray(todo_rows, np.int64)
    if not len(todo_rows):
        return tasks
    for first in range(int(todo_rows[0]) // shard_rows * shard_rows, int(todo_rows[-1]) + 1, shard_rows):
        low, high = np.searchsorted(todo_rows, [first, first + shard_rows])
        rows = todo_rows[low:high]
        if not len(rows):
            continue
        backbones = tuple(name for name in recipes if lacking[name][rows].any())
        shard_paths = tuple(paths[row] for row in rows)
        key = shard_key(rows, shard_paths, np.asarray(fingerprints)[rows], {name: recipes[name] for name in backbones},
                        view_names)
        file = f"{folder}/rows-{first:010d}-{first + shard_rows:010d}-{key}.h5"
        tasks.append(ShardTask(len(tasks), first, first + shard_rows, rows, shard_paths, backbones, file, key))
    return tasks


class ShardWriter:
    """Writes one shard file under a temporary name; `finish` makes it durable and gives it its name.

    Args:
        path: the shard file's final path.
        task: its `ShardTask`.
        row_shapes: backbone -> the shape of one feature row.
        dtype: the stored dtype.
        view_names: the extra views.

    Example:
        >>> with ShardWriter(path, task, {"resnet50": (2048,)}, "float16", ()) as writer:
        ...     writer.write_rows("features", "resnet50", np.arange(32), features)
        ...     writer.finish(seconds=12.5)
    """

    def __init__(self, path, task, row_shapes, dtype, view_names):
        self.path = Path(path)
        self.temporary = self.path.with_name(f"{self.path.name}.tmp-{socket.gethostname()}-{os.getpid()}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = h5py.File(self.temporary, "w")
        count = len(task.rows)
        self._file["rows"] = np.asarray(task.rows, np.int64)
        self._file.create_dataset("paths", data=np.asarray(task.paths, dtype=object), dtype=STRING_DTYPE)
        self._file.create_dataset("unreadable", shape=(count,), dtype=np.uint8)
        self._file.create_dataset("reason", shape=(count,), dtype=_REASON_DTYPE)
        for name in task.backbones:
            shape = tuple(row_shapes[name])
            self._file.create_dataset(f"features/{name}", shape=(count,) + shape, dtype=dtype)
            self._file.create_dataset(f"checksums/features/{name}", shape=(count,), dtype=np.uint32)
            if view_names:
                self._file.create_dataset(f"views/{name}", shape=(count, len(view_names)) + shape, dtype=dtype)
                self._file.create_dataset(f"checksums/views/{name}", shape=(count,), dtype=np.uint32)
            self._file.create_dataset(f"cost/features/{name}", data=np.zeros(2))
        self._file.create_dataset("cost/decode", data=np.zeros(2))
        self._file.attrs["format"] = SHARD_FORMAT
        self._file.attrs["key"] = task.key

    def write_rows(self, group, backbone, rows, values):
        """Write shard rows `rows` (sorted indices) of `/<group>/<backbone>` in the stored dtype, then their CRC32."""
        dataset = self._file[f"{group}/{backbone}"]
        values = np.asarray(values).astype(dataset.dtype, copy=False)
        _fill_rows(dataset, rows, values)
        _fill_rows(self._file[f"checksums/{group}/{backbone}"], rows, _row_checksums(values))

    def mark_unreadable(self, rows, reasons):
        """Mark shard rows `rows` (indices) unreadable, with their reasons."""
        for row, reason in zip(rows, reasons):
            self._file["unreadable"][row] = 1
            self._file["reason"][row] = reason.encode("utf-8")[:200]

    def add_cost(self, key, seconds, images):
        """Add to `/cost/<key>` ("decode" or "features/<backbone>")."""
        self._file[f"cost/{key}"][...] = self._file[f"cost/{key}"][()] + np.array([seconds, images], np.float64)

    def finish(self, seconds):
        """Record the worker and its wall time, fsync, and rename the file to its final name."""
        self._file.attrs["host"] = socket.gethostname()
        self._file.attrs["pid"] = os.getpid()
        self._file.attrs["seconds"] = float(seconds)
        self._file.flush()
        os.fsync(self._file.id.get_vfd_handle())
        self._file.close()
        os.replace(self.temporary, self.path)
        descriptor = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)

    def close(self):
        """Drop the temporary file when `finish` was not reached."""
        if self._file.id.valid:
            self._file.close()
        self.temporary.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


@dataclass(eq=False)
class ShardResult:
    """What a finished shard file says about its work.

    Args:
        task: the `ShardTask`.
        host, pid: the worker that wrote it.
        seconds: its wall time.
        unreadable: the shard rows (indices into `task.rows`) whose image could not be read.
        reasons: why, one per unreadable row.
        costs: "decode" and each backbone -> [seconds, images] the worker measured.
        reused: True when it was found finished on disk rather than computed by this run.
    """

    task: ShardTask
    host: str
    pid: int
    seconds: float
    unreadable: np.ndarray
    reasons: list
    costs: dict
    reused: bool = False


def read_finished(folder, task):
    """The `ShardResult` of `task`'s file when it is on disk, complete and made from the same work; else None.

    A file that cannot be read or was made from other rows or recipes is not reused (it is
    computed again and replaced).
    """
    path = Path(folder) / task.file
    if not path.is_file():
        return None
    try:
        with h5py.File(path, "r") as shard:
            if shard.attrs.get("key") != task.key or not np.array_equal(shard["rows"][()], task.rows):
                return None
            if any(f"features/{name}" not in shard for name in task.backbones):
                return None
            unreadable = np.flatnonzero(shard["unreadable"][()])
            reasons = [value.decode("utf-8", "replace") for value in shard["reason"][()][unreadable]]
            costs = {"decode": shard["cost/decode"][()]}
            costs.update({name: shard[f"cost/features/{name}"][()] for name in task.backbones})
            return ShardResult(task, str(shard.attrs["host"]), int(shard.attrs["pid"]),
                               float(shard.attrs["seconds"]), unreadable, reasons, costs)
    except (OSError, KeyError, ValueError):
        return None


def _lacking_positions(result, lacking, name):
    """Positions in the shard of the rows `name` lacked and the worker could read."""
    task = result.task
    wanted = np.asarray(lacking[name])[task.rows].copy()
    wanted[result.unreadable] = False
    return np.flatnonzero(wanted)


def commit_copied(store_path, result, lacking, backbones, count_decode):
    """Copy a finished shard's rows of `backbones` into the store's own datasets and mark them done.

    As crash-safe as a single-process run's rows: each backbone's rows and checksums are synced
    before they are marked done. Unreadable images are marked pending with their reason.

    Args:
        store_path: the store.
        result: the shard's `ShardResult`.
        lacking: backbone -> bool array, the rows it lacked when the run was planned.
        backbones: the backbones of the shard whose store datasets are ordinary (not virtual).
        count_decode: add the shard's decode cost to the store's (once per shard).
    """

    task = result.task
    with h5py.File(Path(store_path).parent / task.file, "r") as shard, RowFiller(store_path) as filler:
        if len(result.unreadable):
            filler.write_reasons(task.rows[result.unreadable], result.reasons)
            filler.sync()
            filler.mark_unreadable(task.rows[result.unreadable])
        for name in backbones:
            positions = _lacking_positions(result, lacking, name)
            if len(positions):
                rows = task.rows[positions]
                filler.write_rows("features", name, rows, shard[f"features/{name}"][positions])
                if f"views/{name}" in shard:
                    filler.write_rows("views", name, rows, shard[f"views/{name}"][positions])
                filler.sync()
                filler.mark_done(name, rows)
            filler.add_compute_cost(name, *shard[f"cost/features/{name}"][()])
        if count_decode:
            filler.add_decode_cost(*shard["cost/decode"][()])
        filler.sync()


def commit_mapped(store_path, results, lacking, backbones, count_decode):
    """Map the store's virtual datasets of `backbones` onto finished shards, in one atomic rewrite.

    The rows' checksums, done marks, unreadable marks and costs go in with the mapping, so the
    store either holds all of it or is as it was.

    Args:
        store_path: the store.
        results: the `ShardResult`s to join.
        lacking: backbone -> bool array, the rows it lacked when the run was planned.
        backbones: the backbones whose `/features` (and `/views`) are virtual.
        count_decode: result -> whether to add its shard's decode cost to the store's (once per shard).
    """

    if not results:
        return
    folder = Path(store_path).parent
    with rewrite_store(store_path) as store:
        for name in backbones:
            for group in ("features", "views"):
                if group not in store or name not in store[group]:
                    continue
                dataset = store[group][name]
                spans, attrs = read_spans(dataset), dict(dataset.attrs.items())
                shape, dtype = dataset.shape, dataset.dtype
                for result in results:
                    if name in result.task.backbones:
                        positions = _lacking_positions(result, lacking, name)
                        spans += spans_of_rows(result.task.rows[positions], positions, result.task.file,
                                               f"{group}/{name}", len(result.task.rows))
                del store[group][name]
                target = create_virtual(store[group], name, shape, dtype, sorted(spans))
                for key, value in attrs.items():
                    target.attrs[key] = value
        for result in results:
            task = result.task
            with h5py.File(folder / task.file, "r") as shard:
                if len(result.unreadable):
                    rows = task.rows[result.unreadable]
                    _fill_rows(store["pending/reason"], rows,
                               np.asarray([reason.encode("utf-8")[:200] for reason in result.reasons], _REASON_DTYPE))
                    _fill_rows(store["pending/unreadable"], rows, np.ones(len(rows), np.uint8))
                for name in backbones:
                    if name not in task.backbones:
                        continue
                    positions = _lacking_positions(result, lacking, name)
                    rows = task.rows[positions]
                    for group in ("features", "views"):
                        key = f"checksums/{group}/{name}"
                        if key in store and key in shard and len(rows):
                            _fill_rows(store[key], rows, shard[key][()][positions])
                    if len(rows):
                        _fill_rows(store[f"progress/{name}"], rows, np.ones(len(rows), np.uint8))
                    _add_cost(store, f"cost/features/{name}", shard[f"cost/features/{name}"][()])
                if count_decode(result):
                    _add_cost(store, "cost/decode", shard["cost/decode"][()])


def _add_cost(store, key, value):
    if key in store:
        store[key][...] = store[key][()] + np.asarray(value, np.float64)
