import numpy as np
import pytest
from PIL import Image

from features.demo_data import _DIGITS_CLASS_NAMES, write_digits_dataset


def test_writes_every_digit_in_its_class_folder(tmp_path):
    written = write_digits_dataset(tmp_path, image_size=16)
    assert written == 1797
    counts = {name: len(list((tmp_path / name).glob("*.png"))) for name in _DIGITS_CLASS_NAMES}
    assert sum(counts.values()) == 1797
    assert min(counts.values()) >= 170  # every class is present, roughly balanced
    assert not list(tmp_path.rglob("*.part"))


def test_images_are_rgb_dark_ink_on_white(tmp_path):
    write_digits_dataset(tmp_path, image_size=24, limit=20)
    image = np.asarray(Image.open(next((tmp_path / "0").glob("*.png"))))
    assert image.shape == (24, 24, 3)
    assert image.dtype == np.uint8
    assert image[0, 0].min() >= 240  # corner is paper
    assert image.min() < 100  # there is ink


def test_second_call_keeps_existing_files(tmp_path):
    write_digits_dataset(tmp_path, limit=30)
    first = next((tmp_path / "1").glob("*.png"))
    mtime = first.stat().st_mtime_ns
    assert write_digits_dataset(tmp_path, limit=30) == 30
    assert first.stat().st_mtime_ns == mtime


@pytest.mark.parametrize(
    "kwargs, message",
    [({"image_size": 4}, "image_size must be at least 8"), ({"limit": 5}, "limit must keep at least one image per class")],
)
def test_bad_arguments_are_refused(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        write_digits_dataset(tmp_path, **kwargs)
