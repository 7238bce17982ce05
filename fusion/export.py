"""Export a finished run as one Keras model from raw pixels to class probabilities.

The exported model holds, per backbone, the same resize, `preprocess_input`, frozen backbone and
pooling that made the store, then the run's trained fusion head. It is one `.keras` file that
reloads with `keras.saving.load_model(path, safe_mode=True)` once `fusion` is imported (importing
it registers fusionpipe's two custom layers: `PreprocessInput` and `ClassNames`).
"""

from pathlib import Path

import h5py
import keras

from features import create_backbone
from fusion.run import load_run
from fusion.run_folder import record_written

EXPORT_FILE_NAME = "exported.keras"


@keras.saving.register_keras_serializable(package="fusionpipe")
class ClassNames(keras.layers.Layer):
    """Pass probabilities through unchanged and carry the class names in the saved model.

    Args:
        class_names: the names of the classes, in the order of the probabilities.

    Example:
        >>> probabilities = ClassNames(["cat", "dog"])(softmax_output)
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


# What the export needs to know to rebuild a backbone exactly as precompute ran it.
_RECIPE_KEYS = ("input_size", "pooling", "weights")


def _is_complete(recipe):
    return bool(recipe) and all(key in recipe for key in _RECIPE_KEYS)


def _decoded(value):
    return value.decode("utf-8") if isinstance(value, bytes) else value


def feature_recipes(store_path, backbones):
    """How each backbone's features were made, read from the store's `/features/<backbone>` attributes.

    Args:
        store_path: the feature store the run was trained on.
        backbones: the backbones the fusion model takes.

    Example:
        >>> feature_recipes("cache.h5", ["resnet50"])["resnet50"]["input_size"]
        224
    """
    store_path = Path(store_path)
    if not store_path.is_file():
        raise FileNotFoundError(
            f"Feature store not found: {store_path.resolve()}. The export needs it to know each backbone's "
            f"input size, pooling and weights; pass its new place with --store."
        )
    recipes = {}
    with h5py.File(store_path, "r") as store:
        for backbone in backbones:
            if f"features/{backbone}" not in store:
                raise ValueError(
                    f"Store {store_path} has no features for backbone '{backbone}', which the run was trained on. "
                    f"Pass the store the run was trained on with --store. Received: store={str(store_path)!r}"
                )
            attrs = {key: _decoded(value) for key, value in store[f"features/{backbone}"].attrs.items()}
            missing = [key for key in _RECIPE_KEYS if key not in attrs]
            if missing:
                raise ValueError(
                    f"Features of '{backbone}' in {store_path} do not record {', '.join(missing)}, so the export "
                    f"cannot rebuild the backbone that made them. Export works for stores written by run_precompute.py."
                )
            recipes[backbone] = attrs
    return recipes


def build_pixel_model(fusion_model, recipes, class_names):
    """Chain resize, backbone and pooling per backbone into `fusion_model`, from one image input.

    Args:
        fusion_model: a trained fusion model whose input names are backbone names.
        recipes: dict backbone -> its feature attributes (see `feature_recipes`).
        class_names: the class names, kept in the model.

    Example:
        >>> model = build_pixel_model(run.fusion_model, feature_recipes("cache.h5", run.backbones), run.class_names)
    """
    image = keras.Input(shape=(None, None, 3), name="image", dtype="float32")
    features = {}
    for backbone in (tensor.name for tensor in fusion_model.inputs):
        recipe = recipes[backbone]
        input_size = int(recipe["input_size"])
        # The same resize that precompute applies (features.resize_image), as a layer.
        resized = keras.layers.Resizing(
            input_size, input_size, interpolation="bilinear", antialias=True, name=f"{backbone}_resize"
        )(image)
        extractor = create_backbone(
            backbone,
            input_size=input_size,
            weights=recipe["weights"],
            pooling=recipe["pooling"],
            seed=int(recipe.get("seed", 0)),
        )
        features[backbone] = extractor(resized)
    probabilities = fusion_model(features)
    probabilities = ClassNames(class_names, name="class_names")(probabilities)
    return keras.Model(image, probabilities, name="fusionpipe_classifier")


def export_model(run_dir, out=None, store=None):
    """Export the fusion model of a finished run as one pixels-to-probabilities `.keras` file.

    Args:
        run_dir: a folder written by `run_train.py`.
        out: the `.keras` file to write (default: `RUN_DIR/exported.keras`).
        store: read the recipes from this feature store instead of the run's config.json
            (default: None, the run's own record, else the store it names).

    Example:
        >>> model_path = export_model("runs/exp1")
    """
    run = load_run(run_dir)
    recipes = run.config.get("feature_recipes")
    if store or not recipes or not all(_is_complete(recipes.get(name)) for name in run.backbones):
        # Runs trained on stores of another tool record no recipes; the store may still have them.
        store = store or run.config.get("arguments", {}).get("store") or run.report.get("store")
        recipes = feature_recipes(store, run.backbones)
    model = build_pixel_model(run.fusion_model, recipes, run.class_names)
    out = Path(out) if out else Path(run_dir) / EXPORT_FILE_NAME
    if out.suffix != ".keras":
        raise ValueError(f"The exported model is saved in the .keras format; name the file *.keras. Received: out={str(out)!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    record_written(run_dir, out.resolve())  # only when it lies in the run folder
    model.save(out)
    return out


def class_names_of(model):
    """The class names an exported model carries in its `ClassNames` layer.

    Example:
        >>> class_names_of(keras.saving.load_model("runs/exp1/exported.keras"))
        ('cat', 'dog')
    """
    for layer in model.layers:
        if isinstance(layer, ClassNames):
            return layer.class_names
    raise ValueError(
        f"Model '{model.name}' carries no class names; it was not written by fusion.export_model. "
        f"Export the run with `python run_predict.py RUN_DIR --export-only`."
    )
