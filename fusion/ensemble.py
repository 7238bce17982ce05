"""A fold ensemble: the models trained on each fold of a cross-validation, averaged in one Keras model."""

import keras


def fold_ensemble(models, name):
    """One functional model that feeds its named inputs to every fold model and averages their class probabilities.

    The fold models keep their weights and names inside it, so it saves as one `.keras` file
    (safe mode on), and a pixels-to-classes export computes each backbone once for all folds.

    Args:
        models: the fold models, all taking the same named inputs (one per backbone).
        name: the ensemble's name, e.g. "fusion".

    Example:
        >>> ensemble = fold_ensemble([fold_1_model, fold_2_model], name="fusion")
        >>> ensemble.predict({"resnet50": features}).shape
        (N, 10)
    """
    models = list(models)
    if not models:
        raise ValueError(f"A fold ensemble needs at least one model. Received: models={models}")
    input_names = [tensor.name for tensor in models[0].inputs]
    for model in models[1:]:
        if [tensor.name for tensor in model.inputs] != input_names:
            raise ValueError(
                f"Every fold model of an ensemble must take the same inputs. Expected {input_names}. "
                f"Received: {[tensor.name for tensor in model.inputs]} for model {model.name!r}"
            )
    if len(models) == 1:
        return models[0]
    # Inference copies without their optimizers: a compiled model nested in another saves its
    # optimizer, which the reloaded ensemble cannot restore and warns about, once per fold.
    models = [_inference_copy(model) for model in models]
    inputs = {tensor.name: keras.Input(shape=tuple(tensor.shape[1:]), name=tensor.name) for tensor in models[0].inputs}
    outputs = [model(inputs) for model in models]
    averaged = keras.layers.Average(name="fold_average")(outputs)
    return keras.Model(inputs=[inputs[name] for name in input_names], outputs=averaged, name=name)


def _inference_copy(model):
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy
