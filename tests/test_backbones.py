import importlib

import h5py
import numpy as np
import pytest

import keras

from features.backbones import (
    PreprocessInput,
    create_backbone,
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
    for module, expected in (("xception", images / 127.5 - 1.0),
                             ("vgg16", keras.applications.vgg16.preprocess_input(images.copy()))):
        out = keras.ops.convert_to_numpy(PreprocessInput(module)(images))
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-4)
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
            assert spec.weights_hash is None, name  # Keras publishes none for these
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
