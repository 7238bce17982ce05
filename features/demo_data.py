"""The embedded default data set: scikit-learn's handwritten digits as RGB images, one folder per class.

The digits (1,797 scans of 8x8 pixels, 16 grey levels, classes 0-9) ship inside scikit-learn,
so the demo runs offline on real data.
"""

from pathlib import Path

import numpy as np
from PIL import Image

_DIGITS_CLASS_NAMES = tuple(str(digit) for digit in range(10))


def write_digits_dataset(root, image_size=32, limit=None):
    """Write scikit-learn's digits as PNG files under `root/<digit>/`, return the number written.

    The 8x8 scans are scaled up with bicubic interpolation and written as RGB, dark ink on
    white paper, like a photographed page. Files that already exist are left alone, so a
    second call is cheap.

    Args:
        root: the folder to write into; created if missing.
        image_size: side of the written square images in pixels (default: 32).
        limit: write only the first `limit` digits, keeping every class (default: all 1,797).

    Example:
        >>> write_digits_dataset("demo_out/digits")
        1797
    """
    from sklearn.datasets import load_digits

    if int(image_size) < 8:
        raise ValueError(f"image_size must be at least 8 pixels. Received: image_size={image_size}")
    digits = load_digits()
    images, targets = digits.images, digits.target
    if limit is not None:
        if int(limit) < len(_DIGITS_CLASS_NAMES):
            raise ValueError(
                f"limit must keep at least one image per class (>= 10). Received: limit={limit}"
            )
        images, targets = images[: int(limit)], targets[: int(limit)]
    root = Path(root)
    for class_name in _DIGITS_CLASS_NAMES:
        (root / class_name).mkdir(parents=True, exist_ok=True)
    for index, (scan, target) in enumerate(zip(images, targets)):
        path = root / str(target) / f"digit_{index:04d}.png"
        if path.exists():
            continue
        # Scans hold ink density 0..16; paper is white.
        grey = (255 - scan * (255 / 16)).clip(0, 255).astype(np.uint8)
        picture = Image.fromarray(grey, mode="L").resize((image_size, image_size), Image.BICUBIC)
        # A name no image scanner picks up, so an interrupted call leaves no half image.
        temporary = path.with_name(path.name + ".part")
        picture.convert("RGB").save(temporary, format="PNG")
        temporary.replace(path)
    return len(images)
