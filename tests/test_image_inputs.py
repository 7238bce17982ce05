import pytest

from fusion.image_inputs import gather_image_paths


def test_folders_are_searched_recursively_and_non_images_ignored(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/2.png", "a/b/1.JPG", "a/notes.txt", "a/b/3.webp"):
        (tmp_path / name).write_bytes(b"")
    assert gather_image_paths([tmp_path / "a"]) == [tmp_path / "a/2.png", tmp_path / "a/b/1.JPG", tmp_path / "a/b/3.webp"]


def test_files_keep_their_order_and_csv_paths_are_relative_to_the_csv(tmp_path):
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "todo.csv").write_text("id,file\n1,img/x.png\n2,/abs/y.png\n")
    paths = gather_image_paths([tmp_path / "z.png", tmp_path / "lists" / "todo.csv"], path_column="file")
    assert paths == [tmp_path / "z.png", tmp_path / "lists" / "img" / "x.png", tmp_path / "/abs/y.png"]


def test_csv_without_the_path_column(tmp_path):
    (tmp_path / "todo.csv").write_text("file\nx.png\n")
    with pytest.raises(ValueError, match=r"has no column 'path'. Columns found: file. .*--path-column"):
        gather_image_paths([tmp_path / "todo.csv"])


def test_no_images_given():
    with pytest.raises(ValueError, match="No images given"):
        gather_image_paths([])


def test_folders_and_lists_without_images(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no pictures here")
    (tmp_path / "none.csv").write_text("path\n")
    with pytest.raises(ValueError, match=r"No images found in .*empty, .*none\.csv: the folders hold no file ending in "
                                         r"\.bmp, .*and the CSV files list none"):
        gather_image_paths([tmp_path / "empty", tmp_path / "none.csv"])
