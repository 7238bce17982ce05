import importlib

import h5py
import numpy as np
import pytest

import keras

from features.backbones import (
    PreprocessInput,
    create_backbone,
    describe_backbones,
    get_backbone_spec,
    has_imagenet_weights,
    list_backbones,
    resolve_weights,
    weights_sha256,
)

REQUIRED = ["xception", "resnet50", "inception_v3", "densenet121", "densenet169", "densenet201",
            "vgg16", "vgg19"]


def test_registry_has_the_required_backbones_with_native_sizes():
    names = list_backbones()
    for name in REQUIRED:
        assert name in names
    assert get_backbone_spec("xception").input_size == 299
    assert get_backbone_spec("inception_v3").input_size == 299
    assert get_backbone_spec("resnet50").input_size == 224
    assert get_backbone_spec("vgg19").preprocess_module == "vgg19"
    assert get_backbone_spec("xception").weights_file == "xception_weights_tf_dim_ordering_tf_kernels_notop.h5"


@pytest.mark.parametrize("name", list_backbones("keras.applications"))
@pytest.mark.slow
def test_every_backbone_builds_with_its_feature_size(name):
    spec = get_backbone_spec(name)
    model = create_backbone(name, input_size=spec.min_input_size, weights="none")
    assert model.output_shape == (None, spec.feature_size)
    assert not model.get_layer(index=2).trainable


@pytest.mark.parametrize("name", ["resnet50", "vgg19", "densenet121", "xception", "inception_v3"])
def test_features_have_the_registered_shape(name):
    spec = get_backbone_spec(name)
    model = create_backbone(name, input_size=spec.min_input_size, weights="none")
    images = np.random.default_rng(0).uniform(0, 255, (2, spec.min_input_size, spec.min_input_size, 3))
    features = model.predict_on_batch(images.astype("float32"))
    assert features.shape == (2, spec.feature_size)
    assert np.all(np.isfinite(features))


def test_unknown_backbone_lists_valid_names():
    with pytest.raises(ValueError, match=r"Unknown backbone 'resnet5'\. Valid names: .*resnet50.*Received: backbones=\['resnet5'\]"):
        get_backbone_spec("resnet5")
    with pytest.raises(ValueError, match="Unknown backbone 'nope'"):
        create_backbone("nope", weights="none")


def test_input_size_below_minimum_is_refused():
    with pytest.raises(ValueError, match=r"Input size 32 is too small for backbone 'xception': it needs at least 71"):
        create_backbone("xception", input_size=32, weights="none")


def test_pooling_max_avg_none():
    images = np.random.default_rng(1).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    avg = create_backbone("vgg16", input_size=64, weights="none", pooling="avg").predict_on_batch(images)
    maximum = create_backbone("vgg16", input_size=64, weights="none", pooling="max").predict_on_batch(images)
    spatial = create_backbone("vgg16", input_size=64, weights="none", pooling="none").predict_on_batch(images)
    assert spatial.shape == (2, 2, 2, 512)
    np.testing.assert_allclose(avg, spatial.mean(axis=(1, 2)), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(maximum, spatial.max(axis=(1, 2)), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="Unknown pooling 'mean'. Valid values: auto, avg, max, cls, cls\\+avg, none"):
        create_backbone("vgg16", input_size=64, weights="none", pooling="mean")


def test_seeded_random_weights_repeat_and_differ_by_seed():
    images = np.random.default_rng(2).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    first = create_backbone("vgg16", input_size=32, weights="none", seed=3).predict_on_batch(images)
    again = create_backbone("vgg16", input_size=32, weights="none", seed=3).predict_on_batch(images)
    other = create_backbone("vgg16", input_size=32, weights="none", seed=4).predict_on_batch(images)
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other).max() > 1e-3


def test_preprocessing_is_the_backbones_own():
    images = np.random.default_rng(3).uniform(0, 255, (1, 8, 8, 3)).astype("float32")
    # The three modes of keras.applications: "tf", "caffe" and "torch" (DenseNet: ImageNet mean and std, by hand).
    torch_mode = (images / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    for module, expected in (("xception", images / 127.5 - 1.0),
                             ("vgg16", keras.applications.vgg16.preprocess_input(images.copy())),
                             ("densenet", torch_mode)):
        layer = PreprocessInput(module)
        out = keras.ops.convert_to_numpy(layer(images))
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-4)
        # What a saved model keeps of the layer rebuilds the same preprocessing.
        rebuilt = PreprocessInput.from_config(layer.get_config())
        np.testing.assert_allclose(keras.ops.convert_to_numpy(rebuilt(images)), out, rtol=0, atol=0)
    with pytest.raises(ValueError, match="Unknown preprocessing module 'os'"):
        PreprocessInput("os")


def test_saves_to_keras_and_reloads_in_safe_mode(tmp_path):
    model = create_backbone("mobilenet_v2", input_size=32, weights="none")
    images = np.random.default_rng(4).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    expected = model.predict_on_batch(images)
    model.save(tmp_path / "backbone.keras")
    reloaded = keras.saving.load_model(tmp_path / "backbone.keras", safe_mode=True)
    assert any(isinstance(layer, PreprocessInput) for layer in reloaded.layers)
    np.testing.assert_allclose(reloaded.predict_on_batch(images), expected, rtol=1e-5, atol=1e-5)


def test_imagenet_weights_missing_offline_names_file_and_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty_keras_home"))
    monkeypatch.setattr("features.backbones.Path.home", lambda: tmp_path)
    with pytest.raises(FileNotFoundError, match=r"Keras wants the file xception_weights_tf_dim_ordering_tf_kernels_notop\.h5 in .*empty_keras_home/models"):
        resolve_weights("xception", "imagenet")
    assert not has_imagenet_weights("xception")


def test_weights_from_keras_home_or_a_folder_of_hand_copied_files(tmp_path, monkeypatch):
    from keras.src.legacy.saving import legacy_h5_format

    spec = get_backbone_spec("vgg16")
    images = np.random.default_rng(5).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    source = create_backbone("vgg16", input_size=32, weights="none", seed=7)
    models_folder = tmp_path / "keras_home" / "models"
    models_folder.mkdir(parents=True)
    # Keras's ImageNet files are legacy HDF5 weight files; write one the same way.
    with h5py.File(models_folder / spec.weights_file, "w") as handle:
        legacy_h5_format.save_weights_to_hdf5_group(handle, source.get_layer("vgg16"))
    expected = source.predict_on_batch(images)
    from_folder = create_backbone("vgg16", input_size=32, weights=str(models_folder), seed=99)
    np.testing.assert_allclose(from_folder.predict_on_batch(images), expected, rtol=1e-5, atol=1e-5)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    assert resolve_weights("vgg16", "imagenet") == str(models_folder / spec.weights_file)
    assert has_imagenet_weights("vgg16") and not has_imagenet_weights("resnet50")
    from_cache = create_backbone("vgg16", input_size=32, weights="imagenet", seed=99)
    np.testing.assert_allclose(from_cache.predict_on_batch(images), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(FileNotFoundError, match=r"has no file resnet50_weights_tf_dim_ordering_tf_kernels_notop\.h5"):
        resolve_weights("resnet50", str(models_folder))
    with pytest.raises(FileNotFoundError, match="Weights not found: .*nowhere"):
        resolve_weights("vgg16", str(tmp_path / "nowhere"))
    assert resolve_weights("vgg16", "none") is None


def test_published_hashes_are_kerass_own():
    import inspect

    for name in list_backbones("keras.applications"):
        spec = get_backbone_spec(name)
        if spec.preprocess_module in ("mobilenet", "mobilenet_v2"):
            # Keras publishes none for these, at any input size.
            assert {spec.weights_for(size).weights_hash for size in (None, *spec.weights_sizes)} == {None}, name
            continue
        if spec.preprocess_module == "mobilenet_v3":  # one file per variant, named by its hash key
            key = spec.weights_file.removeprefix("weights_mobilenet_v3_").removesuffix("_no_top_v2.h5")
            module = importlib.import_module("keras.src.applications.mobilenet_v3")
            assert spec.weights_hash == module.WEIGHTS_HASHES[key][1] is not None, name
            continue
        module = importlib.import_module("keras.src.applications."
                                         + ("resnet" if spec.preprocess_module == "resnet_v2" else spec.preprocess_module))
        if hasattr(module, "WEIGHTS_HASHES"):  # (top, no-top) pairs
            assert spec.weights_hash in [pair[1] for pair in module.WEIGHTS_HASHES.values()], name
            continue
        source = inspect.getsource(module)
        before = source[:source.index(f'file_hash="{spec.weights_hash}"')][-300:]  # the get_file call it is in
        assert "notop" in before.lower().replace("no_top", "notop"), name
        if name.startswith("densenet"):
            assert f"DENSENET{name[-3:]}_WEIGHT_PATH_NO_TOP" in before[-150:], name  # 121, not 169


def test_weights_sha256_is_computed_once_per_file_version(tmp_path, monkeypatch):
    import hashlib

    from features import backbones

    weights_file = tmp_path / "weights.h5"
    weights_file.write_bytes(b"first")
    assert weights_sha256(weights_file) == hashlib.sha256(b"first").hexdigest()
    reads = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda *args, **kwargs: reads.append(args[0]) or real_open(*args, **kwargs))
    assert weights_sha256(weights_file) == hashlib.sha256(b"first").hexdigest() and reads == []  # cached
    weights_file.write_bytes(b"second, longer")  # another size (and mtime): read again
    assert weights_sha256(weights_file) == hashlib.sha256(b"second, longer").hexdigest() and len(reads) == 1
    assert len([key for key in backbones._SHA256_CACHE if key[0] == str(weights_file.resolve())]) == 2


# The small CNNs for CPUs and edge devices, each width its own entry (issue 14).
MOBILENETS = {
    "mobilenet_025": ("MobileNet", 256), "mobilenet_050": ("MobileNet", 512), "mobilenet_075": ("MobileNet", 768),
    "mobilenet_v2_035": ("MobileNetV2", 1280), "mobilenet_v2_050": ("MobileNetV2", 1280),
    "mobilenet_v2_075": ("MobileNetV2", 1280), "mobilenet_v2_130": ("MobileNetV2", 1664),
    "mobilenet_v2_140": ("MobileNetV2", 1792),
    "mobilenet_v3_small": ("MobileNetV3", 576), "mobilenet_v3_large": ("MobileNetV3", 960),
    "mobilenet_v3_small_minimalistic": ("MobileNetV3", 576), "mobilenet_v3_large_minimalistic": ("MobileNetV3", 960),
}


def test_small_cnns_are_registered_with_family_width_and_feature_size():
    for name, (family, feature_size) in MOBILENETS.items():
        spec = get_backbone_spec(name)
        assert (spec.family, spec.feature_size, spec.input_size, spec.min_input_size) == (family, feature_size, 224, 32)
        assert spec.source == "keras.applications"
    assert dict(get_backbone_spec("mobilenet_025").constructor_kwargs) == {"alpha": 0.25}
    assert dict(get_backbone_spec("mobilenet_v2_130").constructor_kwargs) == {"alpha": 1.3}
    assert dict(get_backbone_spec("mobilenet_v3_large_minimalistic").constructor_kwargs)["minimalistic"] is True
    assert get_backbone_spec("mobilenet_v3_small").constructor == "MobileNetV3Small"
    # The alpha 1.0 entries keep their names and files.
    assert get_backbone_spec("mobilenet").weights_file == "mobilenet_1_0_224_tf_no_top.h5"
    assert get_backbone_spec("mobilenet_v2").weights_file == (
        "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5")
    # Frozen and hashable, constructor arguments included.
    assert len({get_backbone_spec(name) for name in MOBILENETS}) == len(MOBILENETS)
    families = {get_backbone_spec(name).family for name in list_backbones("keras.applications")}
    assert {"ResNet", "ResNetV2", "DenseNet", "VGG", "Xception", "MobileNet", "MobileNetV2", "MobileNetV3",
            "EfficientNet", "EfficientNetV2", "ConvNeXt", "InceptionV3", "InceptionResNetV2"} == families


def test_describe_backbones_gives_one_row_per_entry():
    rows = describe_backbones()
    assert [row["name"] for row in rows] == list_backbones()
    by_name = {row["name"]: row for row in rows}
    assert by_name["mobilenet_v3_small"] == dict(name="mobilenet_v3_small", family="MobileNetV3", input_size=224,
                                                 feature_size=576, pooling="avg", features=576, params=None,
                                                 source="keras.applications")
    assert by_name["xception"] == dict(name="xception", family="Xception", input_size=299, feature_size=2048,
                                       pooling="avg", features=2048, params=None, source="keras.applications")
    assert by_name["dinov2_small"] == dict(name="dinov2_small", family="DINOv2", input_size=224, feature_size=384,
                                           pooling="cls+avg", features=768, params=22_582_656,
                                           source="keras_hub dinov2_small")
    assert by_name["mobilenet_v2_140"]["feature_size"] == 1792


def test_small_cnns_build_with_their_width_and_keras_preprocessing():
    images = np.random.default_rng(6).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    narrow = create_backbone("mobilenet_025", input_size=32, weights="none")
    assert narrow.predict_on_batch(images).shape == (2, 256)  # alpha 0.25 reached the constructor
    small = create_backbone("mobilenet_v3_small_minimalistic", input_size=32, weights="none")
    features = small.predict_on_batch(images)
    assert features.shape == (2, 576) and np.all(np.isfinite(features))
    network = small.get_layer("MobileNetV3Small")
    # MobileNetV3 scales 0..255 to -1..1 itself; its preprocess_input passes through.
    assert isinstance(network.layers[1], keras.layers.Rescaling)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(PreprocessInput("mobilenet_v3")(images)), images)
    assert not any("squeeze_excite" in layer.name for layer in network.layers)  # minimalistic reached it
    full = create_backbone("mobilenet_v3_small", input_size=32, weights="none").get_layer("MobileNetV3Small")
    assert any("squeeze_excite" in layer.name for layer in full.layers)


def _file_keras_loads(spec, input_size, monkeypatch):
    """(file name, URL, hash, warned) of what `keras.applications` itself fetches for `spec` at `input_size`."""
    import warnings

    calls = []

    class Fetched(Exception):
        pass

    def record_get_file(fname, origin, file_hash=None, **kwargs):
        calls.append((fname, origin, file_hash))
        raise Fetched  # stop before loading: the name is all we want

    monkeypatch.setattr("keras.src.utils.file_utils.get_file", record_get_file)
    constructor = getattr(keras.applications, spec.constructor)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(Fetched):
            constructor(include_top=False, weights="imagenet", input_shape=(input_size, input_size, 3),
                        **dict(spec.constructor_kwargs))
    warned = any("Weights for input shape (224, 224) will be loaded" in str(warning.message) for warning in caught)
    return calls[0] + (warned,)


def _assert_same_file_as_keras(name, input_size, monkeypatch):
    spec = get_backbone_spec(name)
    ours = spec.weights_for(input_size)
    has_own_file = input_size in spec.weights_sizes
    assert _file_keras_loads(spec, input_size, monkeypatch) == (ours.weights_file, ours.weights_url,
                                                                ours.weights_hash, not has_own_file)
    return ours.weights_file


def test_weights_file_per_input_size_is_the_one_keras_loads(monkeypatch):
    assert _assert_same_file_as_keras("mobilenet_025", 160, monkeypatch) == "mobilenet_2_5_160_tf_no_top.h5"
    assert _assert_same_file_as_keras("mobilenet_025", 100, monkeypatch) == "mobilenet_2_5_224_tf_no_top.h5"
    assert _assert_same_file_as_keras("mobilenet_v2_130", 96, monkeypatch) == (
        "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.3_96_no_top.h5")
    assert _assert_same_file_as_keras("mobilenet_v3_small_minimalistic", 160, monkeypatch) == (
        "weights_mobilenet_v3_small_minimalistic_224_1.0_float_no_top_v2.h5")
    assert get_backbone_spec("mobilenet_v2_035").weights_sizes == (96, 128, 160, 192, 224)
    assert get_backbone_spec("mobilenet_075").weights_sizes == (128, 160, 192, 224)
    assert get_backbone_spec("mobilenet_v3_large").weights_sizes == (224,)
    assert get_backbone_spec("resnet50").weights_sizes == ()  # one file for every size
    assert get_backbone_spec("resnet50").weights_for(64).weights_file == get_backbone_spec("resnet50").weights_file


@pytest.mark.parametrize("name", sorted(MOBILENETS) + ["mobilenet", "mobilenet_v2"])
@pytest.mark.slow
def test_every_mobilenet_fetches_the_file_keras_does(name, monkeypatch):
    spec = get_backbone_spec(name)
    for input_size in (spec.weights_sizes[0], 100):
        _assert_same_file_as_keras(name, input_size, monkeypatch)


def test_weights_for_the_input_size_come_from_a_folder_or_keras_home(tmp_path, monkeypatch):
    folder = tmp_path / "keras_home" / "models"
    folder.mkdir(parents=True)
    for file_name in ("mobilenet_2_5_160_tf_no_top.h5", "mobilenet_2_5_224_tf_no_top.h5"):
        (folder / file_name).write_bytes(b"")  # resolve_weights only finds files
    assert resolve_weights("mobilenet_025", str(folder), 160) == str(folder / "mobilenet_2_5_160_tf_no_top.h5")
    assert resolve_weights("mobilenet_025", str(folder)) == str(folder / "mobilenet_2_5_224_tf_no_top.h5")
    with pytest.warns(UserWarning, match=r"Keras has ImageNet weights of 'mobilenet_025' for input sizes 128, 160, "
                                         r"192, 224 only: at input size 100 it loads those of size 224 "
                                         r"\(mobilenet_2_5_224_tf_no_top\.h5\)"):
        assert resolve_weights("mobilenet_025", str(folder), 100) == str(folder / "mobilenet_2_5_224_tf_no_top.h5")
    # Another size's file is not taken in place of the one asked for.
    with pytest.raises(FileNotFoundError, match=r"has no file mobilenet_2_5_128_tf_no_top\.h5 for backbone "
                                                r"'mobilenet_025'.*Received: weights='.*', input_size=128$"):
        resolve_weights("mobilenet_025", str(folder), 128)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    assert resolve_weights("mobilenet_025", "imagenet", 160) == str(folder / "mobilenet_2_5_160_tf_no_top.h5")
    assert has_imagenet_weights("mobilenet_025", 160) and not has_imagenet_weights("mobilenet_025", 192)
    with pytest.raises(ValueError, match="Input size 16 is too small for backbone 'mobilenet_025'"):
        resolve_weights("mobilenet_025", "imagenet", 16)


def test_missing_weights_offline_name_the_file_for_the_input_size(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty_keras_home"))
    file_name = r"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0\.35_96_no_top\.h5"
    with pytest.raises(FileNotFoundError, match=rf"^ImageNet weights for 'mobilenet_v2_035' are not on this machine: "
                                                rf"Keras wants the file {file_name} in .*empty_keras_home/models .*"
                                                rf"downloads are off \(FUSIONPIPE_OFFLINE is set\)\. Download it from "
                                                rf"https://storage\.googleapis\.com/tensorflow/keras-applications/"
                                                rf"mobilenet_v2/{file_name} .*Received: weights='imagenet', "
                                                rf"input_size=96$"):
        resolve_weights("mobilenet_v2_035", "imagenet", 96)
    with pytest.raises(FileNotFoundError, match=r"Keras wants the file weights_mobilenet_v3_large_224_1\.0_float_no_top_v2"
                                                r"\.h5 in .*input_size=128$"):
        create_backbone("mobilenet_v3_large", input_size=128, weights="imagenet")


def test_mobilenet_v3_downloads_with_kerass_hash(tmp_path, monkeypatch):
    from features import downloads

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.delenv(downloads.OFFLINE_VARIABLE)
    calls = []

    def fake_get_file(fname, origin, file_hash=None, **kwargs):
        calls.append((fname, origin, file_hash))
        (tmp_path / "fake_download").write_bytes(b"weights")
        return str(tmp_path / "fake_download")

    monkeypatch.setattr(keras.utils, "get_file", fake_get_file)
    file_name = "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5"
    assert resolve_weights("mobilenet_v3_small", "imagenet") == str(tmp_path / "keras_home" / "models" / file_name)
    keras_apps = "https://storage.googleapis.com/tensorflow/keras-applications/"
    assert calls == [(file_name, keras_apps + "mobilenet_v3/" + file_name, "d3e8ec802a04aa4fc771ee12a9a9b836")]
    resolve_weights("mobilenet_050", "imagenet", 192)
    assert calls[-1] == ("mobilenet_5_0_192_tf_no_top.h5", keras_apps + "mobilenet/mobilenet_5_0_192_tf_no_top.h5", None)


# The zero-cost `identity` backbone: pipeline overhead and the raw-colour baseline.
# Two 2x2 images: one of known pixels, one of a single grey.
KNOWN_PIXELS = np.array([[[0, 51, 255], [255, 0, 51]],
                         [[102, 204, 0], [51, 51, 51]]], dtype="float32")
KNOWN_IMAGES = np.stack([KNOWN_PIXELS, np.full((2, 2, 3), 127.5, "float32")])


def test_identity_features_are_the_channel_means_maxes_or_pixels_in_0_1():
    spec = get_backbone_spec("identity")
    assert (spec.family, spec.source, spec.input_size, spec.feature_size) == ("Identity", "fusionpipe", 32, 3)
    average = create_backbone("identity", input_size=2, weights="none")  # pooling avg by default
    assert average.weights == [] and average.output_shape == (None, 3)
    np.testing.assert_allclose(average.predict_on_batch(KNOWN_IMAGES), [[0.4, 0.3, 0.35], [0.5, 0.5, 0.5]], atol=1e-6)
    maximum = create_backbone("identity", input_size=2, weights="none", pooling="max")
    np.testing.assert_allclose(maximum.predict_on_batch(KNOWN_IMAGES), [[1.0, 0.8, 1.0], [0.5, 0.5, 0.5]], atol=1e-6)
    pixels = create_backbone("identity", input_size=2, weights="none", pooling="none")
    assert pixels.output_shape == (None, 2, 2, 3)
    np.testing.assert_allclose(pixels.predict_on_batch(KNOWN_IMAGES), KNOWN_IMAGES / 255, atol=1e-6)
    assert create_backbone("identity", input_size=1).output_shape == (None, 3)  # any size from 1 px
    with pytest.raises(ValueError, match=r"Pooling 'cls' does not apply to backbone 'identity'. It takes: avg, max, "
                                         r"none .*Received: pooling='cls'"):
        create_backbone("identity", input_size=2, pooling="cls")
    with pytest.raises(ValueError, match=r"Input size 0 is too small for backbone 'identity': it needs at least 1 "
                                         r"pixels \(native size 32\)\. Received: input_size=0"):
        create_backbone("identity", input_size=0)


def test_identity_reloads_in_safe_mode_and_runs_the_fast_predict_path(tmp_path):
    from features.extractors import _fast_predict, feature_extractor, predict_in_batches

    model = create_backbone("identity", input_size=2, pooling="max")
    model.save(tmp_path / "identity.keras")
    reloaded = keras.saving.load_model(tmp_path / "identity.keras", safe_mode=True)
    np.testing.assert_allclose(reloaded.predict_on_batch(KNOWN_IMAGES), [[1.0, 0.8, 1.0], [0.5, 0.5, 0.5]], atol=1e-6)
    # Under mixed precision too, the pixels are scaled and pooled in float32: the means stay exact.
    extractor, _ = feature_extractor("identity", 2, None, "avg", 0, "mixed_bfloat16")
    if keras.backend.backend() == "tensorflow":
        assert _fast_predict(extractor) is not None  # traced although the model has no weights
    features = predict_in_batches(extractor, np.concatenate([KNOWN_IMAGES] * 3), batch_size=4)  # last batch short
    assert features.dtype == np.float32
    np.testing.assert_allclose(features, np.tile([[0.4, 0.3, 0.35], [0.5, 0.5, 0.5]], (3, 1)), atol=1e-6)


def test_identity_needs_no_weights_file_and_looks_nothing_up(tmp_path, monkeypatch):
    from pathlib import Path

    from features import downloads
    from features.recipe import FeatureRecipe

    monkeypatch.setenv(downloads.OFFLINE_VARIABLE, "1")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty_keras_home"))

    def touched(*args, **kwargs):
        raise AssertionError("identity looked for a weights file")

    with monkeypatch.context() as patched:
        for looks in ("is_dir", "is_file", "exists", "stat"):
            patched.setattr(Path, looks, touched)
        patched.setattr(downloads, "fetch_file", touched)
        for weights in ("imagenet", "none", None, str(tmp_path), str(tmp_path / "resnet50.h5")):
            assert resolve_weights("identity", weights) is None
            assert resolve_weights("identity", weights, input_size=16) is None
        assert has_imagenet_weights("identity") and has_imagenet_weights("identity", 16)
    assert not has_imagenet_weights("resnet50")  # the same folders hold no CNN weights
    features = create_backbone("identity", input_size=2, weights="imagenet").predict_on_batch(KNOWN_IMAGES)
    np.testing.assert_allclose(features, [[0.4, 0.3, 0.35], [0.5, 0.5, 0.5]], atol=1e-6)
    recipe = FeatureRecipe.for_run("identity", 16, "avg", "imagenet", 0, "float16", "float32", ())
    assert (recipe.weights, recipe.weights_file, recipe.weights_sha256, recipe.preprocessing) == (
        "imagenet", None, "none", "Rescaling(scale=1/255)")
    assert "weights_file" not in recipe.to_attrs()
    assert recipe.reuse_mismatch(FeatureRecipe.from_attrs(recipe.to_attrs())) is None
    assert recipe.create_backbone().output_shape == (None, 3)


def test_identity_is_listed_with_its_own_source(capsys):
    from run_precompute import main

    assert "identity" in list_backbones() and list_backbones("fusionpipe") == ["identity"]
    assert "identity" not in list_backbones("keras.applications") + list_backbones("keras_hub")
    assert {row["name"]: row for row in describe_backbones()}["identity"] == dict(
        name="identity", family="Identity", input_size=32, feature_size=3, pooling="avg", features=3, params=None,
        source="fusionpipe")
    assert main(["--list-backbones"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert ["identity", "Identity", "32", "avg", "3", "-", "fusionpipe"] in rows
