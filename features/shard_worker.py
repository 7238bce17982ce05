"""One worker of a sharded run: it builds its backbones once and computes shard after shard into shard files.

`ShardWorker` is a plain class; `features.ray_precompute` runs it as a Ray actor, one per worker.
It uses the same decode (`prepare_views`) and the same built extractors as a single-process run,
so its rows equal a single-process run's up to the rounding of batch arithmetic.
"""

import concurrent.futures
import os
import socket
import time
from pathlib import Path

import numpy as np

from features.compute import _check_finite, _timed_prepare
from features.store import ShardWriter


def thread_settings(threads):
    """Environment variables that keep one worker's TensorFlow, XLA and BLAS to `threads` cores.

    Set before the worker imports TensorFlow, so several workers on one machine share its cores
    instead of each starting a thread per core.
    """
    threads = str(int(threads))
    return {"TF_NUM_INTRAOP_THREADS": threads, "TF_NUM_INTEROP_THREADS": "1", "OMP_NUM_THREADS": threads,
            "XLA_FLAGS": f"--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads={threads}"}


class ShardWorker:
    """Computes shards: decodes their images, runs each backbone, writes the shard file atomically.

    One worker serves run after run of its process (a notebook's cells, a benchmark's rounds):
    its backbones stay built in the process's extractor cache.

    `settings` (given with each call) is a dict with `input_sizes`, `weight_files`, `poolings`
    (backbone -> value), `seed`, `precision`, `dtype`, `extra_views`, `batch_size`,
    `decode_workers`, `max_pixels`, `data_root` (DATA as the driver sees it), `store_folder` (the
    store's folder) and `shards_folder`.

    Example:
        >>> worker = ShardWorker()
        >>> host, pid, seconds, build_seconds = worker.compute(task, settings)
    """

    def ping(self):
        """This worker's process id: answers once a restarted worker is up again."""
        return os.getpid()

    def where(self, settings, sample_path):
        """Check that this worker sees DATA, one of its images and the shards folder; returns (host, problem or None)."""
        host = socket.gethostname()
        root = Path(settings["data_root"])
        folder = Path(settings["shards_folder"])
        if not root.is_dir():
            return host, f"DATA {root} is not a folder there"
        if sample_path is not None and not (root / sample_path).is_file():
            return host, f"the image {root / sample_path} is not there"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / f".probe-{host}-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as error:
            return host, f"it cannot write the shards folder {folder} ({error.strerror or error})"
        return host, None

    @staticmethod
    def _models(names, settings):
        """Backbone -> model, and the seconds spent building those this worker process had not built before."""
        # The process's extractor cache: each backbone is built and traced once per worker process.
        from features.extractors import ExtractorSet

        extractors = ExtractorSet(settings["input_sizes"], settings["weight_files"], settings["poolings"],
                                  settings["seed"], settings["precision"])
        return extractors.build(names), extractors.build_seconds

    def compute(self, task, settings):
        """Compute `task` (a `ShardTask`) into its shard file; returns (host, pid, seconds, build seconds)."""
        from features.extractors import predict_in_batches

        started = time.perf_counter()
        models, build_seconds = self._models(task.backbones, settings)
        extra_views = tuple(settings["extra_views"])
        sizes = sorted({settings["input_sizes"][name] for name in task.backbones})
        batch_size = settings["batch_size"]
        root = settings["data_root"]
        path = Path(settings["store_folder"]) / task.file
        row_shapes = {name: tuple(models[name].output_shape[1:]) for name in task.backbones}
        workers = settings["decode_workers"] or min(4, os.cpu_count() or 1)
        with ShardWriter(path, task, row_shapes, settings["dtype"], extra_views) as writer, \
                concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as executor:
            starts = list(range(0, len(task.rows), batch_size))

            def submit(start):
                return executor.map(lambda item: _timed_prepare(os.path.join(root, item), max(sizes), sizes,
                                                                extra_views, settings["max_pixels"]),
                                    task.paths[start:start + batch_size])

            # The next batch decodes while this one computes.
            pending = submit(starts[0]) if starts else None
            for position, start in enumerate(starts):
                decoded = list(pending)
                if position + 1 < len(starts):
                    pending = submit(starts[position + 1])
                results = [result for result, _ in decoded]
                writer.add_cost("decode", sum(seconds for _, seconds in decoded), len(decoded))
                bad = [index for index, result in enumerate(results) if isinstance(result, str)]
                if bad:
                    writer.mark_unreadable([start + index for index in bad], [results[index] for index in bad])
                good = [index for index, result in enumerate(results) if not isinstance(result, str)]
                if not good:
                    continue
                positions = np.asarray(good) + start
                for name in task.backbones:
                    size = settings["input_sizes"][name]
                    stacked = np.concatenate([results[index][size] for index in good])
                    computing = time.perf_counter()
                    features = predict_in_batches(models[name], stacked, batch_size)
                    writer.add_cost(f"features/{name}", time.perf_counter() - computing, len(good))
                    features = features.reshape((len(good), 1 + len(extra_views)) + features.shape[1:])
                    _check_finite(features, name, positions, task.paths)
                    writer.write_rows("features", name, positions, features[:, 0])
                    if extra_views:
                        writer.write_rows("views", name, positions, features[:, 1:])
            writer.finish(time.perf_counter() - started)
        return socket.gethostname(), os.getpid(), time.perf_counter() - started, build_seconds
