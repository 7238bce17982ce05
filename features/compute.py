"""The compute loop of a run: images decoded in threads, each backbone run on them, rows handed to the writer."""

import collections
import concurrent.futures
import os
import sys
import time

import numpy as np

from features.extractors import predict_in_batches
from features.images import DEFAULT_MAX_PIXELS, UnreadableImageError, prepare_views
from features.writer import RowWriter


def _prepare_image(path, decode_size, sizes, views, max_pixels=DEFAULT_MAX_PIXELS):
    # The same function prediction uses, so the exported model sees the pixels stored here.
    try:
        return prepare_views(path, sizes, ("identity",) + tuple(views), decode_size, max_pixels)
    except UnreadableImageError as error:
        return error.reason


def _timed_prepare(path, decode_size, sizes, views, max_pixels=DEFAULT_MAX_PIXELS):
    started = time.perf_counter()
    return _prepare_image(path, decode_size, sizes, views, max_pixels), time.perf_counter() - started


def compute_missing_rows(out, root, paths, todo_rows, done, models, active, input_sizes, extra_views, batch_size,
                         decode_workers, progress, max_pixels=DEFAULT_MAX_PIXELS):
    """Compute the rows `todo_rows` of store `out` with each backbone of `active` that lacks them, and write them.

    The next batch decodes in `decode_workers` threads while this one computes; a background
    `RowWriter` writes each batch. Unreadable images are marked pending with their reason.

    Args:
        out: the store, holding every backbone's datasets at full size.
        root: the folder that `paths` are relative to (DATA as given now).
        paths: the stored relative path of every row.
        todo_rows: sorted rows that some backbone lacks.
        done: backbone name -> bool array, the rows it has.
        models: backbone name -> built model.
        active: the backbones that lack some of `todo_rows`.
        input_sizes: backbone name -> input size.
        extra_views: names of the views stored besides the identity.
        batch_size: images per predict call.
        decode_workers: decode threads, or None for 4 or the CPU count if fewer.
        progress: show a tqdm bar on stderr.
        max_pixels: larger images are unreadable (default: DEFAULT_MAX_PIXELS).

    Returns:
        (computed, skipped_now, timings, compute_seconds): rows computed per backbone, images
        found unreadable, seconds spent in "compute", "decode_wait", "write_wait" and "prepare",
        and the seconds each backbone's predict calls took. The store's `/cost` adds up the same
        measurements (see `RowFiller.add_compute_cost`).

    Example:
        >>> computed, skipped_now, timings, compute_seconds = compute_missing_rows(
        ...     "cache.h5", "flowers/", paths, np.arange(len(paths)), done, models, ["resnet50"],
        ...     {"resnet50": 224}, (), 32, None, True)
    """
    from tqdm import tqdm

    sizes = sorted({input_sizes[name] for name in active})
    decode_size = max(sizes)
    workers = decode_workers or min(4, os.cpu_count() or 1)
    computed = {name: 0 for name in done}
    skipped_now = 0
    timings = {"compute": 0.0, "decode_wait": 0.0, "write_wait": 0.0, "prepare": 0.0}
    compute_seconds = {name: 0.0 for name in done}
    writer = RowWriter(out)
    writer.start()
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode")
    batches = [todo_rows[i:i + batch_size] for i in range(0, len(todo_rows), batch_size)]
    in_flight = collections.deque()
    bar = tqdm(total=len(todo_rows), unit="img", file=sys.stderr, disable=not progress, desc="precompute")

    def submit(batch):
        # The next batch decodes while this one computes.
        in_flight.append((batch, [executor.submit(_timed_prepare, os.path.join(root, paths[row]),
                                                  decode_size, sizes, extra_views, max_pixels) for row in batch]))

    def put(job):
        waiting = time.perf_counter()
        writer.put(job)
        timings["write_wait"] += time.perf_counter() - waiting

    try:
        for batch in batches[:2]:
            submit(batch)
        next_batch = 2
        while in_flight:
            batch, futures = in_flight.popleft()
            if next_batch < len(batches):
                submit(batches[next_batch])
                next_batch += 1
            waiting = time.perf_counter()
            results, prepare_seconds = [], 0.0
            for future in futures:
                result, seconds = future.result()
                results.append(result)
                prepare_seconds += seconds
            timings["decode_wait"] += time.perf_counter() - waiting
            timings["prepare"] += prepare_seconds
            put(("decode_cost", prepare_seconds, len(batch)))
            bad = [(row, result) for row, result in zip(batch, results) if isinstance(result, str)]
            if bad:
                put(("unreadable", np.asarray([row for row, _ in bad]), [reason for _, reason in bad]))
                skipped_now += len(bad)
            good = [(row, result) for row, result in zip(batch, results) if not isinstance(result, str)]
            for name in active:
                needed = [(row, result) for row, result in good if not done[name][row]]
                if not needed:
                    continue
                rows = np.asarray([row for row, _ in needed])
                size = input_sizes[name]
                stacked = np.concatenate([result[size] for _, result in needed])  # (rows * (V+1), s, s, 3)
                computing = time.perf_counter()
                features = predict_in_batches(models[name], stacked, batch_size)  # numpy: the work is done
                seconds = time.perf_counter() - computing
                timings["compute"] += seconds
                compute_seconds[name] += seconds
                features = features.reshape((len(rows), 1 + len(extra_views)) + features.shape[1:])
                _check_finite(features, name, rows, paths)
                put(("features", rows, name, features[:, 0], features[:, 1:] if extra_views else None, seconds))
                computed[name] += len(rows)
            bar.update(len(batch))
    finally:
        bar.close()
        executor.shutdown(wait=False, cancel_futures=True)
        # Everything computed so far is written before returning, also on Ctrl-C.
        writer.close()
    writer.raise_if_failed()
    return computed, skipped_now, timings, compute_seconds


def _check_finite(features, name, rows, paths):
    # NaN or inf would train a model to chance without a word: refused before the rows are marked done.
    finite = np.isfinite(features.reshape(len(rows), -1)).all(axis=1)
    if not finite.all():
        bad = [paths[row] for row in rows[~finite]]
        raise ValueError(
            f"Backbone {name} gave NaN or infinite features for {len(bad)} image(s), e.g. {bad[0]}; nothing of this "
            f"batch was stored. With --precision mixed_float16 values can overflow: try float32 or mixed_bfloat16; "
            f"with a weights folder, check its file. Received: {len(bad)} non-finite row(s)")

