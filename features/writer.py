"""The background thread that fills a store's preallocated rows, each row durable before it is marked done."""

import os
import queue
import threading

import numpy as np

from features import store as feature_store


class RowWriter(threading.Thread):
    """Writes computed rows to the store in the background; durable before marked done.

    Jobs are ("features", rows, backbone, features, view_features or None) and
    ("unreadable", rows, reasons). The queue holds `max_batches` jobs, so compute waits for a
    slow disk instead of filling memory.

    Args:
        store_path: the store, already holding its datasets at full size.
        max_batches: jobs queued before `put` waits (default: 4).

    Example:
        >>> writer = RowWriter("cache.h5")
        >>> writer.start()
        >>> writer.put(("unreadable", np.array([3]), ["not an image file PIL can identify"]))
        >>> writer.close()
        >>> writer.raise_if_failed()
    """

    def __init__(self, store_path, max_batches=4):
        super().__init__(name="feature-store-writer", daemon=True)
        self.store_path = store_path
        self.jobs = queue.Queue(maxsize=max_batches)
        self.error = None

    def put(self, job):
        """Queue `job`, waiting while the queue is full; raises if the writer has failed."""
        self.raise_if_failed()
        self.jobs.put(job)

    def close(self):
        """Write every job queued so far, then stop the thread."""
        self.jobs.put(None)
        self.join()

    def raise_if_failed(self):
        """Raise a RuntimeError naming the store if a write failed."""
        if self.error is not None:
            raise RuntimeError(f"Writing {self.store_path} failed: {self.error}") from self.error

    def run(self):
        try:
            with feature_store.open_for_rows(self.store_path) as store:
                descriptor = store.id.get_vfd_handle()

                def sync():
                    store.flush()
                    os.fsync(descriptor)

                while True:
                    job = self.jobs.get()
                    if job is None:
                        break
                    kind, rows = job[0], job[1]
                    if kind == "features":
                        _, rows, name, features, view_features = job
                        _write_checked(store, "features", name, rows, features)
                        if view_features is not None:
                            _write_checked(store, "views", name, rows, view_features)
                        sync()
                        _write_rows(store["progress"][name], rows, np.ones(len(rows), np.uint8))
                    else:
                        _, rows, reasons = job
                        _write_rows(store["pending/reason"], rows,
                                    np.asarray([r.encode("utf-8")[:200] for r in reasons], dtype="S200"))
                        sync()
                        _write_rows(store["pending/unreadable"], rows, np.ones(len(rows), np.uint8))
                    sync()
        except BaseException as error:  # noqa: BLE001 - handed to the main thread
            self.error = error
            # Keep draining so that the producer never blocks on a dead writer.
            while self.jobs.get() is not None:
                pass


def _write_checked(store, group, name, rows, values):
    # The rows, then the CRC32 of their bytes as stored; both are on disk before the rows are marked done.
    dataset = store[group][name]
    values = np.asarray(values).astype(dataset.dtype, copy=False)
    _write_rows(dataset, rows, values)
    key = f"checksums/{group}/{name}"
    if key in store:  # a backbone of a store written before checksums has none
        _write_rows(store[key], rows, feature_store.row_checksums(values))


def _write_rows(dataset, rows, values):
    # Rows come sorted; consecutive runs become slice writes (fast, no fancy indexing).
    values = np.asarray(values).astype(dataset.dtype, copy=False)
    start = 0
    for end in range(1, len(rows) + 1):
        if end == len(rows) or rows[end] != rows[end - 1] + 1:
            dataset[rows[start]:rows[end - 1] + 1] = values[start:end]
            start = end

