"""How a backbone's features were made: one typed record, written by precompute, copied into runs, rebuilt by export.

Modelled on timm's `PretrainedCfg`: a frozen dataclass holds every fact needed to rebuild and feed
the network that made the features (input size, pooling, weights and their hash, seed, dtype,
views, preprocessing), with `to_attrs` / `from_attrs` for the store's `/features/<backbone>`
attributes and config.json. Nothing else reads the recipe by string keys.
"""

import dataclasses
import sys

# Without these a backbone cannot be rebuilt as precompute ran it; stores of other tools lack them.
_REQUIRED = ("backbone", "input_size", "pooling", "weights")

# Changing any of these changes the features, so a stored backbone made otherwise is not reused.
# The seed and the backend's random generator matter only for random weights (weights="none").
_CHANGES_FEATURES = ("input_size", "pooling", "weights", "seed", "dtype", "views", "precision", "backend")
_ONLY_FOR_RANDOM_WEIGHTS = ("seed", "backend")

# Kept for the record: they do not change the features, so a run and a store may differ in them.
_RECORD_ONLY = ("keras_version", "backend_version")


def _backend_version(backend):
    module = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}.get(backend, backend)
    return getattr(sys.modules.get(module), "__version__", "unknown")


@dataclasses.dataclass(frozen=True)
class FeatureRecipe:
    """How one backbone's features in a store were made: enough to rebuild the network exactly.

    Fields left None were not recorded (stores written by older versions); they are not compared.

    Attributes:
        backbone: registry name (`features.list_backbones()`).
        input_size: side of the square images the backbone saw.
        pooling: "avg", "max", "cls", "cls+avg" or "none" (see `features.backbones.poolings_of`).
        weights: "imagenet", "none" or the resolved path of a weights file or folder.
        seed: seed of the random initialisation (matters only for weights "none").
        dtype: dtype the features were stored in.
        precision: compute precision ("float32", "mixed_bfloat16", ...).
        views: names of the extra views stored in `/views/<backbone>` (empty for none).
        preprocessing: the `preprocess_input` (CNNs), the preset's scale and offset (KerasHub) or
            `identity`'s rescaling, for the record.
        resize: how images were resized, for the record.
        weights_file: the Keras weights file name of the backbone at `input_size` (None for `identity`, which has none).
        preset: the KerasHub preset with its version (kaggle://...), for KerasHub backbones.
        weights_sha256: sha256 of the weights file used, "none" for random or unknown.
        keras_version, backend, backend_version: what computed the features.

    Example:
        >>> recipe = FeatureRecipe(backbone="resnet50", input_size=64, pooling="avg", weights="none")
        >>> model = recipe.create_backbone()
    """

    backbone: str
    input_size: int
    pooling: str
    weights: str
    seed: int | None = None
    dtype: str | None = None
    precision: str | None = None
    views: tuple | None = None
    preprocessing: str | None = None
    resize: str | None = None
    weights_file: str | None = None
    preset: str | None = None
    weights_sha256: str | None = None
    keras_version: str | None = None
    backend: str | None = None
    backend_version: str | None = None

    @classmethod
    def for_run(cls, backbone, input_size, pooling, weights, seed, dtype, precision, views, weights_path=None):
        """The recipe of features this process is about to compute (versions and hashes filled in).

        Args:
            backbone, input_size, pooling, seed, dtype, precision: as given to `precompute`.
            weights: "imagenet", "none" (or None) or the resolved weights path, as recorded.
            views: the extra view names.
            weights_path: the weights file that will be loaded, hashed for the record (default: None).
        """
        import keras

        from features.backbones import FUSIONPIPE, get_backbone_spec, weights_sha256
        from features.hub_backbones import read_preset_preprocessing

        spec = get_backbone_spec(backbone)
        backend = keras.backend.backend()
        if spec.source == "keras_hub":
            scale, offset = read_preset_preprocessing(spec, weights_path)
            preprocessing = (f"Rescaling(scale={[round(value, 8) for value in scale]}, "
                             f"offset={[round(value, 8) for value in offset]})")
            weights_file, preset = "model.weights.h5", spec.kaggle_handle
        elif spec.source == FUSIONPIPE:  # identity: no network, no weights file
            preprocessing, weights_file, preset = spec.preprocessing, None, None
        else:
            preprocessing = f"keras.applications.{spec.preprocess_module}.preprocess_input"
            weights_file, preset = spec.weights_for(int(input_size)).weights_file, None
        return cls(
            backbone=backbone, input_size=int(input_size), pooling=pooling,
            weights="none" if weights in (None, "none") else str(weights), seed=int(seed), dtype=dtype,
            precision=precision, views=tuple(views), preprocessing=preprocessing,
            resize="bilinear, antialias, aspect ratio not kept",
            weights_file=weights_file, preset=preset,
            weights_sha256=weights_sha256(weights_path) if weights_path else "none",
            keras_version=keras.__version__, backend=backend, backend_version=_backend_version(backend),
        )

    @classmethod
    def from_attrs(cls, attrs, backbone=None):
        """The recipe recorded in `attrs` (a store's `/features/<backbone>` attributes or config.json's entry).

        Returns None when `attrs` does not record enough to rebuild the backbone (stores of other tools).

        Args:
            attrs: mapping of attribute name -> plain value, as `features.store.feature_attrs` reads
                them from a store or as config.json holds them.
            backbone: the backbone's name where `attrs` does not record it (default: None).

        Example:
            >>> FeatureRecipe.from_attrs({"backbone": "resnet50", "input_size": 64, "pooling": "avg", "weights": "none"})
        """
        values = dict(attrs or {})
        if backbone is not None:
            values.setdefault("backbone", backbone)
        if any(key not in values for key in _REQUIRED):
            return None
        fields = {field.name for field in dataclasses.fields(cls)}
        values = {key: value for key, value in values.items() if key in fields}
        values["input_size"] = int(values["input_size"])
        if values.get("seed") is not None:
            values["seed"] = int(values["seed"])
        if "views" in values:
            views = values["views"]
            views = [] if views in ("none", "", None) else (views.split(",") if isinstance(views, str) else views)
            values["views"] = tuple(str(view) for view in views)
        return cls(**values)

    def to_attrs(self):
        """The recipe as HDF5 attributes / JSON values (the fields not recorded are left out).

        Example:
            >>> recipe.to_attrs()["views"]
            'none'
        """
        attrs = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is None:
                continue
            attrs[field.name] = (",".join(value) or "none") if field.name == "views" else value
        return attrs

    def backbone_kwargs(self):
        """The arguments of `features.create_backbone` that rebuild the network that made these features."""
        return {"name": self.backbone, "input_size": self.input_size, "weights": self.weights,
                "pooling": self.pooling, "seed": 0 if self.seed is None else self.seed}

    def create_backbone(self):
        """Build the frozen feature extractor these features were made with (`features.create_backbone`)."""
        from features.backbones import create_backbone

        return create_backbone(**self.backbone_kwargs())

    def reuse_mismatch(self, stored):
        """The first setting in which `stored` (a recipe in the store) made other features than this one would.

        Returns (field, stored value, wanted value), or None when the stored features can be reused
        or resumed. The seed and backend count only for random weights; the weights file's hash
        counts where both recipes know it.
        """
        for key in _CHANGES_FEATURES:
            if key in _ONLY_FOR_RANDOM_WEIGHTS and self.weights != "none":
                continue
            wanted, found = getattr(self, key), getattr(stored, key)
            if _as_text(key, found) != _as_text(key, wanted):
                return key, _as_text(key, found), _as_text(key, wanted)
        if stored.weights_sha256 not in (None, "none") and self.weights_sha256 not in (None, "none",
                                                                                       stored.weights_sha256):
            return "weights_sha256", stored.weights_sha256, self.weights_sha256
        return None

    def export_mismatch(self, other):
        """The first setting this (a run's) recipe records that `other` (a store's) records otherwise.

        Versions are kept for the record only and may differ. Returns (field, other's value, this
        value) as recorded (`to_attrs`), or None.
        """
        theirs = other.to_attrs()
        for key, mine in self.to_attrs().items():
            if key not in _RECORD_ONLY and theirs.get(key, "(not recorded)") != mine:
                return key, theirs.get(key, "(not recorded)"), mine
        return None

    @staticmethod
    def missing_facts(attrs):
        """The facts a rebuild needs that `attrs` does not record (input size, pooling, weights)."""
        return [key for key in _REQUIRED if key != "backbone" and key not in dict(attrs or {})]


def _as_text(key, value):
    # Resume compares the stored attributes as text, as stores before this type did.
    if key == "views":
        return "None" if value is None else (",".join(value) or "none")
    return str(value)
