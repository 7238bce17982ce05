"""fusionpipe stage 1: frozen backbones over a folder of images, cached in one HDF5 store."""

# The project's one version number (pyproject.toml reads it from here).
__version__ = "0.3.0"

from features.backbones import (
    BackboneSpec,
    PreprocessInput,
    create_backbone,
    get_backbone_spec,
    has_imagenet_weights,
    list_backbones,
    resolve_weights,
)
from features.dataset import ImageTable, discover_images, make_splits
from features.images import UnreadableImageError, load_image, prepare_views, resize_image
from features.pipeline import precompute
from features.store import FeatureStore, StoreBusyError, StoreError, load_store
from features.summary import PrecomputeSummary
from features.views import DIHEDRAL_VIEWS, apply_view, view_names

__all__ = [
    "BackboneSpec",
    "DIHEDRAL_VIEWS",
    "FeatureStore",
    "ImageTable",
    "PrecomputeSummary",
    "PreprocessInput",
    "StoreBusyError",
    "StoreError",
    "UnreadableImageError",
    "apply_view",
    "create_backbone",
    "discover_images",
    "get_backbone_spec",
    "has_imagenet_weights",
    "list_backbones",
    "load_image",
    "load_store",
    "make_splits",
    "precompute",
    "prepare_views",
    "resize_image",
    "resolve_weights",
    "view_names",
]
