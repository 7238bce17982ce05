"""Foundation-model backbones from KerasHub: DINOv2, DINOv3, SigLIP, SigLIP 2, CLIP and ViT-21k.

Each entry is a frozen `HubBackboneSpec` in the same registry as the `keras.applications` CNNs
(`features.backbones` adds them). It knows its KerasHub preset, native image and patch size,
preprocessing (the preset's `ImageConverter` scale and offset), feature size and the
architecture arguments, so `weights="none"` builds the network with seeded random weights and
no download. `create_hub_backbone` returns a `keras.Model` from float32 RGB images in 0..255 to
the pooled tokens: `Rescaling` (the converter's scale/offset) -> frozen encoder -> `TokenPooling`.

`keras_hub` is imported only when a network is built or a preset is read, so the registry, the
CLI and `--list-backbones` work without it.
"""

import dataclasses
import json
import os
from pathlib import Path

import keras

from features import downloads

HUB_POOLINGS = ("cls", "avg", "cls+avg", "none")
INSTALL_COMMAND = "pip install --no-deps keras-hub==0.32.0 && pip install regex tokenizers sentencepiece kagglehub"

# Per-channel mean and standard deviation (of images scaled to 0..1) that the presets' image
# converters normalise with; scale = 1 / (255 * std), offset = -mean / std.
_IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_HALF_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # to -1..1: SigLIP, Google's ViT-21k
_CLIP_MEAN_STD = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))

_CONFIG_FILE = "config.json"
_WEIGHTS_FILE = "model.weights.h5"
_IMAGE_CONVERTER_FILE = "image_converter.json"


@dataclasses.dataclass(frozen=True)
class HubBackboneSpec:
    """What the registry knows about one KerasHub backbone.

    Args:
        name: registry name, e.g. `"dinov2_small"`.
        family: model family, e.g. `"DINOv2"`.
        preset: the KerasHub preset its pretrained weights come from, e.g. `"dinov2_small"`.
        kaggle_handle: where KerasHub downloads the preset, with its version.
        encoder_class: the `keras_hub.models` class of the image encoder, e.g. `"DINOV2Backbone"`.
        input_size: native image size (side of the square image) it is used at.
        patch_size: side of one patch in pixels.
        feature_size: width of one token, the length of the `cls` or `avg` feature vector.
        mean_std: per-channel mean and std the preset's image converter normalises with.
        architecture: arguments of `encoder_class` (as (name, value) pairs) that build the network.
        prefix_tokens: tokens before the patch tokens in the encoder's output (class, registers).
        pooled_output: the encoder returns its own pooled vector (SigLIP's attention pooling
            head), which `cls` pooling uses; the patch tokens are the head's input.
        any_input_size: position embeddings are interpolated (or rotary), so any multiple of
            the patch size works; otherwise only the native size.
        default_pooling: the pooling used when none is asked for.
        params: parameters of the whole preset (with the text tower for SigLIP and CLIP), which
            sets the size of its weight file.
        licence: the terms the pretrained weights come under.

    Example:
        >>> get_hub_spec("dinov2_small").feature_size
        384
    """

    name: str
    family: str
    preset: str
    kaggle_handle: str
    encoder_class: str
    input_size: int
    patch_size: int
    feature_size: int
    mean_std: tuple
    architecture: tuple
    prefix_tokens: int = 1
    pooled_output: bool = False
    any_input_size: bool = False
    default_pooling: str = "cls"
    params: int = 0
    licence: str = ""
    source: str = "keras_hub"
    poolings: tuple = HUB_POOLINGS

    @property
    def min_input_size(self):
        return self.patch_size if self.any_input_size else self.input_size

    def preprocessing(self):
        """(scale, offset) per channel that map 0..255 RGB to what the network was trained on."""
        mean, std = self.mean_std
        return [1.0 / (255.0 * s) for s in std], [-m / s for m, s in zip(mean, std)]

    def feature_size_for(self, pooling):
        """Length of the feature vector for `pooling` ("none" gives the token width of the grid)."""
        return 2 * self.feature_size if pooling == "cls+avg" else self.feature_size


HUB_BACKBONES = {}


def _register(name, family, preset, handle, encoder_class, input_size, patch_size, feature_size, mean_std,
              architecture, params, licence, **facts):
    HUB_BACKBONES[name] = HubBackboneSpec(
        name=name, family=family, preset=preset, kaggle_handle=handle, encoder_class=encoder_class,
        input_size=input_size, patch_size=patch_size, feature_size=feature_size, mean_std=mean_std,
        architecture=tuple(sorted(architecture.items())), params=params, licence=licence, **facts)


def _register_all():
    dinov2_licence = "Apache-2.0"
    # DINOv2 is used at 224 (its image converter's size); its position embeddings were trained at 518 and are interpolated.
    for size, (layers, width, heads, params, params_with_registers) in {
            "small": (12, 384, 6, 22_582_656, 22_584_192),
            "base": (12, 768, 12, 87_632_640, 87_635_712),
            "large": (24, 1024, 16, 305_771_520, 305_775_616)}.items():
        for registers, preset, count in ((0, f"dinov2_{size}", params),
                                         (4, f"dinov2_with_registers_{size}", params_with_registers)):
            _register(preset, "DINOv2", preset, f"kaggle://keras/dinov2/keras/{preset}/1", "DINOV2Backbone",
                      224, 14, width, _IMAGENET_MEAN_STD,
                      dict(patch_size=14, num_layers=layers, hidden_dim=width, num_heads=heads,
                           intermediate_dim=4 * width, num_register_tokens=registers,
                           position_embedding_shape=(518, 518, 3)),
                      count, dinov2_licence, prefix_tokens=1 + registers, any_input_size=True,
                      default_pooling="cls+avg")
    # DINOv3 (rotary position embeddings: any multiple of the patch size); 4 register tokens.
    for size, (width, heads, params) in {"small": (384, 6, 21_600_000), "base": (768, 12, 86_000_000)}.items():
        preset = f"dinov3_vit_{size}_lvd1689m"
        _register(f"dinov3_{size}", "DINOv3", preset, f"kaggle://keras/dinov3/keras/{preset}/1", "DINOV3Backbone",
                  224, 16, width, _IMAGENET_MEAN_STD,
                  dict(patch_size=16, num_layers=12, hidden_dim=width, num_heads=heads, intermediate_dim=4 * width,
                       num_register_tokens=4, layer_norm_eps=1e-5, rope_theta=100.0),
                  params, "DINOv3 License (Meta; commercial use allowed, with conditions)", prefix_tokens=5,
                  any_input_size=True, default_pooling="cls+avg")
    # SigLIP and SigLIP 2 vision towers: no class token; `cls` is their attention-pooling head's output.
    for version, base_params, so400m_params in (("siglip", 203_156_230, 877_360_578),
                                                ("siglip2", 375_188_230, 1_135_463_922)):
        family = {"siglip": "SigLIP", "siglip2": "SigLIP 2"}[version]
        for preset, patch, width, layers, heads, mlp, params in (
                (f"{version}_base_patch16_224", 16, 768, 12, 12, 3072, base_params),
                (f"{version}_so400m_patch14_224", 14, 1152, 27, 16, 4304, so400m_params)):
            _register(preset, family, preset, f"kaggle://keras/siglip/keras/{preset}/1", "SigLIPVisionEncoder",
                      224, patch, width, _HALF_MEAN_STD,
                      dict(patch_size=patch, hidden_dim=width, num_layers=layers, num_heads=heads,
                           intermediate_dim=mlp),
                      params, "Apache-2.0", prefix_tokens=0, pooled_output=True)
    # CLIP (OpenAI) vision encoders: `cls` is the class token after the final layer norm, before the projection.
    for preset, patch, width, layers, heads, params in (("clip_vit_base_patch16", 16, 768, 12, 12, 149_620_934),
                                                        ("clip_vit_large_patch14", 14, 1024, 24, 16, 427_616_770)):
        _register(preset, "CLIP", preset, f"kaggle://keras/clip/keras/{preset}/3", "CLIPVisionEncoder",
                  224, patch, width, _CLIP_MEAN_STD,
                  dict(patch_size=patch, hidden_dim=width, num_layers=layers, num_heads=heads,
                       intermediate_dim=4 * width),
                  params, "MIT (OpenAI CLIP)")
    _register("vit_base_patch16_224_imagenet21k", "ViT", "vit_base_patch16_224_imagenet21k",
              "kaggle://keras/vit/keras/vit_base_patch16_224_imagenet21k/3", "ViTBackbone", 224, 16, 768,
              _HALF_MEAN_STD, dict(patch_size=16, num_layers=12, num_heads=12, hidden_dim=768, mlp_dim=3072),
              85_798_656, "Apache-2.0")


_register_all()


def get_hub_spec(name):
    """The `HubBackboneSpec` of `name`, or None when `name` is no KerasHub entry."""
    return HUB_BACKBONES.get(name)


def check_hub_input_size(spec, input_size):
    """The input size to use for `spec`: native when None; other sizes only where the model takes them."""
    if input_size is None:
        return spec.input_size
    if spec.any_input_size:
        if isinstance(input_size, int) and input_size >= spec.patch_size and input_size % spec.patch_size == 0:
            return input_size
        below = max(spec.patch_size, (input_size // spec.patch_size) * spec.patch_size) if isinstance(
            input_size, int) else spec.patch_size
        raise ValueError(
            f"Input size {input_size} does not fit backbone '{spec.name}': it takes multiples of its patch size "
            f"{spec.patch_size} (native {spec.input_size}), e.g. {below} or {below + spec.patch_size}. "
            f"Received: input_size={input_size}")
    if input_size != spec.input_size:
        raise ValueError(
            f"Input size {input_size} does not fit backbone '{spec.name}': its position embeddings are not "
            f"interpolated, so it takes only its native size {spec.input_size}. Leave --input-size unset or "
            f"give {spec.input_size}. Received: input_size={input_size}")
    return input_size


# --- Pretrained weights: the preset in a folder ------------------------------------------------------------


def kagglehub_cache_folder():
    """Where KerasHub's downloads (through kagglehub) are kept: `$KAGGLEHUB_CACHE`, else `~/.cache/kagglehub`."""
    return Path(os.environ.get("KAGGLEHUB_CACHE") or Path.home() / ".cache" / "kagglehub").expanduser()


def _cached_preset_folder(spec):
    # kagglehub keeps kaggle://OWNER/MODEL/FRAMEWORK/VARIATION/VERSION in models/OWNER/MODEL/FRAMEWORK/VARIATION/VERSION.
    return kagglehub_cache_folder() / "models" / spec.kaggle_handle.removeprefix("kaggle://")


def _is_preset_folder(folder):
    return (folder / _CONFIG_FILE).is_file() and (folder / _WEIGHTS_FILE).is_file()


def _fill_command(spec, folder):
    return (f"python -c \"import keras_hub; keras_hub.models.Backbone.from_preset('{spec.preset}')"
            f".save_to_preset('{folder}/{spec.preset}')\"")


def resolve_hub_weights(spec, weights):
    """The preset folder holding `spec`'s pretrained weights, or None for `weights="none"`.

    `"imagenet"` (the pretrained weights, whatever they were trained on) is the preset in
    KerasHub's cache, downloaded into it when downloads are allowed. A folder is a preset folder
    as `save_to_preset` writes it (config.json, model.weights.h5), or a folder holding one named
    after the preset or the registry name. Never falls back to random weights: a preset that
    cannot be had is a FileNotFoundError that names it, the folder and how to fill it.

    Args:
        spec: the entry's `HubBackboneSpec`.
        weights: "imagenet", "none"/None, or a folder.

    Example:
        >>> resolve_hub_weights(get_hub_spec("dinov2_small"), "none") is None
        True
    """
    import_keras_hub()  # a missing keras-hub stops here, before any work, like missing weights
    if weights is None or weights == "none":
        return None
    if weights == "imagenet":
        cached = _cached_preset_folder(spec)
        if _is_preset_folder(cached):
            return str(cached)
        if downloads.downloads_allowed():
            try:
                return str(_download_preset(spec))
            except Exception as error:  # no network, no kagglehub, a gated model: all mean "not here"
                attempt = f"downloading it failed ({str(error).splitlines()[0] if str(error) else type(error).__name__})"
        else:
            attempt = f"downloads are off ({downloads.OFFLINE_VARIABLE} is set)"
        raise FileNotFoundError(
            f"Pretrained weights for '{spec.name}' are not on this machine: KerasHub preset {spec.preset} "
            f"({spec.kaggle_handle}) is not in the KerasHub cache {cached}, and {attempt}. On a machine online, run "
            f"{_fill_command(spec, 'FOLDER')}, copy FOLDER here and pass --weights FOLDER; or --weights none for "
            f"random weights. Received: weights='imagenet'")
    path = Path(weights).expanduser()
    if path.is_dir():
        for folder in (path / spec.preset, path / spec.name, path):
            if _is_preset_folder(folder) and _preset_class(folder) == _preset_class_expected(spec):
                return str(folder.resolve())
        raise FileNotFoundError(
            f"Weights folder {path.resolve()} holds no KerasHub preset for backbone '{spec.name}': expected "
            f"{path.resolve() / spec.preset} with {_CONFIG_FILE} and {_WEIGHTS_FILE} (what save_to_preset writes). "
            f"Fill it with {_fill_command(spec, path.resolve())}. Received: weights={weights!r}")
    raise FileNotFoundError(
        f"Weights not found: {path.resolve()} is not a folder. Backbone '{spec.name}' takes 'imagenet' (its "
        f"pretrained KerasHub preset {spec.preset}), 'none', or a folder holding the preset. "
        f"Received: weights={weights!r}")


def has_cached_preset(spec):
    """Whether `spec`'s pretrained preset is in KerasHub's cache on this machine; never downloads."""
    return _is_preset_folder(_cached_preset_folder(spec))


def _download_preset(spec):
    import kagglehub

    folder = Path(kagglehub.model_download(spec.kaggle_handle.removeprefix("kaggle://")))
    if not _is_preset_folder(folder):
        raise FileNotFoundError(f"the download {folder} holds no {_CONFIG_FILE} and {_WEIGHTS_FILE}")
    return folder


def _preset_class(folder):
    try:
        return json.loads((folder / _CONFIG_FILE).read_text(encoding="utf-8")).get("class_name")
    except (OSError, ValueError, AttributeError):
        return None


def _preset_class_expected(spec):
    # SigLIP and CLIP presets hold the whole image-text model; the image encoder is inside it.
    return {"SigLIPVisionEncoder": "SigLIPBackbone", "CLIPVisionEncoder": "CLIPBackbone"}.get(
        spec.encoder_class, spec.encoder_class)


def preset_weights_file(folder):
    """The weights file inside a preset folder (hashed for the store's record)."""
    return Path(folder) / _WEIGHTS_FILE


def read_preset_preprocessing(spec, folder):
    """(scale, offset) from the preset's image_converter.json, or the registry's when the preset has none.

    Example:
        >>> scale, offset = read_preset_preprocessing(get_hub_spec("dinov2_small"), "presets/dinov2_small")
    """
    path = Path(folder) / _IMAGE_CONVERTER_FILE if folder else None
    if path is None or not path.is_file():
        return spec.preprocessing()
    try:
        config = json.loads(path.read_text(encoding="utf-8")).get("config", {})
    except (ValueError, AttributeError) as error:
        raise ValueError(f"Preset file {path} is not an image converter's JSON ({error}); save the preset again "
                         f"with save_to_preset. Received: weights={str(folder)!r}") from None
    scale, offset = config.get("scale"), config.get("offset")
    if scale is None:
        return spec.preprocessing()
    scale = [float(scale)] * 3 if isinstance(scale, (int, float)) else [float(value) for value in scale]
    offset = [float(offset or 0.0)] * 3 if not isinstance(offset, (list, tuple)) else [float(v) for v in offset]
    return scale, offset


# --- Building -------------------------------------------------------------------------------------------------


def import_keras_hub():
    """`keras_hub`, or an ImportError with the install command."""
    try:
        import keras_hub
    except ImportError as error:
        raise ImportError(f"The foundation backbones need keras-hub, which is not installed ({error}). Install it "
                          f"with: {INSTALL_COMMAND}") from None
    return keras_hub


def _build_encoder(spec, input_size, preset_folder, architecture_overrides=None):
    keras_hub = import_keras_hub()
    image_shape = (input_size, input_size, 3)
    if preset_folder is None:
        arguments = dict(spec.architecture, **(architecture_overrides or {}))
        encoder_class = getattr(keras_hub.models, spec.encoder_class)
        return encoder_class(image_shape=image_shape, **arguments)
    if spec.encoder_class in ("SigLIPVisionEncoder", "CLIPVisionEncoder"):
        encoder = keras_hub.models.Backbone.from_preset(str(preset_folder)).vision_encoder
    else:
        encoder = keras_hub.models.Backbone.from_preset(str(preset_folder), image_shape=image_shape)
    built_size = tuple(encoder.image_shape)[:2]
    if built_size != (input_size, input_size):
        raise ValueError(
            f"The preset in {preset_folder} takes {built_size[0]}x{built_size[1]} images, but backbone "
            f"'{spec.name}' was asked for {input_size}. Use the preset made for this entry, or --input-size "
            f"{built_size[0]}. Received: input_size={input_size}")
    return encoder


@keras.saving.register_keras_serializable(package="fusionpipe")
class TokenPooling(keras.layers.Layer):
    """Turn a transformer's output tokens into one feature vector, or into the grid of patch tokens.

    Args:
        pooling: "cls" (the class token, or the pooled vector given as second input), "avg" (mean
            of the patch tokens), "cls+avg" (both, concatenated), "none" (the patch tokens as a
            (side, side, width) grid).
        prefix_tokens: tokens before the patch tokens (class token and registers) (default: 1).
        grid_side: patches per side of the image, for "none"; KerasHub's SigLIP reports one token
            too many in its static shape, so it is given, not read off the shape (default: None,
            read off the shape).

    Example:
        >>> features = TokenPooling("cls+avg", prefix_tokens=5)(tokens)
    """

    def __init__(self, pooling, prefix_tokens=1, grid_side=None, **kwargs):
        super().__init__(**kwargs)
        if pooling not in HUB_POOLINGS:
            raise ValueError(f"Unknown pooling '{pooling}'. Valid values: {', '.join(HUB_POOLINGS)}. "
                             f"Received: pooling={pooling!r}")
        self.pooling = pooling
        self.prefix_tokens = int(prefix_tokens)
        self.grid_side = None if grid_side is None else int(grid_side)

    def _split(self, inputs):
        if isinstance(inputs, (list, tuple)):
            return inputs[0], inputs[1]
        return inputs, inputs[:, 0]

    def call(self, inputs):
        tokens, pooled = self._split(inputs)
        tokens = keras.ops.cast(tokens, "float32")
        patches = tokens[:, self.prefix_tokens:]
        if self.pooling == "cls":
            return keras.ops.cast(pooled, "float32")
        if self.pooling == "avg":
            return keras.ops.mean(patches, axis=1)
        if self.pooling == "cls+avg":
            return keras.ops.concatenate([keras.ops.cast(pooled, "float32"), keras.ops.mean(patches, axis=1)], axis=-1)
        side = self.grid_side or self._side(patches.shape[1])
        return keras.ops.reshape(patches, (-1, side, side, patches.shape[-1]))

    @staticmethod
    def _side(count):
        side = int(round(count ** 0.5))
        if side * side != count:
            raise ValueError(f"{count} patch tokens do not form a square grid; pooling 'none' needs one.")
        return side

    def compute_output_shape(self, input_shape):
        tokens_shape = input_shape[0] if isinstance(input_shape, (list, tuple)) and isinstance(
            input_shape[0], (list, tuple)) else input_shape
        batch, count, width = tokens_shape[0], tokens_shape[1], tokens_shape[-1]
        if self.pooling == "cls+avg":
            return (batch, 2 * width)
        if self.pooling == "none":
            side = self.grid_side or self._side(count - self.prefix_tokens)
            return (batch, side, side, width)
        return (batch, width)

    def get_config(self):
        config = super().get_config()
        config.update(pooling=self.pooling, prefix_tokens=self.prefix_tokens, grid_side=self.grid_side)
        return config


def _encoder_outputs(spec, encoder, pixels, pooling):
    """(tokens, pooled vector or None) of `encoder` on `pixels`, as `TokenPooling` takes them."""
    # DINOv3 names its input "pixel_values", the others "images"; ViT takes a bare tensor.
    inputs = {next(iter(encoder.input)): pixels} if isinstance(encoder.input, dict) else pixels
    if not spec.pooled_output:
        return encoder(inputs), None
    if pooling == "cls":
        return None, encoder(inputs)
    # SigLIP: the patch tokens are the input of its attention-pooling head, read from inside the encoder.
    tokens_model = keras.Model(encoder.input, encoder.post_layer_norm.output, name=f"{encoder.name}_tokens")
    tokens_model.trainable = False
    tokens = tokens_model(inputs)
    return tokens, encoder.head(tokens)


def create_hub_backbone(spec, input_size, preset_folder, pooling, seed=0, architecture_overrides=None):
    """Build the frozen feature extractor of KerasHub entry `spec`: 0..255 RGB -> pooled tokens.

    Args:
        spec: the entry's `HubBackboneSpec`.
        input_size: side of the input images, checked with `check_hub_input_size`.
        preset_folder: a preset folder from `resolve_hub_weights`, or None for seeded random weights.
        pooling: one of `HUB_POOLINGS`.
        seed: seeds the random initialisation (default: 0).
        architecture_overrides: architecture arguments replaced, for tests only (e.g. fewer
            layers); never with a preset (default: None).

    Example:
        >>> model = create_hub_backbone(get_hub_spec("dinov2_small"), 56, None, "cls+avg")
        >>> model.output_shape
        (None, 768)
    """
    # create_backbone checked both already; a direct call gets the same refusals before any building.
    input_size = check_hub_input_size(spec, input_size)
    pool = TokenPooling(pooling, prefix_tokens=spec.prefix_tokens, grid_side=input_size // spec.patch_size,
                        dtype="float32", name=f"{pooling}_pool".replace("+", "_"))
    keras.utils.set_random_seed(seed)
    encoder = _build_encoder(spec, input_size, preset_folder, architecture_overrides)
    encoder.trainable = False
    scale, offset = read_preset_preprocessing(spec, preset_folder)
    images = keras.Input(shape=(input_size, input_size, 3), name="image", dtype="float32")
    # Scaling in float32 even under mixed precision, as for the CNNs.
    pixels = keras.layers.Rescaling(scale, offset, dtype="float32", name="preprocess")(images)
    tokens, pooled = _encoder_outputs(spec, encoder, pixels, pooling)
    if tokens is None:
        features = keras.layers.Activation("linear", dtype="float32", name="cls_pool")(pooled)
    else:
        features = pool(tokens if pooled is None else [tokens, pooled])
    return keras.Model(images, features, name=f"{spec.name}_features")
