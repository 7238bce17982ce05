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
    table = discover_images(tmp_path, val_fraction=0, test_fraction=0)
    assert table.class_names == ("ant",)
    assert [label for label, s in zip(table.labels, table.splits) if s == "test"] == [-1, -1]


def test_an_unlabeled_test_folder_gets_a_labeled_test_split_from_train(tmp_path):
    # A competition's layout: train/<class>/ and test/*.jpg without labels.
    make_class_folders(tmp_path, classes=("ant", "bee"), per_class=10, prefix="train")
    make_class_folders(tmp_path, classes=("x",), per_class=3, prefix="test")
    for path in (tmp_path / "test" / "x").iterdir():
        path.rename(tmp_path / "test" / path.name)
    (tmp_path / "test" / "x").rmdir()
    table = discover_images(tmp_path, val_fraction=0.2, test_fraction=0.2)
    counts = collections.Counter((label >= 0, split) for label, split in zip(table.labels.tolist(), table.splits))
    assert counts == {(True, "train"): 12, (True, "val"): 4, (True, "test"): 4, (False, "test"): 3}
    assert "test: 4 images (--test-fraction 0.2) taken from train, stratified, because the data gives no labeled " \
           "test images" in table.notes


def test_mixing_split_and_class_folders_is_an_error(tmp_path):
    make_class_folders(tmp_path, classes=("cat",), per_class=1, prefix="train")
    make_class_folders(tmp_path, classes=("dog",), per_class=1)
    with pytest.raises(ValueError, match=r"mixes split folders \(train\) with other folders \(dog\)"):
        discover_images(tmp_path)
    make_class_folders(tmp_path / "two", classes=("cat",), per_class=1, prefix="val")
    make_class_folders(tmp_path / "two", classes=("cat",), per_class=1, prefix="validation")
    with pytest.raises(ValueError, match="name the same split 'val'"):
        discover_images(tmp_path / "two")
    # DATA one level above two data sets: their split folders must not become parts of a class.
    for name in ("flowers", "birds"):
        make_class_folders(tmp_path / "above" / name, classes=("rose",), per_class=1, prefix="train")
        make_class_folders(tmp_path / "above" / name, classes=("rose",), per_class=1, prefix="test")
    with pytest.raises(ValueError, match=r"Class folder .*above/birds/test holds folders with images \(rose\): read as "
                                         r"one class they would be merged"):
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
    make_class_folders(tmp_path, classes=("x",), per_class=1)
    (tmp_path / "unlabeled.csv").write_text("path,class\nx/x_000.jpg,cat\n")
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


def _competition_csv(tmp_path, present=10, listed=200, classes=40):
    # A labels file for the full set beside the downloaded sample: 20x more rows than files.
    make_class_folders(tmp_path, classes=("images",), per_class=present)
    rows = [f"images/images_{index:03d}.jpg,class_{index % classes:02d}" for index in range(listed)]
    (tmp_path / "labels.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    return tmp_path / "labels.csv"


def test_a_csv_listing_far_more_rows_than_files_keeps_the_present_ones_and_says_so(tmp_path):
    labels_csv = _competition_csv(tmp_path)
    table = discover_images(tmp_path, csv_path=labels_csv, val_fraction=0.0, test_fraction=0.0)
    # Classes are the labels that have images: 10, not the 40 the CSV names.
    assert len(table) == 10 and table.class_names == tuple(f"class_{i:02d}" for i in range(10))
    assert len(table.left_out) == 190
    assert table.left_out[0] == ("images/images_010.jpg", "no file (listed in labels.csv line 12)")
    lines = table.describe(left_out_file="cache.h5.skipped.csv")
    assert "  190 of the 200 rows of labels.csv name no file under DATA (e.g. images/images_010.jpg, " \
           "images/images_011.jpg, images/images_012.jpg); they are left out" in lines
    assert any(line.startswith("  WARNING: most listed rows (95%) have no file: is DATA the folder") for line in lines)
    assert "  30 class(es) have no image and are left out: class_10, class_11, class_12, class_13, class_14, class_15, " \
           "class_16, class_17, class_18, class_19 and 20 more" in lines
    assert "  left out 190 image(s): 190 no file; all listed in cache.h5.skipped.csv" in lines
    assert len(lines) < 30  # a short summary, never one line per missing file
    with pytest.raises(ValueError, match=r"190 of the 200 rows of .*labels.csv name no file under DATA \(e.g. "
                                         r"images/images_010.jpg.*--require-all asks for every listed image"):
        discover_images(tmp_path, csv_path=labels_csv, require_all=True)
    (tmp_path / "wrong_root").mkdir()
    with pytest.raises(ValueError, match=r"200 of the 200 rows .* name no file under DATA .*Is DATA the folder that the "
                                         r"CSV's paths are relative to\?"):
        discover_images(tmp_path / "wrong_root", csv_path=labels_csv)


def test_classes_with_0_1_and_2_images(tmp_path):
    make_class_folders(tmp_path, classes=("many_a", "many_b"), per_class=10)
    make_class_folders(tmp_path, classes=("one",), per_class=1)
    make_class_folders(tmp_path, classes=("two",), per_class=2)
    (tmp_path / "none").mkdir()
    table = discover_images(tmp_path)
    assert table.class_names == ("many_a", "many_b", "one", "two")  # the empty folder is no class
    counts = table.class_counts()
    assert counts["one"] == {"train": 1, "val": 0, "test": 0} and counts["two"] == {"train": 2, "val": 0, "test": 0}
    assert all(counts[name]["val"] >= 1 and counts[name]["test"] >= 1 for name in ("many_a", "many_b"))
    assert "1 class(es) have no image and are left out: none" in table.notes
    assert ("2 class(es) have too few images to be split (one per split needed), so all their images go to train: "
            "one (1), two (2). --min-images-per-class 3 leaves them out instead") in table.notes
    lines = table.describe()
    assert lines[2] == "  23 images, 4 classes; per split: train 19, val 2, test 2"
    assert lines[3].split() == ["class", "train", "val", "test"] and lines[6].split() == ["one", "1", "0", "0"]
    dropped = discover_images(tmp_path, min_images_per_class=3)
    assert dropped.class_names == ("many_a", "many_b") and len(dropped) == 20
    assert ("one/one_000.jpg", "class below --min-images-per-class (one: 1 images)") in dropped.left_out
    assert "2 class(es) have fewer than 3 images and are left out (--min-images-per-class): one (1), two (2)" \
        in dropped.notes
    with pytest.raises(ValueError, match="min_images_per_class must be a positive integer. Received: "
                                         "min_images_per_class=0"):
        discover_images(tmp_path, min_images_per_class=0)
    with pytest.warns(UserWarning, match=r"1 class\(es\) have too few images to be split, so all their images go to "
                                         r"train: 1 \(2\)"):
        assert make_splits([0] * 10 + [1] * 2, 0.1, 0.1)[10:] == ["train", "train"]


def test_sixty_small_classes_each_get_train_val_and_test(tmp_path):
    # More classes than a 10% test split has images: scikit-learn cannot stratify, the fallback does.
    classes = tuple(f"species_{index:02d}" for index in range(60))
    make_class_folders(tmp_path, classes=classes, per_class=5, size=(16, 16))
    table = discover_images(tmp_path, val_fraction=0.1, test_fraction=0.1)
    counts = table.class_counts()
    assert collections.Counter(table.splits) == {"train": 240, "val": 30, "test": 30}
    assert all(counts[name]["train"] >= 3 for name in classes)
    assert sum(1 for name in classes if counts[name]["test"]) == 30  # 30 test images over 30 classes, one each
    assert discover_images(tmp_path, val_fraction=0.1, test_fraction=0.1).splits == table.splits  # seeded
    lines = table.describe()
    assert "  60 classes of 5 to 5 images (median 5); the 30 smallest:" in lines
    assert len(lines) == 3 + 1 + 1 + 30


def test_given_splits_with_a_class_missing_from_train_warn_before_any_compute(tmp_path):
    make_class_folders(tmp_path, classes=("cat", "dog"), per_class=3, prefix="train")
    make_class_folders(tmp_path, classes=("cat", "dog", "eel"), per_class=2, prefix="test", seed=1)
    table = discover_images(tmp_path)
    assert ("WARNING: 1 class(es) have no train image, so training will refuse this store: eel. Give them train images, "
            "or leave them out") in table.notes


def test_a_labels_file_naming_images_by_id_finds_them_in_sub_folders(tmp_path):
    # HAM10000: image_id without extension in the CSV, the images split over two part folders.
    make_class_folders(tmp_path, classes=("images_part_1", "images_part_2"), per_class=3)
    rows = []
    for index, path in enumerate(sorted(tmp_path.rglob("*.jpg"))):
        path.rename(path.with_name(f"ISIC_{index:07d}.jpg"))
        rows.append(f"ISIC_{index:07d},{'ab'[index % 2]}")
    (tmp_path / "images_part_2" / "ISIC_0000000.jpg").write_bytes(b"a second file of the same name")
    (tmp_path / "metadata.csv").write_text("image_id,dx\n" + "\n".join(rows) + "\n")
    table = discover_images(tmp_path, csv_path=tmp_path / "metadata.csv", csv_label_column="dx")
    assert table.paths == tuple(f"images_part_{1 + (i >= 3)}/ISIC_{i:07d}.jpg" for i in range(1, 6))
    assert table.description.endswith("; 5 rows name a file found by its name in a sub-folder")
    assert table.left_out == (("ISIC_0000000", "ambiguous (2 files under DATA are named ISIC_0000000: "
                                               "images_part_1/ISIC_0000000.jpg, images_part_2/ISIC_0000000.jpg; listed "
                                               "in metadata.csv line 2, give its path)"),)


def test_split_folders_without_any_label_say_so(tmp_path):
    # Dogs vs cats as downloaded: train/ and test1/ hold images only, the label is in the file name.
    make_class_folders(tmp_path, classes=("train", "test1"), per_class=4)
    table = discover_images(tmp_path)
    assert table.layout == "split_folders" and table.class_names == ()
    assert table.notes == ("no image has a label: the store can be made, but training needs class folders or a --csv "
                           "with a label column",)


def _labels_data(tmp_path):
    """DATA with cat/ and dog/ (2 images each), a secret image beside DATA; returns (DATA, secret path)."""
    data = tmp_path / "data"
    make_class_folders(data, classes=("cat", "dog"), per_class=2)
    secret = tmp_path / "secret.png"
    secret.write_bytes((data / "cat" / "cat_000.jpg").read_bytes())
    return data, secret


def test_csv_paths_outside_data_are_left_out_unless_allowed(tmp_path):
    data, secret = _labels_data(tmp_path)
    elsewhere = tmp_path / "abs" / "path" / "outside.png"
    elsewhere.parent.mkdir(parents=True)
    elsewhere.write_bytes(secret.read_bytes())
    (data / "cat" / "link.jpg").symlink_to(secret)  # a file inside DATA that points outside is outside
    (data / "inside_link.jpg").symlink_to(data / "dog" / "dog_000.jpg")  # a link that stays inside is read
    rows = ["cat/cat_000.jpg,cat", "../secret.png,cat", f"{elsewhere},dog", "cat/link.jpg,cat",
            f"{data / 'dog' / 'dog_001.jpg'},dog", "inside_link.jpg,dog", "dog/../cat/cat_001.jpg,cat"]
    (tmp_path / "labels.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    table = discover_images(data, csv_path=tmp_path / "labels.csv", val_fraction=0, test_fraction=0)
    # An absolute path inside DATA and a `..` that stays inside still work.
    assert table.paths == ("cat/cat_000.jpg", "cat/cat_001.jpg", "dog/dog_001.jpg", "inside_link.jpg")
    assert table.left_out == (
        ("../secret.png", f"outside DATA (resolves to {secret.resolve()}; listed in labels.csv line 3; "
                          "--allow-outside-data reads it)"),
        (str(elsewhere), f"outside DATA (resolves to {elsewhere.resolve()}; listed in labels.csv line 4; "
                         "--allow-outside-data reads it)"),
        ("cat/link.jpg", f"outside DATA (resolves to {secret.resolve()}; listed in labels.csv line 5; "
                         "--allow-outside-data reads it)"))
    lines = table.describe(left_out_file="cache.h5.skipped.csv")
    assert "  3 row(s) of labels.csv name files outside DATA and are left out (e.g. ../secret.png, " \
           f"{elsewhere}, cat/link.jpg); --allow-outside-data reads them" in lines
    assert "  left out 3 image(s): 3 outside DATA; all listed in cache.h5.skipped.csv" in lines
    allowed = discover_images(data, csv_path=tmp_path / "labels.csv", val_fraction=0, test_fraction=0,
                              allow_outside_data=True)
    assert allowed.left_out == () and len(allowed) == 7
    assert {"../secret.png", "cat/link.jpg", "../abs/path/outside.png"} <= set(allowed.paths)
    # Nothing but outside rows: the error names the flag.
    (tmp_path / "outside.csv").write_text("path,label\n../secret.png,cat\n")
    with pytest.raises(ValueError, match=r"No images found in .*; 1 --csv row\(s\) name files outside DATA, e.g. "
                                         r"\.\./secret\.png: pass --allow-outside-data to read them\. Received"):
        discover_images(data, csv_path=tmp_path / "outside.csv")


def test_broken_symlinks_are_left_out_and_listed(tmp_path):
    data, secret = _labels_data(tmp_path)
    (data / "cat" / "gone.jpg").symlink_to(tmp_path / "deleted.jpg")
    (data / "dog" / ".hidden.jpg").symlink_to(tmp_path / "deleted.jpg")  # hidden files are never images
    table = discover_images(data, val_fraction=0, test_fraction=0)
    assert len(table) == 4
    assert table.left_out == (("cat/gone.jpg", f"broken symlink (points to {tmp_path / 'deleted.jpg'})"),)
    assert "1 broken symlink(s) under DATA are left out, e.g. cat/gone.jpg" in table.notes
    assert "  left out 1 image(s): 1 broken symlink" in table.describe()
    (tmp_path / "labels.csv").write_text("path,label\ncat/cat_000.jpg,cat\ncat/gone.jpg,cat\n")
    table = discover_images(data, csv_path=tmp_path / "labels.csv", val_fraction=0, test_fraction=0)
    assert table.left_out == (("cat/gone.jpg", f"broken symlink (points to {tmp_path / 'deleted.jpg'}; listed in "
                                               "labels.csv line 3)"),)
    assert "1 row(s) of labels.csv name broken symlinks and are left out (e.g. cat/gone.jpg)" in table.notes


def test_csv_rows_with_missing_or_extra_fields_name_their_line(tmp_path):
    data, _ = _labels_data(tmp_path)
    (tmp_path / "short.csv").write_text('path,label\ncat/cat_000.jpg,cat\n"cat/\ncat_001.jpg",cat\n\n'
                                        'dog/dog_000.jpg\n')
    # The multi-line quoted path and the blank line count: the short row is on line 6.
    with pytest.raises(ValueError, match=r"^CSV file .*short\.csv line 6 has no 'label' field: it has 1 of the 2 "
                                         r"columns \(path, label\)\. Give every row all columns; an empty label is "
                                         r"written as an empty field, e\.g\. 'img_001\.jpg,'\. "
                                         r"Received: \['dog/dog_000\.jpg'\]$"):
        discover_images(data, csv_path=tmp_path / "short.csv")
    (tmp_path / "long.csv").write_text("path,label,split\ncat/cat_000.jpg,cat,train\ncat/a,b.jpg,cat,train\n")
    with pytest.raises(ValueError, match=r"line 3 has 4 fields, but the header has 3 \(path, label, split\): a path or "
                                         r"label holding a comma needs quotes\. Received: \['cat/a', 'b\.jpg', 'cat', "
                                         r"'train'\]"):
        discover_images(data, csv_path=tmp_path / "long.csv")
    (tmp_path / "huge.csv").write_text("path,label\ncat/cat_000.jpg,cat\ncat/cat_001.jpg," + "x" * 200_000 + "\n")
    with pytest.raises(ValueError, match=r"huge\.csv line 3 cannot be read: field larger than field limit"):
        discover_images(data, csv_path=tmp_path / "huge.csv")


def test_empty_label_cells_are_counted_and_named(tmp_path):
    data, _ = _labels_data(tmp_path)
    rows = ["cat/cat_000.jpg,cat", "cat/cat_001.jpg,", "dog/dog_000.jpg,dog", "dog/dog_001.jpg,  "]
    (tmp_path / "labels.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    table = discover_images(data, csv_path=tmp_path / "labels.csv", val_fraction=0, test_fraction=0)
    assert table.labels.tolist() == [0, -1, 1, -1]
    assert ("2 row(s) of labels.csv have an empty 'label' cell, so their images are unlabeled (-1) and never trained "
            "on: line 3 (cat/cat_001.jpg), line 5 (dog/dog_001.jpg)") in table.notes
    assert table.describe()[2].startswith("  4 images, 2 classes, 2 unlabeled;")
