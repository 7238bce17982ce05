import numpy as np
import pytest
from PIL import Image

from features.views import DIHEDRAL_VIEWS, apply_view, view_names


def test_views_match_pil_transposes():
    image = np.arange(3 * 5 * 3, dtype=np.uint8).reshape(3, 5, 3)
    pil = Image.fromarray(image)
    expected = {
        "hflip": Image.FLIP_LEFT_RIGHT, "vflip": Image.FLIP_TOP_BOTTOM, "rot90": Image.ROTATE_90,
        "rot180": Image.ROTATE_180, "rot270": Image.ROTATE_270, "transpose": Image.TRANSPOSE,
        "transverse": Image.TRANSVERSE,
    }
    assert set(expected) == set(DIHEDRAL_VIEWS)
    for name, method in expected.items():
        np.testing.assert_array_equal(apply_view(image, name), np.asarray(pil.transpose(method)), err_msg=name)
    np.testing.assert_array_equal(apply_view(image, "identity"), image)


def test_the_seven_views_are_distinct():
    image = np.random.default_rng(0).integers(0, 255, (6, 6, 3), dtype=np.uint8)
    outputs = {apply_view(image, name).tobytes() for name in ("identity",) + DIHEDRAL_VIEWS}
    assert len(outputs) == 8


def test_view_sets_and_errors():
    assert view_names("none") == ()
    assert view_names("hflip") == ("hflip",)
    assert len(view_names("dihedral")) == 7
    with pytest.raises(ValueError, match="Unknown views 'all'. Valid values: none, hflip, dihedral"):
        view_names("all")
    with pytest.raises(ValueError, match="Unknown view 'flip'"):
        apply_view(np.zeros((2, 2, 3)), "flip")
