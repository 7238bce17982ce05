import collections

import numpy as np
import pytest

from features.dataset import discover_images, fingerprints, make_splits
from tests._features_fixtures import make_class_folders


def test_class_folders_get_a_stratified_seeded_split(tmp_path):
    make_class_folders(tmp_path, classes=("cat", "dog"), per_class=10)
    (tmp_path / "notes.txt").write_text("not an image")
    table = discover_images(tmp_path, val_fraction=0.2, test_fraction=0.2, seed=0)
    assert table.layout == "class_folders"
    assert table.class_names == ("cat", "dog")
    assert len(table) == 20 and table.paths[0] == "cat/cat_000.jpg"
    counts = collections.Counter(zip(table.labels.tolist(), table.splits))
    assert counts[(0, "test")] == 2 and counts[(1, "test")] == 2
    assert counts[(0, "val")] == 2 and counts[(1, "val")] == 2
    again = discover_images(tmp_path, val_fraction=0.2, test_fraction=0.2, seed=0)
    assert again.splits == table.splits
    other = discover_images(tmp_path, val_fraction=0.2, test_fraction=0.2, seed=1)
    assert other.splits != table.splits


@pytest.mark.parametrize("names", [("train", "val", "test"), ("Training", "validation", "testing"),
                                   ("train", "dev", "test")])
def test_split_folders_are_never_classes(tmp_path, names):
    for split, name in zip(("train", "val", "test"), names):
        make_class_folders(tmp_path, classes=("ant", "bee"), per_class=2, prefix=name)
    table = discover_images(tmp_path)
    assert table.layout == "split_folders"
    assert table.class_names == ("ant", "bee")
    assert collections.Counter(table.splits) == {"train": 4, "val": 4, "test": 4}
    for path, split in zip(table.paths, table.splits):
        assert {"train": names[0], "val": names[1], "test": names[2]}[split] == path.split("/")[0]


def test_split_folders_without_val_carve_val_from_train(tmp_path):
    make_class_folders(tmp_path, classes=("ant", "bee"), per_class=10, prefix="train")
    make_class_folders(tmp_path, classes=("ant", "bee"), per_class=2, prefix="test")
    table = discover_images(tmp_path, val_fraction=0.2)
    counts = collections.Counter(table.splits)
    assert counts == {"train": 16, "val": 4, "test": 4}
    assert all(path.startswith("train/") for path, s in zip(table.paths, table.splits) if s == "val")


def test_unlabeled_images_in_a_split_folder_get_label_minus_one(tmp_path):
    make_class_folders(tmp_path, classes=("ant",), per_class=2, prefix="train")
    make_class_folders(tmp_path, classes=("x",), per_class=2, prefix="test")
    for path in (tmp_path / "test" / "x").iterdir():
        path.rename(tmp_path / "test" / path.name)
    (tmp_path / "test" / "x").rmdir()
    table = discover_images(tmp_path, val_fraction=0)
    assert table.class_names == ("ant",)
    assert [label for label, s in zip(table.labels, table.splits) if s == "test"] == [-1, -1]


def test_mixing_split_and_class_folders_is_an_error(tmp_path):
    make_class_folders(tmp_path, classes=("cat",), per_class=1, prefix="train")
    make_class_folders(tmp_path, classes=("dog",), per_class=1)
    with pytest.raises(ValueError, match=r"mixes split folders \(train\) with other folders \(dog\)"):
        discover_images(tmp_path)
    make_class_folders(tmp_path / "two", classes=("cat",), per_class=1, prefix="val")
    make_class_folders(tmp_path / "two", classes=("cat",), per_class=1, prefix="validation")
    with pytest.raises(ValueError, match="name the same split 'val'"):
        discover_images(tmp_path / "two")
    # DATA one level above the data set: its split folders must not become parts of a class.
    make_class_folders(tmp_path / "above" / "flowers", classes=("rose",), per_class=1, prefix="train")
    make_class_folders(tmp_path / "above" / "flowers", classes=("rose",), per_class=1, prefix="test")
    with pytest.raises(ValueError, match=r"Class folder .*above/flowers holds split folders \(test, train\): a split "
                                         r"folder is never a class. If flowers is your data set, pass .*above/flowers as DATA"):
        discover_images(tmp_path / "above")


def test_csv_with_ids_labels_and_splits(tmp_path):
    make_class_folders(tmp_path, classes=("img",), per_class=4)
    lines = ["id,label,split", "img/img_000,cat,train", "img/img_001.jpg,dog,Train",
             "img/img_002,cat,validation", "img/img_003,,test"]
    (tmp_path / "list.csv").write_text("\n".join(lines) + "\n")
    table = discover_images(tmp_path, csv_path=tmp_path / "list.csv")
    assert table.layout == "csv"
    assert table.paths == ("img/img_000.jpg", "img/img_001.jpg", "img/img_002.jpg", "img/img_003.jpg")
    assert table.class_names == ("cat", "dog")
    assert table.labels.tolist() == [0, 1, 0, -1]
    assert table.splits == ("train", "train", "val", "test")


def test_csv_without_split_gets_one_and_custom_columns(tmp_path):
    make_class_folders(tmp_path, classes=("img",), per_class=10)
    rows = [f"img/img_{i:03d}.jpg;{'ab'[i % 2]}" for i in range(10)]
    (tmp_path / "list.csv").write_text("file,kind\n" + "\n".join(r.replace(";", ",") for r in rows) + "\n")
    table = discover_images(tmp_path, csv_path=tmp_path / "list.csv", csv_path_column="file",
                            csv_label_column="kind", val_fraction=0.2, test_fraction=0.2)
    assert collections.Counter(table.splits) == {"train": 6, "val": 2, "test": 2}


def test_csv_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="CSV file not found: .*missing.csv"):
        discover_images(tmp_path, csv_path=tmp_path / "missing.csv")
    (tmp_path / "a.csv").write_text("name,label\nx.jpg,cat\n")
    with pytest.raises(ValueError, match="has no column 'path' for the image path or id. Its columns: name, label"):
        discover_images(tmp_path, csv_path=tmp_path / "a.csv")
    with pytest.raises(ValueError, match="has no label column 'kind'"):
        discover_images(tmp_path, csv_path=tmp_path / "a.csv", csv_path_column="name", csv_label_column="kind")
    (tmp_path / "unlabeled.csv").write_text("path,class\nx.jpg,cat\n")
    with pytest.warns(UserWarning, match=r"has no column 'label', so every image is unlabeled \(-1\). Its columns: "
                                         r"path, class. Pass --csv-label-column NAME"):
        table = discover_images(tmp_path, csv_path=tmp_path / "unlabeled.csv")
    assert table.labels.tolist() == [-1] and table.class_names == ()
    (tmp_path / "b.csv").write_text("path,label,split\nx.jpg,cat,holdout\n")
    with pytest.raises(ValueError, match="line 2: unknown split 'holdout'"):
        discover_images(tmp_path, csv_path=tmp_path / "b.csv")
    (tmp_path / "c.csv").write_text("path,label\nx.jpg,cat\nx.jpg,dog\n")
    with pytest.raises(ValueError, match="line 3: image 'x.jpg' is listed twice"):
        discover_images(tmp_path, csv_path=tmp_path / "c.csv")


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="Data folder not found: .*nowhere"):
        discover_images(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="No images found in"):
        discover_images(tmp_path / "empty")
    with pytest.raises(ValueError, match=r"val_fraction \+ test_fraction must be below 1"):
        discover_images(tmp_path, val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ValueError, match=r"test_fraction must be in \[0, 1\)"):
        make_splits([0, 1], test_fraction=-0.1)


def test_fingerprints_are_size_and_mtime(tmp_path):
    paths = make_class_folders(tmp_path, classes=("a",), per_class=1)
    prints = fingerprints(tmp_path, ["a/a_000.jpg", "a/missing.jpg"])
    assert prints[0, 0] == paths[0].stat().st_size and prints[0, 1] == paths[0].stat().st_mtime_ns
    assert prints[1].tolist() == [-1, -1]
