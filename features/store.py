"""The HDF5 feature store: its layout, crash-safe changes, the writer lock, and the loader.

Crash safety rests on three rules (see the README section "store"):
every structural change (new store, new backbone, new or dropped rows) is made on a copy
that is fsynced and `os.replace`d over the store; feature datasets are created at full size
with their chunks allocated at once and no compression, so filling rows writes raw data
only; and rows are marked done in `/progress/<backbone>` only after their features are on disk.
"""

import contextlib
import dataclasses
import fcntl
import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np

FORMAT_VERSION = 1

STRING_DTYPE = h5py.string_dtype("utf-8")

# Fixed-length bytes so that recording a skip reason during a run writes raw data only.
_REASON_DTYPE = np.dtype("S200")

_CHUNK_BYTES = 1 << 20


class StoreBusyError(OSError):
    """Another process is writing the same store."""


def lock_path(store_path):
    """The lock file that guards `store_path` against two writers."""
    store_path = Path(store_path)
    return store_path.with_name(store_path.name + ".lock")


@contextlib.contextmanager
def store_lock(store_path):
    """Hold an exclusive, non-blocking lock on `store_path` for the duration of the block.

    Raises:
        StoreBusyError: another run holds the lock.

    Example:
        >>> with store_lock("cache.h5"):
        ...     pass
    """
    path = lock_path(store_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreBusyError(
                f"Another run is writing {Path(store_path).resolve()} (lock file {path.resolve()} is held). "
                f"Wait for it to finish, or write to another --out. Received: out={store_path}"
            ) from None
        handle.seek(0), handle.truncate(), handle.write(f"{os.getpid()}\n"), handle.flush()
        yield path
    finally:
        handle.close()


def _fsync_path(path):
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _temporary_path(store_path):
    store_path = Path(store_path)
    return store_path.with_name(store_path.name + ".tmp")


# The first bytes of every HDF5 file: a stale OUT.tmp without them is not a copy this module began.
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def remove_stale_temporary(store_path):
    """Delete the half-written copy a killed structural change may have left (call under the lock).

    Call it only once `store_path` is known to be a store, or absent. A file of that name that is
    not HDF5 is someone else's: it is refused, not deleted.
    """
    temporary = _temporary_path(store_path)
    if not temporary.is_file():
        return
    with open(temporary, "rb") as handle:
        head = handle.read(len(_HDF5_SIGNATURE))
    if head and head != _HDF5_SIGNATURE:
        raise ValueError(f"{temporary} exists and is not a half-written copy of a feature store (not HDF5); it is left "
                         f"untouched. Move it, or choose another --out. Received: out={store_path}")
    temporary.unlink()


@contextlib.contextmanager
def rewrite_store(store_path, copy=True):
    """Change the store's structure atomically: yield a writable copy, then fsync and replace.

    If the block raises (or the process dies), the store stays as it was.

    Args:
        store_path: the store.
        copy: start from a copy of the store (True) or from an empty file (default: True).

    Example:
        >>> with rewrite_store("cache.h5") as store:
        ...     store.attrs["note"] = "changed atomically"
    """
    store_path = Path(store_path)
    temporary = _temporary_path(store_path)
    if copy:
        shutil.copyfile(store_path, temporary)
    try:
        with h5py.File(temporary, "a" if copy else "w") as store:
            yield store
        _fsync_path(temporary)
        os.replace(temporary, store_path)
        _fsync_path(store_path.parent)
    finally:
        temporary.unlink(missing_ok=True)


def _chunk_rows(row_shape, dtype):
    row_bytes = int(np.prod(row_shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    return int(max(1, min(256, _CHUNK_BYTES // max(1, row_bytes))))


def set_strings_attr(obj, key, values):
    """Store a list of str as a UTF-8 string array attribute (also when empty)."""
    obj.attrs.create(key, np.asarray(list(values), dtype=object), dtype=STRING_DTYPE)


def create_preallocated(group, name, shape, dtype):
    """Create a chunked, uncompressed dataset whose chunks are all allocated now.

    Writing rows into it later changes raw data only, never HDF5 metadata, which is what
    lets a run be killed at any moment without harming the file.
    """
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    rows = max(1, min(shape[0], _chunk_rows(shape[1:], dtype)))
    return group.create_dataset(name, shape=shape, dtype=dtype, chunks=(rows,) + tuple(shape[1:]),
                                dcpl=dcpl)


def write_images(store, paths, labels, splits, file_fingerprints):
    """Write the `/images/*` datasets and the in-run bookkeeping for N images into an open store."""
    count = len(paths)
    images = store.require_group("images")
    images.create_dataset("path", data=np.asarray(paths, dtype=object), dtype=STRING_DTYPE)
    images.create_dataset("label", data=np.asarray(labels, dtype=np.int64))
    images.create_dataset("split", data=np.asarray(splits, dtype=object), dtype=STRING_DTYPE)
    images.create_dataset("fingerprint", data=np.asarray(file_fingerprints, dtype=np.int64).reshape(count, 2))
    set_strings_attr(images["fingerprint"], "columns", ["size", "mtime_ns"])
    pending = store.require_group("pending")
    create_preallocated(pending, "unreadable", (count,), np.uint8)
    create_preallocated(pending, "reason", (count,), _REASON_DTYPE)


def write_skipped(store, paths, reasons, file_fingerprints):
    """Write `/skipped/*`: the unreadable images, their reasons and fingerprints."""
    if "skipped" in store:
        del store["skipped"]
    skipped = store.create_group("skipped")
    skipped.create_dataset("path", data=np.asarray(list(paths), dtype=object), dtype=STRING_DTYPE)
    skipped.create_dataset("reason", data=np.asarray(list(reasons), dtype=object), dtype=STRING_DTYPE)
    skipped.create_dataset("fingerprint", data=np.asarray(file_fingerprints, dtype=np.int64).reshape(-1, 2))


def read_strings(dataset):
    """A UTF-8 string dataset as a list of str."""
    return [value.decode("utf-8") if isinstance(value, bytes) else str(value) for value in dataset[()]]


def read_strings_attr(obj, key):
    """A string-array attribute as a list of str (empty when absent)."""
    return [str(value) for value in _decode_attr(np.asarray(obj.attrs.get(key, [])))]


def read_skipped(store):
    """(paths, reasons, fingerprints) of `/skipped`, empty when there is none."""
    if "skipped" not in store:
        return [], [], np.zeros((0, 2), np.int64)
    group = store["skipped"]
    return read_strings(group["path"]), read_strings(group["reason"]), group["fingerprint"][()]


def add_backbone(store, name, row_shape, dtype, attrs, view_names=()):
    """Create `/features/<name>`, `/progress/<name>` and, with views, `/views/<name>` at full size."""
    count = store["images/path"].shape[0]
    features = create_preallocated(store.require_group("features"), name, (count,) + tuple(row_shape), dtype)
    for key, value in attrs.items():
        features.attrs[key] = value
    if view_names:
        views = create_preallocated(store.require_group("views"), name,
                                    (count, len(view_names)) + tuple(row_shape), dtype)
        set_strings_attr(views, "view_names", view_names)
        for key, value in attrs.items():
            views.attrs[key] = value
    create_preallocated(store.require_group("progress"), name, (count,), np.uint8)


def _copy_rows(source, target, keep_rows, block=256):
    for start in range(0, len(keep_rows), block):
        rows = keep_rows[start:start + block]
        target[start:start + len(rows)] = source[rows] if len(rows) else source[:0]


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
            set_strings_attr(new, "class_names", class_names)
        old_paths = read_strings(old["images/path"])
        old_splits = read_strings(old["images/split"])
        kept_labels = old["images/label"][()][keep_rows]
        if relabel is not None:
            kept_labels = np.asarray(relabel)[kept_labels]
        write_images(
            new,
            [old_paths[i] for i in keep_rows] + list(new_rows["paths"]),
            np.concatenate([kept_labels, np.asarray(new_rows["labels"], np.int64)]),
            [old_splits[i] for i in keep_rows] + list(new_rows["splits"]),
            np.concatenate([old["images/fingerprint"][()][keep_rows],
                            np.asarray(new_rows["fingerprints"], np.int64).reshape(-1, 2)]),
        )
        _copy_rows(old["pending/unreadable"], new["pending/unreadable"], keep_rows)
        _copy_rows(old["pending/reason"], new["pending/reason"], keep_rows)
        for group_name in ("features", "views", "progress"):
            if group_name not in old:
                continue
            for name, dataset in old[group_name].items():
                shape = (len(keep_rows) + len(new_rows["paths"]),) + dataset.shape[1:]
                target = create_preallocated(new.require_group(group_name), name, shape, dataset.dtype)
                for key, value in dataset.attrs.items():
                    target.attrs[key] = value
                _copy_rows(dataset, target, keep_rows)
        if skipped is None:
            skipped = read_skipped(old)
        write_skipped(new, *skipped)


@dataclasses.dataclass(frozen=True)
class FeatureStore:
    """The arrays of a finished feature store, as `load_store` returns them.

    Args:
        features: backbone name -> array (N, ...) of features, row i for image i.
        views: backbone name -> array (N, V, ...) of extra views (empty unless asked for).
        view_names: backbone name -> names of its V extra views.
        labels: int64 (N,), -1 when unlabeled.
        splits: (N,) array of "train" / "val" / "test".
        paths: (N,) array of image paths relative to `data_root`.
        class_names: label i is `class_names[i]`.
        skipped: tuple of (path, reason) of the images that could not be read.
        backbone_info: backbone name -> dict of what made its features (input size, weights...).
        data_root: the folder the images were read from.
    """

    features: dict
    views: dict
    view_names: dict
    labels: np.ndarray
    splits: np.ndarray
    paths: np.ndarray
    class_names: tuple
    skipped: tuple
    backbone_info: dict
    data_root: str

    def __len__(self):
        return len(self.paths)

    def select(self, split):
        """The rows of one split ("train", "val" or "test") as a new `FeatureStore`.

        Example:
            >>> train = load_store("cache.h5").select("train")
        """
        if split not in ("train", "val", "test"):
            raise ValueError(f"Unknown split '{split}'. Valid values: train, val, test. Received: split={split!r}")
        mask = self.splits == split
        return dataclasses.replace(
            self,
            features={name: array[mask] for name, array in self.features.items()},
            views={name: array[mask] for name, array in self.views.items()},
            labels=self.labels[mask], splits=self.splits[mask], paths=self.paths[mask],
        )


def check_finished(store_file, backbones, path):
    """Refuse a store that a precompute run left unfinished: rows never computed, or unreadable rows pending.

    `/progress` and `/pending` are optional (stores of other tools have none); where present they decide.

    Example:
        >>> with h5py.File("cache.h5", "r") as store_file:
        ...     check_finished(store_file, ["resnet50"], "cache.h5")
    """
    for backbone in backbones:
        if "progress" in store_file and backbone in store_file["progress"]:
            done = np.asarray(store_file["progress"][backbone][()]).reshape(-1)
            missing = int(np.sum(done != 1))
            if missing:
                raise ValueError(
                    f"Feature store {path} is unfinished: {missing} of {len(done)} rows of {backbone} were never computed "
                    f"(a precompute run stopped before the end). Run the same run_precompute.py command again to finish "
                    f"it. Received: {missing} unfinished rows")
    if "pending" in store_file and "unreadable" in store_file["pending"]:
        pending = int(np.sum(np.asarray(store_file["pending/unreadable"][()]) != 0))
        if pending:
            raise ValueError(
                f"Feature store {path} is unfinished: {pending} unreadable image(s) are still pending (a precompute run "
                f"stopped before the end). Run the same run_precompute.py command again to finish it. "
                f"Received: {pending} pending rows")


def _decode_attr(value):
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        return [_decode_attr(item) for item in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value


def load_store(path, backbones=None, views=False):
    """Load the features, labels, splits and class names of a finished store.

    Args:
        path: the HDF5 store written by `precompute`.
        backbones: names of the backbones to load (default: None, all in the store).
        views: also load `/views/<backbone>` where present (default: False).

    Example:
        >>> store = load_store("cache.h5", backbones=["resnet50"])
        >>> store.select("train").features["resnet50"].shape
        (800, 2048)
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Feature store not found: {path.resolve()}")
    with h5py.File(path, "r") as store:
        available = sorted(store["features"].keys()) if "features" in store else []
        if backbones is None:
            backbones = available
        elif isinstance(backbones, str):
            backbones = [backbones]
        missing = [name for name in backbones if name not in available]
        if missing:
            raise ValueError(f"Backbone(s) {', '.join(missing)} not in store {path}. In the store: "
                             f"{', '.join(available) or 'none'}. Run run_precompute.py with them first. "
                             f"Received: backbones={list(backbones)}")
        check_finished(store, backbones, path)
        features, view_arrays, view_names, info = {}, {}, {}, {}
        for name in backbones:
            features[name] = store["features"][name][()]
            info[name] = {key: _decode_attr(value) for key, value in store["features"][name].attrs.items()}
            if views and "views" in store and name in store["views"]:
                view_arrays[name] = store["views"][name][()]
                view_names[name] = tuple(_decode_attr(store["views"][name].attrs["view_names"]))
        skipped_paths, skipped_reasons, _ = read_skipped(store)
        return FeatureStore(
            features=features, views=view_arrays, view_names=view_names,
            labels=store["images/label"][()].astype(np.int64),
            splits=np.asarray(read_strings(store["images/split"])),
            paths=np.asarray(read_strings(store["images/path"])),
            class_names=tuple(_decode_attr(store.attrs.get("class_names", np.array([], dtype=object)))),
            skipped=tuple(zip(skipped_paths, skipped_reasons)),
            backbone_info=info,
            data_root=_decode_attr(store.attrs.get("data_root", "")),
        )


def options_json(options):
    """Options as a JSON text for an HDF5 attribute."""
    return json.dumps(options, sort_keys=True, default=str)
