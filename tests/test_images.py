import struct
import time
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile, features as pil_features

import keras

import features.images
from features.images import DEFAULT_MAX_PIXELS, UnreadableImageError, load_image, prepare_views, resize_image
from features.views import DIHEDRAL_VIEWS, apply_view, view_names
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


ALL_VIEWS = ("identity",) + DIHEDRAL_VIEWS


def _downloaded_kinds(folder, rgb):
    """Files as users download them: JPEG, PNG, grey PNG, RGBA PNG, a JPEG that EXIF says to rotate."""
    Image.fromarray(rgb).save(folder / "photo.jpg", quality=90)
    Image.fromarray(rgb).save(folder / "screenshot.png")
    Image.fromarray(rgb).convert("L").save(folder / "grey.png")
    rgba = np.dstack([rgb, np.linspace(0, 255, rgb.shape[0] * rgb.shape[1]).reshape(rgb.shape[:2]).astype(np.uint8)])
    Image.fromarray(rgba, "RGBA").save(folder / "logo.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(rgb).save(folder / "phone.jpg", exif=exif, quality=90)
    return ["photo.jpg", "screenshot.png", "grey.png", "logo.png", "phone.jpg"]


@pytest.mark.parametrize("decode_size", [None, 16])
def test_prepare_views_is_each_view_of_the_decoded_image_resized(tmp_path, decode_size):
    # 120 x 160, so a JPEG decode may shrink (to 1/4 for decode_size 16) and the decode size matters.
    rgb = smooth_image(np.random.default_rng(2), 120, 160)
    for name in _downloaded_kinds(tmp_path, rgb):
        prepared = prepare_views(tmp_path / name, [16, 12, 16], ALL_VIEWS, decode_size=decode_size)
        assert list(prepared) == [16, 12], name  # each size once, in the order asked
        decoded = load_image(tmp_path / name, min_size=decode_size)
        for size, arrays in prepared.items():
            assert arrays.dtype == np.float32 and arrays.shape == (len(ALL_VIEWS), size, size, 3), name
            for index, view in enumerate(ALL_VIEWS):
                np.testing.assert_array_equal(arrays[index], resize_image(apply_view(decoded, view), size),
                                              err_msg=f"{name} {view} {size}")
    # The EXIF rotation is in the pixels: the rotated photo's views are the photo's views turned.
    turned = prepare_views(tmp_path / "phone.jpg", [12], ("identity",))[12][0]
    plain = prepare_views(tmp_path / "photo.jpg", [12], ("rot270",))[12][0]
    assert np.abs(turned - plain).mean() < 4
    assert np.abs(turned - prepare_views(tmp_path / "photo.jpg", [12])[12][0]).mean() > 10
    assert load_image(tmp_path / "photo.jpg", min_size=16).shape == (30, 40, 3)  # a drafted decode was tested


def test_prediction_feeds_each_backbone_the_pixels_precompute_stored(tmp_path):
    from features.compute import _prepare_image
    from fusion.predict import _prepare

    rgb = smooth_image(np.random.default_rng(3), 120, 160)
    extra_views = view_names("dihedral")
    input_sizes = {"mobilenet_v2": 24, "vgg16": 16, "resnet50": 24}  # backbone -> input size
    sizes = sorted(set(input_sizes.values()))
    for name in _downloaded_kinds(tmp_path, rgb):
        # Each with its own decode size, as each computes it: the largest input size of its backbones.
        stored = _prepare_image(tmp_path / name, max(sizes), sizes, extra_views)
        fed, reason = _prepare(tmp_path / name, max(input_sizes.values()), ("identity",) + extra_views, input_sizes)
        assert reason is None and len(fed) == 1 + len(extra_views)
        for index, view_inputs in enumerate(fed):
            assert set(view_inputs) == set(input_sizes)
            for backbone, size in input_sizes.items():
                assert view_inputs[backbone].tobytes() == stored[size][index].tobytes(), (name, index, backbone)
    (tmp_path / "text.jpg").write_bytes(b"not an image")
    assert _prepare_image(tmp_path / "text.jpg", 24, sizes, extra_views) == "not an image file PIL can identify"
    assert _prepare(tmp_path / "text.jpg", 24, ALL_VIEWS, input_sizes) == (None, "not an image file PIL can identify")


def test_prepare_views_raises_for_an_unreadable_file_with_its_reason(tmp_path, rgb):
    (tmp_path / "text.jpg").write_bytes(b"this is not an image")
    with pytest.raises(UnreadableImageError, match="not an image file") as error:
        prepare_views(tmp_path / "text.jpg", [16])
    assert error.value.reason == "not an image file PIL can identify"
    assert error.value.path == str(tmp_path / "text.jpg")
    with pytest.raises(UnreadableImageError, match="file not found"):
        prepare_views(tmp_path / "missing.png", [16], ALL_VIEWS)
    Image.fromarray(rgb).save(tmp_path / "image.png")  # 40 x 30
    with pytest.raises(UnreadableImageError) as error:
        prepare_views(tmp_path / "image.png", [16], max_pixels=1000)
    assert error.value.reason == "too large: 40 x 30 pixels > 1000"


@pytest.mark.parametrize("arguments, message", [
    ({"sizes": []}, r"sizes must be a non-empty list of positive integer input sizes.*Received: sizes=\[\]"),
    ({"sizes": [16, 0]}, r"positive integer input sizes.*Received: sizes=\[16, 0\]"),
    ({"sizes": [-16]}, r"positive integer input sizes.*Received: sizes=\[-16\]"),
    ({"sizes": [16.5]}, r"positive integer input sizes.*Received: sizes=\[16.5\]"),
    ({"sizes": 16}, r"sizes must be a list of input sizes.*e.g. \[224\]. Received: sizes=16"),
    ({"views": ("identity", "mirror")}, r"view names from: identity, hflip.*Received: views=\('identity', 'mirror'\)"),
    ({"views": ()}, r"non-empty list of view names.*Received: views=\(\)"),
    ({"views": "dihedral"}, r"views must be a list of view names.*view_names\(setting\). Received: views='dihedral'"),
    ({"decode_size": 0}, r"decode_size must be a positive integer.*Received: decode_size=0"),
    ({"max_pixels": 0}, r"max_pixels must be a positive integer.*Received: max_pixels=0"),
])
def test_prepare_views_bad_arguments_are_one_line(tmp_path, rgb, arguments, message):
    Image.fromarray(rgb).save(tmp_path / "image.png")
    arguments = {"sizes": [16], **arguments}
    with pytest.raises(ValueError, match=message) as error:
        prepare_views(tmp_path / "image.png", **arguments)
    assert "\n" not in str(error.value) and not isinstance(error.value, UnreadableImageError)
    # Arguments are checked before the file: a bad call says so even for a file that is missing.
    with pytest.raises(ValueError, match=message):
        prepare_views(tmp_path / "missing.png", **arguments)
