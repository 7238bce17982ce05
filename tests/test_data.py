"""Batches from memory and streamed from HDF5: coverage, contiguous blocks, views, and equal training."""

import shutil
import threading

import h5py
import keras
import numpy as np
import pytest

import fusion.data
from features.store import StoreError
from features.store._checks import _row_checksums
from features.store._read import _read_rows
from fusion.data import FeatureBatches, open_feature_source
from fusion.model import build_fusion_model
from fusion.store import read_store_info
from fusion.synthetic import write_synthetic_store
from fusion.training import train_model


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "store.h5"
    return write_synthetic_store(path, kind="noisy_views", num_rows=300, feature_dims=8, num_views=2, seed=1)


def _batches(source, info, split="train", **kwargs):
    rows = info.split_rows(split)
    return FeatureBatches(source, info.backbones, rows, info.labels[rows], **kwargs)


@pytest.mark.parametrize("stream", [False, True])
def test_every_row_once_per_epoch_in_shuffled_contiguous_blocks(store, stream):
    info = read_store_info(store)
    source = open_feature_source(store, info.backbones, stream=stream)
    assert source.streamed is stream
    batches = _batches(source, info, batch_size=16, shuffle=True, block_rows=4, seed=3)
    rows = info.split_rows("train")
    with h5py.File(store) as store_file:
        alpha = store_file["features/alpha"][()].astype("float32")
    orders = []
    for _ in range(2):
        seen = []
        for index in range(len(batches)):
            inputs, labels = batches[index]
            assert inputs["alpha"].dtype == np.float32 and len(labels) <= 16
            # Recover each row's position from its features: they are unique per row.
            positions = [int(np.flatnonzero((alpha[rows] == row).all(axis=1))[0]) for row in inputs["alpha"]]
            np.testing.assert_array_equal(labels, info.labels[rows[positions]])
            # Whole blocks of 4 consecutive split rows (the split's last block may be shorter).
            blocks = []
            for position in positions:
                if position % 4 == 0 or position != blocks[-1][-1] + 1:
                    blocks.append([])
                blocks[-1].append(position)
            assert all(block[0] % 4 == 0 and len(block) == min(4, len(rows) - block[0]) for block in blocks), blocks
            seen += positions
        assert sorted(seen) == list(range(len(rows)))
        orders.append(seen)
        batches.on_epoch_end()
    assert orders[0] != orders[1], "the block order must change between epochs"


def test_unshuffled_batches_keep_store_order(store):
    info = read_store_info(store)
    batches = _batches(open_feature_source(store, info.backbones, stream=True), info, "test", batch_size=32)
    features = np.concatenate([batches[i][0]["beta"] for i in range(len(batches))])
    with h5py.File(store) as store_file:
        np.testing.assert_array_equal(features, store_file["features/beta"][()][info.split_rows("test")])


class _CountingDataset:
    """An HDF5 dataset stand-in that counts the rows each read returns."""

    def __init__(self, array):
        self.array, self.rows_read = array, []

    def __getitem__(self, key):
        values = self.array[key]
        self.rows_read.append(len(values))
        return values


def test_streamed_reads_of_a_sparse_split_stay_near_the_rows_wanted():
    dataset = _CountingDataset(np.arange(10_000, dtype=np.float32)[:, None])
    dense = np.arange(100, 132)  # consecutive rows: one contiguous read
    np.testing.assert_array_equal(_read_rows(dataset, dense)[:, 0], dense)
    assert dataset.rows_read == [32]
    # A 1% split: 32 rows spread over 3,200 store rows are read as 32 rows, not 3,200.
    sparse = np.arange(0, 3200, 100) + 7
    np.testing.assert_array_equal(_read_rows(dataset, sparse)[:, 0], sparse)
    assert dataset.rows_read == [32, 32]
    # Gaps up to MAX_READ_SPAN rows per wanted row still read as one range.
    half = np.arange(200, 264, 2)
    np.testing.assert_array_equal(_read_rows(dataset, half)[:, 0], half)
    assert dataset.rows_read[-1] == 63


def test_view_index_and_view_augment_pick_views(store):
    info = read_store_info(store)
    source = open_feature_source(store, info.backbones, stream=False, with_views=True)
    rows = info.split_rows("val")
    with h5py.File(store) as store_file:
        identity = store_file["features/alpha"][()][rows].astype("float32")
        views = store_file["views/alpha"][()][rows].astype("float32")
    second = _batches(source, info, "val", batch_size=1000, view_index=2)[0][0]["alpha"]
    np.testing.assert_array_equal(second, views[:, 1])
    augmented = _batches(source, info, "val", batch_size=1000, view_augment=True, seed=0)[0][0]["alpha"]
    picked = [
        next(v for v, candidate in enumerate([identity[i], views[i, 0], views[i, 1]]) if np.array_equal(candidate, row))
        for i, row in enumerate(augmented)
    ]
    counts = np.bincount(picked, minlength=3)
    # Identity and both views, each about a third of the time.
    assert counts.min() > len(rows) / 6, counts


def test_memory_or_stream_decided_by_available_memory(store, monkeypatch):
    info = read_store_info(store)
    monkeypatch.setattr(fusion.data, "_available_memory_bytes", lambda: 10**12)
    assert open_feature_source(store, info.backbones).streamed is False
    monkeypatch.setattr(fusion.data, "_available_memory_bytes", lambda: 1000)
    assert open_feature_source(store, info.backbones).streamed is True
    assert open_feature_source(store, info.backbones, stream=False).streamed is False


def test_bad_batch_size():
    with pytest.raises(ValueError, match="batch_size and block_rows must be at least 1. Received: batch_size=0"):
        FeatureBatches(None, ["a"], [0], [0], batch_size=0)


def _train_and_predict(store, info, stream, seed):
    source = open_feature_source(store, info.backbones, stream=stream)
    keras.utils.set_random_seed(seed)
    model = build_fusion_model({name: info.feature_shapes[name] for name in info.backbones}, 4, units=16)
    history = train_model(
        model, _batches(source, info, batch_size=32, shuffle=True, block_rows=4, seed=seed),
        _batches(source, info, "val", batch_size=32), epochs=4, patience=4,
    )
    return history["loss"], model.predict(_batches(source, info, "test", batch_size=32), verbose=0)


def test_streamed_training_gives_the_same_model_as_in_memory(store):
    info = read_store_info(store)
    memory_loss, memory_predictions = _train_and_predict(store, info, stream=False, seed=0)
    stream_loss, stream_predictions = _train_and_predict(store, info, stream=True, seed=0)
    np.testing.assert_allclose(stream_loss, memory_loss, rtol=1e-6)
    np.testing.assert_allclose(stream_predictions, memory_predictions, rtol=1e-5, atol=1e-7)
    # Another seed trains another model, so the comparison above could have failed.
    _, other_predictions = _train_and_predict(store, info, stream=False, seed=1)
    assert np.abs(other_predictions - memory_predictions).max() > 1e-3


def _read_ahead_threads():
    return [thread for thread in threading.enumerate() if thread.name == "FeatureBatches read-ahead"]


def _all_batches(batches, epochs=2):
    """Every batch of `epochs` epochs, asked for in order as Keras does, with on_epoch_end between epochs."""
    epochs_seen = []
    for _ in range(epochs):
        epochs_seen.append([batches[index] for index in range(len(batches))])
        batches.on_epoch_end()
    return epochs_seen


def _assert_same_batches(first, second):
    assert len(first) == len(second)
    for (inputs, labels), (other_inputs, other_labels) in zip(first, second):
        assert inputs.keys() == other_inputs.keys()
        for name in inputs:
            np.testing.assert_array_equal(inputs[name], other_inputs[name])
        np.testing.assert_array_equal(labels, other_labels)


def test_read_ahead_gives_the_same_batches_as_reading_when_asked(store):
    info = read_store_info(store)
    source = open_feature_source(store, info.backbones, stream=True, with_views=True)
    options = dict(batch_size=16, shuffle=True, block_rows=4, view_augment=True, seed=5)
    assert _batches(source, info, **options).read_ahead == fusion.data.STREAM_READ_AHEAD
    assert _batches(open_feature_source(store, info.backbones, stream=False), info, **options).read_ahead == 0
    expected = _all_batches(_batches(source, info, read_ahead=0, **options))
    assert not _read_ahead_threads()
    for read_ahead in (1, 3):
        batches = _batches(source, info, read_ahead=read_ahead, **options)
        seen = _all_batches(batches)
        for epoch in range(2):
            _assert_same_batches(seen[epoch], expected[epoch])
        assert not _read_ahead_threads(), "the thread ends with the epoch's last batch"
    # The two epochs differ, so serving a batch read ahead for the old epoch in the new one would fail above.
    assert not np.array_equal(expected[0][0][1], expected[1][0][1])
    # Out of order, and an epoch ended half way: batches read ahead for the old plan are dropped.
    batches = _batches(source, info, read_ahead=2, **options)
    _assert_same_batches([batches[3], batches[0], batches[1], batches[-1]],
                         [expected[0][3], expected[0][0], expected[0][1], expected[0][-1]])
    batches[0]
    assert len(_read_ahead_threads()) == 1
    batches.on_epoch_end()
    assert not _read_ahead_threads()
    # Batch 1 of the old epoch was read ahead right after batch 0: the new epoch must not get it.
    _assert_same_batches([batches[1], batches[2]], expected[1][1:3])
    with pytest.raises(IndexError):
        batches[len(batches)]
    source.close()


def test_closing_the_source_stops_its_read_ahead_and_closes_the_file(store):
    info = read_store_info(store)
    source = open_feature_source(store, info.backbones, stream=True)
    batches = _batches(source, info, batch_size=8, shuffle=True, block_rows=4)
    batches[0]
    assert len(_read_ahead_threads()) == 1
    source.close()
    assert not _read_ahead_threads() and source._reader._file is None
    # Asked again after close, it reads ahead anew (the store opens again, as a read after close always did).
    reference = _batches(open_feature_source(store, info.backbones, stream=True), info, batch_size=8, shuffle=True,
                         block_rows=4, read_ahead=0)
    _assert_same_batches([batches[1]], [reference[1]])
    source.close()
    assert not _read_ahead_threads()


@pytest.fixture
def damaged_store(tmp_path, store):
    """(a copy of the module's store with checksums, the training row of /features/alpha that no longer matches its own)."""
    path = tmp_path / "damaged.h5"
    shutil.copyfile(store, path)
    row = int(read_store_info(store).split_rows("train")[40])
    with h5py.File(path, "a") as store_file:
        for name in store_file["features"]:
            store_file[f"checksums/features/{name}"] = _row_checksums(store_file[f"features/{name}"][()])
        store_file["features/alpha"][row, 0] += 1
    return path, row


def test_a_damaged_row_read_ahead_raises_the_same_error_when_its_batch_is_asked_for(damaged_store):
    path, row = damaged_store
    info = read_store_info(path)
    failing = 40 // 8  # unshuffled batches of 8: the sixth holds training row 40
    messages = []
    for read_ahead in (0, 3):
        batches = _batches(open_feature_source(path, info.backbones, stream=True), info, batch_size=8,
                           read_ahead=read_ahead)
        for index in range(failing):  # the batches before it are served
            assert len(batches[index][1]) == 8
        with pytest.raises(StoreError, match=rf"row {row} of /features/alpha \(backbone alpha, image .*\) does not "
                                             r"match the checksum written with it") as error_info:
            batches[failing]
        messages.append(str(error_info.value))
        assert not _read_ahead_threads()
        batches.source.close()
    assert messages[0] == messages[1]


def test_no_read_ahead_thread_is_left_after_fit_evaluate_and_predict(store):
    info = read_store_info(store)
    source = open_feature_source(store, info.backbones, stream=True)
    keras.utils.set_random_seed(0)
    model = build_fusion_model({name: info.feature_shapes[name] for name in info.backbones}, 4, units=8)
    threads_while_training = []
    watch = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: threads_while_training.append(len(_read_ahead_threads())))
    model.fit(_batches(source, info, batch_size=16, shuffle=True, block_rows=4),
              validation_data=_batches(source, info, "val", batch_size=16), epochs=2, verbose=0, callbacks=[watch])
    assert max(threads_while_training) >= 1, "the check below could not fail: no thread read ahead"
    assert not _read_ahead_threads()
    model.evaluate(_batches(source, info, "val", batch_size=16), verbose=0)
    model.predict(_batches(source, info, "test", batch_size=16), verbose=0)
    assert not _read_ahead_threads()
    source.close()


def test_bad_read_ahead():
    with pytest.raises(ValueError, match=r"read_ahead must be None or a whole number of batches, 0 or more .*"
                                         r"Received: read_ahead=-1"):
        FeatureBatches(None, ["a"], [0], [0], read_ahead=-1)
    with pytest.raises(ValueError, match=r"Received: read_ahead=2.5"):
        FeatureBatches(None, ["a"], [0], [0], read_ahead=2.5)


def test_restarted_batches_repeat_the_first_epoch_with_a_read_ahead_of_their_own(store):
    # What a tuning trial trains on: the same batch order every time, the original left where it was.
    info = read_store_info(store)
    source = open_feature_source(store, info.backbones, stream=True, with_views=True)
    options = dict(batch_size=16, shuffle=True, block_rows=4, view_augment=True, seed=5)
    expected = _all_batches(_batches(source, info, read_ahead=0, **options))
    batches = _batches(source, info, read_ahead=2, **options)
    batches.on_epoch_end()
    batches[0]  # the original reads ahead in its second epoch
    restarted = batches.restarted()
    _assert_same_batches([restarted[index] for index in range(len(restarted))], expected[0])
    assert restarted._read_ahead_lock is not batches._read_ahead_lock
    # The original's read-ahead was not stopped or taken over by the copy: it goes on with epoch 2.
    _assert_same_batches([batches[1], batches[2]], expected[1][1:3])
    batches.on_epoch_end()
    source.close()
    assert not _read_ahead_threads()
