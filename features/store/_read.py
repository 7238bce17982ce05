"""Reading a store: whole (load_store), its index (read_index), checked rows (FeatureRows) and a run's bookkeeping."""

import dataclasses
from pathlib import Path

import numpy as np

from features.store._files import open_store, store_errors
from features.store._layout import (
    SPLITS,
    _decode_attr,
    _read_skipped,
    _read_strings,
    _read_strings_attr,
    feature_attrs,
    read_cost,
    seconds_per_image,
)
from features.store._checks import check_finished, check_store, _read_checksums, _verify_rows, _warn_missing_checksums


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
        compute_costs: backbone name -> (seconds, images) that precompute measured for its
            predict calls, summed over runs, or None where the store records none (default: empty).
        decode_cost: (seconds, images) of decoding and resizing, shared by the backbones, or None
            (default: None).
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
    compute_costs: dict = dataclasses.field(default_factory=dict)
    decode_cost: tuple | None = None

    def __len__(self):
        return len(self.paths)

    @property
    def precompute_seconds_per_image(self):
        """Backbone name -> seconds its predict calls took per image in precompute; None where not recorded.

        Example:
            >>> load_store("cache.h5").precompute_seconds_per_image
            {'resnet50': 0.0412, 'vgg16': 0.0731}
        """
        return {name: seconds_per_image(self.compute_costs.get(name)) for name in self.features}

    @property
    def decode_seconds_per_image(self):
        """Seconds precompute spent decoding and resizing one image (for all backbones at once); None if not recorded."""
        return seconds_per_image(self.decode_cost)

    def summary(self):
        """One row per backbone: what its features are, how they were made and what they cost, as a DataFrame.

        Columns: `backbone`, `feature_shape` (per image), `dtype`, `images` (rows), `input_size`,
        `pooling`, `weights`, `views` (extra views, "none" for none), `precompute_seconds_per_image`
        (its predict calls, NaN where the store records no cost: written before costs were, or by
        another tool). None where a store of another tool records no recipe.

        Example:
            >>> load_store("cache.h5").summary()
                backbone feature_shape    dtype  images  input_size pooling   weights views  precompute_seconds_per_image
            0   resnet50       (2048,)  float16    1000         224     avg  imagenet  none                       0.0412
        """
        import pandas  # only here: reading a store needs no pandas

        per_image = self.precompute_seconds_per_image
        rows = []
        for name, array in self.features.items():
            info = self.backbone_info.get(name, {})
            views = info.get("views", ",".join(self.view_names.get(name, ())) or None)
            rows.append({
                "backbone": name,
                "feature_shape": tuple(int(size) for size in array.shape[1:]),
                "dtype": array.dtype.name,
                "images": len(array),
                "input_size": info.get("input_size"),
                "pooling": info.get("pooling"),
                "weights": info.get("weights"),
                "views": views,
                "precompute_seconds_per_image": float("nan") if per_image[name] is None else per_image[name],
            })
        columns = ["backbone", "feature_shape", "dtype", "images", "input_size", "pooling", "weights", "views",
                   "precompute_seconds_per_image"]
        return pandas.DataFrame(rows, columns=columns)

    def class_counts(self):
        """Images per class and split as a DataFrame: one row per class, columns train, val, test and total.

        Unlabeled images (label -1) form a last row "(unlabeled)" when there are any.

        Example:
            >>> load_store("cache.h5").class_counts()
                   train  val  test  total
            class
            cat       40    5     5     50
        """
        import pandas

        names = list(self.class_names) + (["(unlabeled)"] if np.any(self.labels < 0) else [])
        counts = pandas.DataFrame(0, index=pandas.Index(names, name="class"), columns=list(SPLITS) + ["total"])
        for split in SPLITS:
            in_split = self.labels[self.splits == split]
            counts[split] = np.bincount(in_split[in_split >= 0], minlength=len(self.class_names)).tolist() + (
                [int(np.sum(in_split < 0))] if len(names) > len(self.class_names) else [])
        counts["total"] = counts[list(SPLITS)].sum(axis=1)
        return counts

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
        compute_costs: dict backbone -> (seconds, images) precompute measured for its predict
            calls (`/cost/features/<backbone>`), None where not recorded (default: empty).
        decode_cost: (seconds, images) of decoding and resizing (`/cost/decode`), or None
            (default: None).
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
    compute_costs: dict = dataclasses.field(default_factory=dict)
    decode_cost: tuple | None = None


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
            compute_costs={backbone: read_cost(store_file, f"features/{backbone}") for backbone in backbones},
            decode_cost=read_cost(store_file, "decode"),
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
        # Looking a dataset up by name costs more than reading a block of rows from it, so it is done once.
        self._datasets = {}

    def _open(self):
        if self._file is None:
            self._file = open_store(self.path)
        return self._file

    def _dataset(self, group, backbone):
        dataset = self._datasets.get((group, backbone))
        if dataset is None:
            with store_errors(self.path):
                dataset = self._datasets[group, backbone] = self._open()[group][backbone]
        return dataset

    def _stored_checksums(self, group, backbone):
        if (group, backbone) not in self._checksums:
            self._checksums[group, backbone] = _read_checksums(self._file, group, backbone)
        return self._checksums[group, backbone]

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
            if rows is None:
                rows = np.arange(len(dataset))
                values = dataset[()]
            else:
                rows = np.asarray(rows, dtype=np.int64)
                values = _read_rows(dataset, rows) if len(rows) else dataset[:0]
            _verify_rows(self._file, self.path, group, backbone, rows, values, self._stored_checksums(group, backbone))
        return values

    def read_blocks(self, group, backbone, row_blocks):
        """Several blocks of rows of `/<group>/<backbone>`, one read per block, joined in the order given and checked.

        The same rows as `read` of each block joined, for one lookup and one checksum pass per call
        instead of one per block: a shuffled batch of streamed blocks costs one call per backbone.

        Args:
            group: "features" or "views".
            backbone: the backbone name.
            row_blocks: a list of arrays of store row indices, each sorted and unique; the blocks
                may come in any order.

        Example:
            >>> with FeatureRows("cache.h5") as rows:
            ...     batch = rows.read_blocks("features", "resnet50", [np.arange(40, 48), np.arange(8)])
        """
        dataset = self._dataset(group, backbone)
        row_blocks = [np.asarray(block, dtype=np.int64) for block in row_blocks]
        rows = np.concatenate(row_blocks) if row_blocks else np.zeros(0, np.int64)
        with store_errors(self.path):
            values = np.empty((len(rows),) + dataset.shape[1:], dataset.dtype)
            filled = 0
            for block in row_blocks:
                if len(block):
                    values[filled:filled + len(block)] = _read_rows(dataset, block)
                    filled += len(block)
            _verify_rows(self._file, self.path, group, backbone, rows, values, self._stored_checksums(group, backbone))
        return values

    def close(self):
        self._datasets.clear()
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


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
            compute_costs={name: read_cost(store, f"features/{name}") for name in backbones},
            decode_cost=read_cost(store, "decode"),
        )


@dataclasses.dataclass(frozen=True)
class RunRows:
    """A precompute run's view of its store's rows: what is stored, done, pending and skipped.

    Attributes:
        paths: list of the stored image paths, one per row.
        labels: (N,) int64 labels.
        fingerprints: (N, 2) size and mtime_ns of each image file when stored.
        class_names: list of class names.
        unreadable: (N,) bool, rows found unreadable in a run that has not ended.
        pending_reason: (N,) fixed-length UTF-8 bytes, why each row is unreadable (empty for
            readable rows); `reasons(rows)` decodes the rows asked for.
        done: dict backbone -> (N,) bool, rows computed.
        skipped: (paths, reasons, fingerprints) of `/skipped`.
    """

    paths: list
    labels: np.ndarray
    fingerprints: np.ndarray
    class_names: list
    unreadable: np.ndarray
    pending_reason: np.ndarray
    done: dict
    skipped: tuple

    def reasons(self, rows):
        """Why rows `rows` are unreadable, as str (decoded here: a run needs them only for its unreadable rows)."""
        return [value.decode("utf-8", "replace") for value in self.pending_reason[rows]]


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
            pending_reason=store["pending/reason"][()],
            done={name: store["progress"][name][()].astype(bool) for name in backbones},
            skipped=_read_skipped(store),
        )
