import struct
import time
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile, features as pil_features

import keras

import features.images
from features.images import DEFAULT_MAX_PIXELS, UnreadableImageError, load_image, resize_image
from tests._features_fixtures import smooth_image


@pytest.fixture
def rgb():
    return smooth_image(np.random.default_rng(0), 30, 40)


def test_jpeg_png_bmp_gif_webp_decode_to_rgb(tmp_path, rgb):
    kinds = {"a.jpg": {}, "a.png": {}, "a.bmp": {}, "a.gif": {}, "a.tif": {}}
    if pil_features.check("webp"):
        kinds["a.webp"] = {"lossless": True}
    for name, options in kinds.items():
        Image.fromarray(rgb).save(tmp_path / name, **options)
        image = load_image(tmp_path / name)
        assert image.dtype == np.uint8 and image.shape == (30, 40, 3), name
        tolerance = 40 if name.endswith((".jpg", ".gif")) else 0
        assert np.abs(image.astype(int) - rgb).mean() <= max(tolerance / 4, 0), name


def test_grey_and_16_bit_grey_png(tmp_path):
    grey = np.linspace(0, 255, 30 * 40).reshape(30, 40).astype(np.uint8)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    image = load_image(tmp_path / "grey.png")
    assert image.shape == (30, 40, 3)
    np.testing.assert_array_equal(image[:, :, 0], grey)
    np.testing.assert_array_equal(image[:, :, 2], grey)
    deep = (grey.astype(np.uint16) * 257)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    np.testing.assert_array_equal(load_image(tmp_path / "deep.png")[:, :, 1], grey)


def test_alpha_is_composited_on_white(tmp_path):
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[:, :, 0] = 200
    rgba[:, :5, 3] = 255  # left half opaque red-ish, right half fully transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    image = load_image(tmp_path / "alpha.png")
    np.testing.assert_array_equal(image[0, 0], [200, 0, 0])
    np.testing.assert_array_equal(image[0, 9], [255, 255, 255])
    Image.fromarray(rgba[:, :, [0, 3]], "LA").save(tmp_path / "grey_alpha.png")
    np.testing.assert_array_equal(load_image(tmp_path / "grey_alpha.png")[0, 9], [255, 255, 255])


def test_palette_with_and_without_transparency(tmp_path, rgb):
    palette = Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE, colors=16)
    palette.save(tmp_path / "palette.png")
    expected = np.asarray(palette.convert("RGB"))
    np.testing.assert_array_equal(load_image(tmp_path / "palette.png"), expected)
    palette.info["transparency"] = int(np.asarray(palette)[0, 0])
    palette.save(tmp_path / "palette_alpha.png", transparency=int(np.asarray(palette)[0, 0]))
    np.testing.assert_array_equal(load_image(tmp_path / "palette_alpha.png")[0, 0], [255, 255, 255])


def test_cmyk_jpeg(tmp_path, rgb):
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    image = load_image(tmp_path / "cmyk.jpg")
    assert image.shape == (30, 40, 3)
    assert np.abs(image.astype(int) - rgb).mean() < 10


def test_exif_orientation_is_applied(tmp_path, rgb):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(rgb).save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    image = load_image(tmp_path / "rotated.jpg")
    assert image.shape == (40, 30, 3)
    expected = np.rot90(rgb, -1)
    assert np.abs(image.astype(int) - expected).mean() < 8


def test_jpeg_draft_decodes_smaller_but_not_below_min_size(tmp_path):
    photo = smooth_image(np.random.default_rng(1), 1200, 1600)
    Image.fromarray(photo).save(tmp_path / "photo.jpg", quality=90)
    assert load_image(tmp_path / "photo.jpg").shape == (1200, 1600, 3)
    reduced = load_image(tmp_path / "photo.jpg", min_size=299)
    assert reduced.shape == (300, 400, 3)  # 1/4 scale; 1/8 would be 150 < 299
    assert load_image(tmp_path / "photo.jpg", min_size=700).shape == (1200, 1600, 3)


def test_unreadable_files_raise_with_a_short_reason(tmp_path, rgb):
    (tmp_path / "text.jpg").write_bytes(b"this is not an image")
    with pytest.raises(UnreadableImageError, match="not an image file") as error:
        load_image(tmp_path / "text.jpg")
    assert error.value.reason == "not an image file PIL can identify"
    Image.fromarray(rgb).save(tmp_path / "whole.jpg")
    data = (tmp_path / "whole.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(UnreadableImageError, match="corrupt or truncated"):
        load_image(tmp_path / "truncated.jpg")
    with pytest.raises(UnreadableImageError, match="file not found"):
        load_image(tmp_path / "missing.png")


def test_too_large_images_are_refused_as_too_large(tmp_path, rgb, monkeypatch):
    Image.fromarray(rgb).save(tmp_path / "image.png")  # 40x30 = 1,200 pixels
    with pytest.raises(UnreadableImageError) as error:
        load_image(tmp_path / "image.png", max_pixels=1000)
    assert error.value.reason == "too large: 40 x 30 pixels > 1000"
    assert load_image(tmp_path / "image.png", max_pixels=1200).shape == (30, 40, 3)
    assert load_image(tmp_path / "image.png", max_pixels=None).shape == (30, 40, 3)
    # Pillow's own limit (it refuses at twice MAX_IMAGE_PIXELS) may strike first; the reason still says why.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    with pytest.raises(UnreadableImageError) as error:
        load_image(tmp_path / "image.png", max_pixels=None)
    assert error.value.reason == "too large: 1200 pixels > 1000 (Pillow's decompression bomb check)"
    # A limit asked for above Pillow's raises Pillow's, so that the asked limit is the one that acts.
    assert load_image(tmp_path / "image.png", max_pixels=1200).shape == (30, 40, 3)
    assert Image.MAX_IMAGE_PIXELS == 1200


def test_pillows_bomb_warning_never_becomes_a_traceback(tmp_path, rgb, monkeypatch):
    Image.fromarray(rgb).save(tmp_path / "image.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # warns above 1000, refuses above 2000
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with pytest.raises(UnreadableImageError) as error:
            load_image(tmp_path / "image.png", max_pixels=None)
    assert error.value.reason == "too large: 1200 pixels > 1000 (Pillow's decompression bomb check)"


def _png_of_size(width, height):
    """A valid PNG file of a few dozen bytes whose header says width x height (its pixel data is short)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b""))


def test_a_decompression_bomb_is_refused_from_its_header_without_decoding(tmp_path, monkeypatch):
    # 7000 x 7000 RGB would be 147 MB decoded, 20000 x 20000 1.2 GB: the header alone says so.
    (tmp_path / "large.png").write_bytes(_png_of_size(7000, 7000))
    (tmp_path / "bomb.png").write_bytes(_png_of_size(20000, 20000))
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("decoded"))
    started = time.perf_counter()
    with pytest.raises(UnreadableImageError) as error:
        load_image(tmp_path / "large.png")
    assert error.value.reason == f"too large: 7000 x 7000 pixels > {DEFAULT_MAX_PIXELS}"
    # Above twice Pillow's limit, Pillow refuses in Image.open already: the reason says whose check acted.
    with pytest.raises(UnreadableImageError) as error:
        load_image(tmp_path / "bomb.png")
    assert error.value.reason == (f"too large: 400000000 pixels > {2 * Image.MAX_IMAGE_PIXELS} (Pillow's "
                                  "decompression bomb check)")
    assert time.perf_counter() - started < 1.0
    assert DEFAULT_MAX_PIXELS < Image.MAX_IMAGE_PIXELS  # the project's limit acts before Pillow warns


def test_a_large_jpeg_is_drafted_to_no_less_than_the_needed_size(tmp_path):
    Image.new("RGB", (4000, 3000), (200, 120, 40)).save(tmp_path / "large.jpg", quality=90)
    image = load_image(tmp_path / "large.jpg", min_size=299)
    assert image.shape == (375, 500, 3)  # 1/8 scale, both sides still >= 299
    assert np.abs(image.astype(int) - [200, 120, 40]).max() <= 3
    assert load_image(tmp_path / "large.jpg", min_size=400).shape == (750, 1000, 3)  # 1/8 would give 375 < 400
    assert load_image(tmp_path / "large.jpg").shape == (3000, 4000, 3)


def test_resize_matches_keras_resizing_layer(rgb):
    resized = resize_image(rgb, 16)
    assert resized.dtype == np.float32 and resized.shape == (16, 16, 3)
    layer = keras.layers.Resizing(16, 16, interpolation="bilinear", antialias=True)
    expected = keras.ops.convert_to_numpy(layer(rgb[None].astype("float32")))[0]
    np.testing.assert_allclose(resized, expected, atol=1e-3)
    assert 0 <= resized.min() and resized.max() <= 255.5
    np.testing.assert_array_equal(resize_image(rgb[:16, :16], 16), rgb[:16, :16].astype(np.float32))


def test_prediction_applies_the_same_pixel_limit(tmp_path):
    from fusion.predict import _prepare

    (tmp_path / "large.png").write_bytes(_png_of_size(7000, 7000))
    assert _prepare(tmp_path / "large.png", 32, ("identity",), {"a": 32}) == (
        None, f"too large: 7000 x 7000 pixels > {DEFAULT_MAX_PIXELS}")
