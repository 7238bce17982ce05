"""What training needs of a feature store, read through the store's owner (`features.store`)."""

import dataclasses
from pathlib import Path

import numpy as np

from features import store as feature_store
from features.recipe import FeatureRecipe
from features.store import SPLITS


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
        feature_recipes: dict backbone -> the `FeatureRecipe` that made its features (input size,
            pooling, weights, ...); None for stores that record none (written by another tool).
        paths: (N,) image paths, relative to the data root.
        labels: (N,) int64 class indices, `-1` when unlabeled.
        splits: (N,) split names.
        precompute_seconds_per_image: dict backbone -> seconds its predict calls took per image
            in precompute (summed over the runs that computed its rows, `/cost/features/<backbone>`),
            or None where the store records none (written before costs were, or by another tool).
        decode_seconds_per_image: seconds precompute spent decoding and resizing one image, shared
            by all backbones (`/cost/decode`), or None.
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
    precompute_seconds_per_image: dict = dataclasses.field(default_factory=dict)
    decode_seconds_per_image: float | None = None

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


def read_store_info(path):
    """Read and check the labels, splits, class names and feature shapes of a feature store.

    Only `/images/*`, the `class_names` attribute and `/features/*` are required; the
    bookkeeping of run_precompute.py (`/progress`, `/pending`, `/checksums`, `/skipped`) is
    checked where present. Feature rows are checked against their checksums when the data
    source reads them (`fusion.data`).

    Args:
        path: the `.h5` store.

    Raises:
        StoreError: the store is unfinished or damaged (one line says how to finish or rebuild it).

    Example:
        >>> info = read_store_info("cache.h5")
        >>> info.backbones, info.class_names
    """
    index = feature_store.read_index(path)
    info = StoreInfo(
        path=index.path,
        class_names=index.class_names,
        backbones=index.backbones,
        feature_shapes=index.feature_shapes,
        feature_dtypes=index.feature_dtypes,
        view_names=index.view_names,
        feature_recipes={name: FeatureRecipe.from_attrs(attrs, backbone=name) for name, attrs in index.recipes.items()},
        paths=index.paths,
        labels=index.labels,
        splits=index.splits,
        precompute_seconds_per_image={name: feature_store.seconds_per_image(index.compute_costs.get(name))
                                      for name in index.backbones},
        decode_seconds_per_image=feature_store.seconds_per_image(index.decode_cost),
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
