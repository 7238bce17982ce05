"""Data folders as public image sets come: split folders under any name, wrappers, nested class folders."""

import collections

import pytest

from features.dataset import discover_images
from features.layout import _split_by_meaning, read_folder_images, split_by_words
from tests._features_fixtures import make_class_folders

CLASSES = ("glioma", "meningioma", "pituitary")

# (split folder -> split) as they come in downloaded sets, each name a folder under DATA; a "/"
# inside a name is a wrapper folder that the archive added.
NAMING_STYLES = {
    "plain": {"train": "train", "val": "val", "test": "test"},
    "brain_tumor_mri": {"Training": "train", "Testing": "test"},
    "intel_wrapped": {"seg_train/seg_train": "train", "seg_test/seg_test": "test"},
    "images_suffix": {"train_images": "train", "test_images": "test"},
    "set_suffix": {"trainset": "train", "valset": "val", "testset": "test"},
    "data_suffix": {"Training_Data": "train", "Validation_Data": "val", "Testing_Data": "test"},
    "upper_case": {"TRAIN": "train", "TEST": "test"},
    "roboflow": {"train": "train", "valid": "val", "test": "test"},
    "cats_dogs_wrapped": {"training_set/training_set": "train", "test_set/test_set": "test"},
    "camel_case": {"TrainImages": "train", "DevImages": "val", "TestImages": "test"},
    "by_structure_only": {"imgtrain": "train", "imgtest": "test"},
}


@pytest.mark.parametrize("style", sorted(NAMING_STYLES))
def test_split_folders_under_any_name_are_splits_never_classes(tmp_path, style):
    folders = NAMING_STYLES[style]
    for index, name in enumerate(folders):
        make_class_folders(tmp_path, classes=CLASSES, per_class=4, prefix=name, seed=index)
    table = discover_images(tmp_path, val_fraction=0.25, test_fraction=0.25)
    assert table.layout == "split_folders"
    assert table.class_names == CLASSES  # the class folders inside, merged across splits, never the split folders
    top_split = {name.split("/")[0]: split for name, split in folders.items()}
    for path, split, label in zip(table.paths, table.splits, table.labels):
        assert CLASSES[label] == path.split("/")[-2]
        given = top_split[path.split("/")[0]]
        # A split the data does not give (no val folder) is taken from train.
        assert split == given or (given == "train" and split not in folders.values())
    assert set(table.splits) == {"train", "val", "test"}
    counts = collections.Counter(table.splits)
    if "val" not in folders.values():
        assert counts["val"] == 3  # one per class: 25% of train's 12, stratified
    for name, split in folders.items():
        assert f"{name}/ -> {split}" in table.description
    assert any(line.startswith("  layout: split folders in DATA") for line in table.describe())


def test_a_wrapper_folder_and_macos_leftovers_are_looked_through(tmp_path):
    for split in ("train", "val", "test"):
        make_class_folders(tmp_path / "chest_xray" / "chest_xray", classes=("NORMAL", "PNEUMONIA"), per_class=3,
                           prefix=split)
    make_class_folders(tmp_path / "__MACOSX" / "chest_xray", classes=("NORMAL",), per_class=2, prefix="train")
    table = discover_images(tmp_path)
    assert table.class_names == ("NORMAL", "PNEUMONIA") and len(table) == 18
    assert all(path.startswith("chest_xray/chest_xray/") for path in table.paths)
    assert table.description == ("split folders in DATA/chest_xray/chest_xray (named): test/ -> test, "
                                 "train/ -> train, val/ -> val")
    # DATA given one level too high, above one data set, reads the same.
    assert discover_images(tmp_path / "chest_xray").paths == tuple(p.removeprefix("chest_xray/") for p in table.paths)


def test_split_folders_whose_names_say_nothing_are_an_error_until_mapped(tmp_path):
    for index, name in enumerate(("fold_a", "fold_b", "fold_c")):
        make_class_folders(tmp_path, classes=("cat", "dog"), per_class=3, prefix=name, seed=index)
    with pytest.raises(ValueError, match=r"look like split folders \(each holds the same sub-folders\), but the names "
                                         r"fold_a, fold_b, fold_c do not say which split. Map them by hand, e.g. "
                                         r"--split-map fold_a=train\|val\|test\|skip"):
        discover_images(tmp_path)
    table = discover_images(tmp_path, split_map={"fold_a": "train", "fold_b": "val", "fold_c": "test"})
    assert table.class_names == ("cat", "dog")
    assert [split for path, split in zip(table.paths, table.splits) if path.startswith("fold_b/")] == ["val"] * 6
    with pytest.raises(ValueError, match=r"--split-map names folder\(s\) fold_z that are not in"):
        discover_images(tmp_path, split_map={"fold_z": "train"})
    with pytest.raises(ValueError, match=r"--split-map sends folder 'fold_a' to unknown split 'holdout'"):
        discover_images(tmp_path, split_map={"fold_a": "holdout"})


def test_a_split_folder_can_be_skipped_and_two_folders_of_one_split_are_refused(tmp_path):
    # The blood-cell set: TRAIN, TEST and TEST_SIMPLE (a subset of TEST) side by side.
    for index, name in enumerate(("TRAIN", "TEST", "TEST_SIMPLE")):
        make_class_folders(tmp_path, classes=("EOSINOPHIL", "LYMPHOCYTE"), per_class=3, prefix=name, seed=index)
    with pytest.raises(ValueError, match="name the same split 'test': TEST and TEST_SIMPLE. Keep one, or map them with "
                                         "--split-map"):
        discover_images(tmp_path)
    table = discover_images(tmp_path, split_map={"TEST_SIMPLE": "skip"})
    assert not any(path.startswith("TEST_SIMPLE/") for path in table.paths) and len(table) == 12


def test_an_unlabeled_prediction_folder_is_named_in_the_error_and_mapped_by_hand(tmp_path):
    # The Intel set: seg_train/seg_train/<class>, seg_test/seg_test/<class>, seg_pred/seg_pred/*.jpg.
    for index, name in enumerate(("seg_train/seg_train", "seg_test/seg_test")):
        make_class_folders(tmp_path, classes=("forest", "sea"), per_class=3, prefix=name, seed=index)
    make_class_folders(tmp_path / "seg_pred", classes=("seg_pred",), per_class=2)
    with pytest.raises(ValueError, match=r"mixes split folders \(seg_test, seg_train\) with other folders \(seg_pred\).*"
                                         r"--split-map seg_pred=train\|val\|test\|skip"):
        discover_images(tmp_path)
    table = discover_images(tmp_path, split_map={"seg_pred": "test"})
    unlabeled = [path for path, label in zip(table.paths, table.labels) if label < 0]
    assert unlabeled == ["seg_pred/seg_pred/seg_pred_000.jpg", "seg_pred/seg_pred/seg_pred_001.jpg"]


def test_nested_class_folders_are_refused_unless_read_recursively_on_purpose(tmp_path):
    # COVID-19 radiography style: every class holds images/ and masks/.
    for class_name in ("COVID", "Normal", "Viral"):
        make_class_folders(tmp_path / class_name, classes=("images", "masks"), per_class=2)
    make_class_folders(tmp_path / "Viral", classes=("extra",), per_class=1)
    with pytest.raises(ValueError, match="do not say which split.*if they are classes with nested folders, pass "
                                         "--recursive"):
        discover_images(tmp_path)
    table = discover_images(tmp_path, recursive=True, val_fraction=0.2, test_fraction=0.2)
    assert table.class_names == ("COVID", "Normal", "Viral") and len(table) == 13
    assert table.description == "class folders in DATA, nested folders read into their class (--recursive)"
    # One class folder with a nested folder among plain ones: refused, never merged silently.
    make_class_folders(tmp_path / "plain", classes=("cat", "dog"), per_class=2)
    make_class_folders(tmp_path / "plain" / "dog", classes=("puppies",), per_class=2)
    with pytest.raises(ValueError, match=r"Class folder .*plain/dog holds folders with images \(puppies\): read as one "
                                         r"class they would be merged. Pass --recursive"):
        discover_images(tmp_path / "plain")
    assert len(discover_images(tmp_path / "plain", recursive=True)) == 6


def test_splits_inside_class_folders(tmp_path):
    for index, class_name in enumerate(("cat", "dog")):
        for split in ("train", "test"):
            make_class_folders(tmp_path / class_name, classes=(split,), per_class=3, seed=index)
    table = discover_images(tmp_path, val_fraction=0.0)
    assert table.layout == "splits_in_class_folders" and table.class_names == ("cat", "dog")
    for path, split, label in zip(table.paths, table.splits, table.labels):
        assert path.split("/")[:2] == [table.class_names[label], split]


def test_a_class_named_like_a_split_among_class_folders_is_a_class(tmp_path):
    make_class_folders(tmp_path, classes=("bus", "train", "tram"), per_class=3)
    assert discover_images(tmp_path).class_names == ("bus", "train", "tram")


def test_split_words_and_meaning():
    assert [split_by_words(name) for name in ("Training_Data", "trainset", "TEST", "valid", "seg_train2", "dev")] == [
        "train", "train", "test", "val", "train", "val"]
    # Whole words only: class names that merely contain a split's letters stay classes.
    assert [split_by_words(name) for name in ("valley", "device", "contest", "trainer", "train_test")] == [None] * 5
    assert [_split_by_meaning(name) for name in ("imgtrain", "x_testx", "trainval", "holdout")] == [
        "train", "test", "train", None]


def test_flat_folder(tmp_path):
    make_class_folders(tmp_path, classes=("x",), per_class=3)
    for path in (tmp_path / "x").iterdir():
        path.rename(tmp_path / path.name)
    (tmp_path / "x").rmdir()
    found = read_folder_images(tmp_path)
    assert found.layout == "flat" and [label for _, label, _ in found.entries] == [None] * 3
