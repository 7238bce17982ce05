"""Fusion heads beyond concatenation: a per-image gate over the backbones, and attention across them.

`build_fusion_model(..., fusion="gated" | "attention")` calls `gated_fusion` or `attention_fusion`
on the branch outputs; the custom layers here use `keras.ops` only and implement `get_config`, so
the models save as `.keras`, reload in safe mode and run under any Keras backend.
"""

import keras
import numpy as np

# One encoder block of four heads, a feed-forward twice the token width, and the ViT's light
# dropout inside the block: the branches before it already carry the user's (heavier) dropout.
_ENCODER_BLOCKS = 1
_ATTENTION_HEADS = 4
_FEED_FORWARD_FACTOR = 2
_ENCODER_DROPOUT = 0.1


@keras.saving.register_keras_serializable(package="fusionpipe")
class GatedConcatenation(keras.layers.Layer):
    """Concatenate branch embeddings, each scaled by its per-image gate weight.

    Called on `[gate, branch_0, ..., branch_{B-1}]`, where `gate` is (N, B) and each branch
    (N, D_i); returns (N, sum D_i) with branch i multiplied by `gate[:, i]`.

    Example:
        >>> GatedConcatenation()([gate, alpha_branch, beta_branch])
    """

    def call(self, inputs):
        gate, *branches = inputs
        return keras.ops.concatenate(
            [branch * gate[:, index : index + 1] for index, branch in enumerate(branches)], axis=-1
        )


@keras.saving.register_keras_serializable(package="fusionpipe")
class BackboneEmbedding(keras.layers.Layer):
    """Add a learned vector per token position, telling each backbone's token apart.

    Attention treats its tokens as a set; without this the model could not know which
    backbone a token came from.

    Args:
        num_tokens: number of tokens (backbones).
        width: token width.

    Example:
        >>> BackboneEmbedding(3, 64)(tokens)  # tokens: (N, 3, 64)
    """

    def __init__(self, num_tokens, width, **kwargs):
        super().__init__(**kwargs)
        self.num_tokens = int(num_tokens)
        self.width = int(width)
        self.embedding = self.add_weight(
            shape=(self.num_tokens, self.width), initializer=keras.initializers.RandomNormal(stddev=0.02),
            name="embedding",
        )

    def call(self, tokens):
        return tokens + self.embedding[None, :, :]

    def get_config(self):
        return {**super().get_config(), "num_tokens": self.num_tokens, "width": self.width}


@keras.saving.register_keras_serializable(package="fusionpipe")
class ClassToken(keras.layers.Layer):
    """Prepend one learned token to every sequence: (N, T, W) -> (N, T + 1, W).

    Its output after the encoder summarises all tokens, as BERT's and the ViT's [CLS] token.

    Args:
        width: token width.

    Example:
        >>> ClassToken(64)(tokens)  # tokens: (N, 3, 64) -> (N, 4, 64)
    """

    def __init__(self, width, **kwargs):
        super().__init__(**kwargs)
        self.width = int(width)
        self.token = self.add_weight(
            shape=(1, 1, self.width), initializer=keras.initializers.RandomNormal(stddev=0.02), name="token"
        )

    def call(self, tokens):
        # zeros_like of a slice gives the batch size on every backend, also when it is unknown.
        batch_of_tokens = keras.ops.zeros_like(tokens[:, :1, :]) + self.token
        return keras.ops.concatenate([batch_of_tokens, tokens], axis=1)

    def get_config(self):
        return {**super().get_config(), "width": self.width}


def gated_fusion(branches, backbones, units, regularizer):
    """Per-image softmax weights over the backbones (layer `gate`), scaling each branch before concatenation.

    The gate reads all branches, so it can decide per image from any backbone (e.g. one that
    says which other backbone to trust). Each branch is scaled, then concatenated, rather than
    summed into one vector: each backbone keeps its own read-out weights, so without head layers
    the model is a per-image weighted sum of per-backbone logits (a mixture of experts), and
    with the gate constant it is the concat model. A weighted sum of embeddings would instead
    force all branches into one shared embedding space before the gate could pick among them.

    Args:
        branches: the branch outputs, one (N, units) tensor per backbone.
        backbones: the backbone names, in the order of `branches`.
        units: the branch width; the gate's hidden layer has a quarter of it (at least 4).
        regularizer: the Dense layers' kernel regularizer, or None.

    Example:
        >>> tensor = gated_fusion(branches, ["resnet50", "vgg16"], 256, None)
    """
    joined = keras.layers.Concatenate(name="gate_inputs")(branches)
    hidden = keras.layers.Dense(max(4, units // 4), activation="relu", kernel_regularizer=regularizer,
                                name="gate_hidden")(joined)
    gate = keras.layers.Dense(len(backbones), activation="softmax", kernel_regularizer=regularizer, name="gate")(hidden)
    return GatedConcatenation(name="gated_concatenate")([gate, *branches])


def attention_fusion(branches, backbones, width, regularizer):
    """One token per backbone, a class token, a Transformer encoder block; returns the class token's output.

    Each branch is projected to `width` (layer `<backbone>_token`), a learned per-backbone
    embedding is added, a learned class token is prepended, and a pre-norm encoder block
    (MultiHeadAttention and a feed-forward, each with a residual) mixes them. The class token
    reads every backbone's token through attention, so the head can use interactions between
    backbones that concatenation without head layers cannot.

    Args:
        branches: the branch outputs, one tensor per backbone.
        backbones: the backbone names, in the order of `branches`.
        width: the token width.
        regularizer: the Dense layers' kernel regularizer, or None.

    Example:
        >>> tensor = attention_fusion(branches, ["resnet50", "vgg16"], 64, None)
    """
    tokens = [
        keras.layers.Reshape((1, width), name=f"{backbone}_token_row")(
            keras.layers.Dense(width, kernel_regularizer=regularizer, name=f"{backbone}_token")(branch)
        )
        for branch, backbone in zip(branches, backbones)
    ]
    tensor = keras.layers.Concatenate(axis=1, name="tokens")(tokens)
    tensor = BackboneEmbedding(len(backbones), width, name="backbone_embedding")(tensor)
    tensor = ClassToken(width, name="class_token")(tensor)
    for block in range(_ENCODER_BLOCKS):
        prefix = f"encoder_{block}"
        normed = keras.layers.LayerNormalization(epsilon=1e-6, name=f"{prefix}_attention_norm")(tensor)
        attended = keras.layers.MultiHeadAttention(
            _ATTENTION_HEADS, key_dim=max(1, width // _ATTENTION_HEADS), dropout=_ENCODER_DROPOUT,
            kernel_regularizer=regularizer, name=f"{prefix}_attention",
        )(normed, normed)
        attended = keras.layers.Dropout(_ENCODER_DROPOUT, name=f"{prefix}_attention_dropout")(attended)
        tensor = keras.layers.Add(name=f"{prefix}_attention_residual")([tensor, attended])
        normed = keras.layers.LayerNormalization(epsilon=1e-6, name=f"{prefix}_feed_forward_norm")(tensor)
        hidden = keras.layers.Dense(_FEED_FORWARD_FACTOR * width, activation="gelu", kernel_regularizer=regularizer,
                                    name=f"{prefix}_feed_forward_hidden")(normed)
        hidden = keras.layers.Dense(width, kernel_regularizer=regularizer, name=f"{prefix}_feed_forward_output")(hidden)
        hidden = keras.layers.Dropout(_ENCODER_DROPOUT, name=f"{prefix}_feed_forward_dropout")(hidden)
        tensor = keras.layers.Add(name=f"{prefix}_feed_forward_residual")([tensor, hidden])
    tensor = keras.layers.LayerNormalization(epsilon=1e-6, name="encoder_norm")(tensor)
    # The class token is the first of the B + 1 tokens: crop the others, then drop the token axis.
    tensor = keras.layers.Cropping1D((0, len(backbones)), name="class_token_output")(tensor)
    return keras.layers.Flatten(name="class_embedding")(tensor)


def gate_weights(model, inputs, batch_size=256):
    """The per-image gate weights of a model built with `fusion="gated"`: how much it trusts each backbone.

    Args:
        model: a fusion model with a `gate` layer (`build_fusion_model(..., fusion="gated")`).
        inputs: dict backbone -> features, as for `model.predict`.
        batch_size: images per batch (default: 256).

    Returns:
        (N, num_backbones) numpy array; each row sums to 1, in the order of `model.inputs`.

    Example:
        >>> weights = gate_weights(model, {"resnet50": x1, "vgg16": x2})
        >>> weights.mean(axis=0)  # the average trust in each backbone
    """
    names = [layer.name for layer in model.layers]
    if "gate" not in names:
        raise ValueError(
            f"Model {model.name!r} has no 'gate' layer; gate_weights needs a model built with "
            f"build_fusion_model(..., fusion='gated') over at least two backbones. Received: model with layers "
            f"{', '.join(names[:8])}{', ...' if len(names) > 8 else ''}"
        )
    gate_model = keras.Model(model.inputs, model.get_layer("gate").output, name=f"{model.name}_gate")
    return np.asarray(gate_model.predict(inputs, batch_size=batch_size, verbose=0))
