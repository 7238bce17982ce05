"""Decode image files of any common kind into RGB arrays, and resize them like the exported model does.

`prepare_views` is the one path from an image file to the pixels a backbone sees: precompute and
prediction both call it, so the exported model is fed the pixels the store was made from.
"""

import re

import numpy as np
from PIL import Image, ImageOps

import keras

from features.views import DIHEDRAL_VIEWS, apply_view

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")

# The largest image decoded (width x height), checked from the file's header before any pixel is
# decoded. Pillow's own limit (Image.MAX_IMAGE_PIXELS, 89,478,485) only warns, and refuses at twice
# that, so a 12000 x 12000 PNG of a few hundred KB would decode to 432 MB per copy and take GBs with
# several decode threads. 40 megapixels keeps every camera photo (a 7952 x 5304 sensor is 42 MP:
# pass a higher `max_pixels` for those) and bounds one decode to about 160 MB per copy.
DEFAULT_MAX_PIXELS = 40_000_000


class UnreadableImageError(ValueError):
    """An image file that cannot be decoded; `reason` is a short text for the skipped list."""

    def __init__(self, path, reason):
        super().__init__(f"Cannot read image {path}: {reason}")
        self.path = str(path)
        self.reason = reason


def _to_rgb(image):
    # 16-bit (and 32-bit integer) grey: scale to 0..255 rather than clip as PIL's convert does.
    if image.mode.startswith("I"):
        values = np.asarray(image).astype(np.float64)
        grey = np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if image.mode == "F":
        grey = np.clip(np.rint(np.asarray(image)), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode == "P" and "transparency" in image.info)
    if has_alpha:
        # Transparent pixels become white, as they look in a viewer on a white page.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    return np.asarray(image.convert("RGB"))


def check_max_pixels(max_pixels):
    """Validate a pixel limit: a positive integer, or None for Pillow's own limit only."""
    if max_pixels is not None and (isinstance(max_pixels, bool) or not isinstance(max_pixels, int)
                                   or max_pixels < 1):
        raise ValueError(f"max_pixels must be a positive integer (width x height), or None for no limit of this "
                         f"project's own. Received: max_pixels={max_pixels!r}")
    return max_pixels


def _bomb_reason(error):
    # Pillow refuses (or warns, when warnings are errors) in Image.open, before the size can be read;
    # its limit then is MAX_IMAGE_PIXELS (warning) or twice that (error).
    pixels = re.search(r"\((\d+) pixels\)", str(error))
    limit = re.search(r"limit of (\d+) pixels", str(error))
    return (f"too large: {pixels.group(1) if pixels else 'more'} pixels > {limit.group(1) if limit else 'the limit'} "
            "(Pillow's decompression bomb check)")


def load_image(path, min_size=None, max_pixels=DEFAULT_MAX_PIXELS):
    """Decode the image file at `path` into a uint8 RGB array of shape (H, W, 3).

    EXIF orientation is applied; grey, palette, 16-bit, CMYK images become RGB; transparent
    pixels are composited on white; animated files give their first frame. An image of more
    than `max_pixels` is refused from its header, before any pixel is decoded. JPEGs are decoded
    at a reduced DCT scale (1/2, 1/4, 1/8) when both sides stay >= `min_size`, which is much
    faster for photos that are resized down anyway.

    Args:
        path: the image file.
        min_size: smallest side length the caller needs, or None for full size (default: None).
        max_pixels: largest width x height decoded, or None for Pillow's limit only
            (default: 40,000,000, see `DEFAULT_MAX_PIXELS`).

    Raises:
        UnreadableImageError: the file is missing, not an image, too large, truncated or corrupt.

    Example:
        >>> image = load_image("cat.jpg", min_size=299)
        >>> image.dtype, image.shape[2]
        (dtype('uint8'), 3)
    """
    if max_pixels is not None and Image.MAX_IMAGE_PIXELS is not None and max_pixels > Image.MAX_IMAGE_PIXELS:
        # A limit asked for above Pillow's: raise Pillow's, which would refuse at twice its value first.
        Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with Image.open(path) as image:
            if max_pixels is not None and image.width * image.height > max_pixels:
                raise UnreadableImageError(path, f"too large: {image.width} x {image.height} pixels > {max_pixels}")
            if min_size and image.format == "JPEG":
                image.draft("RGB", (int(min_size), int(min_size)))
            image.load()
            image = ImageOps.exif_transpose(image)
            array = _to_rgb(image)
    except UnreadableImageError:
        raise
    except FileNotFoundError:
        raise UnreadableImageError(path, "file not found") from None
    except Image.UnidentifiedImageError:
        raise UnreadableImageError(path, "not an image file PIL can identify") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise UnreadableImageError(path, _bomb_reason(error)) from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UnreadableImageError(path, f"corrupt or truncated ({reason})") from None
    if array.ndim != 3 or array.shape[0] == 0 or array.shape[1] == 0:
        raise UnreadableImageError(path, f"empty image (shape {array.shape})")
    return np.ascontiguousarray(array, dtype=np.uint8)


def resize_image(image, input_size):
    """Resize an RGB image to a float32 (input_size, input_size, 3) array, 0..255.

    Bilinear with antialiasing via `keras.ops.image.resize`, so that
    `keras.layers.Resizing(s, s, interpolation="bilinear", antialias=True)` in an exported
    model gives the same pixels. The aspect ratio is not kept (as Keras's loaders do).

    Args:
        image: uint8 or float array (H, W, 3).
        input_size: side of the output square.

    Example:
        >>> resize_image(np.zeros((480, 640, 3), np.uint8), 224).shape
        (224, 224, 3)
    """
    array = np.asarray(image, dtype=np.float32)
    if array.shape[0] == input_size and array.shape[1] == input_size:
        return array
    resized = keras.ops.image.resize(array, (input_size, input_size), interpolation="bilinear",
                                     antialias=True, data_format="channels_last")
    return np.asarray(keras.ops.convert_to_numpy(resized), dtype=np.float32)


def _check_prepare_arguments(sizes, views, decode_size):
    if isinstance(sizes, (str, bytes)) or not hasattr(sizes, "__iter__"):
        raise ValueError(f"sizes must be a list of input sizes (positive integers), e.g. [224]. "
                         f"Received: sizes={sizes!r}")
    sizes = list(sizes)
    if not sizes or any(isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1
                        for size in sizes):
        raise ValueError(f"sizes must be a non-empty list of positive integer input sizes, e.g. [224]. "
                         f"Received: sizes={sizes!r}")
    valid_views = ("identity",) + DIHEDRAL_VIEWS
    if isinstance(views, (str, bytes)) or not hasattr(views, "__iter__"):
        raise ValueError(f"views must be a list of view names, e.g. ('identity', 'hflip'); for a --views setting "
                         f"pass ('identity',) + view_names(setting). Received: views={views!r}")
    views = tuple(views)
    unknown = [view for view in views if view not in valid_views]
    if not views or unknown:
        raise ValueError(f"views must be a non-empty list of view names from: {', '.join(valid_views)}. "
                         f"Received: views={views!r}")
    if decode_size is not None and (isinstance(decode_size, bool) or not isinstance(decode_size, (int, np.integer))
                                    or decode_size < 1):
        raise ValueError(f"decode_size must be a positive integer (the smallest side a JPEG may be decoded at), or "
                         f"None for a full decode. Received: decode_size={decode_size!r}")
    # Each distinct size once, in the order asked.
    return list(dict.fromkeys(int(size) for size in sizes)), views


def prepare_views(path, sizes, views=("identity",), decode_size=None, max_pixels=DEFAULT_MAX_PIXELS):
    """Decode an image file once and return each of its views resized to each wanted input size.

    The one path from an image file to backbone pixels: `precompute` stores features of these
    arrays and prediction feeds the exported model these arrays, so the two see the same pixels
    by construction. Each view is applied to the decoded image before resizing (`apply_view`,
    then `resize_image`).

    Args:
        path: the image file.
        sizes: input sizes wanted (positive integers; repeats are computed once).
        views: view names, in the order of the output's first axis: "identity" or any of
            `DIHEDRAL_VIEWS` (default: ("identity",)).
        decode_size: smallest side a JPEG may be decoded at (see `load_image`'s `min_size`);
            precompute and prediction pass the largest input size of their backbones, or None
            for a full decode (default: None).
        max_pixels: largest width x height decoded, or None for Pillow's limit only
            (default: 40,000,000, see `DEFAULT_MAX_PIXELS`).

    Returns:
        A dict from input size to a float32 array (len(views), size, size, 3), values 0..255.

    Raises:
        UnreadableImageError: the file is missing, not an image, too large, truncated or corrupt.

    Example:
        >>> prepared = prepare_views("cat.jpg", [224, 299], views=("identity", "hflip"), decode_size=299)
        >>> prepared[299].shape
        (2, 299, 299, 3)
    """
    sizes, views = _check_prepare_arguments(sizes, views, decode_size)
    image = load_image(path, min_size=decode_size, max_pixels=check_max_pixels(max_pixels))
    prepared = {size: [] for size in sizes}
    for view in views:
        viewed = apply_view(image, view)
        for size in sizes:
            prepared[size].append(resize_image(viewed, size))
    return {size: np.stack(arrays) for size, arrays in prepared.items()}
