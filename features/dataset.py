"""Find the images of a data set and their labels and splits: class folders, split folders, or a CSV."""

import collections
import csv
import dataclasses
import os
import re
import warnings
from pathlib import Path

import numpy as np

from features.images import IMAGE_EXTENSIONS
from features.layout import broken_links_under, images_in, images_under, read_folder_images, split_by_words
from features.store import SPLITS  # the store owns the split names

# Classes listed one per line in the summary; past this, the smallest ones.
_SUMMARY_MAX_CLASSES = 30

_PATH_COLUMN_FALLBACKS = ("path", "image", "filename", "file", "id", "image_id")


@dataclasses.dataclass(frozen=True)
class ImageTable:
    """The images of a data set, in a fixed order, and what was found while reading it.

    Args:
        root: the data root; `paths` are relative to it.
        paths: image paths (POSIX, relative to `root`).
        labels: int64 class index per image, -1 when unlabeled.
        splits: "train", "val" or "test" per image.
        class_names: label `i` is `class_names[i]`; only classes that have images.
        layout: "class_folders", "split_folders", "splits_in_class_folders", "flat" or "csv".
        description: how the data was read, one line (default: "").
        left_out: tuple of (path, reason) of listed or found images that are not in the table:
            CSV rows without a file or naming one outside DATA, broken symlinks, images of classes
            below `min_images_per_class` (default: ()).
        notes: tuple of lines the user must read before any compute: empty classes, classes too
            small to split, a CSV whose rows mostly have no file (default: ()).
    """

    root: str
    paths: tuple
    labels: np.ndarray
    splits: tuple
    class_names: tuple
    layout: str
    description: str = ""
    left_out: tuple = ()
    notes: tuple = ()

    def __len__(self):
        return len(self.paths)

    def class_counts(self):
        """{class name: {split: images}} of the labeled images."""
        counts = {name: dict.fromkeys(SPLITS, 0) for name in self.class_names}
        for label, split in zip(self.labels.tolist(), self.splits):
            if label >= 0:
                counts[self.class_names[label]][split] += 1
        return counts

    def describe(self, left_out_file=None, max_classes=_SUMMARY_MAX_CLASSES):
        """The summary of what was found, as lines for the terminal: layout, classes per split, notes.

        Args:
            left_out_file: where the full list of left-out images is written, to name it (default: None).
            max_classes: classes listed one per line; past this, the smallest ones (default: 30).

        Example:
            >>> print("\n".join(discover_images("flowers/").describe()))
        """
        unlabeled = int(np.sum(self.labels < 0))
        per_split = collections.Counter(self.splits)
        lines = [f"Data: {self.root}", f"  layout: {self.description or self.layout}",
                 f"  {len(self.paths)} images, {len(self.class_names)} classes"
                 + (f", {unlabeled} unlabeled" if unlabeled else "") + "; per split: "
                 + ", ".join(f"{split} {per_split[split]}" for split in SPLITS)]
        counts = self.class_counts()
        if counts:
            shown = list(counts)
            if len(counts) > max_classes:
                shown = sorted(counts, key=lambda name: (sum(counts[name].values()), name))[:max_classes]
                totals = sorted(sum(split_counts.values()) for split_counts in counts.values())
                lines.append(f"  {len(counts)} classes of {totals[0]} to {totals[-1]} images (median "
                             f"{int(np.median(totals))}); the {len(shown)} smallest:")
            width = max(len("class"), *(len(name) for name in shown))
            lines.append(f"    {'class':<{width}}  {'train':>6} {'val':>6} {'test':>6}")
            lines += [f"    {name:<{width}}  " + " ".join(f"{counts[name][split]:>6}" for split in SPLITS)
                      for name in shown]
        lines += [f"  {note}" for note in self.notes]
        if self.left_out:
            by_reason = collections.Counter(reason_kind(reason) for _, reason in self.left_out)
            lines.append(f"  left out {len(self.left_out)} image(s): "
                         + ", ".join(f"{count} {kind}" for kind, count in by_reason.most_common())
                         + (f"; all listed in {left_out_file}" if left_out_file else ""))
        return lines


def reason_kind(reason):
    """The kind of a skip reason, to count reasons: "corrupt or truncated (image file is truncated)" -> its first part.

    Example:
        >>> reason_kind("too large: 20000 x 20000 pixels > 40000000")
        'too large'
    """
    return re.split(r" \(|: ", reason, maxsplit=1)[0]


def _check_fractions(val_fraction, test_fraction):
    """Validate the split fractions: each in [0, 1), their sum below 1."""
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1). Received: {name}={value}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError("val_fraction + test_fraction must be below 1 to leave training images. "
                         f"Received: val_fraction={val_fraction}, test_fraction={test_fraction}")


def _stratified_take(indices, labels, count, seed):
    # Take `count` of `indices`, each class in proportion (largest remainders, ties at random), when
    # scikit-learn refuses: its stratified split wants at least one taken row per class.
    rng = np.random.default_rng(seed)
    classes, sizes = np.unique(labels, return_counts=True)
    exact = sizes * count / len(indices)
    take = np.floor(exact).astype(int)
    order = np.lexsort((rng.random(len(classes)), -(exact - take)))
    take[order[: count - take.sum()]] += 1
    members = collections.defaultdict(list)
    for index, label in zip(indices, labels.tolist()):
        members[label].append(index)
    taken = set()
    for cls, number in zip(classes.tolist(), take):
        taken.update(rng.choice(members[cls], size=min(number, len(members[cls])), replace=False).tolist())
    return [i for i in indices if i not in taken], sorted(taken)


def _split_indices(indices, labels, fraction, seed):
    # Returns (kept, taken): `fraction` of `indices` taken, stratified by label.
    from sklearn.model_selection import train_test_split

    if fraction <= 0 or len(indices) < 2:
        return list(indices), []
    labels = np.asarray(labels)
    try:
        kept, taken = train_test_split(indices, test_size=fraction, random_state=seed, stratify=labels)
    except ValueError:
        # A class with one image left, or more classes than images to take.
        count = int(np.ceil(round(fraction * len(indices), 6)))  # as scikit-learn counts, without float noise
        return _stratified_take(list(indices), labels, min(count, len(indices) - 1), seed)
    return sorted(kept), sorted(taken)


def _keep_one_train_image_per_class(labels, splits, movable=None):
    # A class whose images all went to val or test could not be learned: move one back to train.
    # Only rows in `movable` (default: all) may move; splits the data gives stay as given.
    trained = {label for label, split in zip(labels.tolist(), splits) if split == "train"}
    for row, label in enumerate(labels.tolist()):
        if label >= 0 and label not in trained and (movable is None or row in movable):
            splits[row] = "train"
            trained.add(label)


def _make_splits(labels, val_fraction, test_fraction, seed):
    """(splits, too_small): a stratified split, classes with fewer images than splits all in train."""
    _check_fractions(val_fraction, test_fraction)
    labels = np.asarray(labels, dtype=np.int64)
    splits = ["train"] * len(labels)
    needed = 1 + (val_fraction > 0) + (test_fraction > 0)
    classes, sizes = np.unique(labels[labels >= 0], return_counts=True)
    too_small = {int(cls): int(size) for cls, size in zip(classes, sizes) if size < needed}
    indices = [i for i, label in enumerate(labels.tolist()) if label not in too_small]
    rest, test = _split_indices(indices, labels[indices], test_fraction, seed)
    rest_val_fraction = val_fraction / (1.0 - test_fraction) if val_fraction else 0.0
    _, val = _split_indices(rest, labels[rest], rest_val_fraction, seed)
    for index in test:
        splits[index] = "test"
    for index in val:
        splits[index] = "val"
    _keep_one_train_image_per_class(labels, splits)
    return splits, too_small


def make_splits(labels, val_fraction=0.1, test_fraction=0.1, seed=0):
    """A stratified, seeded train/val/test assignment (scikit-learn) for images with `labels`.

    Every class with at least one image per split gets one in each; a class with fewer images
    than there are splits goes to train whole, with a warning.

    Args:
        labels: class index per image (-1 for unlabeled counts as one more class).
        val_fraction: share of images for "val" (default: 0.1).
        test_fraction: share of images for "test" (default: 0.1).
        seed: random state of the split (default: 0).

    Example:
        >>> make_splits([0] * 10 + [1] * 10, 0.1, 0.1, seed=0).count("test")
        2
    """
    splits, too_small = _make_splits(labels, val_fraction, test_fraction, seed)
    if too_small:
        warnings.warn(f"{len(too_small)} class(es) have too few images to be split, so all their images go to "
                      f"train: " + ", ".join(f"{label} ({size})" for label, size in too_small.items()), stacklevel=2)
    return splits


def _carve(labels, splits, split, fraction, seed):
    # A split the data does not give (no val/ folder, an unlabeled test/ folder): `fraction` of train.
    train = [i for i, s in enumerate(splits) if s == "train" and labels[i] >= 0]
    _, taken = _split_indices(train, labels[train], fraction, seed)
    for index in taken:
        splits[index] = split
    return len(taken)


def _complete_given_splits(labels, splits, val_fraction, test_fraction, seed):
    """Given splits without labeled val or test images get them from train; returns notes for the summary."""
    notes, given = [], list(splits)
    for split, fraction, option in (("test", test_fraction, "--test-fraction"),
                                    ("val", val_fraction, "--val-fraction")):
        labeled_train = any(s == "train" and label >= 0 for s, label in zip(splits, labels))
        if fraction > 0 and labeled_train and not any(s == split and label >= 0 for s, label in zip(splits, labels)):
            taken = _carve(labels, splits, split, fraction, seed)
            notes.append(f"{split}: {taken} images ({option} {fraction:g}) taken from train, stratified, because the "
                         f"data gives no labeled {split} images")
    carved = {row for row, split in enumerate(given) if split != splits[row]}
    _keep_one_train_image_per_class(labels, splits, movable=carved)
    return notes


def _relative(path, root):
    return Path(os.path.relpath(path, root)).as_posix()


class _FilesByName:
    """The image files under DATA by file name and by stem, listed on first use.

    Labels files often name images by file name or id alone while the images sit in a sub-folder
    (`train_images/`, or `HAM10000_images_part_1/` and `_part_2/`).
    """

    def __init__(self, root):
        self.root = root
        self._index = None
        self.found = 0

    def find(self, name):
        if self._index is None:
            self._index = collections.defaultdict(list)
            for path in images_under(self.root):
                self._index[path.name].append(path)
                self._index[path.stem].append(path)
        return self._index.get(name, [])


def _csv_rows(csv_path):
    """(header, [(line number, row)]) of a CSV file; a row's number is the line it ends on."""
    with open(csv_path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        try:
            header = reader.fieldnames or []
            rows = [(reader.line_num, row) for row in reader]
        except csv.Error as error:
            raise ValueError(f"CSV file {csv_path} line {reader.line_num + 1} cannot be read: {error}. Fix or remove "
                             f"that line. Received: csv={csv_path}") from None
    return header, rows


def _check_fields(csv_path, line, row, header, used):
    # A short row leaves its last fields None; a long one puts the rest under the key None.
    if None in row:
        raise ValueError(
            f"CSV file {csv_path} line {line} has {len(header) + len(row[None])} fields, but the header has "
            f"{len(header)} ({', '.join(header)}): a path or label holding a comma needs quotes. "
            f"Received: {[row[name] for name in header] + row[None]}")
    absent = [name for name in used if row.get(name) is None]
    if absent:
        given = [row[name] for name in header if row[name] is not None]
        raise ValueError(
            f"CSV file {csv_path} line {line} has no {', '.join(repr(name) for name in absent)} field: it has "
            f"{len(given)} of the {len(header)} columns ({', '.join(header)}). Give every row all columns; an "
            f"empty label is written as an empty field, e.g. 'img_001.jpg,'. Received: {given}")


def _outside(path, root):
    """The real path of `path` when it lies outside `root` (`..`, an absolute path, a symlink out), else None."""
    real = Path(os.path.realpath(path))
    return None if real.is_relative_to(root) else real


def _read_csv(csv_path, root, path_column, label_column, split_column, allow_outside_data=False):
    """(entries, named_classes, missing, refused, empty_label_lines, found_by_name) of a labels file.

    entries are (path, label text or None, split or None) of the rows with a file; missing are
    (path, reason) of the rows whose file is not there; refused are (path, reason) of the rows
    naming a file outside DATA or a broken symlink; empty_label_lines are (line, path) of the
    rows with an empty label cell; found_by_name counts rows whose bare file name or id was
    found in a sub-folder of DATA.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"CSV file not found: {csv_path.resolve()}")
    header, rows = _csv_rows(csv_path)
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
    used = [path_column] + [label_column] * has_labels + [split_column] * has_splits
    entries, missing, refused, empty_labels, named_classes, seen = [], [], [], [], set(), set()
    by_name = _FilesByName(root)
    for line, row in rows:
        _check_fields(csv_path, line, row, header, used)
        value = (row[path_column] or "").strip()
        if not value:
            raise ValueError(f"CSV file {csv_path} line {line}: empty '{path_column}'. Received: {row}")
        label_text = (row[label_column] or "").strip() if has_labels else ""
        path = Path(value) if Path(value).is_absolute() else root / value
        if not path.exists() and not path.suffix:
            # An id without extension: find the file it names.
            path = next((path.with_name(path.name + ext) for ext in IMAGE_EXTENSIONS
                         if path.with_name(path.name + ext).is_file()), path)
        matches = [] if path.is_file() or "/" in value or "\\" in value else by_name.find(value)
        if len(matches) == 1:
            path = matches[0]
            by_name.found += 1
        relative = _relative(path, root)
        if relative in seen:
            raise ValueError(f"CSV file {csv_path} line {line}: image '{relative}' is listed twice. "
                             f"Received: {path_column}={value!r}")
        seen.add(relative)
        split = None
        if has_splits:
            split_text = (row[split_column] or "").strip()
            split = split_by_words(split_text)
            if split is None:
                raise ValueError(f"CSV file {csv_path} line {line}: unknown split '{row[split_column]}'. "
                                 f"Valid values: train, val, test, or a word for one (training, valid, validation, "
                                 f"dev, testing, ...). "
                                 f"Received: {split_column}={row[split_column]!r}")
        if label_text:
            named_classes.add(label_text)
        if len(matches) > 1:
            missing.append((relative, f"ambiguous ({len(matches)} files under DATA are named {value}: "
                                      f"{', '.join(_relative(match, root) for match in matches[:2])}; listed in "
                                      f"{csv_path.name} line {line}, give its path)"))
            continue
        where = f"listed in {csv_path.name} line {line}"
        if path.is_symlink() and not path.exists():
            refused.append((relative, f"broken symlink (points to {os.readlink(path)}; {where})"))
            continue
        outside = None if allow_outside_data else _outside(path, root)
        if outside is not None:
            shown = str(path) if Path(value).is_absolute() else relative
            refused.append((shown, f"outside DATA (resolves to {outside}; {where}; --allow-outside-data reads it)"))
            continue
        if not path.is_file():
            missing.append((relative, f"no file ({where})"))
            continue
        if has_labels and not label_text:
            empty_labels.append((line, relative))
        entries.append((relative, label_text or None, split))
    return entries, sorted(named_classes), missing, refused, empty_labels, by_name.found


def _csv_notes(csv_path, listed, missing, require_all):
    """The summary lines about CSV rows without a file; an error when asked for all or none is there."""
    if not missing:
        return []
    examples = ", ".join(path for path, _ in missing[:3])
    if require_all or len(missing) == listed:
        raise ValueError(
            f"{len(missing)} of the {listed} rows of {csv_path} name no file under DATA (e.g. {examples})"
            + (". --require-all asks for every listed image; drop it to go on with the images present"
               if require_all and len(missing) < listed else
               ". Is DATA the folder that the CSV's paths are relative to?")
            + f" Received: {len(missing)} missing of {listed} listed")
    notes = [f"{len(missing)} of the {listed} rows of {Path(csv_path).name} name no file under DATA "
             f"(e.g. {examples}); they are left out"]
    if len(missing) > listed / 2:
        notes.append(f"WARNING: most listed rows ({len(missing) / listed:.0%}) have no file: is DATA the folder "
                     f"that the CSV's paths are relative to, or is this a sample of a larger set? Going on with the "
                     f"{listed - len(missing)} present; --require-all makes this an error.")
    return notes


def _refused_notes(csv_name, refused, empty_labels, label_column):
    """Summary lines about CSV rows outside DATA or on broken symlinks, and rows with an empty label."""
    notes = []
    outside = [path for path, reason in refused if reason_kind(reason) == "outside DATA"]
    if outside:
        notes.append(f"{len(outside)} row(s) of {csv_name} name files outside DATA and are left out "
                     f"(e.g. {', '.join(outside[:3])}); --allow-outside-data reads them")
    broken = [path for path, reason in refused if reason_kind(reason) == "broken symlink"]
    if broken:
        notes.append(f"{len(broken)} row(s) of {csv_name} name broken symlinks and are left out "
                     f"(e.g. {', '.join(broken[:3])})")
    if empty_labels:
        shown = ", ".join(f"line {line} ({path})" for line, path in empty_labels[:3])
        notes.append(f"{len(empty_labels)} row(s) of {csv_name} have an empty '{label_column}' cell, so their "
                     f"images are unlabeled (-1) and never trained on: {shown}"
                     + (f" and {len(empty_labels) - 3} more" if len(empty_labels) > 3 else ""))
    return notes


def _names(items, limit=10):
    items = list(items)
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")


def discover_images(data, csv_path=None, csv_path_column="path", csv_label_column="label",
                    csv_split_column="split", val_fraction=0.1, test_fraction=0.1, seed=0, *,
                    split_map=None, recursive=False, min_images_per_class=1, require_all=False,
                    allow_outside_data=False):
    """List the images of data set `data` with labels and splits, sorted by path.

    Layouts, read from the folder's structure (see `features.layout`): (a) one folder per
    class; (b) split folders under any name that says train, val or test, or that each hold
    the same class folders, each with one folder per class; (c) class folders each split into
    split folders; (d) a CSV of path (or id) and label, optionally split; (e) a folder of
    images only (unlabeled). A lone wrapper folder (`chest_xray/chest_xray/`) is looked
    through. Without a given split a stratified, seeded split is made; given splits without
    labeled val or test images get them from train. Classes are the labels that have images.

    Args:
        data: the data root folder.
        csv_path: a CSV file of images, paths relative to `data` (default: None, use folders).
        csv_path_column: CSV column of the image path or id (default: "path").
        csv_label_column: CSV column of the class name (default: "label").
        csv_split_column: CSV column of the split, used when present (default: "split").
        val_fraction: share of validation images when no split is given (default: 0.1).
        test_fraction: share of test images when no split is given (default: 0.1).
        seed: random state of the split (default: 0).
        split_map: dict top folder name -> "train", "val", "test" or "skip" (default: None, detect).
        recursive: read images in folders nested inside class folders into that class (default: False).
        min_images_per_class: classes with fewer images are left out, listed in `left_out` (default: 1).
        require_all: a CSV row without a file is an error rather than left out (default: False).
        allow_outside_data: read CSV rows whose file resolves outside `data` (`..`, an absolute
            path, a symlink that points out); otherwise they are left out as "outside DATA"
            (default: False).

    Example:
        >>> table = discover_images("flowers/")
        >>> table.class_names
        ('daisy', 'rose')
    """
    _check_fractions(val_fraction, test_fraction)
    if not isinstance(min_images_per_class, int) or min_images_per_class < 1:
        raise ValueError(f"min_images_per_class must be a positive integer. "
                         f"Received: min_images_per_class={min_images_per_class!r}")
    root = Path(data).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"Data folder not found: {root.resolve()}")
    root = root.resolve()
    notes, left_out = [], []
    if csv_path is not None:
        entries, named_classes, missing, refused, empty_labels, found_by_name = _read_csv(
            csv_path, root, csv_path_column, csv_label_column, csv_split_column, allow_outside_data)
        notes += _csv_notes(csv_path, len(entries) + len(missing), missing, require_all)
        notes += _refused_notes(Path(csv_path).name, refused, empty_labels, csv_label_column)
        left_out += missing + refused
        layout = "csv"
        description = f"CSV {csv_path}, paths relative to DATA"
        if found_by_name:
            description += f"; {found_by_name} rows name a file found by its name in a sub-folder"
    else:
        found = read_folder_images(root, split_map=split_map, recursive=recursive)
        entries, named_classes, layout, description = found.entries, found.class_names, found.layout, found.description
        loose = images_in(root) if layout != "flat" else []
        if loose:
            notes.append(f"{len(loose)} image(s) directly in DATA are ignored: with class or split folders, every "
                         "image must be inside one")
        broken = [(_relative(path, root), f"broken symlink (points to {os.readlink(path)})")
                  for path in broken_links_under(root)]
        if broken:
            notes.append(f"{len(broken)} broken symlink(s) under DATA are left out, e.g. {broken[0][0]}")
        left_out += broken
    if not entries:
        outside = [path for path, reason in left_out if reason_kind(reason) == "outside DATA"]
        raise ValueError(f"No images found in {root} (extensions {', '.join(IMAGE_EXTENSIONS)}). "
                         f"Expected class folders, split folders, or --csv"
                         + (f"; {len(outside)} --csv row(s) name files outside DATA, e.g. {outside[0]}: pass "
                            f"--allow-outside-data to read them" if outside else "")
                         + f". Received: data={data}")
    sizes = collections.Counter(label for _, label, _ in entries if label is not None)
    empty = [name for name in named_classes if name not in sizes]
    if empty:
        notes.append(f"{len(empty)} class(es) have no image and are left out: {_names(empty)}")
    small = sorted(name for name, size in sizes.items() if size < min_images_per_class)
    if small:
        notes.append(f"{len(small)} class(es) have fewer than {min_images_per_class} images and are left out "
                     f"(--min-images-per-class): {_names(f'{name} ({sizes[name]})' for name in small)}")
        left_out += [(path, f"class below --min-images-per-class ({label}: {sizes[label]} images)")
                     for path, label, _ in entries if label in small]
        entries = [entry for entry in entries if entry[1] not in small]
    class_names = sorted(name for name in sizes if name not in small)
    class_index = {name: index for index, name in enumerate(class_names)}
    entries = sorted(entries, key=lambda entry: entry[0])
    paths = [path for path, _, _ in entries]
    labels = np.asarray([class_index[label] if label is not None else -1 for _, label, _ in entries], dtype=np.int64)
    if entries[0][2] is None:
        splits, too_small = _make_splits(labels, val_fraction, test_fraction, seed)
        if too_small:
            shown = _names(f"{class_names[label]} ({size})" for label, size in too_small.items())
            needed = 1 + (val_fraction > 0) + (test_fraction > 0)
            notes.append(f"{len(too_small)} class(es) have too few images to be split (one per split needed), so all "
                         f"their images go to train: {shown}. --min-images-per-class {needed} leaves them out instead")
    else:
        splits = [split for _, _, split in entries]
        notes += _complete_given_splits(labels, splits, val_fraction, test_fraction, seed)
    table = ImageTable(str(root), tuple(paths), labels, tuple(splits), tuple(class_names), layout, description,
                       tuple(sorted(left_out)), ())
    if not class_names:
        notes.append("no image has a label: the store can be made, but training needs class folders or a --csv "
                     "with a label column")
    untrained = [name for name, counts in table.class_counts().items() if counts["train"] == 0]
    if untrained:
        notes.append(f"WARNING: {len(untrained)} class(es) have no train image, so training will refuse this store: "
                     f"{_names(untrained)}. Give them train images, or leave them out")
    return dataclasses.replace(table, notes=tuple(notes))


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
