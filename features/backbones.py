"""The registry of frozen ImageNet backbones from `keras.applications`, and the zero-cost `identity`.

Each entry is a frozen `BackboneSpec` filled in by `_register`. `create_backbone`
builds a `keras.Model` that takes float32 RGB images in 0..255 and returns the
backbone's features: `PreprocessInput` -> frozen backbone -> pooling. The KerasHub
foundation models share the registry (`features.hub_backbones`), and so does `identity`
(`IdentitySpec`): the pixels scaled to 0..1 and pooled, no network and no weights.
"""

import dataclasses
import hashlib
import importlib
import os
import threading
import warnings
from pathlib import Path

import keras

from features import downloads, hub_backbones

_BACKBONES = {}

POOLINGS = ("avg", "max", "none")

# keras.applications modules whose `preprocess_input` `PreprocessInput` may call.
# A whitelist, so that loading a `.keras` file in safe mode can only name these.
_PREPROCESS_MODULES = (
    "convnext",
    "densenet",
    "efficientnet",
    "efficientnet_v2",
    "inception_resnet_v2",
    "inception_v3",
    "mobilenet",
    "mobilenet_v2",
    "mobilenet_v3",
    "resnet",
    "resnet50",
    "resnet_v2",
    "vgg16",
    "vgg19",
    "xception",
)

_TF_KERAS_APPS = "https://storage.googleapis.com/tensorflow/keras-applications/"

# Where every entry of this registry comes from: `keras.applications` builds it and Keras hosts its weights.
KERAS_APPLICATIONS = "keras.applications"

# Where `identity` comes from: fusionpipe builds it from Keras layers, and it has no weights to host.
FUSIONPIPE = "fusionpipe"

# Keras's published hashes of its no-top ImageNet weight files (md5; sha256 for ConvNeXt), as
# `keras.applications` passes them to `keras.utils.get_file`. Keras publishes none for MobileNet
# and MobileNetV2. tests/test_backbones.py checks each against the installed Keras's source.
_KERAS_NOTOP_HASHES = {
    "xception_weights_tf_dim_ordering_tf_kernels_notop.h5": "b0042744bf5b25fce3cb969f33bebb97",
    "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5": "6d6bbae143d832006294945121d1f1fc",
    "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5": "253f8cb515780f3b799900260a226db6",
    "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5": "4d473c1dd8becc155b73f8504c6f6626",
    "resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5": "88cf7a10940856eca736dc7b7e228a21",
    "resnet152_weights_tf_dim_ordering_tf_kernels_notop.h5": "ee4c566cf9a93f14d82f913c2dc6dd0c",
    "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5": "fac2f116257151a9d068a22e544a4917",
    "resnet101v2_weights_tf_dim_ordering_tf_kernels_notop.h5": "c0ed64b8031c3730f411d2eb4eea35b5",
    "resnet152v2_weights_tf_dim_ordering_tf_kernels_notop.h5": "ed17cf2e0169df9d443503ef94b23b33",
    "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5": "bcbd6486424b2319ff4ef7d526e38f63",
    "inception_resnet_v2_weights_tf_dim_ordering_tf_kernels_notop.h5": "d19885ff4a710c122648d3b5c3b684e4",
    "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5": "30ee3e1110167f948a6b9946edeeb738",
    "densenet169_weights_tf_dim_ordering_tf_kernels_notop.h5": "b8c4d4c20dd625c148057b9ff1c1176b",
    "densenet201_weights_tf_dim_ordering_tf_kernels_notop.h5": "c13680b51ded0fb44dff2d8f86ac8bb1",
    "efficientnetb0_notop.h5": "50bc09e76180e00e4465e1a485ddc09d",
    "efficientnetb1_notop.h5": "74c4e6b3e1f6a1eea24c589628592432",
    "efficientnetb2_notop.h5": "111f8e2ac8aa800a7a99e3239f7bfb39",
    "efficientnetb3_notop.h5": "af6d107764bb5b1abb91932881670226",
    "efficientnetb4_notop.h5": "ebc24e6d6c33eaebbd558eafbeedf1ba",
    "efficientnetb5_notop.h5": "38879255a25d3c92d5e44e04ae6cec6f",
    "efficientnetb6_notop.h5": "9ecce42647a20130c1f39a5d4cb75743",
    "efficientnetb7_notop.h5": "cbcfe4450ddf6f3ad90b1b398090fe4a",
    "efficientnetv2-b0_notop.h5": "893217f2bb855e2983157299931e43ff",
    "efficientnetv2-b1_notop.h5": "0e80663031ca32d657f9caa404b6ec37",
    "efficientnetv2-b2_notop.h5": "1dfe2e7a5d45b6632553a8961ea609eb",
    "efficientnetv2-b3_notop.h5": "f6abf7b5849ac99a89b50dd3fd532856",
    "efficientnetv2-s_notop.h5": "af0682fb74e8c54910f2d4393339c070",
    "efficientnetv2-m_notop.h5": "1b8dc055df72dde80d614482840fe342",
    "efficientnetv2-l_notop.h5": "b0b66b5c863aef5b46e8608fe1711615",
    "convnext_tiny_notop.h5": "d547c096cabd03329d7be5562c5e14798aa39ed24b474157cef5e85ab9e49ef1",
    "convnext_small_notop.h5": "6fc8009faa2f00c1c1dfce59feea9b0745eb260a7dd11bee65c8e20843da6eab",
    "convnext_base_notop.h5": "40a20c5548a5e9202f69735ecc06c990e6b7c9d2de39f0361e27baeb24cb7c45",
    "convnext_large_notop.h5": "96f02b6f0753d4f543261bc9d09bed650f24dd6bc02ddde3066135b63d23a1cd",
    "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5": "d3e8ec802a04aa4fc771ee12a9a9b836",
    "weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5": "07fb09a5933dd0c8eaafa16978110389",
    "weights_mobilenet_v3_small_minimalistic_224_1.0_float_no_top_v2.h5": "cde8136e733e811080d9fcd8a252f7e4",
    "weights_mobilenet_v3_large_minimalistic_224_1.0_float_no_top_v2.h5": "ec5221f64a2f6d1ef965a614bdae7973",
}


@dataclasses.dataclass(frozen=True)
class KerasWeights:
    """One of Keras's ImageNet no-top weight files: its name, download address and published hash.

    Args:
        weights_file: file name in `~/.keras/models`, e.g. `"mobilenet_2_5_160_tf_no_top.h5"`.
        weights_url: where Keras downloads it from.
        weights_hash: Keras's published md5 (or sha256), None where Keras publishes none (default: None).

    Example:
        >>> get_backbone_spec("mobilenet_025").weights_for(160).weights_file
        'mobilenet_2_5_160_tf_no_top.h5'
    """

    weights_file: str
    weights_url: str
    weights_hash: str = None


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """What the registry knows about one backbone.

    Args:
        name: registry name, e.g. `"resnet50"`.
        family: the architecture family, e.g. `"ResNet"`, `"MobileNetV2"`.
        source: where the network and its weights come from: `"keras.applications"`.
        constructor: the `keras.applications` function that builds it, e.g. `"ResNet50"`.
        preprocess_module: the `keras.applications` module whose `preprocess_input` it uses.
        input_size: native input size (side of the square image) it was trained at.
        min_input_size: smallest input size Keras accepts for it.
        feature_size: channels of its last feature map, i.e. the pooled vector length.
        weights_file: file name of Keras's ImageNet no-top weights at the native input size, in
            `~/.keras/models`; `weights_for` gives the file for another size.
        weights_url: where Keras downloads `weights_file` from.
        weights_hash: Keras's published md5 (or sha256) of `weights_file`, checked on download;
            None where Keras publishes none (default: None).
        constructor_kwargs: further architecture arguments of the constructor as (name, value)
            pairs, e.g. `(("alpha", 0.25),)` (default: (), none).
        weights_files_by_size: (input size, file name) pairs where Keras has a weight file per input
            size (MobileNet, MobileNetV2; MobileNetV3 has one, for 224) (default: (), one file
            for every size).

    Example:
        >>> get_backbone_spec("xception").input_size
        299
    """

    name: str
    family: str
    source: str
    constructor: str
    preprocess_module: str
    input_size: int
    min_input_size: int
    feature_size: int
    weights_file: str
    weights_url: str
    weights_hash: str = None
    constructor_kwargs: tuple = ()
    weights_files_by_size: tuple = ()

    @property
    def weights_sizes(self):
        """The input sizes Keras has a weight file of its own for; () where one file serves every size."""
        return tuple(size for size, _ in self.weights_files_by_size)

    def weights_for(self, input_size=None):
        """The `KerasWeights` that `keras.applications` loads for this backbone at `input_size`.

        At a size without a file of its own, Keras loads the 224 px file (with a warning; see
        `resolve_weights`), which is the native-size `weights_file` of every such family.

        Args:
            input_size: side of the input images (default: None, the native size).

        Example:
            >>> get_backbone_spec("mobilenet_v2_035").weights_for(100).weights_file
            'mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5'
        """
        weights_file = dict(self.weights_files_by_size).get(input_size, self.weights_file)
        # Keras keeps all sizes of one family in one folder, so the native file's address gives the others'.
        weights_url = self.weights_url[:-len(self.weights_file)] + weights_file
        return KerasWeights(weights_file, weights_url, _KERAS_NOTOP_HASHES.get(weights_file))


def _register(name, family, constructor, preprocess_module, input_size, min_input_size, feature_size,
              weights_file, weights_url, constructor_kwargs=(), weights_files_by_size=()):
    if not weights_url.endswith("/" + weights_file):
        raise AssertionError(f"{name}: the weights URL must end with its file name. Received: {weights_url}")
    if weights_files_by_size and (input_size, weights_file) not in weights_files_by_size:
        raise AssertionError(f"{name}: the native-size file must be among the files by size "
                             f"(Keras falls back to it). Received: {weights_files_by_size}")
    spec = BackboneSpec(name, family, KERAS_APPLICATIONS, constructor, preprocess_module, input_size,
                        min_input_size, feature_size, weights_file, weights_url,
                        _KERAS_NOTOP_HASHES.get(weights_file), tuple(constructor_kwargs), tuple(weights_files_by_size))
    _BACKBONES[name] = spec
    return spec


def _register_mobilenets():
    # MobileNet and MobileNetV2: Keras names the file by width (alpha) and input size, and has files for
    # these sizes only (keras/src/applications/mobilenet.py, mobilenet_v2.py). Feature sizes: int(1024 * alpha)
    # for MobileNet; 1280 for MobileNetV2 up to alpha 1, widened above it.
    for suffix, alpha, alpha_text, feature_size in (("_025", 0.25, "2_5", 256), ("_050", 0.5, "5_0", 512),
                                                    ("_075", 0.75, "7_5", 768), ("", 1.0, "1_0", 1024)):
        files = tuple((size, f"mobilenet_{alpha_text}_{size}_tf_no_top.h5") for size in (128, 160, 192, 224))
        _register("mobilenet" + suffix, "MobileNet", "MobileNet", "mobilenet", 224, 32, feature_size,
                  files[-1][1], _TF_KERAS_APPS + "mobilenet/" + files[-1][1],
                  constructor_kwargs=(("alpha", alpha),), weights_files_by_size=files)
    for suffix, alpha, feature_size in (("_035", 0.35, 1280), ("_050", 0.5, 1280), ("_075", 0.75, 1280),
                                        ("", 1.0, 1280), ("_130", 1.3, 1664), ("_140", 1.4, 1792)):
        files = tuple((size, f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{alpha}_{size}_no_top.h5")
                      for size in (96, 128, 160, 192, 224))
        _register("mobilenet_v2" + suffix, "MobileNetV2", "MobileNetV2", "mobilenet_v2", 224, 32, feature_size,
                  files[-1][1], _TF_KERAS_APPS + "mobilenet_v2/" + files[-1][1],
                  constructor_kwargs=(("alpha", alpha),), weights_files_by_size=files)
    # MobileNetV3: one file, for 224 px. Without its top, the network ends at the 1x1 conv of 6x the last
    # block's channels (576 small, 960 large); the 1024/1280 conv belongs to the top.
    for model_type, constructor, feature_size in (("small", "MobileNetV3Small", 576),
                                                  ("large", "MobileNetV3Large", 960)):
        for minimalistic in (False, True):
            variant = model_type + ("_minimalistic" if minimalistic else "")
            weights_file = f"weights_mobilenet_v3_{variant}_224_1.0_float_no_top_v2.h5"
            # include_preprocessing: the network rescales 0..255 itself, so its preprocess_input passes through.
            _register(f"mobilenet_v3_{variant}", "MobileNetV3", constructor, "mobilenet_v3", 224, 32, feature_size,
                      weights_file, _TF_KERAS_APPS + "mobilenet_v3/" + weights_file,
                      constructor_kwargs=(("minimalistic", minimalistic), ("include_preprocessing", True)),
                      weights_files_by_size=((224, weights_file),))


def _register_all():
    tf_kernels = "_weights_tf_dim_ordering_tf_kernels_notop.h5"
    _register("xception", "Xception", "Xception", "xception", 299, 71, 2048,
              "xception" + tf_kernels, _TF_KERAS_APPS + "xception/xception" + tf_kernels)
    for name in ("vgg16", "vgg19"):
        _register(name, "VGG", name.upper()[:3] + name[3:], name, 224, 32, 512,
                  name + tf_kernels, f"{_TF_KERAS_APPS}{name}/{name}{tf_kernels}")
    for depth in (50, 101, 152):
        _register(f"resnet{depth}", "ResNet", f"ResNet{depth}", "resnet", 224, 32, 2048,
                  f"resnet{depth}{tf_kernels}", f"{_TF_KERAS_APPS}resnet/resnet{depth}{tf_kernels}")
        _register(f"resnet{depth}_v2", "ResNetV2", f"ResNet{depth}V2", "resnet_v2", 224, 32, 2048,
                  f"resnet{depth}v2{tf_kernels}",
                  f"{_TF_KERAS_APPS}resnet/resnet{depth}v2{tf_kernels}")
    _register("inception_v3", "InceptionV3", "InceptionV3", "inception_v3", 299, 75, 2048,
              "inception_v3" + tf_kernels, _TF_KERAS_APPS + "inception_v3/inception_v3" + tf_kernels)
    _register("inception_resnet_v2", "InceptionResNetV2", "InceptionResNetV2", "inception_resnet_v2", 299, 75, 1536,
              "inception_resnet_v2" + tf_kernels,
              _TF_KERAS_APPS + "inception_resnet_v2/inception_resnet_v2" + tf_kernels)
    _register_mobilenets()
    for depth, feature_size in ((121, 1024), (169, 1664), (201, 1920)):
        _register(f"densenet{depth}", "DenseNet", f"DenseNet{depth}", "densenet", 224, 32, feature_size,
                  f"densenet{depth}{tf_kernels}", f"{_TF_KERAS_APPS}densenet/densenet{depth}{tf_kernels}")
    efficientnet_sizes = {"b0": (224, 1280), "b1": (240, 1280), "b2": (260, 1408), "b3": (300, 1536),
                          "b4": (380, 1792), "b5": (456, 2048), "b6": (528, 2304), "b7": (600, 2560)}
    for variant, (input_size, feature_size) in efficientnet_sizes.items():
        weights_file = f"efficientnet{variant}_notop.h5"
        _register(f"efficientnet_{variant}", "EfficientNet", f"EfficientNet{variant.upper()}", "efficientnet",
                  input_size, 32, feature_size, weights_file,
                  "https://storage.googleapis.com/keras-applications/" + weights_file)
    efficientnet_v2_sizes = {"b0": (224, 1280), "b1": (240, 1280), "b2": (260, 1408), "b3": (300, 1536),
                             "s": (384, 1280), "m": (480, 1280), "l": (480, 1280)}
    for variant, (input_size, feature_size) in efficientnet_v2_sizes.items():
        weights_file = f"efficientnetv2-{variant}_notop.h5"
        _register(f"efficientnet_v2_{variant}", "EfficientNetV2", f"EfficientNetV2{variant.upper()}",
                  "efficientnet_v2", input_size, 32, feature_size, weights_file,
                  _TF_KERAS_APPS + "efficientnet_v2/" + weights_file)
    for variant, feature_size in (("tiny", 768), ("small", 768), ("base", 1024), ("large", 1536)):
        weights_file = f"convnext_{variant}_notop.h5"
        _register(f"convnext_{variant}", "ConvNeXt", f"ConvNeXt{variant.capitalize()}", "convnext", 224, 32,
                  feature_size, weights_file, _TF_KERAS_APPS + "convnext/" + weights_file)


@dataclasses.dataclass(frozen=True)
class IdentitySpec:
    """The `identity` backbone: the image's pixels scaled to 0..1, pooled; no network, no weights.

    It costs nothing to compute, so a run of it measures the pipeline's own overhead (decoding,
    scheduling, writing), and its features (the mean colour with pooling "avg") are the baseline
    that tells what a real backbone adds over raw colour.

    Args:
        name: registry name (default: "identity").
        family: the architecture family (default: "Identity").
        source: where it comes from: built by fusionpipe, nothing downloaded (default: "fusionpipe").
        input_size: native input size; any size works, the features do not depend on it (default: 32).
        min_input_size: smallest input size (default: 1).
        feature_size: the pooled vector length, one value per RGB channel (default: 3).
        preprocessing: what it does to the 0..255 pixels, for the recipe (default: "Rescaling(scale=1/255)").

    Example:
        >>> get_backbone_spec("identity").feature_size
        3
    """

    name: str = "identity"
    family: str = "Identity"
    source: str = FUSIONPIPE
    input_size: int = 32
    min_input_size: int = 1
    feature_size: int = 3
    preprocessing: str = "Rescaling(scale=1/255)"
    # Not a field: it has no weights file at any size.
    weights_file = None


_register_all()
# The foundation models of KerasHub share the registry; their module builds and loads them.
_BACKBONES.update(hub_backbones.HUB_BACKBONES)
_BACKBONES["identity"] = IdentitySpec()

# Every pooling some backbone takes; `poolings_of(name)` says which ones a backbone takes.
ALL_POOLINGS = ("avg", "max", "cls", "cls+avg", "none")


def _is_hub(spec):
    return isinstance(spec, hub_backbones.HubBackboneSpec)


def _is_identity(spec):
    return isinstance(spec, IdentitySpec)


def poolings_of(name):
    """The poolings backbone `name` takes: avg, max, none for the CNNs; cls, avg, cls+avg, none for transformers.

    Example:
        >>> poolings_of("dinov2_small")
        ('cls', 'avg', 'cls+avg', 'none')
    """
    spec = get_backbone_spec(name)
    return spec.poolings if _is_hub(spec) else POOLINGS


def default_pooling(name):
    """The pooling `name` uses unless told otherwise: avg for CNNs, the entry's own for transformers.

    Example:
        >>> default_pooling("dinov2_small"), default_pooling("resnet50")
        ('cls+avg', 'avg')
    """
    spec = get_backbone_spec(name)
    return spec.default_pooling if _is_hub(spec) else "avg"


def resolve_pooling(name, pooling):
    """The pooling backbone `name` uses for `pooling`: "auto"/None is its default; a pooling it does not take is a ValueError.

    Args:
        name: registry name.
        pooling: "auto", None, one pooling for all backbones, or a dict of backbone name -> pooling
            (names left out get their default).

    Example:
        >>> resolve_pooling("clip_vit_base_patch16", "auto")
        'cls'
    """
    if isinstance(pooling, dict):
        pooling = pooling.get(name, "auto")
    if pooling in (None, "auto"):
        return default_pooling(name)
    if pooling not in ALL_POOLINGS:
        raise ValueError(f"Unknown pooling '{pooling}'. Valid values: auto, {', '.join(ALL_POOLINGS)}. "
                         f"Received: pooling={pooling!r}")
    if pooling not in poolings_of(name):
        raise ValueError(
            f"Pooling '{pooling}' does not apply to backbone '{name}'. It takes: {', '.join(poolings_of(name))} "
            f"(or auto, its default {default_pooling(name)}); set one per backbone with NAME=POOLING. "
            f"Received: pooling={pooling!r}")
    return pooling


def parse_pooling(values, backbones):
    """The pooling of each backbone from command-line values: one for all, NAME=POOLING per backbone, or both.

    Args:
        values: strings such as ["auto"], ["cls+avg"], ["cls", "resnet50=avg"]; one unkeyed value
            at most, used for the backbones not named.
        backbones: the run's backbone names.

    Example:
        >>> parse_pooling(["cls", "resnet50=avg"], ["dinov2_small", "resnet50"])
        {'dinov2_small': 'cls', 'resnet50': 'avg'}
    """
    values = [values] if isinstance(values, str) else list(values)
    keyed = dict(value.split("=", 1) for value in values if "=" in value)
    unkeyed = [value for value in values if "=" not in value]
    if len(unkeyed) > 1:
        raise ValueError(f"Give one pooling for all backbones, and NAME=POOLING for the others. "
                         f"Received: pooling={values}")
    check_pooling_names(keyed, backbones, values)
    return {name: keyed.get(name, unkeyed[0] if unkeyed else "auto") for name in backbones}


def check_pooling_names(names, backbones, received):
    """Refuse a pooling given for a backbone that is not in the run (a typo would otherwise be ignored).

    Args:
        names: the backbone names a pooling was given for.
        backbones: the run's backbone names.
        received: the pooling argument as given, repeated in the message.
    """
    unknown = [name for name in names if name not in backbones]
    if unknown:
        raise ValueError(f"Pooling given for backbones not in this run: {', '.join(unknown)}. Backbones of the run: "
                         f"{', '.join(backbones)}. Received: pooling={received!r}")


def list_backbones(source=None):
    """Names of all registered backbones, sorted; only those of `source` when given.

    Args:
        source: "keras.applications" (the CNNs), "keras_hub" (the foundation models) or
            "fusionpipe" (`identity`), or None for all (default: None).

    Example:
        >>> "resnet50" in list_backbones()
        True
        >>> "dinov2_small" in list_backbones("keras_hub")
        True
    """
    return sorted(name for name, spec in _BACKBONES.items()
                  if source is None or spec.source == source)


def describe_backbones():
    """One row per registered backbone, sorted by name, for `run_precompute.py --list-backbones`.

    Each row is a dict of `name`, `family`, `input_size` (native), `feature_size` (the vector
    length with pooling "avg"), `pooling` (its default, "auto"), `features` (the vector length
    with that pooling), `params` (parameters of a KerasHub preset, with its text tower for
    SigLIP and CLIP; None for the CNNs and `identity`) and `source` ("keras.applications",
    "fusionpipe" for `identity`, or "keras_hub" and the preset).

    Example:
        >>> describe_backbones()[0]["family"], describe_backbones()[0]["feature_size"]
        ('CLIP', 768)
    """
    rows = []
    for spec in map(get_backbone_spec, list_backbones()):
        hub = _is_hub(spec)
        rows.append(dict(name=spec.name, family=spec.family, input_size=spec.input_size,
                         feature_size=spec.feature_size, pooling=default_pooling(spec.name),
                         features=spec.feature_size_for(spec.default_pooling) if hub else spec.feature_size,
                         params=spec.params if hub else None,
                         source=f"keras_hub {spec.preset}" if hub else spec.source))
    return rows


def get_backbone_spec(name):
    """The `BackboneSpec` of backbone `name`; an unknown name is a ValueError listing valid ones.

    KerasHub entries have a `HubBackboneSpec`, and `identity` its `IdentitySpec`.

    Example:
        >>> get_backbone_spec("vgg19").feature_size
        512
    """
    if name not in _BACKBONES:
        raise ValueError(
            f"Unknown backbone '{name}'. Valid names: {', '.join(list_backbones())}. "
            f"Received: backbones={[name]}"
        )
    return _BACKBONES[name]


def check_backbone_names(names):
    """Validate a list of backbone names; returns them as a list without duplicates, in order."""
    if isinstance(names, str):
        names = [names]
    names = list(dict.fromkeys(names))
    if not names:
        raise ValueError(f"No backbone given. Valid names: {', '.join(list_backbones())}. Received: backbones=[]")
    unknown = [name for name in names if name not in _BACKBONES]
    if unknown:
        raise ValueError(
            f"Unknown backbone{'s' if len(unknown) > 1 else ''} {', '.join(repr(n) for n in unknown)}. "
            f"Valid names: {', '.join(list_backbones())}. Received: backbones={names}"
        )
    return names


def check_input_size(name, input_size):
    """The input size to use for backbone `name`: its native size when `input_size` is None."""
    spec = get_backbone_spec(name)
    if _is_hub(spec):
        return hub_backbones.check_hub_input_size(spec, input_size)
    if input_size is None:
        return spec.input_size
    if not isinstance(input_size, int) or input_size < spec.min_input_size:
        raise ValueError(
            f"Input size {input_size} is too small for backbone '{name}': it needs at least "
            f"{spec.min_input_size} pixels (native size {spec.input_size}). Received: input_size={input_size}"
        )
    return input_size


def keras_weights_folders():
    """Folders where Keras keeps downloaded weights: `$KERAS_HOME/models` (or `~/.keras/models`), then `/tmp/.keras/models`."""
    if os.environ.get("KERAS_HOME"):
        home = Path(os.environ["KERAS_HOME"]).expanduser()
    else:
        home = Path("~/.keras").expanduser()
    # Keras falls back to /tmp/.keras when the home folder is not writable.
    return [home / "models", Path("/tmp/.keras/models")]


def _local_imagenet_file(weights_file):
    """The path of Keras weight file `weights_file` in the first Keras folder holding it, else None."""
    return next((folder / weights_file for folder in keras_weights_folders()
                 if (folder / weights_file).is_file()), None)


def _warn_if_another_size(spec, input_size, found):
    # Keras loads its 224 px file at sizes without a file of their own, and warns; so do we.
    if spec.weights_sizes and input_size not in spec.weights_sizes:
        sizes = ", ".join(map(str, spec.weights_sizes))
        warnings.warn(
            f"Keras has ImageNet weights of '{spec.name}' for input sizes {sizes} only: at input size {input_size} "
            f"it loads those of size {spec.input_size} ({Path(found).name}), as keras.applications does. "
            f"Pass --input-size {spec.input_size} for the weights' own size.", stacklevel=3)


def resolve_weights(name, weights="imagenet", input_size=None):
    """The weights argument to give the `keras.applications` constructor of `name` at `input_size`.

    Returns None for `weights="none"` or None, and for `identity` whatever `weights` is (it has
    none to load, so nothing is looked up: this is no fallback to random weights); else the full
    path of an existing weights file:
    for `"imagenet"` it is looked up in the Keras cache folders (see `keras_weights_folders`)
    and, when missing, downloaded into the first of them with `keras.utils.get_file`, checked
    against Keras's published hash (unless the variable `FUSIONPIPE_OFFLINE` is set); for a folder
    it is the Keras file name inside it, and a file path is used as it is. The Keras file is the one
    for `input_size` (`BackboneSpec.weights_for`): MobileNet and MobileNetV2 have one per size,
    and at a size without its own file Keras's 224 px file is used with a warning, as Keras does.
    A file that cannot be had is a FileNotFoundError naming the file and where to put it; there
    is never a fallback to random weights.

    Args:
        name: registry name of the backbone.
        weights: `"imagenet"`, `"none"`/None, a folder of Keras weight files, or a file
            (default: "imagenet").
        input_size: side of the input images the weights are for (default: None, the native size).

    Example:
        >>> resolve_weights("resnet50", "none") is None
        True
    """
    spec = get_backbone_spec(name)
    if _is_hub(spec):
        return hub_backbones.resolve_hub_weights(spec, weights)
    input_size = check_input_size(name, input_size)
    if weights is None or weights == "none" or _is_identity(spec):
        return None
    keras_weights = spec.weights_for(input_size)
    weights_file, weights_url = keras_weights.weights_file, keras_weights.weights_url
    received = f"Received: weights={weights!r}, input_size={input_size}"
    if weights == "imagenet":
        found = _local_imagenet_file(weights_file)
        folders = keras_weights_folders()
        if not found and downloads.downloads_allowed():
            try:
                found = downloads.fetch_file(weights_url, folders[0] / weights_file, keras_weights.weights_hash)
            except OSError as error:
                attempt = f"downloading it failed ({error})"
        elif not found:
            attempt = f"downloads are off ({downloads.OFFLINE_VARIABLE} is set)"
        if found:
            _warn_if_another_size(spec, input_size, found)
            return str(found)
        raise FileNotFoundError(
            f"ImageNet weights for '{name}' are not on this machine: Keras wants the file "
            f"{weights_file} in {folders[0]} (the folder $KERAS_HOME/models when KERAS_HOME is set), "
            f"and {attempt}. Download it from {weights_url} and put it there, or pass --weights FOLDER "
            f"holding it, or --weights none for random weights. {received}"
        )
    path = Path(weights).expanduser()
    if path.is_dir():
        if (path / weights_file).is_file():
            _warn_if_another_size(spec, input_size, path / weights_file)
            return str((path / weights_file).resolve())
        raise FileNotFoundError(
            f"Weights folder {path.resolve()} has no file {weights_file} for backbone '{name}'. "
            f"Copy it there (download: {weights_url}). {received}"
        )
    if path.is_file():
        return str(path.resolve())
    raise FileNotFoundError(
        f"Weights not found: {path.resolve()} is neither a folder of Keras weight files nor a file. "
        f"Expected 'imagenet', 'none', a folder or a .h5 file. {received}"
    )


# sha256 of weight files by (resolved path, size, mtime_ns): each file is read once per process.
_SHA256_CACHE = {}
_SHA256_LOCK = threading.Lock()


def weights_sha256(path):
    """The sha256 hex digest of weight file `path`, computed once per (path, size, mtime).

    Example:
        >>> weights_sha256(resolve_weights("resnet50", "imagenet"))[:12]
        '...'
    """
    path = Path(path).resolve()
    if path.is_dir():  # a KerasHub preset folder: its weights file
        path = hub_backbones.preset_weights_file(path)
    status = path.stat()
    key = (str(path), status.st_size, status.st_mtime_ns)
    with _SHA256_LOCK:
        if key not in _SHA256_CACHE:
            digest = hashlib.sha256()
            with open(path, "rb") as handle:
                while block := handle.read(1 << 20):
                    digest.update(block)
            _SHA256_CACHE[key] = digest.hexdigest()
        return _SHA256_CACHE[key]


def has_imagenet_weights(name, input_size=None):
    """Whether Keras's ImageNet weight file for backbone `name` at `input_size` is on this machine; never downloads.

    Always True for `identity`: it has no weights, so none are missing.

    Args:
        name: registry name of the backbone.
        input_size: side of the input images (default: None, the native size).

    Example:
        >>> has_imagenet_weights("resnet50")
        False
    """
    spec = get_backbone_spec(name)
    if _is_hub(spec):
        return hub_backbones.has_cached_preset(spec)
    if _is_identity(spec):
        return True
    return _local_imagenet_file(spec.weights_for(check_input_size(name, input_size)).weights_file) is not None


@keras.saving.register_keras_serializable(package="fusionpipe")
class PreprocessInput(keras.layers.Layer):
    """Apply `keras.applications.<module>.preprocess_input` to RGB images in 0..255.

    Args:
        module: the `keras.applications` module name, e.g. `"resnet50"`.

    Example:
        >>> layer = PreprocessInput("xception")
    """

    def __init__(self, module, **kwargs):
        super().__init__(**kwargs)
        if module not in _PREPROCESS_MODULES:
            raise ValueError(
                f"Unknown preprocessing module '{module}'. Valid names: {', '.join(_PREPROCESS_MODULES)}. "
                f"Received: module={module!r}"
            )
        self.module = module
        self._preprocess = importlib.import_module(f"keras.applications.{module}").preprocess_input

    def call(self, inputs):
        return self._preprocess(inputs)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config["module"] = self.module
        return config


def create_backbone(name, input_size=None, weights="imagenet", pooling="avg", seed=0):
    """Build the frozen feature extractor of backbone `name`.

    The model takes float32 RGB images in 0..255 of shape (input_size, input_size, 3) and
    runs `PreprocessInput` -> the frozen backbone (no top, inference mode) -> the pooling.
    `identity` is `Rescaling(1/255)` -> the pooling: the per-channel mean ("avg") or maximum
    ("max") of the pixels in 0..1, or the scaled image ("none"); it ignores `weights` and `seed`.
    It saves to `.keras` and reloads with `keras.saving.load_model(path, safe_mode=True)` once
    `PreprocessInput` is registered: after `import fusion`, or after using any name of
    `features.backbones` (a bare `import features` loads nothing).

    Args:
        name: registry name, see `list_backbones()`.
        input_size: side of the input images (default: None, the backbone's native size).
        weights: "imagenet", "none", a folder of Keras weight files, or a file (default: "imagenet").
        pooling: "avg", "max" or "none" (the spatial feature map) for CNNs; "cls", "avg", "cls+avg"
            or "none" (the grid of patch tokens) for transformers; "auto" for the backbone's
            default (see `default_pooling`) (default: "avg").
        seed: seeds the random initialisation, so `weights="none"` is repeatable (default: 0).

    Example:
        >>> model = create_backbone("resnet50", input_size=64, weights="none")
        >>> model.output_shape
        (None, 2048)
    """
    spec = get_backbone_spec(name)
    input_size = check_input_size(name, input_size)
    pooling = resolve_pooling(name, pooling)
    weights_path = resolve_weights(name, weights, input_size)
    if _is_hub(spec):
        return hub_backbones.create_hub_backbone(spec, input_size, weights_path, pooling, seed)
    if _is_identity(spec):
        images = keras.Input(shape=(input_size, input_size, 3), name="image", dtype="float32")
        # float32 under mixed precision too, as the CNNs' preprocessing: the features are the pixels.
        return _pooled(keras.layers.Rescaling(1.0 / 255, dtype="float32", name="scale")(images), images, pooling,
                       name)
    keras.utils.set_random_seed(seed)
    constructor = getattr(keras.applications, spec.constructor)
    backbone = constructor(include_top=False, weights=weights_path,
                           input_shape=(input_size, input_size, 3), pooling=None, **dict(spec.constructor_kwargs))
    backbone.trainable = False
    images = keras.Input(shape=(input_size, input_size, 3), name="image", dtype="float32")
    # Preprocessing in float32 even under mixed precision: 0..255 minus means in bfloat16 loses detail.
    x = PreprocessInput(spec.preprocess_module, dtype="float32", name="preprocess")(images)
    x = backbone(x, training=False)
    return _pooled(x, images, pooling, name)


def _pooled(x, images, pooling, name):
    """The feature extractor `images` -> `x` -> `pooling`, its pooling in float32."""
    if pooling == "avg":
        x = keras.layers.GlobalAveragePooling2D(dtype="float32", name="avg_pool")(x)
    elif pooling == "max":
        x = keras.layers.GlobalMaxPooling2D(dtype="float32", name="max_pool")(x)
    else:
        x = keras.layers.Activation("linear", dtype="float32", name="feature_map")(x)
    return keras.Model(images, x, name=f"{name}_features")
