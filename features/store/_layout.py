"""The store's layout: its version, dtypes, chunking, and writing and reading its datasets and attributes."""

import json

import h5py
import numpy as np


# 2: every feature and view row carries a CRC32 in /checksums. Stores of version 1 have none.
FORMAT_VERSION = 2
CHECKSUMS_SINCE = 2

STRING_DTYPE = h5py.string_dtype("utf-8")

# Fixed-length bytes so that recording a skip reason during a run writes raw data only.
_REASON_DTYPE = np.dtype("S200")

_CHUNK_BYTES = 1 << 20

# What precompute measured, summed over every run that added rows: `/cost/features/<backbone>`
# (its predict calls) and `/cost/decode` (decode and resize, shared by the backbones), each
# float64 (2,) = [seconds, images]. Preallocated like the rows, so a run adds to it by writing raw
# data only; seconds and images share one chunk and one write, so a kill never leaves one counted
# without the other. Measurements, not recipe facts: they live outside the `/features` attributes.
COST_COLUMNS = ("seconds", "images")


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


def _create_cost(store, key):
    """Create `/cost/<key>` ("decode" or "features/<backbone>") at [0 seconds, 0 images]."""
    group_name, _, name = f"cost/{key}".rpartition("/")
    group = store.require_group(group_name)
    if name in group:  # left by a backbone deleted by hand: its measurements went with it
        del group[name]
    dataset = _create_preallocated(group, name, (len(COST_COLUMNS),), np.float64)
    _set_strings_attr(dataset, "columns", COST_COLUMNS)
    return dataset


def read_cost(store_file, key):
    """(seconds, images) that `/cost/<key>` records ("decode" or "features/<backbone>"), or None.

    None when the store records none (written before costs were, or by another tool), when no
    image was measured yet, or when the values are not a measurement (negative, not finite).

    Example:
        >>> read_cost(store_file, "features/resnet50")
        (41.2, 1000.0)
    """
    path = f"cost/{key}"
    if path not in store_file or store_file[path].shape != (len(COST_COLUMNS),):
        return None
    seconds, images = (float(value) for value in store_file[path][()])
    if not (np.isfinite(seconds) and np.isfinite(images)) or seconds < 0 or images <= 0:
        return None
    return seconds, images


def seconds_per_image(cost):
    """Seconds per image of a `read_cost` result; None when nothing was measured.

    Example:
        >>> seconds_per_image((41.2, 1000.0))
        0.0412
    """
    return None if cost is None else cost[0] / cost[1]


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


def add_backbone(store, name, row_shape, dtype, attrs, view_names=(), virtual=False):
    """Create `/features/<name>`, `/progress/<name>`, their checksums and, with views, `/views/<name>` at full size.

    With `virtual`, `/features/<name>` and `/views/<name>` are virtual datasets that map no row
    yet: a sharded run maps them onto its shard files (`features.store._virtual`).
    """
    from features.store._virtual import create_virtual

    count = store["images/path"].shape[0]

    def create(group, shape):
        if virtual:
            return create_virtual(store.require_group(group), name, shape, dtype, [])
        return _create_preallocated(store.require_group(group), name, shape, dtype)

    features = create("features", (count,) + tuple(row_shape))
    for key, value in attrs.items():
        features.attrs[key] = value
    _create_preallocated(store.require_group("checksums/features"), name, (count,), np.uint32)
    if view_names:
        views = create("views", (count, len(view_names)) + tuple(row_shape))
        _set_strings_attr(views, "view_names", view_names)
        for key, value in attrs.items():
            views.attrs[key] = value
        _create_preallocated(store.require_group("checksums/views"), name, (count,), np.uint32)
    _create_preallocated(store.require_group("progress"), name, (count,), np.uint8)
    _create_cost(store, f"features/{name}")


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


def stored_backbones(store_file):
    """The names of the backbones with features in an open store."""
    return list(store_file["features"]) if "features" in store_file else []
