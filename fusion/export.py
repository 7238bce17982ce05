"""Export a finished run as one Keras model from raw pixels to class probabilities.

The exported model holds, per backbone, the same resize, `preprocess_input`, frozen backbone and
pooling that made the store, then one model of the run: by default the report's winner, or any
model the report lists (`model=`): a fusion head, a backbone's own model, an ablation, a baseline
(whose combiner is a layer of `fusion.combiners`) or a `+tta` model (the model, with the
test-time views recorded for `predict_images` to average over). It is one `.keras` file that
reloads with `keras.saving.load_model(path, safe_mode=True)` once `fusion` is imported (importing
it registers fusionpipe's `PreprocessInput` layer and the `FusionClassifier` model). The model is a
`fusion.classifier.FusionClassifier`: its parts are attributes, not layers found again by name.

The recipe (input size, pooling, weights, seed, dtype, views, preprocessing, ...) comes from the
run's config.json, where training recorded the store's `/features/<backbone>` attributes. A store
given with `store=` must have been made with that same recipe; any difference is refused. The
model file is written whole or not at all (temporary, fsync, rename), so concurrent exports of
one run each leave a whole file.
"""

import warnings
from pathlib import Path

import keras

from features import resolve_weights
from features import store as feature_store
from features.backbones import weights_sha256
from features.recipe import FeatureRecipe
from features.atomic_files import save_model_atomic
from fusion.classifier import FusionClassifier
from fusion.model_names import TTA_SUFFIX, base_model, model_backbones
from fusion.saved_run import (
    check_model_name, default_model_name, load_run, read_run_config, read_run_report, run_model_names,
)
from fusion.run_folder import record_written

# A run folder's cached export of its default model (the report's winner); another model's is
# `exported_<MODEL>.keras` beside it.
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


def build_pixel_model(head, recipes, class_names, model_name=None, test_time_views=()):
    """A `FusionClassifier` of resize, backbone and pooling per backbone and `head`, from one image input.

    Args:
        head: a model of the run on features (fusion head, backbone's model, baseline) whose
            input names are backbone names; only those backbones are built.
        recipes: dict backbone -> its `FeatureRecipe` (see `feature_recipes`).
        class_names: the class names, kept in the model.
        model_name: the report's name of `head`, kept in the model (default: None, the fusion head).
        test_time_views: extra views `predict_images` averages over by default (default: (), none).

    Example:
        >>> model = build_pixel_model(run.fusion_model, feature_recipes("cache.h5", run.backbones), run.class_names)
    """
    extractors = {}
    for backbone in (tensor.name for tensor in head.inputs):
        _check_weights_file(recipes[backbone])
        extractors[backbone] = recipes[backbone].create_backbone()
    return FusionClassifier(extractors, head, class_names, model_name=model_name, test_time_views=test_time_views)


def export_model_name(run_dir, model=None):
    """The name of the run's model to export: `model`, checked against the names the report lists, else the default.

    The default is the report's winner (see `fusion.saved_run.default_model_name`). Reads
    config.json and report.json only, so a bad name is refused before any model loads.

    Args:
        run_dir: a folder written by `run_train.py`.
        model: a name the report lists (default: None, the report's winner).

    Example:
        >>> export_model_name("runs/exp1")
        'stacking'
    """
    read_run_config(run_dir)  # an unfinished run is named by its first missing file, as load_run names it
    report = read_run_report(run_dir)
    if model is None:
        return default_model_name(report, run_dir)
    return check_model_name(model, run_model_names(report), run_dir)


def cached_export_path(run_dir, model=None):
    """Where a run folder keeps its export of a model: `exported.keras` for the default, `exported_<MODEL>.keras` else.

    Example:
        >>> cached_export_path("runs/exp1", "fusion")
        PosixPath('runs/exp1/exported_fusion.keras')
    """
    name = export_model_name(run_dir, model)
    default = default_model_name(read_run_report(run_dir), run_dir)
    return Path(run_dir) / (EXPORT_FILE_NAME if name == default else f"exported_{name}.keras")


def _test_time_views(model_name, recipes, head):
    # Training's TTA averages view k of every backbone (the identity where a backbone has fewer),
    # so the export takes the longest list of views among the head's backbones.
    if not model_name.endswith(TTA_SUFFIX):
        return ()
    return max((tuple(recipes[tensor.name].views or ()) for tensor in head.inputs), key=len)


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


def export_model(run_dir, out=None, store=None, model=None):
    """Export a model of a finished run (by default the report's winner) as one pixels-to-probabilities `.keras` file.

    Any model the report lists exports: a fusion head, a backbone's own model (one backbone in
    the file), an ablation, `average`, `weighted_average`, `stacking`, or a `<model>+tta` (that
    model, recording the run's test-time views, which `predict_images` then averages over). The
    file is written whole or not at all: to a temporary in the same folder, then renamed, so a
    kill leaves the old file (or none) and two exports at once both leave a whole file.

    Args:
        run_dir: a folder written by `run_train.py`.
        out: the `.keras` file to write (default: `RUN_DIR/exported.keras` for the default model,
            `RUN_DIR/exported_<MODEL>.keras` for another).
        store: a feature store to check against the recipes the run recorded, refused on any
            difference; runs that recorded none take their recipes from it (default: None, the
            run's own record, else the store its config.json names).
        model: the name of the model, as the report lists it (default: None, the report's
            winner, `summary.winner`).

    Example:
        >>> model_path = export_model("runs/exp1")
        >>> stacking_path = export_model("runs/exp1", model="stacking")
    """
    out = check_export_path(out) if out else None  # a bad name is refused before the run is read
    name = export_model_name(run_dir, model)
    out = out or check_export_path(cached_export_path(run_dir, name))
    run = load_run(run_dir)
    winner = run.report.get("summary", {}).get("winner")
    if model is None and winner and name != winner:
        warnings.warn(f"The winner {winner!r} of run {run_dir} has no models/{base_model(winner)}.keras (runs "
                      f"before the baselines were saved as models); exporting its fusion head {name!r} instead. Train "
                      f"the run again to deploy the winner.", stacklevel=2)
    recipes = run_recipes(run_dir, store)
    head = run.keras_model(name)
    model = build_pixel_model(head, recipes, run.class_names, name, _test_time_views(name, recipes, head))
    out.parent.mkdir(parents=True, exist_ok=True)
    record_written(run_dir, out.resolve())  # only when it lies in the run folder
    save_model_atomic(model, out)
    return out


def exported_model_name(model, run_dir):
    """The name of the run's model an exported `FusionClassifier` holds; exports that name none hold the fusion head.

    Example:
        >>> exported_model_name(keras.saving.load_model("runs/exp1/exported.keras"), "runs/exp1")
        'stacking'
    """
    if model.model_name is not None:
        return model.model_name
    return read_run_report(run_dir).get("summary", {}).get("fusion_head", "fusion")


def matches_run(model, run_dir, model_name=None):
    """Whether an exported model holds the named model of the run, with its class names and recorded input sizes.

    A cheap check that a cached export was made from this run's recipe and holds the model asked
    for (one made from another store, of another model, or by a version before
    `FusionClassifier`, is not).

    Args:
        model: a loaded exported model.
        run_dir: a folder written by `run_train.py`.
        model_name: the model it should hold (default: None, the run's default, the report's winner).

    Example:
        >>> matches_run(keras.saving.load_model("runs/exp1/exported.keras"), "runs/exp1")
        True
    """
    if not isinstance(model, FusionClassifier):
        return False
    config = read_run_config(run_dir)
    held = exported_model_name(model, run_dir)
    if held != export_model_name(run_dir, model_name):
        return False
    expected = {name: recipe.input_size for name, recipe in recorded_recipes(config).items() if recipe is not None}
    sizes = model.input_sizes
    backbones = model_backbones(held, config["backbones"])
    return (tuple(model.class_names) == tuple(config["class_names"]) and set(sizes) == set(backbones)
            and all(sizes[name] == size for name, size in expected.items() if name in sizes))


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
