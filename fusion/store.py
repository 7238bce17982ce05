"""Read a feature store through the layout in README.md ("The feature store"), with h5py only."""

import dataclasses
from pathlib import Path

import h5py
import numpy as np

from features.store import check_finished

SPLITS = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class StoreInfo:
    """What training needs to know about a feature store, read once from its file.

    Attributes:
        path: the store file.
        class_names: tuple of class names; label `i` is `class_names[i]`.
        backbones: tuple of backbone names, the dataset names under `/features`.
        feature_shapes: dict backbone -> per-image feature shape, `(D,)` or `(H, W, D)`.
        feature_dtypes: dict backbone -> numpy dtype name of the stored features.
        view_names: dict backbone -> tuple of extra view names (empty when no `/views/<backbone>`).
        feature_recipes: dict backbone -> the attributes of `/features/<backbone>` that say how its
            features were made (input size, pooling, weights, ...); empty for stores that record none.
        paths: (N,) image paths, relative to the data root.
        labels: (N,) int64 class indices, `-1` when unlabeled.
        splits: (N,) split names.
    """

    path: Path
    class_names: tuple
    backbones: tuple
    feature_shapes: dict
    feature_dtypes: dict
    view_names: dict
    feature_recipes: dict
    paths: np.ndarray
    labels: np.ndarray
    splits: np.ndarray

    @property
    def num_rows(self):
        return len(self.labels)

    def split_rows(self, split):
        """Sorted store row indices of the labeled images in `split` (`train`, `val` or `test`)."""
        return np.flatnonzero((self.splits == split) & (self.labels >= 0))

    def feature_bytes(self, backbones, with_views=False):
        """Bytes that the features of `backbones` (and their views) take in memory, in their stored dtype."""
        total = 0
        for backbone in backbones:
            per_row = int(np.prod(self.feature_shapes[backbone])) * np.dtype(self.feature_dtypes[backbone]).itemsize
            views = 1 + (len(self.view_names[backbone]) if with_views else 0)
            total += per_row * views * self.num_rows
        return total


def _decode_strings(values):
    """Decode an array or list of `str` or `bytes` (variable-length UTF-8 or fixed bytes) to `str`."""
    values = np.asarray(values).reshape(-1)
    return np.array(
        [value.decode("utf-8") if isinstance(value, (bytes, np.bytes_)) else str(value) for value in values],
        dtype=object,
    )


def _require(group, name, path, what):
    if name not in group:
        raise ValueError(
            f"Feature store {path} has no {what}. Expected the layout in README.md "
            f"(\"The feature store\"): /images/path, /images/label, /images/split, /features/<backbone> "
            f"and the root attribute class_names. Write it with run_precompute.py or add it. "
            f"Received: keys={sorted(group.keys())}"
        )
    return group[name]


def open_store(path):
    """Open a feature store read-only, with clear errors for a missing or non-HDF5 file.

    Args:
        path: the `.h5` store written by `run_precompute.py`.

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
        raise ValueError(
            f"{path.resolve()} is not a readable HDF5 feature store ({error}). "
            f"Expected a file written by run_precompute.py. Received: store={path}"
        ) from None


def _plain_attribute(value):
    """An HDF5 attribute as a JSON-ready value: str, int, float or a list of them."""
    if isinstance(value, (bytes, np.bytes_)):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        return [_plain_attribute(item) for item in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_store_info(path):
    """Read and check the labels, splits, class names and feature shapes of a feature store.

    Only `/images/*`, the `class_names` attribute and `/features/*` are required; other
    datasets, attributes and a `/skipped` group are ignored.

    Args:
        path: the `.h5` store.

    Example:
        >>> info = read_store_info("cache.h5")
        >>> info.backbones, info.class_names
    """
    path = Path(path)
    with open_store(path) as store_file:
        if "class_names" not in store_file.attrs:
            raise ValueError(
                f"Feature store {path} has no root attribute 'class_names'. Expected the class names "
                f"as UTF-8 strings (label i is class_names[i]); add them with "
                f"h5py: f.attrs['class_names'] = [...]. Received: attributes={sorted(store_file.attrs)}"
            )
        class_names = tuple(_decode_strings(store_file.attrs["class_names"]))
        images = _require(store_file, "images", path, "/images group")
        paths = _decode_strings(_require(images, "path", path, "/images/path dataset")[()])
        labels = np.asarray(_require(images, "label", path, "/images/label dataset")[()]).reshape(-1)
        splits = _decode_strings(_require(images, "split", path, "/images/split dataset")[()])
        features = _require(store_file, "features", path, "/features group")
        backbones = tuple(name for name in features if isinstance(features[name], h5py.Dataset))
        if not backbones:
            raise ValueError(
                f"Feature store {path} has no datasets under /features. Expected one (N, D) or "
                f"(N, H, W, D) dataset per backbone. Received: /features keys={list(features)}"
            )
        num_rows = len(labels)
        if len(paths) != num_rows or len(splits) != num_rows:
            raise ValueError(
                f"Feature store {path}: /images datasets do not line up. Expected the same number of rows "
                f"in /images/path, /images/label and /images/split. Received: path={len(paths)}, "
                f"label={num_rows}, split={len(splits)} rows"
            )
        if not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(
                f"Feature store {path}: /images/label must hold integers. Received: dtype={labels.dtype}"
            )
        labels = labels.astype(np.int64)
        bad = (labels < -1) | (labels >= len(class_names))
        if bad.any():
            raise ValueError(
                f"Feature store {path}: labels must lie in [-1, {len(class_names) - 1}] for "
                f"{len(class_names)} class names (-1 = unlabeled). Received: labels={sorted(set(labels[bad].tolist()))[:10]}"
            )
        unknown = sorted(set(splits.tolist()) - set(SPLITS))
        if unknown:
            raise ValueError(
                f"Feature store {path}: unknown split names in /images/split. Expected only "
                f"{', '.join(SPLITS)}. Received: splits={unknown}"
            )
        feature_shapes, feature_dtypes, view_names, feature_recipes = {}, {}, {}, {}
        for backbone in backbones:
            dataset = features[backbone]
            if dataset.ndim not in (2, 4) or dataset.shape[0] != num_rows:
                raise ValueError(
                    f"Feature store {path}: /features/{backbone} does not line up with /images. "
                    f"Expected shape ({num_rows}, D) or ({num_rows}, H, W, D), one row per image. "
                    f"Received: shape={dataset.shape}"
                )
            feature_shapes[backbone] = tuple(int(size) for size in dataset.shape[1:])
            feature_dtypes[backbone] = dataset.dtype.name
            feature_recipes[backbone] = {key: _plain_attribute(value) for key, value in dataset.attrs.items()}
            view_names[backbone] = ()
            if "views" in store_file and backbone in store_file["views"]:
                views = store_file["views"][backbone]
                expected = (num_rows, None) + feature_shapes[backbone]
                if views.ndim != len(expected) or views.shape[0] != num_rows or views.shape[2:] != expected[2:]:
                    raise ValueError(
                        f"Feature store {path}: /views/{backbone} does not line up with /features/{backbone}. "
                        f"Expected shape ({num_rows}, V, {', '.join(map(str, feature_shapes[backbone]))}). "
                        f"Received: shape={views.shape}"
                    )
                names = views.attrs.get("view_names")
                names = tuple(_decode_strings(names)) if names is not None else tuple(
                    f"view{index + 1}" for index in range(views.shape[1])
                )
                if len(names) != views.shape[1]:
                    raise ValueError(
                        f"Feature store {path}: /views/{backbone} has {views.shape[1]} views but "
                        f"{len(names)} view_names. Expected one name per view. Received: view_names={list(names)}"
                    )
                view_names[backbone] = names
        check_finished(store_file, backbones, path)
    info = StoreInfo(
        path=path,
        class_names=class_names,
        backbones=backbones,
        feature_shapes=feature_shapes,
        feature_dtypes=feature_dtypes,
        view_names=view_names,
        feature_recipes=feature_recipes,
        paths=paths,
        labels=labels,
        splits=splits,
    )
    counts = {split: len(info.split_rows(split)) for split in SPLITS}
    missing = [split for split, count in counts.items() if count == 0]
    if missing:
        raise ValueError(
            f"Feature store {path} has no labeled rows in split {', '.join(repr(s) for s in missing)}. "
            f"Expected labeled images in each of train, val and test (/images/split); re-run "
            f"precompute with a split that leaves some images in each. Received: labeled rows per split={counts}"
        )
    return info


def select_backbones(info, backbones=None):
    """Check a requested subset of the store's backbones and return it as a tuple (all when None).

    Args:
        info: a `StoreInfo`.
        backbones: backbone names to use (default: None, all of the store's).

    Example:
        >>> select_backbones(info, ["resnet50", "efficientnetb0"])
    """
    if backbones is None or len(backbones) == 0:
        return info.backbones
    unknown = [name for name in backbones if name not in info.backbones]
    if unknown:
        raise ValueError(
            f"Unknown backbone {unknown[0]!r}: not in the feature store {info.path}. "
            f"Valid names: {', '.join(info.backbones)}. Received: backbones={list(backbones)}"
        )
    if len(set(backbones)) != len(backbones):
        raise ValueError(f"Each backbone may be given once. Received: backbones={list(backbones)}")
    return tuple(backbones)
