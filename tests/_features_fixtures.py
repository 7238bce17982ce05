"""Tiny generated images for the stage-1 tests."""

from pathlib import Path

import numpy as np
from PIL import Image


def smooth_image(rng, height, width):
    """A smooth random RGB uint8 image (like a blurred photo, so JPEG keeps it well)."""
    small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((width, height), Image.BILINEAR))


def make_class_folders(root, classes=("cat", "dog"), per_class=5, size=(48, 40), seed=0, prefix=""):
    """Write `per_class` JPEGs into `root/<prefix>/<class>/`; returns their paths."""
    rng = np.random.default_rng(seed)
    paths = []
    for class_name in classes:
        folder = Path(root) / prefix / class_name
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            path = folder / f"{class_name}_{index:03d}.jpg"
            Image.fromarray(smooth_image(rng, size[1], size[0])).save(path, quality=95)
            paths.append(path)
    return paths
