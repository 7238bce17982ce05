"""Decode image files of any common kind into RGB arrays, and resize them like the exported model does."""

import numpy as np
from PIL import Image, ImageOps

import keras

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")

# Decoding a huge image is not an error a user wants to hear about as a security warning;
# but a decompression bomb is still refused, as unreadable.
_MAX_PIXELS = 40_000 * 40_000


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


def load_image(path, min_size=None):
    """Decode the image file at `path` into a uint8 RGB array of shape (H, W, 3).

    EXIF orientation is applied; grey, palette, 16-bit, CMYK images become RGB; transparent
    pixels are composited on white; animated files give their first frame. JPEGs are decoded
    at a reduced DCT scale (1/2, 1/4, 1/8) when both sides stay >= `min_size`, which is much
    faster for photos that are resized down anyway.

    Args:
        path: the image file.
        min_size: smallest side length the caller needs, or None for full size (default: None).

    Raises:
        UnreadableImageError: the file is missing, not an image, truncated or corrupt.

    Example:
        >>> image = load_image("cat.jpg", min_size=299)
        >>> image.dtype, image.shape[2]
        (dtype('uint8'), 3)
    """
    try:
        with Image.open(path) as image:
            if image.width * image.height > _MAX_PIXELS:
                raise UnreadableImageError(path, f"too large ({image.width}x{image.height} pixels)")
            if min_size and image.format == "JPEG":
                image.draft(None, (int(min_size), int(min_size)))
            image.load()
            image = ImageOps.exif_transpose(image)
            array = _to_rgb(image)
    except UnreadableImageError:
        raise
    except FileNotFoundError:
        raise UnreadableImageError(path, "file not found") from None
    except Image.UnidentifiedImageError:
        raise UnreadableImageError(path, "not an image file PIL can identify") from None
    except Image.DecompressionBombError as error:
        # PIL refuses images of more than twice its MAX_IMAGE_PIXELS before _MAX_PIXELS is checked.
        raise UnreadableImageError(path, f"too large ({error})") from None
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
