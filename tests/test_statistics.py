"""Feature statistics: exact per-channel means and the mean channel variance over chosen rows, in chunks, from arrays or HDF5."""

import h5py
import numpy as np
import pytest

import fusion.statistics
from fusion.statistics import feature_statistics


def test_channel_means_and_mean_variance_over_the_chosen_rows(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    vectors = rng.normal(5.0, 3.0, size=(50, 4)).astype("float32")
    maps = rng.normal(-1.0, 0.01, size=(50, 2, 3, 4)).astype("float16")
    rows = np.sort(rng.choice(50, size=30, replace=False))
    with h5py.File(tmp_path / "features.h5", "w") as store:
        store["maps"] = maps
    # A few rows per chunk, so that chunks merge and some hold none of the rows.
    monkeypatch.setattr(fusion.statistics, "_CHUNK_BYTES", 3 * maps[0].nbytes)
    with h5py.File(tmp_path / "features.h5", "r") as store:
        statistics = feature_statistics({"vectors": vectors, "maps": store["maps"]}, rows=rows)
    np.testing.assert_allclose(statistics["vectors"][0], vectors[rows].mean(0), rtol=1e-5)
    np.testing.assert_allclose(statistics["vectors"][1], np.full(4, vectors[rows].var(0).mean()), rtol=1e-4)
    # Spatial positions count as samples of their channel.
    per_channel = maps[rows].astype(np.float64).reshape(-1, 4)
    np.testing.assert_allclose(statistics["maps"][0], per_channel.mean(0), rtol=1e-5)
    np.testing.assert_allclose(statistics["maps"][1], np.full(4, per_channel.var(0).mean()), rtol=1e-4)
    assert statistics["maps"][0].dtype == np.float32 and statistics["maps"][1].shape == (4,)
    everything = feature_statistics({"vectors": vectors})
    np.testing.assert_allclose(everything["vectors"][0], vectors.mean(0), rtol=1e-5)


def test_one_variance_keeps_the_channels_relative_scales():
    features = np.zeros((10, 3), "float32")
    features[:, 0] = np.arange(10)  # variance 8.25; channels 1 and 2 never vary
    features[:, 1] = 7.0
    mean, variance = feature_statistics({"a": features})["a"]
    np.testing.assert_allclose(mean, [4.5, 7.0, 0.0])
    np.testing.assert_allclose(variance, [2.75, 2.75, 2.75], rtol=1e-6)


def test_no_rows_is_an_error():
    with pytest.raises(ValueError, match=r"No rows to measure the features of 'a'.*Received: 5 rows in the array, rows=0"):
        feature_statistics({"a": np.ones((5, 2))}, rows=[])


def test_a_non_finite_training_row_is_named_and_refused(tmp_path, monkeypatch):
    vectors = np.random.default_rng(1).normal(size=(40, 3)).astype("float16")
    vectors[5, 1] = np.nan  # outside the measured rows: not read as training data
    vectors[17, 2] = np.inf
    with h5py.File(tmp_path / "features.h5", "w") as store:
        store["a"] = vectors
    monkeypatch.setattr(fusion.statistics, "_CHUNK_BYTES", 7 * vectors[0].nbytes)
    rows = np.arange(10, 40)
    with h5py.File(tmp_path / "features.h5", "r") as store:
        with pytest.raises(ValueError, match=r"The features of 'a' hold NaN or infinite values in row 17: the store is "
                                             r"damaged or was made by another tool"):
            feature_statistics({"a": store["a"]}, rows=rows)
        assert np.all(np.isfinite(feature_statistics({"a": store["a"]}, rows=np.arange(20, 40))["a"][0]))
