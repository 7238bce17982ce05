"""Refusing damaged or unfinished stores: row checksums, the layout and finished checks, opening to resume."""

import warnings
import zlib

import h5py
import numpy as np

from features.store._files import REBUILD, StoreError, _damaged, _is_hdf5, open_store, store_errors
from features.store._layout import CHECKSUMS_SINCE, SPLITS, _decode_attr, _read_strings
from features.store._virtual import check_sources


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
    # Rows kept in shard files (a --ray run) must still be there: HDF5 would read a lost file as zeros.
    check_sources(store_file, path, backbones)
    if finished:
        check_finished(store_file, backbones, path)
    return backbones


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
