"""The fusion model: one named input per backbone, a small branch each, joined by a fusion head into a softmax."""

import keras
import numpy as np

from fusion.heads import attention_fusion, gated_fusion

_POOLINGS = ("avg", "max", "avgmax")
# How the branches are joined: concatenated, weighed by a per-image gate, or mixed by attention.
FUSION_HEADS = ("concat", "gated", "attention")


def _check_options(feature_shapes, num_classes, units, dropout, l2, pooling, head_units, learning_rate, fusion,
                   attention_width):
    if not feature_shapes:
        raise ValueError(
            "feature_shapes must name at least one backbone, e.g. {'resnet50': (2048,)}. "
            f"Received: feature_shapes={feature_shapes!r}"
        )
    for backbone, shape in feature_shapes.items():
        if len(tuple(shape)) not in (1, 3):
            raise ValueError(
                f"Feature shape of backbone {backbone!r} must be (D,) pooled or (H, W, D) spatial. "
                f"Received: feature_shapes[{backbone!r}]={tuple(shape)}"
            )
    checks = [
        (num_classes >= 2, f"num_classes must be at least 2. Received: num_classes={num_classes}"),
        (units >= 1, f"units must be at least 1. Received: units={units}"),
        (0 <= dropout < 1, f"dropout must lie in [0, 1). Received: dropout={dropout}"),
        (l2 >= 0, f"l2 must be 0 or more. Received: l2={l2}"),
        (learning_rate > 0, f"learning_rate must be positive. Received: learning_rate={learning_rate}"),
        (
            all(int(size) >= 1 for size in head_units),
            f"head_units must be positive layer sizes, e.g. [256]. Received: head_units={list(head_units)}",
        ),
        (
            pooling in _POOLINGS,
            f"Unknown pooling {pooling!r}. Valid values: {', '.join(_POOLINGS)}. Received: pooling={pooling!r}",
        ),
        (
            fusion in FUSION_HEADS,
            f"Unknown fusion head {fusion!r}. Valid values: {', '.join(FUSION_HEADS)}. Received: fusion={fusion!r}",
        ),
        (
            attention_width >= 1,
            f"attention_width must be at least 1, e.g. 64. Received: attention_width={attention_width}",
        ),
    ]
    for passed, message in checks:
        if not passed:
            raise ValueError(message)


def _branch(inputs, backbone, units, dropout, regularizer, pooling):
    # Backbones give features on scales that differ by orders of magnitude; centred and brought
    # to one scale they train in a few epochs, where raw ones leave BatchNormalization's moving
    # statistics lagging and the validation loss erratic. A per-channel shift and a positive
    # scale commute with average and max pooling, so standardising before pooling is exact.
    tensor = keras.layers.Normalization(axis=-1, name=f"{backbone}_standardize")(inputs)
    if len(inputs.shape) == 4:
        # Spatial maps (N, H, W, D) are pooled to vectors; pooled features pass as they are.
        if pooling == "avg":
            tensor = keras.layers.GlobalAveragePooling2D(name=f"{backbone}_avg_pool")(tensor)
        elif pooling == "max":
            tensor = keras.layers.GlobalMaxPooling2D(name=f"{backbone}_max_pool")(tensor)
        else:
            tensor = keras.layers.Concatenate(name=f"{backbone}_avgmax_pool")(
                [
                    keras.layers.GlobalAveragePooling2D(name=f"{backbone}_avg_pool")(tensor),
                    keras.layers.GlobalMaxPooling2D(name=f"{backbone}_max_pool")(tensor),
                ]
            )
    tensor = keras.layers.Dense(units, activation="relu", kernel_regularizer=regularizer, name=f"{backbone}_dense")(
        tensor
    )
    tensor = keras.layers.BatchNormalization(name=f"{backbone}_batchnorm")(tensor)
    return keras.layers.Dropout(dropout, name=f"{backbone}_dropout")(tensor)


def _set_standardization(model, feature_shapes, feature_statistics):
    for backbone, statistics in feature_statistics.items():
        if backbone not in feature_shapes:
            raise ValueError(
                f"feature_statistics names {backbone!r}, which is not a model input. Inputs: "
                f"{', '.join(feature_shapes)}. Received: feature_statistics keys={list(feature_statistics)}"
            )
        channels = (tuple(feature_shapes[backbone])[-1],)
        mean, variance = statistics
        if np.shape(mean) != channels or np.shape(variance) != channels:
            raise ValueError(
                f"feature_statistics[{backbone!r}] must be (mean, variance), each of shape {channels}: one value "
                f"per feature channel. Received: shapes {np.shape(mean)} and {np.shape(variance)}"
            )
        layer = model.get_layer(f"{backbone}_standardize")
        layer.adapt_mean.assign(np.asarray(mean, "float32"))
        layer.adapt_variance.assign(np.asarray(variance, "float32"))
        # The layer caches its broadcast mean and variance; this refreshes them from the weights.
        layer.finalize_state()


def build_fusion_model(
    feature_shapes,
    num_classes,
    *,
    units=256,
    dropout=0.5,
    l2=1e-4,
    pooling="avg",
    head_units=(),
    learning_rate=1e-3,
    feature_statistics=None,
    fusion="concat",
    attention_width=64,
    name="fusion",
):
    """Build and compile the fusion model; with one backbone it is that backbone's classifier.

    Each backbone gets `keras.Input(name=backbone)` and a branch: standardisation (a
    `Normalization` layer holding the statistics given in `feature_statistics`) -> pooling
    (spatial maps only) -> Dense(units, relu) -> BatchNormalization -> Dropout(dropout). The fusion
    head joins the branches, then the optional `head_units` Dense layers and
    Dense(num_classes, softmax) follow. `concat` concatenates them: without head layers each
    branch adds its own logits, so the model cannot use interactions between backbones; head
    layers let it. `gated` scales each branch by per-image softmax weights over the backbones
    (layer `gate`, read with `fusion.gate_weights`) before concatenating, so it can trust a
    different backbone per image. `attention` makes each branch a token of width
    `attention_width` (plus a learned per-backbone embedding), prepends a learned class token and
    runs one Transformer encoder block; the class token's output goes on, so it can combine
    backbones non-additively even without head layers. With one backbone there is nothing to
    join: every `fusion` builds the same plain classifier.

    Args:
        feature_shapes: dict backbone name -> per-image feature shape, `(D,)` or `(H, W, D)`;
            its order is the order of the inputs.
        num_classes: number of classes.
        units: width of each branch's Dense layer (default: 256).
        dropout: dropout rate after each branch and head layer (default: 0.5).
        l2: L2 weight penalty of the Dense layers (default: 1e-4).
        pooling: pooling of spatial maps, `avg`, `max` or `avgmax` (default: "avg").
        head_units: sizes of Dense(relu) layers between the concatenation and the softmax
            (default: (), none).
        learning_rate: Adam's learning rate (default: 1e-3).
        feature_statistics: dict backbone -> (mean, variance), arrays of one value per feature
            channel, e.g. from `fusion.feature_statistics` on the training rows (per-channel means,
            one variance per backbone); a backbone left out is not rescaled (default: None, none rescaled).
        fusion: how the branches are joined, one of `FUSION_HEADS`: `concat`, `gated` or
            `attention` (default: "concat").
        attention_width: token width of the `attention` head (default: 64).
        name: the model's name (default: "fusion").

    Example:
        >>> statistics = feature_statistics({"resnet50": x1, "vgg16": x2})
        >>> model = build_fusion_model({"resnet50": (2048,), "vgg16": (7, 7, 512)}, num_classes=10,
        ...                            feature_statistics=statistics)
        >>> model.fit({"resnet50": x1, "vgg16": x2}, labels)
        >>> gated = build_fusion_model({"resnet50": (2048,), "vgg16": (7, 7, 512)}, 10, fusion="gated")
    """
    head_units = tuple(int(size) for size in (head_units or ()))
    _check_options(feature_shapes, num_classes, units, dropout, l2, pooling, head_units, learning_rate, fusion,
                   attention_width)
    regularizer = keras.regularizers.L2(l2) if l2 > 0 else None
    inputs = [keras.Input(shape=tuple(shape), name=backbone) for backbone, shape in feature_shapes.items()]
    branches = [
        _branch(tensor, backbone, units, dropout, regularizer, pooling)
        for tensor, backbone in zip(inputs, feature_shapes)
    ]
    backbones = list(feature_shapes)
    if len(branches) == 1:
        tensor = branches[0]
    elif fusion == "gated":
        tensor = gated_fusion(branches, backbones, units, regularizer)
    elif fusion == "attention":
        tensor = attention_fusion(branches, backbones, int(attention_width), regularizer)
    else:
        tensor = keras.layers.Concatenate(name="concatenate")(branches)
    for index, size in enumerate(head_units):
        tensor = keras.layers.Dense(size, activation="relu", kernel_regularizer=regularizer, name=f"head_dense_{index}")(
            tensor
        )
        tensor = keras.layers.Dropout(dropout, name=f"head_dropout_{index}")(tensor)
    outputs = keras.layers.Dense(num_classes, activation="softmax", kernel_regularizer=regularizer, name="softmax")(
        tensor
    )
    model = keras.Model(inputs=inputs, outputs=outputs, name=name)
    _set_standardization(model, feature_shapes, feature_statistics or {})
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        # XLA compilation of these small heads costs ~5 s per model on TensorFlow CPU and gains
        # nothing measurable per step; JAX needs jit, so other backends keep Keras's choice.
        jit_compile=False if keras.backend.backend() == "tensorflow" else "auto",
    )
    return model
