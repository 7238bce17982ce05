"""Feed store features to Keras: from memory when they fit, streamed from HDF5 in contiguous blocks otherwise.

Every feature and view row is checked against its stored CRC32 when it is read (all rows at once in
memory, the rows of each read when streamed): a damaged row stops training with one `StoreError`
line naming backbone, row and image, instead of training on it.

Streamed batches are read ahead in a background thread while Keras trains on the current one
(`FeatureBatches(read_ahead=...)`), so the model does not wait for HDF5.
"""

import copy
import dataclasses
import os
import queue
import threading
import weakref

import keras
import numpy as np

from features import store as feature_store

# Keep the features in memory only while they take at most this share of the available memory;
# the rest goes to the models, the predictions and the other processes on the machine.
MEMORY_SHARE = 0.5


def _available_memory_bytes():
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
        with feature_store.FeatureRows(store_path) as reader:
            for backbone in backbones:
                self.features[backbone] = reader.read("features", backbone)
                if with_views and reader.has("views", backbone):
                    self.views[backbone] = reader.read("views", backbone)

    def gather(self, backbone, blocks, rows, views=False):
        array = self.views[backbone] if views else self.features[backbone]
        return array[np.concatenate([rows[start:stop] for start, stop in blocks])]


class _CheckedRows:
    """One store dataset read on demand like an array (`rows[a:b]`, `rows[indices]`), every row checked."""

    def __init__(self, reader, group, backbone):
        self._reader, self._group, self._backbone = reader, group, backbone
        self.shape = reader.shape(group, backbone)
        self.dtype = reader.dtype(group, backbone)
        self.nbytes = reader.nbytes(group, backbone)

    ndim = property(lambda self: len(self.shape))

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, key):
        if isinstance(key, slice):
            rows = np.arange(*key.indices(self.shape[0]))
        elif isinstance(key, (int, np.integer)):
            return self[np.asarray([key])][0]
        else:
            rows = np.asarray(key, dtype=np.int64)
        return self._reader.read(self._group, self._backbone, rows)


class _HDF5Source:
    """Rows read from the store on demand, one contiguous range per block, each row checked as it is read."""

    streamed = True

    def __init__(self, store_path, backbones, with_views):
        self.store_path = str(store_path)
        self.backbones = tuple(backbones)
        self.with_views = with_views
        self._reader = feature_store.FeatureRows(store_path)
        # The read-ahead threads of the FeatureBatches on this source, stopped before the file closes.
        self._read_aheads = weakref.WeakSet()

    @property
    def features(self):
        # Read on demand, like the arrays `_ArraySource.features` holds in memory, and checked the same way.
        return {name: _CheckedRows(self._reader, "features", name) for name in self.backbones}

    @property
    def views(self):
        if not self.with_views:
            return {}
        return {name: _CheckedRows(self._reader, "views", name) for name in self.backbones
                if self._reader.has("views", name)}

    def gather(self, backbone, blocks, rows, views=False):
        group = "views" if views else "features"
        return self._reader.read_blocks(group, backbone, [rows[start:stop] for start, stop in blocks])

    def close(self):
        for read_ahead in list(self._read_aheads):
            read_ahead.stop()
        self._reader.close()


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
            with feature_store.FeatureRows(store_path) as reader:
                needed_bytes = sum(reader.nbytes("features", name) for name in backbones)
        stream = needed_bytes > MEMORY_SHARE * _available_memory_bytes()
    source_class = _HDF5Source if stream else _ArraySource
    return source_class(store_path, backbones, with_views)


# Batches read ahead of the one Keras trains on, when reading from HDF5: enough to cover a slow read,
# few enough that memory stays a few batches.
STREAM_READ_AHEAD = 4


@dataclasses.dataclass(frozen=True)
class _EpochPlan:
    """One epoch's batches (arrays of (start, stop) blocks of split positions) and view choice per row (or None)."""

    batches: list
    views: np.ndarray | None


class _ReadAhead:
    """Makes batches `first, first + 1, ...` of one epoch plan in a background thread, at most `depth` ahead.

    `take` hands them over in order and raises, in the caller's thread, the error that making one
    raised. The thread ends after the plan's last batch, at its first error, on `stop`, or once its
    FeatureBatches is gone; it holds the FeatureBatches only while making a batch.
    """

    def __init__(self, feature_batches, plan, first, depth):
        self.plan = plan
        self.next_index = first
        self.stopped = False
        self._results = queue.Queue(maxsize=depth)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._make_batches, args=(weakref.ref(feature_batches), first),
                                        name="FeatureBatches read-ahead", daemon=True)
        self._thread.start()

    def _make_batches(self, feature_batches_ref, first):
        for index in range(first, len(self.plan.batches)):
            feature_batches = feature_batches_ref()
            if feature_batches is None or self._stopping.is_set():
                return
            try:
                result = (feature_batches._make_batch(self.plan, index), None)
            except BaseException as error:  # raised again by `take`, in the thread that trains
                result = (None, error)
            del feature_batches
            while not self._stopping.is_set():
                try:
                    self._results.put(result, timeout=0.1)  # wakes up to see `stop` while the queue is full
                    break
                except queue.Full:
                    if feature_batches_ref() is None:
                        return
            if result[1] is not None:
                return

    def take(self):
        """The next batch in order; an error raised making it is raised here, with its own message."""
        batch, error = self._results.get()
        self.next_index += 1
        if error is not None:
            raise error
        return batch

    def stop(self):
        """End the thread and drop the batches it made; returns once it has ended."""
        self.stopped = True
        self._stopping.set()
        while True:  # make room, so that a thread waiting to hand over a batch sees the stop at once
            try:
                self._results.get_nowait()
            except queue.Empty:
                break
        self._thread.join()


class FeatureBatches(keras.utils.PyDataset):
    """Batches of `({backbone: features}, labels)` for the store rows of one split.

    Batches are made of blocks of consecutive rows, read with one contiguous read each;
    shuffling permutes the order of the blocks (not the rows) every epoch, so streamed reads
    stay contiguous. The same source rows, seed and block size give the same batches from
    memory and from HDF5, so both train the same model.

    Batches can be read ahead in a background thread, in the order Keras asks for them, while
    the current one trains: the same batches, each read once. The thread ends after the epoch's
    last batch and at `on_epoch_end` (which Keras calls after every fit, evaluate and predict),
    and never hands a batch of one epoch to the next; an error reading ahead is raised when its
    batch is asked for.

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
        read_ahead: batches made ahead in a background thread; 0 makes each when asked for.
            None reads `STREAM_READ_AHEAD` (4) ahead from a streamed source, none from memory
            (default: None).

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
        read_ahead=None,
    ):
        super().__init__(workers=1, use_multiprocessing=False)
        if batch_size < 1 or block_rows < 1:
            raise ValueError(
                f"batch_size and block_rows must be at least 1. Received: batch_size={batch_size}, "
                f"block_rows={block_rows}"
            )
        if read_ahead is not None and (isinstance(read_ahead, bool) or not isinstance(read_ahead, (int, np.integer))
                                       or read_ahead < 0):
            raise ValueError(f"read_ahead must be None or a whole number of batches, 0 or more (0 reads none ahead). "
                             f"Received: read_ahead={read_ahead!r}")
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
        if read_ahead is None:
            read_ahead = STREAM_READ_AHEAD if source.streamed else 0
        self.read_ahead = int(read_ahead)
        self._num_views = {name: view.shape[1] for name, view in source.views.items()}
        self._read_ahead_lock = threading.Lock()  # Keras may ask from more than one thread
        self._reading_ahead = None
        self._epoch = 0
        self._plan_epoch()

    def _plan_epoch(self):
        starts = np.arange(0, len(self.rows), self.block_rows)
        blocks = np.stack([starts, np.minimum(starts + self.block_rows, len(self.rows))], axis=1)
        rng = np.random.default_rng([self.seed, self._epoch])
        if self.shuffle:
            blocks = blocks[rng.permutation(len(blocks))]
        blocks_per_batch = max(1, -(-self.batch_size // self.block_rows))
        batches = [blocks[i : i + blocks_per_batch] for i in range(0, len(blocks), blocks_per_batch)]
        views = None
        if self.view_augment:
            most_views = max(self._num_views.values(), default=0)
            views = rng.integers(0, most_views + 1, size=len(self.rows))
        self._plan = _EpochPlan(batches, views)

    def __len__(self):
        return len(self._plan.batches)

    def restarted(self):
        """A copy of these batches back at epoch 0, with a read-ahead of its own: the same batch order again.

        Example:
            >>> first_epoch = [batch for batch in batches.restarted()]  # e.g. one tuning trial
        """
        with self._read_ahead_lock:
            restarted = copy.copy(self)
        # A shallow copy would share the lock and the read-ahead thread of this epoch's plan.
        restarted._read_ahead_lock = threading.Lock()
        restarted._reading_ahead = None
        restarted._epoch = 0
        restarted._plan_epoch()
        return restarted

    def on_epoch_end(self):
        with self._read_ahead_lock:
            self._stop_reading_ahead()  # before the new plan: no batch of this epoch reaches the next
            self._epoch += 1
            self._plan_epoch()

    def _stop_reading_ahead(self):
        if self._reading_ahead is not None:
            self._reading_ahead.stop()
            self._reading_ahead = None

    def _features(self, backbone, blocks, views_chosen):
        features = self.source.gather(backbone, blocks, self.rows).astype("float32")
        num_views = self._num_views.get(backbone, 0)
        if views_chosen is not None and num_views:
            positions = np.concatenate([np.arange(start, stop) for start, stop in blocks])
            chosen = views_chosen[positions]
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
        if not self.read_ahead:
            return self._make_batch(self._plan, index)
        with self._read_ahead_lock:
            plan = self._plan
            if not -len(plan.batches) <= index < len(plan.batches):
                return self._make_batch(plan, index)  # the IndexError of a list
            index %= len(plan.batches)
            reading = self._reading_ahead
            if reading is None or reading.stopped or reading.plan is not plan or reading.next_index != index:
                # Asked out of order (or first): read ahead from here.
                self._stop_reading_ahead()
                reading = self._reading_ahead = _ReadAhead(self, plan, index, self.read_ahead)
                registry = getattr(self.source, "_read_aheads", None)  # so that closing the source stops it
                if registry is not None:
                    registry.add(reading)
            try:
                batch = reading.take()
            except BaseException:
                self._stop_reading_ahead()
                raise
            if reading.next_index == len(plan.batches):
                self._stop_reading_ahead()  # the epoch's last batch: its thread has ended
            return batch

    def _make_batch(self, plan, index):
        blocks = plan.batches[index]
        inputs = {backbone: self._features(backbone, blocks, plan.views) for backbone in self.backbones}
        labels = self.labels[np.concatenate([np.arange(start, stop) for start, stop in blocks])]
        if self.class_weight is not None:
            return inputs, labels, np.array([self.class_weight[int(label)] for label in labels], "float32")
        return inputs, labels
