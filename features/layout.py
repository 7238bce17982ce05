"""Read a data folder's layout from its structure: class folders, split folders under any names, or flat.

Downloaded image sets name their split folders in many ways (`train/`, `Training/`, `seg_train/`,
`train_images/`, `Testing_Data/`, ...) and often wrap everything in one more folder
(`chest_xray/chest_xray/`). A split level is recognised by its names, or by its structure: every
top-level folder holds only folders, and they share most of their subfolder names (the classes).
A folder is never merged into a class silently: class folders with nested folders are refused
unless `recursive=True` asks for it.
"""

import dataclasses
import re
from pathlib import Path

from features.images import IMAGE_EXTENSIONS
from features.store import SPLITS  # the store owns the split names

# `--split-map` may also send a folder nowhere (e.g. a competition's unlabeled `pred/` folder).
_SKIP = "skip"

# Whole words that name a split, compared in lower case after dropping trailing digits and the
# suffixes below: "Training_Data", "trainset", "seg_train", "TestImages" all name one.
_SPLIT_WORDS = {
    "train": ("train", "training", "trn", "trainval"),
    "val": ("val", "valid", "validation", "validate", "dev", "development"),
    "test": ("test", "testing", "tst"),
}
_WORD_SUFFIXES = ("dataset", "set", "data", "images", "image", "imgs", "img", "split", "files")

# Folders that archives and tools leave behind and that never hold a data set.
_IGNORED_FOLDERS = ("__MACOSX", "__pycache__")


@dataclasses.dataclass(frozen=True)
class FolderImages:
    """The images found under a data folder and what its structure says about them.

    Args:
        entries: tuple of (path, class name or None, split or None), paths relative to the root.
        class_names: every class folder found, with or without images.
        layout: "class_folders", "split_folders", "splits_in_class_folders" or "flat".
        description: one line that says how the folder was read, for the summary.
    """

    entries: tuple
    class_names: tuple
    layout: str
    description: str


def parse_split_map(values):
    """`--split-map` values ["Training=train", "pred=skip"] (or a dict from a config file) as a dict.

    Example:
        >>> parse_split_map(["fold_a=train", "fold_b=test"])
        {'fold_a': 'train', 'fold_b': 'test'}
    """
    if not values:
        return None
    if isinstance(values, dict):
        pairs = list(values.items())
    else:
        pairs = []
        for value in values:
            name, separator, split = str(value).rpartition("=")
            if not separator or not name:
                raise ValueError(f"--split-map takes FOLDER=SPLIT pairs, e.g. --split-map Training=train Testing=test. "
                                 f"Received: {value!r}")
            pairs.append((name, split))
    split_map = {name: split.strip().lower() for name, split in pairs}
    for name, split in split_map.items():
        if split not in SPLITS + (_SKIP,):
            raise ValueError(f"--split-map sends folder {name!r} to unknown split {split!r}. Valid splits: "
                             f"{', '.join(SPLITS + (_SKIP,))}. Received: split_map={split_map}")
    return split_map


def _is_image_file(path):
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _visible_dirs(folder):
    """Sub-folders of `folder`, sorted, without hidden ones and archive leftovers such as __MACOSX."""
    return sorted(p for p in folder.iterdir()
                  if p.is_dir() and not p.name.startswith(".") and p.name not in _IGNORED_FOLDERS)


def images_in(folder):
    """Image files directly in `folder`, sorted."""
    return sorted(p for p in folder.iterdir() if _is_image_file(p))


def images_under(folder):
    """Image files anywhere below `folder`, sorted, without hidden ones and archive leftovers."""
    return sorted(p for p in folder.rglob("*") if _is_image_file(p)
                  and not any(part.startswith(".") or part in _IGNORED_FOLDERS
                              for part in p.relative_to(folder).parts))


def broken_links_under(folder):
    """Symlinks with an image file's name anywhere below `folder` whose target does not exist, sorted.

    `images_under` cannot see them (they are no files); they are listed so that they are
    reported as left out rather than vanish.
    """
    return sorted(p for p in Path(folder).rglob("*")
                  if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_symlink() and not p.exists()
                  and not any(part.startswith(".") or part in _IGNORED_FOLDERS
                              for part in p.relative_to(folder).parts))


def _words(name):
    # "Training_Data" -> training, data; "TestImages" -> test, images; "seg_train2" -> seg, train.
    return [word.lower() for word in re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+", name)]


def split_by_words(name):
    """The split a folder name says in whole words ("Training_Data" -> "train"), or None.

    Example:
        >>> split_by_words("Testing_Data"), split_by_words("valley")
        ('test', None)
    """
    found = set()
    for word in _words(name):
        for suffix in _WORD_SUFFIXES:
            if word.endswith(suffix) and len(word) > len(suffix):
                word = word[: -len(suffix)]
                break
        found.update(split for split, words in _SPLIT_WORDS.items() if word in words)
    return found.pop() if len(found) == 1 else None


def _split_by_meaning(name):
    """The split a folder name contains anywhere: train, val/valid/dev, or test (case-insensitive), or None.

    Looser than `split_by_words`; used only for a level whose structure already says it holds splits.

    Example:
        >>> _split_by_meaning("mytrainfolder")
        'train'
    """
    lower = name.lower()
    if "trainval" in lower:
        return "train"
    found = {split for split, keys in (("train", ("train", "trn")), ("val", ("val", "dev")), ("test", ("test", "tst")))
             if any(key in lower for key in keys)}
    return found.pop() if len(found) == 1 else None


def _unwrap(folder):
    """Descend through wrapper folders: a lone sub-folder that holds only folders, or has the same name."""
    while not images_in(folder):
        children = _visible_dirs(folder)
        if len(children) != 1:
            break
        child = children[0]
        if images_in(child) and child.name.lower() != folder.name.lower():
            break  # a lone class folder, not a wrapper
        folder = child
    return folder


def _shares_subfolders(folders):
    """True when every folder holds only folders and most sub-folder names recur in two or more of them."""
    if len(folders) < 2:
        return False
    name_sets = []
    for folder in folders:
        if images_in(folder):
            return False
        names = {child.name for child in _visible_dirs(folder)}
        if not names:
            return False
        name_sets.append(names)
    union = set().union(*name_sets)
    shared = {name for name in union if sum(name in names for names in name_sets) >= 2}
    return len(shared) >= len(union) / 2


def _relative(path, root):
    return Path(path).relative_to(root).as_posix()


def _class_images(class_dir, recursive, data):
    # Images of one class folder; nested folders with images are merged only when asked.
    if recursive:
        return images_under(class_dir)
    nested = [child.name for child in _visible_dirs(class_dir) if images_under(child)]
    if nested:
        shown = ", ".join(nested[:5]) + (f" and {len(nested) - 5} more" if len(nested) > 5 else "")
        raise ValueError(
            f"Class folder {class_dir} holds folders with images ({shown}): read as one class they would be "
            f"merged. Pass --recursive to read every image below each class folder into its class, or give as "
            f"DATA the folder whose sub-folders are the classes. Received: data={data}")
    return images_in(class_dir)


def _map_splits(folders, split_map, mapper, base, data):
    """Folder -> split (or "skip") for each split folder; an error names the ones that cannot be mapped."""
    split_map = dict(split_map or {})
    unknown = sorted(set(split_map) - {folder.name for folder in folders})
    if unknown:
        raise ValueError(
            f"--split-map names folder(s) {', '.join(unknown)} that are not in {base}. Its folders: "
            f"{', '.join(folder.name for folder in folders)}. Received: split_map={split_map}")
    mapped = {folder: split_map.get(folder.name) or mapper(folder.name) for folder in folders}
    unmapped = [folder.name for folder, split in mapped.items() if split is None]
    if unmapped:
        raise ValueError(
            f"The folders of {base} look like split folders (each holds the same sub-folders), but the names "
            f"{', '.join(unmapped)} do not say which split. Map them by hand, e.g. --split-map "
            + " ".join(f"{name}=train|val|test|skip" for name in unmapped[:2])
            + f"; if they are classes with nested folders, pass --recursive; if they are variants of one data set, "
            f"pass one of them as DATA. Received: data={data}")
    taken = {}
    for folder, split in mapped.items():
        if split == _SKIP or folder.name in split_map:
            continue  # a folder mapped by hand may join another folder's split
        if split in taken:
            raise ValueError(
                f"Two folders in {base} name the same split '{split}': {taken[split].name} and {folder.name}. "
                f"Keep one, or map them with --split-map. Received: data={data}")
        taken[split] = folder
    return mapped


def _where(base, root):
    # Where the layout starts, for the summary: DATA itself or a wrapper folder inside it.
    return "DATA" if base == root else f"DATA/{_relative(base, root)}"


def _split_description(base, root, mapped, how):
    pairs = ", ".join(f"{_relative(_unwrap(folder), base)}/ -> {split}" for folder, split in mapped.items())
    return f"split folders in {_where(base, root)} ({how}): {pairs}"


def read_folder_images(data, split_map=None, recursive=False):
    """Find the images of a data folder and read their classes and splits from its structure.

    Args:
        data: the data root folder.
        split_map: dict folder name -> "train", "val", "test" or "skip": the top folders are splits,
            mapped by hand where given (default: None, detect).
        recursive: read every image below a class folder into that class, nested folders included
            (default: False, nested folders with images are an error).

    Example:
        >>> found = read_folder_images("chest_xray/")
        >>> found.description
        'split folders in DATA/chest_xray (named): test/ -> test, train/ -> train, val/ -> val'
    """
    root = Path(data)
    split_map = parse_split_map(split_map)
    base = _unwrap(root)
    top = _visible_dirs(base)
    if not top:
        entries = tuple((_relative(path, root), None, None) for path in images_in(base))
        return FolderImages(entries, (), "flat", f"flat folder of unlabeled images in {base}")
    by_words = {folder: split_by_words(folder.name) for folder in top}
    is_split_level, mapper, how = False, split_by_words, "named"
    if split_map:
        is_split_level, mapper, how = True, _split_by_meaning, "mapped by --split-map"
    elif all(by_words.values()):
        is_split_level = True
    elif _splits_inside(top):
        return _splits_in_class_folders(root, base, top, recursive, data)
    elif _shares_subfolders([_unwrap(folder) for folder in top]) and not recursive:
        is_split_level, mapper, how = True, _split_by_meaning, "recognised by their shared class folders"
    else:
        named = [folder.name for folder, split in by_words.items() if split and not images_in(folder)]
        if named:
            others = [folder.name for folder in top if folder.name not in named]
            raise ValueError(
                f"Data folder {base} mixes split folders ({', '.join(named)}) with other folders "
                f"({', '.join(others)}). Put every class folder inside the split folders, map the others by hand "
                f"(e.g. --split-map {others[0]}=train|val|test|skip), or rename the split folders if they are "
                f"classes. Received: data={data}")
    if not is_split_level:
        entries, class_names = [], []
        for folder in top:
            class_names.append(folder.name)
            entries += [(_relative(path, root), folder.name, None) for path in _class_images(folder, recursive, data)]
        description = f"class folders in {_where(base, root)}"
        if recursive:
            description += ", nested folders read into their class (--recursive)"
        return FolderImages(tuple(entries), tuple(class_names), "class_folders", description)
    mapped = _map_splits(top, split_map, mapper, base, data)
    entries, class_names = [], set()
    for folder, split in mapped.items():
        if split == _SKIP:
            continue
        inner = _unwrap(folder)
        for class_dir in _visible_dirs(inner):
            class_names.add(class_dir.name)
            entries += [(_relative(path, root), class_dir.name, split)
                        for path in _class_images(class_dir, recursive, data)]
        # Images directly in a split folder are unlabeled (e.g. a competition's test set).
        entries += [(_relative(path, root), None, split) for path in images_in(inner)]
    description = _split_description(base, root, mapped, how)
    if recursive:
        description += ", nested folders read into their class (--recursive)"
    return FolderImages(tuple(entries), tuple(sorted(class_names)), "split_folders", description)


def _splits_inside(top):
    # True when the class folders hold only split folders (cat/train/, cat/test/, dog/train/, ...).
    inner = {child.name for folder in top for child in _visible_dirs(folder)}
    return bool(inner) and all(split_by_words(name) for name in inner) and not any(images_in(f) for f in top)


def _splits_in_class_folders(root, base, top, recursive, data):
    # cat/train/*.jpg, cat/test/*.jpg, dog/train/*.jpg: the split level sits inside the classes.
    entries = []
    for class_dir in top:
        for split_dir in _visible_dirs(class_dir):
            split = split_by_words(split_dir.name)
            entries += [(_relative(path, root), class_dir.name, split)
                        for path in _class_images(split_dir, recursive, data)]
    splits = [split for split in SPLITS if any(entry[2] == split for entry in entries)]
    return FolderImages(tuple(entries), tuple(folder.name for folder in top), "splits_in_class_folders",
                        f"class folders in {_where(base, root)}, each split into {', '.join(splits)} folders")
