"""fusionpipe stage 1: frozen backbones over a folder of images, cached in one HDF5 store.

The public names below load on first use (PEP 562), so that `import features.cli` and every
script's `--help` answer without importing Keras.
"""

from features._lazy import lazy_exports as _lazy_exports

# The project's one version number (pyproject.toml reads it from here).
__version__ = "0.3.0"

# Public name -> the submodule that defines it.
_EXPORTS = {
    "BackboneSpec": "features.backbones",
    "PreprocessInput": "features.backbones",
    "create_backbone": "features.backbones",
    "describe_backbones": "features.backbones",
    "get_backbone_spec": "features.backbones",
    "has_imagenet_weights": "features.backbones",
    "list_backbones": "features.backbones",
    "resolve_weights": "features.backbones",
    "HubBackboneSpec": "features.hub_backbones",
    "TokenPooling": "features.hub_backbones",
    "ImageTable": "features.dataset",
    "discover_images": "features.dataset",
    "make_splits": "features.dataset",
    "UnreadableImageError": "features.images",
    "load_image": "features.images",
    "prepare_views": "features.images",
    "resize_image": "features.images",
    "precompute": "features.pipeline",
    "FeatureRecipe": "features.recipe",
    "PrecomputeSummary": "features.summary",
    "FeatureStore": "features.store",
    "StoreBusyError": "features.store",
    "StoreError": "features.store",
    "load_store": "features.store",
    "read_index": "features.store",
    "StoreIndex": "features.store",
    "FeatureRows": "features.store",
    "DIHEDRAL_VIEWS": "features.views",
    "apply_view": "features.views",
    "view_names": "features.views",
}

__all__ = [
    "BackboneSpec",
    "DIHEDRAL_VIEWS",
    "FeatureRecipe",
    "FeatureRows",
    "FeatureStore",
    "HubBackboneSpec",
    "ImageTable",
    "PrecomputeSummary",
    "PreprocessInput",
    "StoreBusyError",
    "StoreError",
    "StoreIndex",
    "TokenPooling",
    "UnreadableImageError",
    "apply_view",
    "create_backbone",
    "describe_backbones",
    "discover_images",
    "get_backbone_spec",
    "has_imagenet_weights",
    "list_backbones",
    "load_image",
    "load_store",
    "make_splits",
    "precompute",
    "prepare_views",
    "read_index",
    "resize_image",
    "resolve_weights",
    "view_names",
]


__getattr__, __dir__ = _lazy_exports(globals(), _EXPORTS)
