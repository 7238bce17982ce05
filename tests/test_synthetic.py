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
    with pytest.raises(ValueError, match=r"Unknown kind 'xnor'. Valid kinds: xor, noisy_views, random"):
        write_synthetic_store(tmp_path / "s.h5", kind="xnor")
    with pytest.raises(ValueError, match=r"needs at least two backbones. Received: backbones=\['a'\]"):
        write_synthetic_store(tmp_path / "s.h5", kind="xor", backbones=("a",))
