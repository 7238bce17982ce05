"""The HDF5 feature store: its layout, crash-safe changes, the writer lock, and the loader.

Crash safety rests on three rules (see the README section "How it never loses work"):
every structural change (new store, new backbone, new or dropped rows) is made on a copy
that is fsynced and `os.replace`d over the store; feature datasets are created at full size
with their chunks allocated at once and no compression, so filling rows writes raw data
only; and rows are marked done in `/progress/<backbone>` only after their features, and the
CRC32 of each row in `/checksums/<features|views>/<backbone>`, are on disk.

Every refusal of a damaged or unfinished store is a `StoreError`, one line that says what is
wrong and how to finish or rebuild the store.
"""

import contextlib
import dataclasses
import fcntl
import json
import os
import shutil
import warnings
import zlib
from pathlib import Path

import h5py
import numpy as np

# 2: every feature and view row carries a CRC32 in /checksums. Stores of version 1 have none.
FORMAT_VERSION = 2
CHECKSUMS_SINCE = 2

STRING_DTYPE = h5py.string_dtype("utf-8")

# Fixed-length bytes so that recording a skip reason during a run writes raw data only.
_REASON_DTYPE = np.dtype("S200")

_CHUNK_BYTES = 1 << 20


class StoreBusyError(OSError):
    """Another process is writing the same store."""


class StoreError(ValueError):
    """A feature store is unfinished or damaged; the message says what is wrong and how to finish or rebuild it."""


REBUILD = "Rebuild it with run_precompute.py and a new --out (or delete the file and run the same command again)"


def _damaged(path, what, received):
    return StoreError(f"Feature store {path} is damaged: {what}. {REBUILD}. Received: {received}")


@contextlib.contextmanager
def store_errors(path):
    """Turn what h5py raises on a damaged file (OSError, RuntimeError, KeyError, bad UTF-8) into one `StoreError` line.

    Example:
        >>> with h5py.File("cache.h5", "r") as store_file, store_errors("cache.h5"):
        ...     labels = store_file["images/label"][()]
    """
    try:
        yield
    except (StoreError, StoreBusyError, FileNotFoundError):
        raise
    except UnicodeDecodeError as error:
        raise _damaged(path, f"a string in it is not valid UTF-8 ({error.reason} at byte {error.start})",
                       "UnicodeDecodeError") from None
    except (OSError, RuntimeError, KeyError) as error:
        text = error.args[0] if isinstance(error, KeyError) and error.args else error
        detail = " ".join(str(text).split()) or type(error).__name__
        raise _damaged(path, f"HDF5 could not read it ({detail})", type(error).__name__) from None


def open_store(path):
    """Open a feature store read-only: FileNotFoundError when missing, `StoreError` when it cannot be read.

    Example:
        >>> with open_store("cache.h5") as store_file:
        ...     print(list(store_file["features"]))
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Feature store not found: {path.resolve()}")
    try:
        return h5py.File(path, "r")
    except OSError as error:
        detail = " ".join(str(error).split())
        if _is_hdf5(path):
            raise _damaged(path, f"HDF5 cannot open it ({detail}); the file is truncated or its bytes were changed",
                           "an unreadable HDF5 file") from None
        raise StoreError(f"{path.resolve()} is not a readable HDF5 feature store ({detail}). Expected a file "
                         f"written by run_precompute.py. Received: store={path}") from None


def h5py_version():
    """The version of h5py that reads and writes stores, for a run's record."""
    return h5py.__version__


def _is_hdf5(path):
    """Whether the file at `path` begins with the HDF5 signature."""
    with open(path, "rb") as handle:
        return handle.read(len(_HDF5_SIGNATURE)) == _HDF5_SIGNATURE


def _lock_path(store_path):
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
    path = _lock_path(store_path)
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
        # The HDF5 1.8 format checksums its metadata, so a flipped byte there is an error, not a wrong
        # value. Not 1.10: its superblock stays marked "open for write" after a kill, refusing readers.
        with h5py.File(temporary, "a" if copy else "w", libver=("v108", "v108")) as store:
            yield store
        _fsync_path(temporary)
        os.replace(temporary, store_path)
        _fsync_path(store_path.parent)
    finally:
        temporary.unlink(missing_ok=True)


def _chunk_rows(row_shape, dtype):
    row_bytes = int(np.prod(row_shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    return int(max(1, min(256, _CHUNK_BYTES // max(1, row_bytes))))


def _set_strings_attr(obj, key, values):
    """Store a list of str as a UTF-8 string array attribute (also when empty)."""
    obj.attrs.create(key, np.asarray(list(values), dtype=object), dtype=STRING_DTYPE)


def _create_preallocated(group, name, shape, dtype):
    """Create a chunked, uncompressed dataset whose chunks are all allocated now.

    Writing rows into it later changes raw data only, never HDF5 metadata, which is what
    lets a run be killed at any moment without harming the file.
    """
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    rows = max(1, min(shape[0], _chunk_rows(shape[1:], dtype)))
    return group.create_dataset(name, shape=shape, dtype=dtype, chunks=(rows,) + tuple(shape[1:]),
                                dcpl=dcpl)


def _write_images(store, paths, labels, splits, file_fingerprints):
    """Write the `/images/*` datasets and the in-run bookkeeping for N images into an open store."""
    count = len(paths)
    images = store.require_group("images")
    images.create_dataset("path", data=np.asarray(paths, dtype=object), dtype=STRING_DTYPE)
    images.create_dataset("label", data=np.asarray(labels, dtype=np.int64))
    images.create_dataset("split", data=np.asarray(splits, dtype=object), dtype=STRING_DTYPE)
    images.create_dataset("fingerprint", data=np.asarray(file_fingerprints, dtype=np.int64).reshape(count, 2))
    _set_strings_attr(images["fingerprint"], "columns", ["size", "mtime_ns"])
    pending = store.require_group("pending")
    _create_preallocated(pending, "unreadable", (count,), np.uint8)
    _create_preallocated(pending, "reason", (count,), _REASON_DTYPE)


def _write_skipped(store, paths, reasons, file_fingerprints):
    """Write `/skipped/*`: the unreadable images, their reasons and fingerprints."""
    if "skipped" in store:
        del store["skipped"]
    skipped = store.create_group("skipped")
    skipped.create_dataset("path", data=np.asarray(list(paths), dtype=object), dtype=STRING_DTYPE)
    skipped.create_dataset("reason", data=np.asarray(list(reasons), dtype=object), dtype=STRING_DTYPE)
    skipped.create_dataset("fingerprint", data=np.asarray(file_fingerprints, dtype=np.int64).reshape(-1, 2))


def _read_strings(dataset):
    """A UTF-8 string dataset as a list of str."""
    return [value.decode("utf-8") if isinstance(value, bytes) else str(value) for value in dataset[()]]


def _read_strings_attr(obj, key):
    """A string-array attribute as a list of str (empty when absent)."""
    return [str(value) for value in _decode_attr(np.asarray(obj.attrs.get(key, [])))]


def _read_skipped(store):
    """(paths, reasons, fingerprints) of `/skipped`, empty when there is none."""
    if "skipped" not in store:
        return [], [], np.zeros((0, 2), np.int64)
    group = store["skipped"]
    return _read_strings(group["path"]), _read_strings(group["reason"]), group["fingerprint"][()]


def add_backbone(store, name, row_shape, dtype, attrs, view_names=()):
    """Create `/features/<name>`, `/progress/<name>`, their checksums and, with views, `/views/<name>` at full size."""
    count = store["images/path"].shape[0]
    features = _create_preallocated(store.require_group("features"), name, (count,) + tuple(row_shape), dtype)
    for key, value in attrs.items():
        features.attrs[key] = value
    _create_preallocated(store.require_group("checksums/features"), name, (count,), np.uint32)
    if view_names:
        views = _create_preallocated(store.require_group("views"), name,
                                    (count, len(view_names)) + tuple(row_shape), dtype)
        _set_strings_attr(views, "view_names", view_names)
        for key, value in attrs.items():
            views.attrs[key] = value
        _create_preallocated(store.require_group("checksums/views"), name, (count,), np.uint32)
    _create_preallocated(store.require_group("progress"), name, (count,), np.uint8)


def _row_checksums(values):
    """The CRC32 (`zlib.crc32`) of each row of `values`, over its bytes as stored (little-endian).

    Example:
        >>> _row_checksums(np.zeros((2, 4), np.float16)).dtype
        dtype('uint32')
    """
    values = np.asarray(values)
    values = np.ascontiguousarray(values.astype(values.dtype.newbyteorder("<"), copy=False))
    rows = values.reshape(len(values), -1).view(np.uint8) if values.size else values.reshape(len(values), 0)
    return np.fromiter((zlib.crc32(row) for row in rows), np.uint32, len(values))


def _read_checksums(store_file, group, backbone):
    """The stored CRC32 of every row of `/<group>/<backbone>` ("features" or "views"), or None where there are none."""
    key = f"checksums/{group}/{backbone}"
    return store_file[key][()] if key in store_file else None


def _verify_rows(store_file, path, group, backbone, rows, values, expected):
    """Refuse rows whose CRC32 differs from the one written with them, naming backbone, row and image.

    Args:
        store_file: the open store (its `/images/path` names the image of a bad row).
        path: the store's path, for the message.
        group: "features" or "views".
        backbone: the backbone name.
        rows: the store row index of each row of `values`.
        values: the rows as read.
        expected: the stored checksums of all rows (`_read_checksums`); None checks nothing.
    """
    if expected is None or len(rows) == 0:
        return
    rows = np.asarray(rows, dtype=np.int64)
    bad = np.flatnonzero(_row_checksums(values) != expected[rows])
    if len(bad):
        row = int(rows[bad[0]])
        image = _read_strings(store_file["images/path"])[row] if "images/path" in store_file else "?"
        raise _damaged(path, f"row {row} of /{group}/{backbone} (backbone {backbone}, image {image}) does not match "
                             f"the checksum written with it", f"{len(bad)} damaged row(s) among {len(rows)} read")


# Rows read at once when a whole dataset is verified, so any store fits in memory.
_VERIFY_BYTES = 64 * 1024**2


def verify_store(store_file, path, backbones):
    """Check every done row of `backbones` (features and views) against its checksum, reading in blocks.

    Example:
        >>> with h5py.File("cache.h5", "r") as store_file:
        ...     verify_store(store_file, "cache.h5", ["resnet50"])
    """
    for backbone in backbones:
        for group in ("features", "views"):
            if group not in store_file or backbone not in store_file[group]:
                continue
            expected = _read_checksums(store_file, group, backbone)
            if expected is None:
                continue
            dataset = store_file[group][backbone]
            done = np.ones(len(dataset), bool)
            if "progress" in store_file and backbone in store_file["progress"]:
                done = store_file["progress"][backbone][()].reshape(-1) == 1
            row_bytes = max(1, int(np.prod(dataset.shape[1:])) * dataset.dtype.itemsize)
            block = max(1, _VERIFY_BYTES // row_bytes)
            for start in range(0, len(dataset), block):
                rows = np.flatnonzero(done[start:start + block]) + start
                if len(rows):
                    values = dataset[start:start + block][rows - start]
                    _verify_rows(store_file, path, group, backbone, rows, values, expected)


def _missing_checksums(store_file, backbones):
    """The backbones whose rows carry no checksums, in a store run_precompute.py wrote before it wrote them.

    Stores of other tools carry none by design and are not listed.
    """
    if "format_version" not in store_file.attrs:
        return []
    return [name for name in backbones if _read_checksums(store_file, "features", name) is None]


def _warn_missing_checksums(store_file, path, backbones, stacklevel=3):
    """Say once that damage to these backbones' rows cannot be detected (a store written before checksums)."""
    missing = _missing_checksums(store_file, backbones)
    if missing:
        warnings.warn(f"Feature store {path} was written before feature rows carried checksums: damage to the rows of "
                      f"{', '.join(missing)} cannot be detected. Rebuild it with run_precompute.py and a new --out to "
                      f"get them; it is read without that check.", stacklevel=stacklevel)


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
                shape = (len(keep_rows) + len(new_rows["paths"]),) + dataset.shape[1:]
                target = _create_preallocated(new.require_group(group_name), name, shape, dataset.dtype)
                for key, value in dataset.attrs.items():
                    target.attrs[key] = value
                _copy_rows(dataset, target, keep_rows)
        if skipped is None:
            skipped = _read_skipped(old)
        _write_skipped(new, *skipped)


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
                raise StoreError(
                    f"Feature store {path} is unfinished: {missing} of {len(done)} rows of {backbone} were never computed "
                    f"(a precompute run stopped before the end). Run the same run_precompute.py command again to finish "
                    f"it. Received: {missing} unfinished rows")
    if "pending" in store_file and "unreadable" in store_file["pending"]:
        pending = int(np.sum(np.asarray(store_file["pending/unreadable"][()]) != 0))
        if pending:
            raise StoreError(
                f"Feature store {path} is unfinished: {pending} unreadable image(s) are still pending (a precompute run "
                f"stopped before the end). Run the same run_precompute.py command again to finish it. "
                f"Received: {pending} pending rows")


@dataclasses.dataclass(frozen=True)
class StoreIndex:
    """What a feature store holds apart from its feature rows, read once by `read_index`.

    Attributes:
        path: the store file.
        class_names: tuple of class names; label `i` is `class_names[i]`.
        paths: (N,) object array of image paths, relative to `data_root`.
        labels: (N,) int64 class indices, `-1` when unlabeled.
        splits: (N,) object array of split names.
        backbones: tuple of backbone names, the datasets under `/features`.
        feature_shapes: dict backbone -> per-image feature shape, `(D,)` or `(H, W, D)`.
        feature_dtypes: dict backbone -> numpy dtype name of the stored features.
        view_names: dict backbone -> tuple of extra view names (empty without `/views/<backbone>`).
        recipes: dict backbone -> the attributes of `/features/<backbone>` (how its features were
            made) as plain JSON values; empty for stores that record none.
        skipped: tuple of (path, reason) of the images that could not be read.
        data_root: the folder the images were read from ("" when not recorded).
    """

    path: Path
    class_names: tuple
    paths: np.ndarray
    labels: np.ndarray
    splits: np.ndarray
    backbones: tuple
    feature_shapes: dict
    feature_dtypes: dict
    view_names: dict
    recipes: dict
    skipped: tuple
    data_root: str


def read_index(path, *, finished=True):
    """Open, check and read everything of a store but its feature rows: labels, splits, class names, shapes, recipes.

    Only `/images/*`, the `class_names` attribute and `/features/*` are required; the bookkeeping of
    run_precompute.py (`/progress`, `/pending`, `/checksums`, `/skipped`) is checked where present.
    Feature rows are checked against their checksums where they are read (`FeatureRows`).

    Args:
        path: the `.h5` store.
        finished: refuse rows never computed or pending (default: True).

    Raises:
        StoreError: the store is unfinished or damaged (one line says how to finish or rebuild it).

    Example:
        >>> index = read_index("cache.h5")
        >>> index.backbones, index.class_names
    """
    path = Path(path)
    with open_store(path) as store_file, store_errors(path):
        backbones = check_store(store_file, path, finished=finished)
        _warn_missing_checksums(store_file, path, backbones, stacklevel=4)
        shapes, dtypes, view_names, recipes = {}, {}, {}, {}
        for backbone in backbones:
            dataset = store_file["features"][backbone]
            shapes[backbone] = tuple(int(size) for size in dataset.shape[1:])
            dtypes[backbone] = dataset.dtype.name
            recipes[backbone] = feature_attrs(store_file, backbone)
            view_names[backbone] = ()
            if "views" in store_file and backbone in store_file["views"]:
                views = store_file["views"][backbone]
                names = views.attrs.get("view_names")
                view_names[backbone] = (tuple(str(name) for name in _decode_attr(np.asarray(names).reshape(-1)))
                                        if names is not None else
                                        tuple(f"view{index + 1}" for index in range(views.shape[1])))
        skipped = store_file.get("skipped", {})  # other tools may list skipped images without fingerprints
        skipped_paths = _read_strings(skipped["path"]) if "path" in skipped else []
        skipped_reasons = _read_strings(skipped["reason"]) if "reason" in skipped else [""] * len(skipped_paths)
        return StoreIndex(
            path=path,
            class_names=tuple(str(name) for name in _decode_attr(np.asarray(store_file.attrs["class_names"]).reshape(-1))),
            paths=np.asarray(_read_strings(store_file["images/path"]), dtype=object),
            labels=np.asarray(store_file["images/label"][()]).reshape(-1).astype(np.int64),
            splits=np.asarray(_read_strings(store_file["images/split"]), dtype=object),
            backbones=backbones,
            feature_shapes=shapes,
            feature_dtypes=dtypes,
            view_names=view_names,
            recipes=recipes,
            skipped=tuple(zip(skipped_paths, skipped_reasons)),
            data_root=str(_decode_attr(store_file.attrs.get("data_root", ""))),
        )


# A block of rows is read as one contiguous range when that range holds at most this many rows per
# row wanted; a split spread thinly over the store (a 1% test split) is read row by row instead, so
# memory stays bounded by the rows wanted, not by the distance between them.
MAX_READ_SPAN = 2


def _read_rows(dataset, rows):
    """Rows `rows` (sorted, unique) of an HDF5 dataset, reading little beyond them."""
    first, last = int(rows[0]), int(rows[-1]) + 1
    if last - first <= MAX_READ_SPAN * len(rows):
        return dataset[first:last][rows - first]
    return dataset[rows]


class FeatureRows:
    """Checked reads of the feature and view rows of a store, which stays open until `close`.

    Every row read is checked against the CRC32 written with it; a damaged row is a `StoreError`
    naming backbone, row and image. The file is opened on the first read, so the object can be
    built (and copied) before any.

    Args:
        path: the `.h5` store.

    Example:
        >>> with FeatureRows("cache.h5") as rows:
        ...     first = rows.read("features", "resnet50", np.arange(10))
    """

    def __init__(self, path):
        self.path = Path(path)
        self._file = None
        self._checksums = {}

    def _open(self):
        if self._file is None:
            self._file = open_store(self.path)
        return self._file

    def _dataset(self, group, backbone):
        with store_errors(self.path):
            return self._open()[group][backbone]

    def has(self, group, backbone):
        """Whether `/<group>/<backbone>` exists ("features" or "views")."""
        store_file = self._open()
        with store_errors(self.path):
            return group in store_file and backbone in store_file[group]

    def shape(self, group, backbone):
        """The shape of `/<group>/<backbone>`, rows first."""
        return self._dataset(group, backbone).shape

    def dtype(self, group, backbone):
        """The stored dtype of `/<group>/<backbone>`."""
        return self._dataset(group, backbone).dtype

    def nbytes(self, group, backbone):
        """The bytes `/<group>/<backbone>` takes in memory, in its stored dtype."""
        return self._dataset(group, backbone).nbytes

    def read(self, group, backbone, rows=None):
        """Rows `rows` (sorted, unique store indices; default: None, all) of `/<group>/<backbone>`, checked."""
        dataset = self._dataset(group, backbone)
        with store_errors(self.path):
            if (group, backbone) not in self._checksums:
                self._checksums[group, backbone] = _read_checksums(self._file, group, backbone)
            if rows is None:
                rows = np.arange(len(dataset))
                values = dataset[()]
            else:
                rows = np.asarray(rows, dtype=np.int64)
                values = _read_rows(dataset, rows) if len(rows) else dataset[:0]
            _verify_rows(self._file, self.path, group, backbone, rows, values, self._checksums[group, backbone])
        return values

    def close(self):
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


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


def feature_attrs(store_file, backbone):
    """The attributes of `/features/<backbone>` (how its features were made) as plain values.

    Example:
        >>> recipe = FeatureRecipe.from_attrs(feature_attrs(store_file, "resnet50"), backbone="resnet50")
    """
    return {key: _decode_attr(value) for key, value in store_file["features"][backbone].attrs.items()}


def _decode_attr(value):
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        return [_decode_attr(item) for item in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value


SPLITS = ("train", "val", "test")

_LAYOUT = ("Expected the layout in README.md (\"The feature store\"): /images/path, /images/label, /images/split, "
           "/features/<backbone> and the root attribute class_names")


def _require(group, name, path, what, ours):
    if name not in group:
        fix = (f"It was deleted or damaged: {REBUILD}" if ours else "Write it with run_precompute.py or add it")
        raise StoreError(f"Feature store {path} has no {what}. {_LAYOUT}. {fix}. Received: keys={sorted(group.keys())}")
    return group[name]


def _require_rows(store_file, key, shape, path):
    # A dataset of run_precompute.py's own bookkeeping: present and one row per image.
    if key not in store_file:
        raise _damaged(path, f"/{key} is missing (deleted?)", f"keys of /{key.rsplit('/', 1)[0]}="
                       f"{sorted(store_file[key.rsplit('/', 1)[0]].keys()) if key.rsplit('/', 1)[0] in store_file else []}")
    if store_file[key].shape != shape:
        raise _damaged(path, f"/{key} does not line up with /images (one row per image)",
                       f"shape={store_file[key].shape}, expected {shape}")


def check_store(store_file, path, *, finished=True, require_features=True):
    """Refuse a store that is damaged or unfinished with one line (`StoreError`); return its backbones.

    Checks the required layout (class names, `/images/*` and `/features/*` with one row per
    image, labels that name a class, known split names, views that line up) and, in stores
    written by run_precompute.py, its bookkeeping (`/progress`, `/pending`, `/checksums`,
    `/skipped`). Feature rows are checked against their checksums where they are read.

    Args:
        store_file: the open store.
        path: its path, for the messages.
        finished: also refuse rows never computed or pending (`check_finished`) (default: True).
        require_features: refuse a store without feature datasets (default: True).

    Example:
        >>> with open_store("cache.h5") as store_file, store_errors("cache.h5"):
        ...     backbones = check_store(store_file, "cache.h5")
    """
    ours = "format_version" in store_file.attrs  # written by run_precompute.py, with its bookkeeping
    if "class_names" not in store_file.attrs:
        raise StoreError(
            f"Feature store {path} has no root attribute 'class_names'. Expected the class names as UTF-8 strings "
            f"(label i is class_names[i]); add them with h5py: f.attrs['class_names'] = [...]. "
            f"Received: attributes={sorted(store_file.attrs)}")
    class_names = [str(name) for name in np.asarray(_decode_attr(store_file.attrs["class_names"])).reshape(-1)]
    images = _require(store_file, "images", path, "/images group", ours)
    path_rows = _require(images, "path", path, "/images/path dataset", ours).shape
    labels = np.asarray(_require(images, "label", path, "/images/label dataset", ours)[()]).reshape(-1)
    splits = np.asarray(_read_strings(_require(images, "split", path, "/images/split dataset", ours)), dtype=object)
    num_rows = len(labels)
    if "features" in store_file or require_features:
        features = _require(store_file, "features", path, "/features group", ours)
        backbones = tuple(name for name in features if isinstance(features[name], h5py.Dataset))
    else:
        backbones = ()
    if ours or "progress" in store_file:
        orphans = sorted(set(store_file["progress"]) - set(backbones)) if "progress" in store_file else []
        if orphans:
            raise _damaged(path, f"/progress/{orphans[0]} has no /features/{orphans[0]} (deleted?)",
                           f"backbones with features: {list(backbones)}")
    if require_features and not backbones:
        raise StoreError(f"Feature store {path} has no datasets under /features. Expected one (N, D) or (N, H, W, D) "
                         f"dataset per backbone. Received: /features keys={list(store_file['features'])}")
    if path_rows != (num_rows,) or len(splits) != num_rows:
        raise StoreError(
            f"Feature store {path}: /images datasets do not line up. Expected the same number of rows in /images/path, "
            f"/images/label and /images/split. {REBUILD}. Received: path={path_rows[0] if path_rows else 0}, "
            f"label={num_rows}, split={len(splits)} rows")
    if not np.issubdtype(labels.dtype, np.integer):
        raise StoreError(f"Feature store {path}: /images/label must hold integers. Received: dtype={labels.dtype}")
    bad = (labels < -1) | (labels >= len(class_names))
    if bad.any():
        raise StoreError(
            f"Feature store {path}: labels must lie in [-1, {len(class_names) - 1}] for {len(class_names)} class "
            f"names (-1 = unlabeled); class_names is shorter than the labels need, or the labels were changed. "
            f"{REBUILD}. Received: labels={sorted(set(labels[bad].tolist()))[:10]}")
    unknown = sorted(set(splits.tolist()) - set(SPLITS))
    if unknown:
        raise StoreError(f"Feature store {path}: unknown split names in /images/split. Expected only "
                         f"{', '.join(SPLITS)}. Received: splits={unknown}")
    for backbone in backbones:
        dataset = store_file["features"][backbone]
        if dataset.ndim not in (2, 4) or dataset.shape[0] != num_rows:
            raise StoreError(
                f"Feature store {path}: /features/{backbone} does not line up with /images. Expected shape "
                f"({num_rows}, D) or ({num_rows}, H, W, D), one row per image. {REBUILD}. Received: shape={dataset.shape}")
        if "views" in store_file and backbone in store_file["views"]:
            views = store_file["views"][backbone]
            row_shape = dataset.shape[1:]
            if views.ndim != 2 + len(row_shape) or views.shape[0] != num_rows or views.shape[2:] != row_shape:
                raise StoreError(
                    f"Feature store {path}: /views/{backbone} does not line up with /features/{backbone}. Expected "
                    f"shape ({num_rows}, V, {', '.join(map(str, row_shape))}). Received: shape={views.shape}")
            names = views.attrs.get("view_names")
            if names is not None and len(np.asarray(names).reshape(-1)) != views.shape[1]:
                raise StoreError(
                    f"Feature store {path}: /views/{backbone} has {views.shape[1]} views but "
                    f"{len(np.asarray(names).reshape(-1))} view_names. Expected one name per view. "
                    f"Received: view_names={[str(n) for n in _decode_attr(np.asarray(names).reshape(-1))]}")
    if ours:
        _require_rows(store_file, "images/fingerprint", (num_rows, 2), path)
        _require_rows(store_file, "pending/unreadable", (num_rows,), path)
        _require_rows(store_file, "pending/reason", (num_rows,), path)
    elif "pending" in store_file and "unreadable" in store_file["pending"]:
        _require_rows(store_file, "pending/unreadable", (num_rows,), path)
    if ours or "progress" in store_file:
        for backbone in backbones:
            _require_rows(store_file, f"progress/{backbone}", (num_rows,), path)
    with_checksums = ours and int(_decode_attr(store_file.attrs["format_version"])) >= CHECKSUMS_SINCE
    for backbone in backbones:
        for group in ("features", "views"):
            has_data = group in store_file and backbone in store_file[group]
            key = f"checksums/{group}/{backbone}"
            if has_data and (with_checksums or key in store_file):
                _require_rows(store_file, key, (num_rows,), path)
    if ours and "skipped" in store_file:
        lengths = {name: len(store_file["skipped"][name]) for name in ("path", "reason", "fingerprint")
                   if name in store_file["skipped"]}
        if len(lengths) != 3 or len(set(lengths.values())) != 1:
            raise _damaged(path, "/skipped/path, /skipped/reason and /skipped/fingerprint do not line up",
                           f"rows={lengths}")
    if finished:
        check_finished(store_file, backbones, path)
    return backbones


def load_store(path, backbones=None, views=False):
    """Load the features, labels, splits and class names of a finished store, every row checked against its checksum.

    Args:
        path: the HDF5 store written by `precompute`.
        backbones: names of the backbones to load (default: None, all in the store).
        views: also load `/views/<backbone>` where present (default: False).

    Raises:
        StoreError: the store is unfinished or damaged (one line says how to finish or rebuild it).

    Example:
        >>> store = load_store("cache.h5", backbones=["resnet50"])
        >>> store.select("train").features["resnet50"].shape
        (800, 2048)
    """
    path = Path(path)
    with open_store(path) as store, store_errors(path):
        available = sorted(check_store(store, path, finished=False, require_features=False))
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
        _warn_missing_checksums(store, path, backbones)
        features, view_arrays, view_names, info = {}, {}, {}, {}
        for name in backbones:
            features[name] = store["features"][name][()]
            rows = np.arange(len(features[name]))
            _verify_rows(store, path, "features", name, rows, features[name], _read_checksums(store, "features", name))
            info[name] = feature_attrs(store, name)
            if views and "views" in store and name in store["views"]:
                view_arrays[name] = store["views"][name][()]
                _verify_rows(store, path, "views", name, rows, view_arrays[name], _read_checksums(store, "views", name))
                view_names[name] = tuple(_decode_attr(store["views"][name].attrs["view_names"]))
        skipped_paths, skipped_reasons, _ = _read_skipped(store)
        return FeatureStore(
            features=features, views=view_arrays, view_names=view_names,
            labels=store["images/label"][()].astype(np.int64),
            splits=np.asarray(_read_strings(store["images/split"])),
            paths=np.asarray(_read_strings(store["images/path"])),
            class_names=tuple(_decode_attr(store.attrs.get("class_names", np.array([], dtype=object)))),
            skipped=tuple(zip(skipped_paths, skipped_reasons)),
            backbone_info=info,
            data_root=_decode_attr(store.attrs.get("data_root", "")),
        )


def options_json(options):
    """Options as a JSON text for an HDF5 attribute."""
    return json.dumps(options, sort_keys=True, default=str)


def read_options(store_file):
    """The options a store was created with (its `created_with` attribute), {} when absent or unreadable."""
    text = _decode_attr(store_file.attrs.get("created_with"))
    if text is None:
        return {}
    try:
        return json.loads(str(text))
    except ValueError:
        return {}


def open_to_resume(path):
    """Open an existing store read-only for a run to complete, refusing any file that is not a feature store.

    A file that is not a store stays untouched, and so does a store that is damaged (truncated,
    datasets deleted, rows that do not line up): it is refused with a `StoreError`.

    Args:
        path: the existing `--out` of a run.

    Example:
        >>> with open_to_resume("cache.h5") as store_file:
        ...     stored = list(store_file.get("features", {}))
    """
    try:
        store_file = h5py.File(path, "r")
    except OSError as error:
        if _is_hdf5(path):
            open_store(path)  # raises the StoreError that says it is damaged
        raise ValueError(f"{path} exists but is not an HDF5 file ({error}); it is left untouched. Choose another "
                         f"--out. Received: out={path}") from None
    try:
        with store_errors(path):
            if "format_version" not in store_file.attrs or "images" not in store_file:
                raise ValueError(f"{path} is an HDF5 file but not a feature store written by run_precompute.py (no "
                                 f"format_version attribute or /images group); it is left untouched. Choose another "
                                 f"--out. Received: out={path}")
            check_store(store_file, path, finished=False, require_features=False)
    except BaseException:
        store_file.close()
        raise
    return store_file


class RowFiller:
    """The store open read-write to fill the rows of its datasets in place, and for nothing else.

    Only raw rows go through it (features, views, their checksums, progress and pending marks):
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


def stored_backbones(store_file):
    """The names of the backbones with features in an open store."""
    return list(store_file["features"]) if "features" in store_file else []


@dataclasses.dataclass(frozen=True)
class RunRows:
    """A precompute run's view of its store's rows: what is stored, done, pending and skipped.

    Attributes:
        paths: list of the stored image paths, one per row.
        labels: (N,) int64 labels.
        fingerprints: (N, 2) size and mtime_ns of each image file when stored.
        class_names: list of class names.
        unreadable: (N,) bool, rows found unreadable in a run that has not ended.
        pending_reasons: list of why each row is unreadable ("" for readable rows).
        done: dict backbone -> (N,) bool, rows computed.
        skipped: (paths, reasons, fingerprints) of `/skipped`.
    """

    paths: list
    labels: np.ndarray
    fingerprints: np.ndarray
    class_names: list
    unreadable: np.ndarray
    pending_reasons: list
    done: dict
    skipped: tuple


def read_run_rows(path, backbones=()):
    """Read the rows of a store a precompute run is completing (its own bookkeeping included).

    Args:
        path: the store.
        backbones: backbones whose progress to read (default: (), none).
    """
    with open_store(path) as store, store_errors(path):
        return RunRows(
            paths=_read_strings(store["images/path"]),
            labels=store["images/label"][()],
            fingerprints=store["images/fingerprint"][()],
            class_names=_read_strings_attr(store, "class_names"),
            unreadable=store["pending/unreadable"][()].astype(bool),
            pending_reasons=[value.decode("utf-8", "replace") for value in store["pending/reason"][()]],
            done={name: store["progress"][name][()].astype(bool) for name in backbones},
            skipped=_read_skipped(store),
        )
