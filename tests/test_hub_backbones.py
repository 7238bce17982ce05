"""The KerasHub foundation backbones: registry facts, builds, poolings, presets from a folder, refusals."""

import importlib
import json

import numpy as np
import pytest

import features
from features.backbones import (create_backbone, get_backbone_spec, has_imagenet_weights, list_backbones,
                                parse_pooling, resolve_pooling, resolve_weights, weights_sha256)
from features.hub_backbones import HUB_POOLINGS, create_hub_backbone, get_hub_spec

keras_hub = pytest.importorskip("keras_hub")

# The entries issue 14 asks for, with (family, native size, patch size, token width).
REQUIRED = {
    "dinov2_small": ("DINOv2", 224, 14, 384), "dinov2_base": ("DINOv2", 224, 14, 768),
    "dinov2_large": ("DINOv2", 224, 14, 1024), "dinov2_with_registers_small": ("DINOv2", 224, 14, 384),
    "dinov2_with_registers_base": ("DINOv2", 224, 14, 768), "dinov2_with_registers_large": ("DINOv2", 224, 14, 1024),
    "dinov3_small": ("DINOv3", 224, 16, 384), "dinov3_base": ("DINOv3", 224, 16, 768),
    "siglip_base_patch16_224": ("SigLIP", 224, 16, 768), "siglip_so400m_patch14_224": ("SigLIP", 224, 14, 1152),
    "siglip2_base_patch16_224": ("SigLIP 2", 224, 16, 768), "siglip2_so400m_patch14_224": ("SigLIP 2", 224, 14, 1152),
    "clip_vit_base_patch16": ("CLIP", 224, 16, 768), "clip_vit_large_patch14": ("CLIP", 224, 14, 1024),
    "vit_base_patch16_224_imagenet21k": ("ViT", 224, 16, 768),
}
# Real widths and heads, one layer: the builds test the registry's arguments without the cost of depth.
ONE_LAYER = {"num_layers": 1}


def _images(size, count=2, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (count, size, size, 3)).astype("float32")


def _small_size(spec):
    return 2 * spec.patch_size if spec.any_input_size else spec.input_size


def test_registry_has_the_foundation_entries_with_their_facts():
    assert set(REQUIRED) <= set(list_backbones("keras_hub"))
    for name, (family, size, patch, width) in REQUIRED.items():
        spec = get_backbone_spec(name)
        assert (spec.family, spec.input_size, spec.patch_size, spec.feature_size) == (family, size, patch, width), name
        assert spec.feature_size_for("cls+avg") == 2 * width
    assert "resnet50" in list_backbones("keras.applications") and "resnet50" not in list_backbones("keras_hub")


def test_presets_and_sizes_are_keras_hubs_own():
    """Each entry's preset, its Kaggle handle with version and its parameter count are in KerasHub's preset table."""
    tables = {}
    for family in ("dinov2", "dinov3", "siglip", "clip", "vit"):
        tables.update(importlib.import_module(f"keras_hub.src.models.{family}.{family}_presets").backbone_presets)
    for name in list_backbones("keras_hub"):
        spec = get_backbone_spec(name)
        assert tables[spec.preset]["kaggle_handle"] == spec.kaggle_handle, name
        assert tables[spec.preset]["metadata"]["params"] == spec.params, name


@pytest.mark.parametrize("name", ["dinov2_with_registers_small", "siglip_base_patch16_224"])
def test_every_pooling_of_a_transformer(name):
    """cls, avg, cls+avg and none agree with one another: avg is the mean of the grid, cls+avg is both."""
    spec = get_backbone_spec(name)
    size = _small_size(spec)
    images = _images(size)
    out = {pooling: create_hub_backbone(spec, size, None, pooling, seed=1, architecture_overrides=ONE_LAYER)
           .predict_on_batch(images) for pooling in HUB_POOLINGS}
    side = size // spec.patch_size
    assert out["none"].shape == (2, side, side, spec.feature_size)
    assert out["cls"].shape == out["avg"].shape == (2, spec.feature_size)
    np.testing.assert_allclose(out["avg"], out["none"].mean(axis=(1, 2)), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out["cls+avg"], np.concatenate([out["cls"], out["avg"]], axis=1), rtol=1e-4, atol=1e-5)
    assert np.abs(out["cls"] - out["avg"]).max() > 1e-3  # the class token (or pooled output) is not the mean


@pytest.mark.slow
@pytest.mark.parametrize("name", list_backbones("keras_hub"))
def test_every_foundation_entry_builds_with_its_feature_size(name):
    spec = get_backbone_spec(name)
    size = _small_size(spec)
    for pooling, shape in (("cls+avg", (2, 2 * spec.feature_size)),
                           ("none", (2, size // spec.patch_size, size // spec.patch_size, spec.feature_size))):
        model = create_hub_backbone(spec, size, None, pooling, architecture_overrides=ONE_LAYER)
        assert model.output_shape == (None,) + shape[1:]
        features_out = model.predict_on_batch(_images(size))
        assert features_out.shape == shape and np.all(np.isfinite(features_out))
        assert not model.get_layer(index=2).trainable


def test_a_full_depth_entry_builds_from_the_registry_with_random_weights():
    model = create_backbone("dinov2_small", input_size=28, weights="none", pooling="cls+avg", seed=3)
    again = create_backbone("dinov2_small", input_size=28, weights="none", pooling="cls+avg", seed=3)
    encoder = model.get_layer(index=2)
    assert encoder.num_layers == 12 and encoder.hidden_dim == 384
    images = _images(28)
    np.testing.assert_allclose(model.predict_on_batch(images), again.predict_on_batch(images), rtol=1e-6)


def test_preprocessing_is_the_presets_mean_and_std():
    spec = get_hub_spec("clip_vit_base_patch16")
    scale, offset = spec.preprocessing()
    pixel = np.array([0.0, 127.5, 255.0])
    mean, std = spec.mean_std
    np.testing.assert_allclose(pixel[0] * scale[0] + offset[0], (0.0 - mean[0]) / std[0], rtol=1e-6)
    np.testing.assert_allclose(pixel[2] * scale[2] + offset[2], (1.0 - mean[2]) / std[2], rtol=1e-6)
    siglip_scale, siglip_offset = get_hub_spec("siglip_base_patch16_224").preprocessing()
    np.testing.assert_allclose(255.0 * np.array(siglip_scale) + siglip_offset, [1.0, 1.0, 1.0])
    np.testing.assert_allclose(siglip_offset, [-1.0, -1.0, -1.0])


def _tiny_image_text_backbone(spec, vision_encoder):
    """SigLIP and CLIP presets hold the whole image-text model: a tiny text tower beside the image encoder."""
    width = vision_encoder.hidden_dim
    if spec.encoder_class == "SigLIPVisionEncoder":
        text = keras_hub.models.SigLIPTextEncoder(vocabulary_size=16, embedding_dim=width, hidden_dim=width,
                                                  num_layers=1, num_heads=2, intermediate_dim=32, max_sequence_length=8)
        return keras_hub.models.SigLIPBackbone(vision_encoder, text)
    text = keras_hub.models.CLIPTextEncoder(vocabulary_size=16, embedding_dim=width, hidden_dim=width, num_layers=1,
                                            num_heads=2, intermediate_dim=32, max_sequence_length=8)
    return keras_hub.models.CLIPBackbone(vision_encoder, text, projection_dim=16)


@pytest.mark.parametrize("name, size, pooling", [("dinov2_small", 28, "cls+avg"), ("dinov3_small", 32, "avg"),
                                                 ("siglip_base_patch16_224", 224, "cls+avg"),
                                                 ("clip_vit_base_patch16", 224, "cls+avg"),
                                                 ("vit_base_patch16_224_imagenet21k", 224, "none")])
def test_a_preset_saved_with_save_to_preset_loads_as_weights_folder(tmp_path, name, size, pooling):
    """A random model saved as a KerasHub preset and read back through --weights FOLDER gives the same features."""
    spec = get_hub_spec(name)
    tiny = {"num_layers": 1, "hidden_dim": 32, "num_heads": 2,
            ("mlp_dim" if spec.encoder_class == "ViTBackbone" else "intermediate_dim"): 64}
    random_model = create_hub_backbone(spec, size, None, pooling, seed=5, architecture_overrides=tiny)
    # The same seed builds the same encoder; with pooling cls it is the model's third layer as a whole.
    encoder = create_hub_backbone(spec, size, None, "cls", seed=5, architecture_overrides=tiny).get_layer(index=2)
    preset = _tiny_image_text_backbone(spec, encoder) if spec.encoder_class in (
        "SigLIPVisionEncoder", "CLIPVisionEncoder") else encoder
    preset.save_to_preset(str(tmp_path / "presets" / spec.preset))
    assert resolve_weights(name, str(tmp_path / "presets")) == str((tmp_path / "presets" / spec.preset).resolve())
    from_folder = create_backbone(name, input_size=size, weights=str(tmp_path / "presets"), pooling=pooling)
    images = _images(size)
    np.testing.assert_allclose(from_folder.predict_on_batch(images), random_model.predict_on_batch(images),
                               rtol=1e-5, atol=1e-5)
    # The store records the hash of the preset's weights file.
    assert weights_sha256(tmp_path / "presets" / spec.preset) == weights_sha256(
        tmp_path / "presets" / spec.preset / "model.weights.h5")


def test_the_presets_image_converter_sets_the_preprocessing(tmp_path):
    spec = get_hub_spec("dinov2_small")
    folder = tmp_path / "dinov2_small"
    converter = keras_hub.layers.ImageConverter(scale=[0.5, 0.25, 0.125], offset=[1.0, 2.0, 3.0])
    converter.save_to_preset(str(folder))  # writes image_converter.json, as in KerasHub's presets
    from features.hub_backbones import read_preset_preprocessing

    assert read_preset_preprocessing(spec, folder) == ([0.5, 0.25, 0.125], [1.0, 2.0, 3.0])
    assert read_preset_preprocessing(spec, tmp_path / "elsewhere") == spec.preprocessing()


def test_pretrained_weights_come_from_the_keras_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "kagglehub"))
    spec = get_hub_spec("dinov2_small")
    assert not has_imagenet_weights("dinov2_small")
    cached = tmp_path / "kagglehub" / "models" / "keras" / "dinov2" / "keras" / "dinov2_small" / "1"
    cached.mkdir(parents=True)
    (cached / "config.json").write_text(json.dumps({"class_name": "DINOV2Backbone"}))
    (cached / "model.weights.h5").write_bytes(b"weights")
    assert has_imagenet_weights("dinov2_small")
    assert resolve_weights("dinov2_small", "imagenet") == str(cached)
    assert spec.kaggle_handle.endswith("dinov2_small/1")


def test_offline_without_the_preset_stops_with_one_line_naming_preset_folder_and_remedy(tmp_path, monkeypatch):
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "kagglehub"))
    monkeypatch.setenv("FUSIONPIPE_OFFLINE", "1")
    with pytest.raises(FileNotFoundError) as raised:
        resolve_weights("siglip2_base_patch16_224", "imagenet")
    message = str(raised.value)
    assert "\n" not in message
    for part in ("'siglip2_base_patch16_224'", "preset siglip2_base_patch16_224",
                 "kaggle://keras/siglip/keras/siglip2_base_patch16_224/1", str(tmp_path / "kagglehub"),
                 "downloads are off", "save_to_preset('FOLDER/siglip2_base_patch16_224')", "--weights FOLDER",
                 "--weights none"):
        assert part in message, part


def test_a_folder_without_the_preset_is_refused(tmp_path):
    (tmp_path / "presets").mkdir()
    with pytest.raises(FileNotFoundError, match=r"holds no KerasHub preset for backbone 'dinov2_base'.*"
                                                r"presets/dinov2_base with config.json and model.weights.h5"):
        resolve_weights("dinov2_base", str(tmp_path / "presets"))
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        resolve_weights("dinov2_base", str(tmp_path / "nowhere"))
    assert resolve_weights("dinov2_base", "none") is None


def test_a_preset_of_another_model_in_the_folder_is_not_taken(tmp_path):
    folder = tmp_path / "presets" / "clip_vit_base_patch16"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"class_name": "DINOV2Backbone"}))
    (folder / "model.weights.h5").write_bytes(b"weights")
    with pytest.raises(FileNotFoundError, match="holds no KerasHub preset for backbone 'clip_vit_base_patch16'"):
        resolve_weights("clip_vit_base_patch16", str(tmp_path / "presets"))


def test_input_sizes_the_model_cannot_take_are_refused_with_the_valid_ones():
    assert features.backbones.check_input_size("dinov2_small", 98) == 98
    assert features.backbones.check_input_size("dinov3_base", None) == 224
    with pytest.raises(ValueError, match=r"multiples of its patch size 14 \(native 224\), e\.g\. 98 or 112\. "
                                         r"Received: input_size=100"):
        features.backbones.check_input_size("dinov2_small", 100)
    with pytest.raises(ValueError, match=r"takes only its native size 224.*Received: input_size=160"):
        features.backbones.check_input_size("siglip2_base_patch16_224", 160)
    with pytest.raises(ValueError, match="takes only its native size 224"):
        create_backbone("clip_vit_base_patch16", input_size=112, weights="none")


def test_poolings_by_backbone():
    assert resolve_pooling("dinov2_small", "auto") == "cls+avg"
    assert resolve_pooling("siglip_base_patch16_224", None) == "cls"
    assert resolve_pooling("resnet50", "auto") == "avg"
    assert resolve_pooling("resnet50", {"dinov2_small": "cls"}) == "avg"
    with pytest.raises(ValueError, match=r"Pooling 'max' does not apply to backbone 'dinov2_small'\. It takes: "
                                         r"cls, avg, cls\+avg, none"):
        resolve_pooling("dinov2_small", "max")
    with pytest.raises(ValueError, match="Pooling 'cls' does not apply to backbone 'resnet50'"):
        create_backbone("resnet50", input_size=32, weights="none", pooling="cls")
    assert parse_pooling(["auto"], ["dinov2_small", "resnet50"]) == {"dinov2_small": "auto", "resnet50": "auto"}
    assert parse_pooling(["cls", "resnet50=max"], ["dinov2_small", "resnet50"]) == {"dinov2_small": "cls",
                                                                                    "resnet50": "max"}
    with pytest.raises(ValueError, match="Pooling given for backbones not in this run: vgg16"):
        parse_pooling(["vgg16=avg"], ["resnet50"])
    with pytest.raises(ValueError, match="Give one pooling for all backbones"):
        parse_pooling(["cls", "avg"], ["resnet50"])


def test_online_the_preset_is_downloaded_through_kagglehub(tmp_path, monkeypatch):
    import kagglehub

    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "kagglehub"))
    monkeypatch.delenv("FUSIONPIPE_OFFLINE", raising=False)
    downloaded = tmp_path / "downloaded"
    downloaded.mkdir()
    (downloaded / "config.json").write_text(json.dumps({"class_name": "CLIPBackbone"}))
    (downloaded / "model.weights.h5").write_bytes(b"weights")
    asked = []
    monkeypatch.setattr(kagglehub, "model_download", lambda handle: asked.append(handle) or str(downloaded))
    assert resolve_weights("clip_vit_base_patch16", "imagenet") == str(downloaded)
    assert asked == ["keras/clip/keras/clip_vit_base_patch16/3"]

    def no_network(handle):
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(kagglehub, "model_download", no_network)
    with pytest.raises(FileNotFoundError, match=r"downloading it failed \(Name or service not known\)"):
        resolve_weights("clip_vit_base_patch16", "imagenet")


def test_without_keras_hub_a_foundation_backbone_stops_with_the_install_command(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "keras_hub", None)  # as if not installed
    with pytest.raises(ImportError, match=r"need keras-hub.*pip install --no-deps keras-hub==0\.32\.0"):
        resolve_weights("dinov2_small", "none")
    assert resolve_weights("resnet50", "none") is None  # the CNNs do not need it


def test_a_damaged_image_converter_file_is_one_line(tmp_path):
    from features.hub_backbones import read_preset_preprocessing

    (tmp_path / "image_converter.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"image_converter\.json is not an image converter's JSON"):
        read_preset_preprocessing(get_hub_spec("dinov2_small"), tmp_path)


def test_a_preset_replaced_in_place_is_not_served_from_the_extractor_cache(tmp_path):
    from features.extractors import _extractor_key

    folder = tmp_path / "dinov2_small"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.weights.h5").write_bytes(b"old weights")
    before = _extractor_key("dinov2_small", 28, str(folder), "cls", 0, "float32")
    (folder / "model.weights.h5").write_bytes(b"new weights, longer")
    assert _extractor_key("dinov2_small", 28, str(folder), "cls", 0, "float32") != before


def test_precompute_refuses_a_pooling_for_a_backbone_not_in_the_run(tmp_path):
    with pytest.raises(ValueError, match=r"Pooling given for backbones not in this run: vgg16\. Backbones of the run: "
                                         r"resnet50"):
        features.precompute(tmp_path / "nowhere", tmp_path / "c.h5", ["resnet50"], weights="none",
                            pooling={"vgg16": "avg"})
    assert not (tmp_path / "c.h5").exists()
