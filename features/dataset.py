"""Find the images of a data set and their labels and splits: class folders, split folders, or a CSV."""

import csv
import dataclasses
import os
import warnings
from pathlib import Path

import numpy as np

from features.images import IMAGE_EXTENSIONS

SPLITS = ("train", "val", "test")

# Folder names people use for each split; compared in lower case.
SPLIT_ALIASES = {
    "train": "train", "training": "train", "trn": "train",
    "val": "val", "valid": "val", "validation": "val", "dev": "val", "development": "val",
    "test": "test", "testing": "test", "tst": "test",
}

_PATH_COLUMN_FALLBACKS = ("path", "image", "filename", "file", "id", "image_id")


@dataclasses.dataclass(frozen=True)
class ImageTable:
    """The images of a data set, in a fixed order.

    Args:
        root: the data root; `paths` are relative to it.
        paths: image paths (POSIX, relative to `root`).
        labels: int64 class index per image, -1 when unlabeled.
        splits: "train", "val" or "test" per image.
        class_names: label `i` is `class_names[i]`.
        layout: "class_folders", "split_folders", "flat" or "csv".
    """

    root: str
    paths: tuple
    labels: np.ndarray
    splits: tuple
    class_names: tuple
    layout: str

    def __len__(self):
        return len(self.paths)


def _is_image_file(path):
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _visible_dirs(folder):
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images_under(folder):
    return sorted(p for p in folder.rglob("*") if _is_image_file(p)
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _images_in(folder):
    return sorted(p for p in folder.iterdir() if _is_image_file(p))


def _warn_ignored_root_images(root, count):
    if count:
        warnings.warn(f"{count} image(s) directly in {root} are ignored: with class folders, every "
                      "image must be inside a class folder.", stacklevel=3)


def check_fractions(val_fraction, test_fraction):
    """Validate the split fractions: each in [0, 1), their sum below 1."""
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1). Received: {name}={value}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError("val_fraction + test_fraction must be below 1 to leave training images. "
                         f"Received: val_fraction={val_fraction}, test_fraction={test_fraction}")


def _split_indices(indices, labels, fraction, seed):
    # Returns (kept, taken): `fraction` of `indices` taken, stratified by label when possible.
    from sklearn.model_selection import train_test_split

    if fraction <= 0 or len(indices) < 2:
        return list(indices), []
    labels = np.asarray(labels)
    stratify = labels if len(set(labels.tolist())) > 1 else None
    try:
        kept, taken = train_test_split(indices, test_size=fraction, random_state=seed, stratify=stratify)
    except ValueError:
        warnings.warn("A class has too few images for a stratified split; splitting without "
                      "stratification instead.", stacklevel=4)
        kept, taken = train_test_split(indices, test_size=fraction, random_state=seed)
    return sorted(kept), sorted(taken)


def make_splits(labels, val_fraction=0.1, test_fraction=0.1, seed=0):
    """A stratified, seeded train/val/test assignment (scikit-learn) for images with `labels`.

    Args:
        labels: class index per image (-1 for unlabeled counts as one more class).
        val_fraction: share of images for "val" (default: 0.1).
        test_fraction: share of images for "test" (default: 0.1).
        seed: random state of the split (default: 0).

    Example:
        >>> make_splits([0] * 10 + [1] * 10, 0.1, 0.1, seed=0).count("test")
        2
    """
    check_fractions(val_fraction, test_fraction)
    labels = np.asarray(labels, dtype=np.int64)
    splits = ["train"] * len(labels)
    indices = list(range(len(labels)))
    rest, test = _split_indices(indices, labels, test_fraction, seed)
    rest_val_fraction = val_fraction / (1.0 - test_fraction) if val_fraction else 0.0
    _, val = _split_indices(rest, labels[rest], rest_val_fraction, seed)
    for index in test:
        splits[index] = "test"
    for index in val:
        splits[index] = "val"
    return splits


def _relative(path, root):
    return Path(os.path.relpath(path, root)).as_posix()


def _from_split_folders(root, split_dirs, val_fraction, seed):
    split_of = {}
    for folder in split_dirs:
        split = SPLIT_ALIASES[folder.name.lower()]
        if split in split_of:
            raise ValueError(
                f"Two folders in {root} name the same split '{split}': {split_of[split].name} and "
                f"{folder.name}. Keep one. Received: data={root}")
        split_of[split] = folder
    class_names = sorted({d.name for folder in split_of.values() for d in _visible_dirs(folder)})
    paths, labels, splits = [], [], []
    for split, folder in split_of.items():
        for class_index, class_name in enumerate(class_names):
            class_dir = folder / class_name
            if class_dir.is_dir():
                for path in _images_under(class_dir):
                    paths.append(_relative(path, root)), labels.append(class_index), splits.append(split)
        # Images directly in a split folder are unlabeled (e.g. a competition's test set).
        for path in _images_in(folder):
            paths.append(_relative(path, root)), labels.append(-1), splits.append(split)
    if "val" not in split_of and val_fraction > 0:
        train = [i for i, split in enumerate(splits) if split == "train"]
        _, val = _split_indices(train, [labels[i] for i in train], val_fraction, seed)
        for index in val:
            splits[index] = "val"
    return paths, labels, splits, class_names


def _read_csv(csv_path, root, path_column, label_column, split_column):
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"CSV file not found: {csv_path.resolve()}")
    with open(csv_path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        rows = list(reader)
    if path_column not in header:
        fallback = next((name for name in _PATH_COLUMN_FALLBACKS if name in header), None)
        if path_column != "path" or fallback is None:
            raise ValueError(f"CSV file {csv_path} has no column '{path_column}' for the image path or id. "
                             f"Its columns: {', '.join(header)}. Pass --csv-path-column NAME. "
                             f"Received: csv_path_column={path_column!r}")
        path_column = fallback
    has_labels = label_column in header
    has_splits = split_column in header
    if label_column != "label" and not has_labels:
        raise ValueError(f"CSV file {csv_path} has no label column '{label_column}'. Its columns: "
                         f"{', '.join(header)}. Received: csv_label_column={label_column!r}")
    if not has_labels:
        warnings.warn(f"CSV file {csv_path} has no column '{label_column}', so every image is unlabeled (-1). "
                      f"Its columns: {', '.join(header)}. Pass --csv-label-column NAME if one holds the labels.",
                      stacklevel=3)
    if split_column != "split" and not has_splits:
        raise ValueError(f"CSV file {csv_path} has no split column '{split_column}'. Its columns: "
                         f"{', '.join(header)}. Received: csv_split_column={split_column!r}")
    label_texts = [row[label_column].strip() if has_labels else "" for row in rows]
    class_names = sorted({text for text in label_texts if text})
    class_index = {name: i for i, name in enumerate(class_names)}
    paths, labels, splits, seen = [], [], [], set()
    for line, (row, label_text) in enumerate(zip(rows, label_texts), start=2):
        value = (row[path_column] or "").strip()
        if not value:
            raise ValueError(f"CSV file {csv_path} line {line}: empty '{path_column}'. Received: {row}")
        path = Path(value) if Path(value).is_absolute() else root / value
        if not path.exists() and not path.suffix:
            # An id without extension: find the file it names.
            path = next((path.with_name(path.name + ext) for ext in IMAGE_EXTENSIONS
                         if path.with_name(path.name + ext).is_file()), path)
        relative = _relative(path, root)
        if relative in seen:
            raise ValueError(f"CSV file {csv_path} line {line}: image '{relative}' is listed twice. "
                             f"Received: {path_column}={value!r}")
        seen.add(relative)
        paths.append(relative)
        labels.append(class_index[label_text] if label_text else -1)
        if has_splits:
            split_text = (row[split_column] or "").strip().lower()
            if split_text not in SPLIT_ALIASES:
                raise ValueError(f"CSV file {csv_path} line {line}: unknown split '{row[split_column]}'. "
                                 f"Valid values: {', '.join(sorted(SPLIT_ALIASES))}. "
                                 f"Received: {split_column}={row[split_column]!r}")
            splits.append(SPLIT_ALIASES[split_text])
    return paths, labels, (splits if has_splits else None), class_names


def discover_images(data, csv_path=None, csv_path_column="path", csv_label_column="label",
                    csv_split_column="split", val_fraction=0.1, test_fraction=0.1, seed=0):
    """List the images of data set `data` with labels and splits, sorted by path.

    Layouts: (a) one folder per class; (b) split folders (`train/`, `val/`, `test/` and the
    variants in `SPLIT_ALIASES`) each with one folder per class; (c) a CSV of path (or id) and
    label, optionally split; (d) a folder of images only (unlabeled). Without a given split a
    stratified, seeded split is made; split folders without `val/` get `val_fraction` of
    `train/` as validation.

    Args:
        data: the data root folder.
        csv_path: a CSV file of images, paths relative to `data` (default: None, use folders).
        csv_path_column: CSV column of the image path or id (default: "path").
        csv_label_column: CSV column of the class name (default: "label").
        csv_split_column: CSV column of the split, used when present (default: "split").
        val_fraction: share of validation images when no split is given (default: 0.1).
        test_fraction: share of test images when no split is given (default: 0.1).
        seed: random state of the split (default: 0).

    Example:
        >>> table = discover_images("flowers/")
        >>> table.class_names
        ('daisy', 'rose')
    """
    check_fractions(val_fraction, test_fraction)
    root = Path(data).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"Data folder not found: {root.resolve()}")
    root = root.resolve()
    splits = None
    if csv_path is not None:
        paths, labels, splits, class_names = _read_csv(csv_path, root, csv_path_column,
                                                       csv_label_column, csv_split_column)
        layout = "csv"
    else:
        subdirs = _visible_dirs(root)
        split_dirs = [d for d in subdirs if d.name.lower() in SPLIT_ALIASES]
        if split_dirs and len(split_dirs) < len(subdirs):
            others = [d.name for d in subdirs if d not in split_dirs]
            raise ValueError(
                f"Data folder {root} mixes split folders ({', '.join(d.name for d in split_dirs)}) with "
                f"other folders ({', '.join(others)}). Put every class folder inside the split folders, "
                f"or rename the split folders if they are classes. Received: data={data}")
        if split_dirs:
            paths, labels, splits, class_names = _from_split_folders(root, split_dirs, val_fraction, seed)
            layout = "split_folders"
            _warn_ignored_root_images(root, len(_images_in(root)))
        elif subdirs:
            for folder in subdirs:
                nested = [d.name for d in _visible_dirs(folder) if d.name.lower() in SPLIT_ALIASES]
                if nested:
                    # DATA one level too high: the split folders would become parts of a class.
                    raise ValueError(
                        f"Class folder {folder} holds split folders ({', '.join(nested)}): a split folder is "
                        f"never a class. If {folder.name} is your data set, pass {folder} as DATA. "
                        f"Received: data={data}")
            class_names = [d.name for d in subdirs]
            paths, labels = [], []
            for class_index, folder in enumerate(subdirs):
                for path in _images_under(folder):
                    paths.append(_relative(path, root)), labels.append(class_index)
            layout = "class_folders"
            _warn_ignored_root_images(root, len(_images_in(root)))
        else:
            paths = [_relative(path, root) for path in _images_in(root)]
            labels, class_names, layout = [-1] * len(paths), [], "flat"
    if not paths:
        raise ValueError(f"No images found in {root} (extensions {', '.join(IMAGE_EXTENSIONS)}). "
                         f"Expected class folders, split folders, or --csv. Received: data={data}")
    order = sorted(range(len(paths)), key=lambda i: paths[i])
    paths = [paths[i] for i in order]
    labels = np.asarray([labels[i] for i in order], dtype=np.int64)
    if splits is None:
        splits = make_splits(labels, val_fraction, test_fraction, seed)
    else:
        splits = [splits[i] for i in order]
    return ImageTable(str(root), tuple(paths), labels, tuple(splits), tuple(class_names), layout)


def fingerprints(root, paths):
    """(size, mtime_ns) of each file, int64 array (N, 2); (-1, -1) for a missing file."""
    result = np.full((len(paths), 2), -1, dtype=np.int64)
    for i, path in enumerate(paths):
        try:
            stat = os.stat(Path(root) / path)
        except OSError:
            continue
        result[i] = (stat.st_size, stat.st_mtime_ns)
    return result
