"""The exported model: per backbone a resize and a frozen feature extractor, then the fusion head.

`FusionClassifier` holds its parts as attributes (`backbones`, `input_sizes`, `head`,
`class_names`, `fusionpipe_version`, `model_name`, `test_time_views`) and saves them through `get_config`, as KerasHub's
`ImageClassifier` keeps its backbone and preprocessor: code that needs a part reads the attribute
instead of looking for layers by name.
"""

import keras

from features import __version__ as FUSIONPIPE_VERSION
from features.views import DIHEDRAL_VIEWS


def _input_sizes(backbone_names, backbones):
    """Each extractor's square input size; refused unless there is one fixed-size extractor per input of the head."""
    if sorted(backbones) != sorted(backbone_names):
        raise ValueError(
            f"The fusion head takes the backbones {', '.join(backbone_names)}, but backbones names "
            f"{', '.join(sorted(backbones)) or 'none'}. Expected one feature extractor per input of the head, "
            f"named as that input. Received: backbones={sorted(backbones)}"
        )
    sizes = {}
    for name in backbone_names:
        shape = tuple(backbones[name].input_shape)
        if len(shape) != 4 or shape[1] is None or shape[1] != shape[2]:
            raise ValueError(
                f"The feature extractor of {name} takes images of shape {shape}. Expected square RGB images of "
                f"one size, (None, size, size, 3), as features.create_backbone builds. Received: input_shape={shape}"
            )
        sizes[name] = int(shape[1])
    return sizes


def _check_views(views):
    views = tuple(str(view) for view in (views or ()))
    unknown = [view for view in views if view not in DIHEDRAL_VIEWS]
    if unknown:
        raise ValueError(f"Unknown test-time view {unknown[0]!r}. Valid names: {', '.join(DIHEDRAL_VIEWS)}. "
                         f"Received: test_time_views={list(views)}")
    return views


@keras.saving.register_keras_serializable(package="fusionpipe")
class FusionClassifier(keras.Model):
    """One model from raw RGB pixels (0..255, any size) to class probabilities.

    Per backbone the image is resized to that backbone's input size (bilinear with
    antialiasing, the operation `features.resize_image` applies in precompute) and run through
    its frozen feature extractor; the fusion head takes the features, keyed by backbone name.
    It is a functional model built from these parts, so `summary()`, `output_shape` and
    `predict_on_batch` work as for any Keras model, and it reloads with
    `keras.saving.load_model(path)` in safe mode once `fusion` is imported.

    Args:
        backbones: dict backbone name -> feature extractor taking square images of one size (see
            `features.create_backbone`); `input_sizes` is read from them.
        head: the run's model on features (a fusion head, a backbone's own model, a baseline),
            whose inputs are named by backbone.
        class_names: the names of the classes, in the order of the probabilities.
        fusionpipe_version: the fusionpipe version that built the model (default: None, this one).
        model_name: the name of the run's model the head is, as the report lists it (`fusion`,
            `stacking`, `resnet50+tta`, ...) (default: None: the run's fusion head, as in files
            exported before models were named).
        test_time_views: the extra views (e.g. `("hflip",)`) that `fusion.predict_images`
            averages over by default: those of training's test-time augmentation for a `+tta`
            model (default: (), none).

    Example:
        >>> classifier = FusionClassifier({"resnet50": create_backbone("resnet50")}, head, ["cat", "dog"])
        >>> classifier.predict_on_batch(images).shape
        (8, 2)
    """

    def __init__(self, backbones, head, class_names, fusionpipe_version=None, model_name=None, test_time_views=(),
                 **kwargs):
        # The head's input order, so that a reloaded model wires its layers in the same order.
        backbone_names = [tensor.name for tensor in head.inputs]
        sizes = _input_sizes(backbone_names, backbones)
        if head.name in backbone_names:
            # A backbone's own model bears the backbone's name, which `resized_input_model` gives its
            # input: the same layers, under another name.
            head = keras.Model({tensor.name: tensor for tensor in head.inputs}, head.output, name=f"{head.name}_head")
        # Sub-models are set before the functional init, as KerasHub's tasks do.
        self.backbones = {name: backbones[name] for name in backbone_names}
        self.head = head
        self.resizers = {
            name: keras.layers.Resizing(size, size, interpolation="bilinear", antialias=True, name=f"{name}_resize")
            for name, size in sizes.items()
        }
        images = keras.Input(shape=(None, None, 3), name="image", dtype="float32")
        # training=False is part of the graph, as the Keras transfer-learning guide wires a frozen base: a
        # direct call `classifier(images)` leaves `training` unset, and the BatchNormalization layers of a
        # reloaded backbone (trainable again) would then normalise by the batch, not by their statistics.
        features = {name: self.backbones[name](self.resizers[name](images), training=False)
                    for name in backbone_names}
        kwargs.setdefault("name", "fusionpipe_classifier")
        super().__init__(inputs=images, outputs=head(features, training=False), **kwargs)
        self.input_sizes = sizes
        self.class_names = tuple(str(name) for name in class_names)
        self.fusionpipe_version = str(fusionpipe_version or FUSIONPIPE_VERSION)
        self.model_name = None if model_name is None else str(model_name)
        self.test_time_views = _check_views(test_time_views)

    def resized_input_model(self):
        """The same extractors and head as a model with one input per backbone, already resized to its size.

        Calling the classifier on images of ever new sizes traces it again for each size; this
        model (same layers, same weights) takes images resized with `features.resize_image`, the
        operation of the classifier's own resize, so batches of any source size share one trace.

        Example:
            >>> model = classifier.resized_input_model()
            >>> model.predict_on_batch({"resnet50": np.zeros((8, 224, 224, 3), "float32")}).shape
            (8, 2)
        """
        inputs = {name: keras.Input((size, size, 3), name=name, dtype="float32")
                  for name, size in self.input_sizes.items()}
        features = {name: self.backbones[name](inputs[name], training=False) for name in inputs}
        return keras.Model(inputs, self.head(features, training=False), name=f"{self.name}_resized_input")

    def get_config(self):
        # Not chained to super: the functional config would rebuild a plain keras.Model (as in KerasHub's Task).
        return {
            "backbones": {name: keras.saving.serialize_keras_object(model) for name, model in self.backbones.items()},
            "head": keras.saving.serialize_keras_object(self.head),
            "class_names": list(self.class_names),
            "fusionpipe_version": self.fusionpipe_version,
            "model_name": self.model_name,
            "test_time_views": list(self.test_time_views),
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbones"] = {name: keras.saving.deserialize_keras_object(model)
                               for name, model in config["backbones"].items()}
        config["head"] = keras.saving.deserialize_keras_object(config["head"])
        return cls(**config)
