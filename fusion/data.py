"""Feed store features to Keras: from memory when they fit, streamed from HDF5 in contiguous blocks otherwise.

Every feature and view row is checked against its stored CRC32 when it is read (all rows at once in
memory, the rows of each read when streamed): a damaged row stops training with one `StoreError`
line naming backbone, row and image, instead of training on it.
"""

import os

import keras
import numpy as np

from features import store as feature_store

# Keep the features in memory only while they take at most this share of the available memory;
# the rest goes to the models, the predictions and the other processes on the machine.
MEMORY_SHARE = 0.5


def available_memory_bytes():
    """Memory the system can still give this process, in bytes (MemAvailable on Linux)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 4 * 1024**3


class _ArraySource:
    """All rows of the chosen backbones (and views) held in memory, in their stored dtype, checked once."""

    streamed = False

    def __init__(self, store_path, backbones, with_views):
        self.features, self.views = {}, {}
        with feature_store.open_store(store_path) as store_file, feature_store.store_errors(store_path):
            for backbone in backbones:
                self.features[backbone] = self._read(store_file, store_path, "features", backbone)
                if with_views and "views" in store_file and backbone in store_file["views"]:
                    self.views[backbone] = self._read(store_file, store_path, "views", backbone)

    @staticmethod
    def _read(store_file, store_path, group, backbone):
        array = store_file[group][backbone][()]
        feature_store.verify_rows(store_file, store_path, group, backbone, np.arange(len(array)), array,
                                  feature_store.read_checksums(store_file, group, backbone))
        return array

    def gather(self, backbone, blocks, rows, views=False):
        array = self.views[backbone] if views else self.features[backbone]
        return array[np.concatenate([rows[start:stop] for start, stop in blocks])]


class _CheckedRows:
    """An h5py dataset whose reads (`dataset[a:b]`, `dataset[rows]`) are checked against the store's checksums."""

    def __init__(self, source, group, backbone):
        self._source, self._group, self._backbone = source, group, backbone
        self._dataset = source._open()[group][backbone]

    shape = property(lambda self: self._dataset.shape)
    dtype = property(lambda self: self._dataset.dtype)
    ndim = property(lambda self: self._dataset.ndim)
    nbytes = property(lambda self: self._dataset.nbytes)

    def __len__(self):
        return len(self._dataset)

    def __getitem__(self, key):
        if isinstance(key, slice):
            rows = np.arange(*key.indices(len(self._dataset)))
        elif isinstance(key, (int, np.integer)):
            return self[np.asarray([key])][0]
        else:
            rows = np.asarray(key, dtype=np.int64)
        return self._source._checked_read(self._group, self._backbone, self._dataset, key, rows)


# A block is read as one contiguous range when that range holds at most this many rows per row
# wanted; a split spread thinly over the store (a 1% test split) is read row by row instead, so
# memory stays bounded by the batch, not by the distance between its rows.
MAX_READ_SPAN = 2


def _read_rows(dataset, block_rows):
    """Rows `block_rows` (sorted, unique) of an HDF5 dataset, reading little beyond them."""
    first, last = int(block_rows[0]), int(block_rows[-1]) + 1
    if last - first <= MAX_READ_SPAN * len(block_rows):
        # One contiguous read, then the rows of this split inside it.
        return dataset[first:last][block_rows - first]
    return dataset[block_rows]


class _HDF5Source:
    """Rows read from the store on demand, one contiguous range per block, each row checked as it is read."""

    streamed = True

    def __init__(self, store_path, backbones, with_views):
        self.store_path = str(store_path)
        self.backbones = tuple(backbones)
        self.with_views = with_views
        self._file = None
        self._checksums = {}

    def _open(self):
        # Opened lazily so that the source can be built (and copied) before any read.
        if self._file is None:
            self._file = feature_store.open_store(self.store_path)
        return self._file

    def _checked_read(self, group, backbone, dataset, key, rows):
        store_file = self._open()
        with feature_store.store_errors(self.store_path):
            if (group, backbone) not in self._checksums:
                self._checksums[group, backbone] = feature_store.read_checksums(store_file, group, backbone)
            values = dataset[key] if key is not None else _read_rows(dataset, rows)
            feature_store.verify_rows(store_file, self.store_path, group, backbone, rows, values,
                                      self._checksums[group, backbone])
        return values

    @property
    def features(self):
        # Read on demand, like the arrays `_ArraySource.features` holds in memory, and checked the same way.
        return {name: _CheckedRows(self, "features", name) for name in self.backbones}

    @property
    def views(self):
        store_file = self._open()
        if not self.with_views or "views" not in store_file:
            return {}
        return {name: _CheckedRows(self, "views", name) for name in self.backbones if name in store_file["views"]}

    def gather(self, backbone, blocks, rows, views=False):
        group = "views" if views else "features"
        dataset = self._open()[group][backbone]
        return np.concatenate([self._checked_read(group, backbone, dataset, None, rows[start:stop])
                               for start, stop in blocks])

    def close(self):
        if self._file is not None:
            self._file.close()
            self._file = None


def open_feature_source(store_path, backbones, *, stream=None, with_views=False, needed_bytes=None):
    """Hold the features of `backbones` in memory, or stream them from the store when they do not fit.

    Args:
        store_path: the `.h5` feature store.
        backbones: the backbone names to read.
        stream: True streams from HDF5, False loads into memory, None decides by size against
            the available memory (default: None).
        with_views: also read `/views/<backbone>` where present (default: False).
        needed_bytes: size of the data in memory, used when `stream` is None (default: None,
            measured from the store).

    Example:
        >>> source = open_feature_source("cache.h5", ["resnet50"], stream=True)
    """
    if stream is None:
        if needed_bytes is None:
            with feature_store.open_store(store_path) as store_file, feature_store.store_errors(store_path):
                needed_bytes = sum(store_file["features"][name].nbytes for name in backbones)
        stream = needed_bytes > MEMORY_SHARE * available_memory_bytes()
    source_class = _HDF5Source if stream else _ArraySource
    return source_class(store_path, backbones, with_views)


class FeatureBatches(keras.utils.PyDataset):
    """Batches of `({backbone: features}, labels)` for the store rows of one split.

    Batches are made of blocks of consecutive rows, read with one contiguous read each;
    shuffling permutes the order of the blocks (not the rows) every epoch, so streamed reads
    stay contiguous. The same source rows, seed and block size give the same batches from
    memory and from HDF5, so both train the same model.

    Args:
        source: from `open_feature_source`.
        backbones: the input names, in order.
        rows: sorted store row indices of the split.
        labels: the labels of those rows.
        batch_size: rows per batch (default: 32).
        shuffle: shuffle the block order each epoch (default: False).
        block_rows: rows per contiguous block when shuffling; 1 shuffles single rows. A batch is
            ceil(batch_size / block_rows) blocks, so batch_size rounded up to whole blocks
            (default: 1).
        view_augment: pick a random view per row each epoch, the identity included (default: False).
        view_index: feed this view to every row: 0 is `/features`, k is `/views[:, k-1]`
            (default: 0).
        seed: seed of the block order and view choice (default: 0).
        class_weight: dict class -> weight; batches then carry per-row sample weights, e.g. for
            a validation loss weighted like the training loss (default: None).

    Example:
        >>> batches = FeatureBatches(source, ["resnet50"], rows, labels, batch_size=32, shuffle=True)
    """

    def __init__(
        self,
        source,
        backbones,
        rows,
        labels,
        *,
        batch_size=32,
        shuffle=False,
        block_rows=1,
        view_augment=False,
        view_index=0,
        seed=0,
        class_weight=None,
    ):
        super().__init__(workers=1, use_multiprocessing=False)
        if batch_size < 1 or block_rows < 1:
            raise ValueError(
                f"batch_size and block_rows must be at least 1. Received: batch_size={batch_size}, "
                f"block_rows={block_rows}"
            )
        self.source = source
        self.backbones = tuple(backbones)
        self.rows = np.asarray(rows, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.block_rows = int(block_rows) if shuffle else int(batch_size)
        self.view_augment = view_augment
        self.view_index = int(view_index)
        self.seed = int(seed)
        self.class_weight = class_weight
        self._num_views = {name: view.shape[1] for name, view in source.views.items()}
        self._epoch = 0
        self._plan_epoch()

    def _plan_epoch(self):
        starts = np.arange(0, len(self.rows), self.block_rows)
        blocks = np.stack([starts, np.minimum(starts + self.block_rows, len(self.rows))], axis=1)
        rng = np.random.default_rng([self.seed, self._epoch])
        if self.shuffle:
            blocks = blocks[rng.permutation(len(blocks))]
        blocks_per_batch = max(1, -(-self.batch_size // self.block_rows))
        self._batches = [blocks[i : i + blocks_per_batch] for i in range(0, len(blocks), blocks_per_batch)]
        if self.view_augment:
            most_views = max(self._num_views.values(), default=0)
            self._views = rng.integers(0, most_views + 1, size=len(self.rows))
        else:
            self._views = None

    def __len__(self):
        return len(self._batches)

    def on_epoch_end(self):
        self._epoch += 1
        self._plan_epoch()

    def _features(self, backbone, blocks):
        features = self.source.gather(backbone, blocks, self.rows).astype("float32")
        num_views = self._num_views.get(backbone, 0)
        if self._views is not None and num_views:
            positions = np.concatenate([np.arange(start, stop) for start, stop in blocks])
            chosen = self._views[positions]
        elif self.view_index and num_views >= self.view_index:
            chosen = np.full(len(features), self.view_index)
        else:
            return features
        if (chosen > 0).any():
            views = self.source.gather(backbone, blocks, self.rows, views=True)
            # A backbone with fewer views than the one drawn keeps the identity view.
            picked = (chosen > 0) & (chosen <= num_views)
            features[picked] = views[np.flatnonzero(picked), chosen[picked] - 1]
        return features

    def __getitem__(self, index):
        blocks = self._batches[index]
        inputs = {backbone: self._features(backbone, blocks) for backbone in self.backbones}
        labels = self.labels[np.concatenate([np.arange(start, stop) for start, stop in blocks])]
        if self.class_weight is not None:
            return inputs, labels, np.array([self.class_weight[int(label)] for label in labels], "float32")
        return inputs, labels
