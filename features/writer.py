"""The background thread that fills a store's preallocated rows, each row durable before it is marked done."""

import queue
import threading

from features import store as feature_store


class RowWriter(threading.Thread):
    """Writes computed rows to the store in the background; durable before marked done.

    Jobs are ("features", rows, backbone, features, view_features or None, seconds),
    ("unreadable", rows, reasons) and ("decode_cost", seconds, images). The seconds a batch's
    predict calls took are added to the store's cost once its rows are marked done. The queue
    holds `max_batches` jobs, so compute waits for a slow disk instead of filling memory.

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
            with feature_store.RowFiller(self.store_path) as filler:
                while True:
                    job = self.jobs.get()
                    if job is None:
                        break
                    if job[0] == "decode_cost":
                        # A measurement, not data: flushed with the next batch's rows, without a sync of its own.
                        _, seconds, images = job
                        filler.add_decode_cost(seconds, images)
                        continue
                    if job[0] == "features":
                        _, rows, name, features, view_features, seconds = job
                        filler.write_rows("features", name, rows, features)
                        if view_features is not None:
                            filler.write_rows("views", name, rows, view_features)
                        filler.sync()
                        filler.mark_done(name, rows)
                        # Counted with the mark, so the cost covers rows marked done (a kill may lose both, or one
                        # batch's seconds and images together: the seconds per image stay right).
                        filler.add_compute_cost(name, seconds, len(rows))
                    else:
                        _, rows, reasons = job
                        filler.write_reasons(rows, reasons)
                        filler.sync()
                        filler.mark_unreadable(rows)
                    filler.sync()
        except BaseException as error:  # noqa: BLE001 - handed to the main thread
            self.error = error
            # Keep draining so that the producer never blocks on a dead writer.
            while self.jobs.get() is not None:
                pass
