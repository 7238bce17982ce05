"""The probability combiners of the baselines as Keras layers, and the model that feeds them.

`WeightedAverageCombiner` (equal weights: the `average` baseline) and `LogisticStackingCombiner`
compute in a Keras graph what `fusion.baselines` computes in NumPy, so the run's
`models/average.keras`, `models/weighted_average.keras` and `models/stacking.keras` hold each
backbone's model and the combiner in one file, which exports to pixels like any other model.
The layers use `keras.ops` only and implement `get_config`, so they reload in safe mode once
`fusion` is imported (which registers them) and run under any Keras backend.
"""

import keras
import numpy as np

# The clip of `fusion.baselines.LogisticStacking`: the log of a probability of 0 would be -inf.
_EPSILON = 1e-7


def _check_inputs(layer, inputs, num_models):
    if not isinstance(inputs, (list, tuple)) or (num_models is not None and len(inputs) != num_models):
        count = len(inputs) if isinstance(inputs, (list, tuple)) else "one tensor, not a list"
        raise ValueError(
            f"{type(layer).__name__} {layer.name!r} combines the probabilities of {num_models or 'several'} models: "
            f"call it on a list of (N, C) tensors, one per model, in the order it was fitted. Received: {count}"
        )


@keras.saving.register_keras_serializable(package="fusionpipe")
class WeightedAverageCombiner(keras.layers.Layer):
    """Weighted average of the class probabilities of several models: `sum_m w_m * p_m`.

    Called on a list of (N, C) probability tensors, one per model; returns (N, C). The weights
    are normalised to sum 1, as `fusion.baselines.average_probabilities` does.

    Args:
        model_weights: one non-negative weight per model, in the order of the inputs
            (default: None, equal weights: the plain average).

    Example:
        >>> WeightedAverageCombiner([0.7, 0.3])([resnet_probabilities, vgg_probabilities])
    """

    def __init__(self, model_weights=None, **kwargs):
        # Probabilities are combined in float32, also under a mixed-precision policy.
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if model_weights is not None:
            model_weights = [float(weight) for weight in model_weights]
            if not model_weights or min(model_weights) < 0 or sum(model_weights) <= 0:
                raise ValueError(f"model_weights must be one non-negative weight per model, not all 0. "
                                 f"Received: model_weights={model_weights}")
        self.model_weights = model_weights

    def call(self, inputs):
        _check_inputs(self, inputs, None if self.model_weights is None else len(self.model_weights))
        weights = self.model_weights or [1.0] * len(inputs)
        total = float(np.sum(weights))
        return sum((weight / total) * probabilities for weight, probabilities in zip(weights, inputs))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0])

    def get_config(self):
        return {**super().get_config(), "model_weights": self.model_weights}


@keras.saving.register_keras_serializable(package="fusionpipe")
class LogisticStackingCombiner(keras.layers.Layer):
    """Logistic stacking of the class probabilities of several models, as `fusion.baselines.LogisticStacking`.

    The log of each model's clipped probabilities, concatenated, times `coef` plus `intercept`,
    then a softmax over the classes the regression was fitted on, scattered into the C columns
    (a class absent from the fit gets 0). With two fitted classes scikit-learn keeps one row of
    coefficients for the second: its probability is the sigmoid of that row's score.

    The coefficients are the layer's (non-trainable) weights, saved with the model's weights;
    its config holds their shape.

    Args:
        classes: the classes the regression was fitted on (its `classes_`), increasing.
        num_classes: C, the number of columns of the probabilities.
        num_models: M, the number of models (inputs).
        coef: (rows, M * C) coefficients, one row per fitted class or one for two (default: None, zeros:
            set them from a fitted `LogisticStacking` with `to_layer()`).
        intercept: (rows,) intercepts (default: None, zeros).

    Example:
        >>> layer = LogisticStacking().fit([val_a, val_b], val_labels).to_layer()
        >>> layer([probabilities_a, probabilities_b])
    """

    def __init__(self, classes, num_classes, num_models=None, coef=None, intercept=None, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.classes = [int(value) for value in classes]
        self.num_classes = int(num_classes)
        if num_models is None:
            if coef is None:
                raise ValueError(f"Give num_models, or coef to read it from. Received: num_models=None, coef=None")
            num_models = np.shape(coef)[1] // self.num_classes
        self.num_models = int(num_models)
        if (len(self.classes) < 2 or sorted(set(self.classes)) != self.classes
                or self.classes[0] < 0 or self.classes[-1] >= self.num_classes):
            raise ValueError(f"classes must be at least 2 increasing class indices in 0..{self.num_classes - 1}, the "
                             f"regression's classes_. Received: classes={self.classes}, num_classes={self.num_classes}")
        rows = 1 if len(self.classes) == 2 else len(self.classes)
        shape = (rows, self.num_models * self.num_classes)
        self.coef = self.add_weight(shape=shape, initializer="zeros", trainable=False, name="coef")
        self.intercept = self.add_weight(shape=(rows,), initializer="zeros", trainable=False, name="intercept")
        for variable, value, name in ((self.coef, coef, "coef"), (self.intercept, intercept, "intercept")):
            if value is not None:
                if np.shape(value) != tuple(variable.shape):
                    raise ValueError(f"{name} must have shape {tuple(variable.shape)} for {len(self.classes)} fitted "
                                     f"classes of {self.num_classes} and {self.num_models} models. "
                                     f"Received: {name} of shape {np.shape(value)}")
                variable.assign(np.asarray(value, dtype="float32"))
        # Scatters the fitted classes' probabilities into the C columns (0 for the others).
        self._scatter = np.eye(self.num_classes, dtype="float32")[self.classes]

    def call(self, inputs):
        _check_inputs(self, inputs, self.num_models)
        ops = keras.ops
        features = ops.concatenate([ops.log(ops.clip(probabilities, _EPSILON, 1.0)) for probabilities in inputs],
                                   axis=-1)
        scores = ops.matmul(features, ops.transpose(self.coef)) + self.intercept
        if len(self.classes) == 2:
            # softmax([0, s]) = [1 - sigmoid(s), sigmoid(s)]: scikit-learn's binary probabilities.
            scores = ops.concatenate([ops.zeros_like(scores), scores], axis=-1)
        return ops.matmul(ops.softmax(scores, axis=-1), ops.convert_to_tensor(self._scatter))

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], self.num_classes)

    def get_config(self):
        return {**super().get_config(), "classes": list(self.classes), "num_classes": self.num_classes,
                "num_models": self.num_models}


def combined_model(models, combiner, name):
    """One functional model that runs each model on its named inputs and combines their probabilities.

    Its inputs are the models' inputs, one per backbone name, in the order the models first take
    them; `combiner` is called on the models' outputs in the order of `models`. Each model is
    nested under the name `<its name>_model`, beside inputs named by backbone.

    Args:
        models: Keras models with inputs named by backbone (each backbone's own model).
        combiner: a layer taking a list of (N, C) probability tensors, e.g. `WeightedAverageCombiner()`.
        name: the model's name, e.g. "stacking".

    Example:
        >>> model = combined_model([run.models["resnet50"], run.models["vgg16"]], WeightedAverageCombiner(), "average")
        >>> model.predict({"resnet50": resnet_features, "vgg16": vgg_features})
    """
    models = list(models)
    if not models:
        raise ValueError(f"combined_model needs at least one model. Received: models={models}")
    inputs = {}
    for model in models:
        for tensor in model.inputs:
            inputs.setdefault(tensor.name, keras.Input(shape=tuple(tensor.shape[1:]), name=tensor.name))
    outputs = []
    for model in models:
        # A plain functional view of the model under its own name: uncompiled, so no optimizer is
        # saved inside the file, and not named as an input.
        nested = keras.Model({tensor.name: tensor for tensor in model.inputs}, model.output, name=f"{model.name}_model")
        outputs.append(nested({tensor.name: inputs[tensor.name] for tensor in model.inputs}))
    return keras.Model(inputs=list(inputs.values()), outputs=combiner(outputs), name=name)
