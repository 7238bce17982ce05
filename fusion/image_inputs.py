"""Gather the images to classify from files, folders and CSV lists, in a stable order."""

import csv
from pathlib import Path

from features.images import IMAGE_EXTENSIONS  # what the decoder reads; other files in a folder are ignored


def _csv_image_paths(csv_path, path_column):
    with open(csv_path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        if path_column not in columns:
            raise ValueError(
                f"CSV file {csv_path} has no column '{path_column}'. Columns found: {', '.join(columns) or 'none'}. "
                f"Name the column holding image paths with --path-column. Received: path_column={path_column!r}"
            )
        # Relative paths in a CSV are relative to the CSV's own folder, as a user expects.
        return [csv_path.parent / row[path_column] for row in reader if row[path_column]]


def gather_image_paths(sources, path_column="path"):
    """Expand files, folders (searched recursively) and CSV lists into a list of image paths.

    Files are kept in the order given; folders contribute their images in sorted order. A CSV
    file lists one image per row in `path_column`, relative to the CSV's folder. Paths that do
    not exist are kept: the predictor lists them as skipped with their reason.

    Args:
        sources: paths of image files, folders or `.csv` files.
        path_column: the CSV column holding image paths (default: "path").

    Example:
        >>> gather_image_paths(["new_images/", "one.jpg"])
        [PosixPath('new_images/a.jpg'), PosixPath('one.jpg')]
    """
    if not sources:
        raise ValueError("No images given. Pass image files, folders or a CSV file. Received: images=[]")
    image_paths = []
    for source in map(Path, sources):
        if source.is_dir():
            image_paths.extend(
                sorted(path for path in source.rglob("*") if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file())
            )
        elif source.suffix.lower() == ".csv":
            if not source.is_file():
                raise FileNotFoundError(f"CSV file not found: {source.resolve()}")
            image_paths.extend(_csv_image_paths(source, path_column))
        else:
            image_paths.append(source)
    if not image_paths:
        raise ValueError(
            f"No images found in {', '.join(str(source) for source in sources)}: the folders hold no file ending in "
            f"{', '.join(sorted(IMAGE_EXTENSIONS))} and the CSV files list none. Received: images={list(map(str, sources))}"
        )
    return image_paths
