"""Synthetic stores follow their stated rule, so the tests built on them mean what they say."""

import h5py
import numpy as np
import pytest

from fusion.store import read_store_info
from fusion.synthetic import write_synthetic_store


def test_xor_label_is_the_xor_of_the_bits_each_backbone_sees(tmp_path):
    path = write_synthetic_store(tmp_path / "xor.h5", kind="xor", num_rows=200, feature_dims=8, noise=0.1)
    with h5py.File(path) as store_file:
        bit_alpha = store_file["features/alpha"][:, 0] > 0
        bit_beta = store_file["features/beta"][:, 0] > 0
        labels = store_file["images/label"][()]
    np.testing.assert_array_equal(labels, bit_alpha ^ bit_beta)
    # Each bit alone says nothing about the label.
    assert abs(np.mean(labels[bit_alpha]) - 0.5) < 0.15


def _codes(values, num_classes):
    """The class each row's code shows: the sign bits of the first dims, read as binary digits."""
    num_bits = int(np.ceil(np.log2(num_classes)))
    return sum((values[:, bit] > 0).astype(int) << bit for bit in range(num_bits))


@pytest.mark.parametrize("num_classes", [2, 4])
def test_switch_selector_names_the_backbone_that_shows_the_class(tmp_path, num_classes):
    path = write_synthetic_store(tmp_path / "switch.h5", kind="switch", num_rows=2000, feature_dims=8, noise=0.1,
                                 num_classes=num_classes)
    with h5py.File(path) as store_file:
        shown = {name: _codes(store_file[f"features/{name}"][()], num_classes) for name in ("alpha", "beta")}
        beta_shows_class = store_file["features/selector"][:, 0] > 0
        labels = store_file["images/label"][()]
        assert list(store_file["features"]) == ["alpha", "beta", "selector"]
    np.testing.assert_array_equal(np.where(beta_shows_class, shown["beta"], shown["alpha"]), labels)
    assert abs(np.mean(beta_shows_class) - 0.5) < 0.05
    # The other backbone shows a random class: right only by chance, so each backbone alone is right
    # about (1 + 1/C) / 2 of the time, and nothing but the selector says which one to trust.
    decoys = np.where(beta_shows_class, shown["alpha"], shown["beta"])
    assert abs(np.mean(decoys == labels) - 1 / num_classes) < 0.05
    assert abs(np.mean(shown["alpha"] == labels) - (1 + 1 / num_classes) / 2) < 0.05


def test_rows_sorted_by_label_views_and_spatial_shapes(tmp_path):
    path = write_synthetic_store(
        tmp_path / "s.h5", kind="noisy_views", num_rows=30, backbones=("a",), feature_dims=5, spatial_size=3,
        num_views=2, num_classes=3, dtype="float32",
    )
    info = read_store_info(path)
    assert np.all(np.diff(info.labels) >= 0)
    assert info.feature_shapes == {"a": (3, 3, 5)} and info.feature_dtypes == {"a": "float32"}
    with h5py.File(path) as store_file:
        assert store_file["views/a"].shape == (30, 2, 3, 3, 5)
        # A view keeps the signal and gets fresh noise.
        assert not np.allclose(store_file["views/a"][:, 0], store_file["features/a"][()])


def test_errors(tmp_path):
    with pytest.raises(ValueError, match=r"Unknown kind 'xnor'. Valid kinds: xor, noisy_views, random, switch"):
        write_synthetic_store(tmp_path / "s.h5", kind="xnor")
    with pytest.raises(ValueError, match=r"needs at least two backbones. Received: backbones=\['a'\]"):
        write_synthetic_store(tmp_path / "s.h5", kind="xor", backbones=("a",))
    with pytest.raises(ValueError, match=r"kind='switch' needs at least three backbones.*Received: backbones=\['a', 'b'\]"):
        write_synthetic_store(tmp_path / "s.h5", kind="switch", backbones=("a", "b"))
