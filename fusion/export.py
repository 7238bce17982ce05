"""Export a finished run as one Keras model from raw pixels to class probabilities.

The exported model holds, per backbone, the same resize, `preprocess_input`, frozen backbone and
pooling that made the store, then the run's trained fusion head. It is one `.keras` file that
reloads with `keras.saving.load_model(path, safe_mode=True)` once `fusion` is imported (importing
it registers fusionpipe's `PreprocessInput` layer and the `FusionClassifier` model). The model is a
`fusion.classifier.FusionClassifier`: its parts are attributes, not layers found again by name.

The recipe (input size, pooling, weights, seed, dtype, views, preprocessing, ...) comes from the
run's config.json, where training recorded the store's `/features/<backbone>` attributes. A store
given with `store=` must have been made with that same recipe; any difference is refused. The
model file is written whole or not at all (temporary, fsync, rename), so concurrent exports of
one run each leave a whole file.
"""

from pathlib import Path

import keras

from features import resolve_weights
from features import store as feature_store
from features.backbones import weights_sha256
from features.recipe import FeatureRecipe
from features.atomic_files import save_model_atomic
from fusion.classifier import FusionClassifier
from fusion.saved_run import load_run, read_run_config
from fusion.run_folder import record_written

EXPORT_FILE_NAME = "exported.keras"


@keras.saving.register_keras_serializable(package="fusionpipe", name="ClassNames")
class _LegacyClassNames(keras.layers.Layer):
    """The class-names layer of exports before `FusionClassifier`, kept only so that such files still load.

    A loaded old export is not a `FusionClassifier`, so `matches_run` refuses it and prediction
    exports the run again, instead of failing to load it.
    """

    def __init__(self, class_names, **kwargs):
        super().__init__(**kwargs)
        self.class_names = tuple(str(name) for name in class_names)

    def call(self, inputs):
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "class_names": list(self.class_names)}


def feature_recipes(store_path, backbones):
    """How each backbone's features were made: the `FeatureRecipe` the store records for it.

    Args:
        store_path: the feature store the run was trained on.
        backbones: the backbones the fusion model takes.

    Example:
        >>> feature_recipes("cache.h5", ["resnet50"])["resnet50"].input_size
        224
    """
    store_path = Path(store_path)
    if not store_path.is_file():
        raise FileNotFoundError(
            f"Feature store not found: {store_path.resolve()}. The export needs it to know each backbone's "
            f"input size, pooling and weights; pass its new place with --store."
        )
    # Through the store's own checks: an unfinished or damaged store is refused here too, in one line.
    index = feature_store.read_index(store_path)
    recipes = {}
    for backbone in backbones:
        if backbone not in index.backbones:
            raise ValueError(
                f"Store {store_path} has no features for backbone '{backbone}', which the run was trained on. "
                f"Pass the store the run was trained on with --store. Received: store={str(store_path)!r}"
            )
        recipes[backbone] = FeatureRecipe.from_attrs(index.recipes[backbone], backbone=backbone)
        if recipes[backbone] is None:
            missing = FeatureRecipe.missing_facts(index.recipes[backbone])
            raise ValueError(
                f"Features of '{backbone}' in {store_path} do not record {', '.join(missing)}, so the export "
                f"cannot rebuild the backbone that made them. Export works for stores written by run_precompute.py."
            )
    return recipes


def recorded_recipes(config):
    """backbone -> the `FeatureRecipe` a run's config.json records, None where it records none (a store of another tool)."""
    recorded = config.get("feature_recipes") or {}
    return {name: _as_recipe(recorded.get(name), name) for name in config["backbones"]}


def _as_recipe(recipe, backbone):
    return recipe if isinstance(recipe, FeatureRecipe) or recipe is None else FeatureRecipe.from_attrs(recipe, backbone)


def check_store_recipes(store_path, recorded, backbones):
    """The store's feature recipes, refused on any difference from the recipes a run recorded.

    Every setting the run recorded for a backbone (input size, pooling, weights, seed, dtype,
    views, preprocessing, ...) must be the same in the store; only version numbers may differ.

    Args:
        store_path: the feature store given for the run.
        recorded: dict backbone -> the run's `FeatureRecipe` (or config.json's entry for it).
        backbones: the backbones the run's fusion model takes.

    Example:
        >>> recipes = check_store_recipes("cache.h5", recorded_recipes(run.config), run.backbones)
    """
    recipes = feature_recipes(store_path, backbones)
    for backbone in backbones:
        wanted = _as_recipe(recorded.get(backbone), backbone)
        mismatch = wanted.export_mismatch(recipes[backbone]) if wanted is not None else None
        if mismatch:
            key, found, value = mismatch
            raise ValueError(
                f"Store {store_path} was made with another recipe than the run was trained on: backbone "
                f"'{backbone}' has {key}={found!r} in the store, {key}={value!r} in the run's config.json. "
                f"Pass the store the run was trained on with --store, or train a run on this store. "
                f"Received: store={str(store_path)!r}"
            )
    return recipes


def run_recipes(run_dir, store=None):
    """The recipes to export a run with: the run's recorded ones, checked against `store` when it is given.

    A run that recorded no complete recipe (trained on a store of another tool) takes them from
    `store`, else from the store named in its config.json.

    Args:
        run_dir: a folder written by `run_train.py`.
        store: a feature store to check against the run's recipes (default: None).

    Example:
        >>> run_recipes("runs/exp1", store="cache.h5")["resnet50"].input_size
        224
    """
    config = read_run_config(run_dir)
    backbones = list(config["backbones"])
    recorded = recorded_recipes(config)
    complete = all(recipe is not None for recipe in recorded.values())
    if store is not None:
        recipes = check_store_recipes(store, recorded, backbones)
        return recorded if complete else recipes
    if complete:
        return recorded
    store = config.get("arguments", {}).get("store")
    if not store:
        raise ValueError(f"Run {run_dir} records neither the feature recipes nor its store, so the backbones cannot be "
                         f"rebuilt. Pass the store it was trained on with --store. Received: run={str(run_dir)!r}")
    return feature_recipes(store, backbones)


def records_recipes(run_dir):
    """Whether a run's config.json holds every backbone's full recipe, so that it exports without its store."""
    return all(recipe is not None for recipe in recorded_recipes(read_run_config(run_dir)).values())


def _check_weights_file(recipe):
    # A weights file replaced since precompute would rebuild another backbone than the one the head saw.
    expected = recipe.weights_sha256 or "none"
    if expected == "none":
        return
    weights_file = resolve_weights(recipe.backbone, recipe.weights, recipe.input_size)
    found = weights_sha256(weights_file) if weights_file else "none"
    if found != expected:
        raise ValueError(
            f"The weights file of {recipe.backbone} ({weights_file}) has sha256 {found}, but the store's features were "
            f"made with a file of sha256 {expected}: the exported model would not compute the features the head was "
            f"trained on. Put the original file back (see --weights). Received: weights_sha256={found!r}")


def build_pixel_model(fusion_model, recipes, class_names):
    """A `FusionClassifier` of resize, backbone and pooling per backbone and `fusion_model`, from one image input.

    Args:
        fusion_model: a trained fusion model whose input names are backbone names.
        recipes: dict backbone -> its `FeatureRecipe` (see `feature_recipes`).
        class_names: the class names, kept in the model.

    Example:
        >>> model = build_pixel_model(run.fusion_model, feature_recipes("cache.h5", run.backbones), run.class_names)
    """
    extractors = {}
    for backbone in (tensor.name for tensor in fusion_model.inputs):
        _check_weights_file(recipes[backbone])
        extractors[backbone] = recipes[backbone].create_backbone()
    return FusionClassifier(extractors, fusion_model, class_names)


def check_export_path(out):
    """Refuse an export target that is not a `.keras` file name, before any work.

    Example:
        >>> check_export_path("model.h5")
        Traceback (most recent call last):
        ValueError: The exported model is saved in the .keras format; ...
    """
    out = Path(out)
    if out.suffix != ".keras":
        raise ValueError(f"The exported model is saved in the .keras format; name the file *.keras. Received: out={str(out)!r}")
    if out.is_dir():
        raise ValueError(f"The export target {out.resolve()} is a folder. Expected a .keras file name. Received: out={str(out)!r}")
    return out


def export_model(run_dir, out=None, store=None):
    """Export the fusion model of a finished run as one pixels-to-probabilities `.keras` file.

    The file is written whole or not at all: to a temporary in the same folder, then renamed,
    so a kill leaves the old file (or none) and two exports at once both leave a whole file.

    Args:
        run_dir: a folder written by `run_train.py`.
        out: the `.keras` file to write (default: `RUN_DIR/exported.keras`).
        store: a feature store to check against the recipes the run recorded, refused on any
            difference; runs that recorded none take their recipes from it (default: None, the
            run's own record, else the store its config.json names).

    Example:
        >>> model_path = export_model("runs/exp1")
    """
    out = check_export_path(Path(out) if out else Path(run_dir) / EXPORT_FILE_NAME)
    run = load_run(run_dir)
    recipes = run_recipes(run_dir, store)
    model = build_pixel_model(run.fusion_model, recipes, run.class_names)
    out.parent.mkdir(parents=True, exist_ok=True)
    record_written(run_dir, out.resolve())  # only when it lies in the run folder
    save_model_atomic(model, out)
    return out


def matches_run(model, run_dir):
    """Whether an exported model has the run's class names and, per backbone, the recorded input size.

    A cheap check that a cached export was made from this run's recipe (one made from another
    store, or by a version before `FusionClassifier`, is not).

    Example:
        >>> matches_run(keras.saving.load_model("runs/exp1/exported.keras"), "runs/exp1")
        True
    """
    if not isinstance(model, FusionClassifier):
        return False
    config = read_run_config(run_dir)
    expected = {name: recipe.input_size for name, recipe in recorded_recipes(config).items() if recipe is not None}
    sizes = model.input_sizes
    return (tuple(model.class_names) == tuple(config["class_names"]) and set(sizes) == set(config["backbones"])
            and all(sizes[name] == size for name, size in expected.items()))


def class_names_of(model):
    """The class names an exported model carries (its `class_names` attribute).

    Example:
        >>> class_names_of(keras.saving.load_model("runs/exp1/exported.keras"))
        ('cat', 'dog')
    """
    if isinstance(model, FusionClassifier):
        return model.class_names
    raise ValueError(
        f"Model '{model.name}' carries no class names; it was not written by fusion.export_model, or by a version "
        f"before FusionClassifier. Export the run again with `python run_predict.py RUN_DIR --export-only`. "
        f"Received: model of type {type(model).__name__}"
    )
