"""Run frozen backbones over a data set once and fill the HDF5 feature store, resumably."""

import collections
import concurrent.futures
import dataclasses
import json
import logging
import os
import queue
import sys
import threading
import time
from csv import writer as csv_writer
from pathlib import Path

import h5py
import numpy as np

import keras

from features import store as feature_store
from features.atomic_files import open_atomic
from features.backbones import (check_backbone_names, check_input_size, create_backbone, get_backbone_spec,
                                resolve_weights, weights_sha256)
from features.dataset import discover_images, fingerprints, reason_kind
from features.images import DEFAULT_MAX_PIXELS, UnreadableImageError, check_max_pixels, prepare_views
from features.views import view_names as get_view_names

DTYPES = ("float16", "float32")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
ON_CHANGE = ("refuse", "add")


# Skipped images named one per line in the summary; all of them go to OUT.skipped.csv.
SUMMARY_MAX_SKIPPED = 5


@dataclasses.dataclass(frozen=True)
class PrecomputeSummary:
    """What a `precompute` run did.

    Args:
        store_path: the store written.
        images: images in the store (readable ones).
        computed: backbone name -> images computed in this run.
        reused: backbone name -> images already in the store.
        skipped: tuple of (path, reason) of all unreadable images.
        skipped_now: how many of `skipped` were found in this run.
        added_images: images added to an existing store in this run.
        missing_on_disk: stored images no longer on disk (kept in the store).
        seconds: wall-clock time of the run.
        timings: where the time of the compute loop went, in seconds: "build" (building
            backbones not yet in this process's cache), "compute" (predict calls),
            "decode_wait" (waiting for decoded images), "write_wait" (waiting for the
            writer's queue), "prepare" (decode+resize, summed over the decode threads)
            (default: empty).
        left_out: tuple of (path, reason) of images the data names that are not in the store:
            CSV rows without a file, classes below `min_images_per_class` (default: ()).
        skipped_csv: the CSV file listing `skipped` and `left_out` in full (default: "").
        dropped_classes: classes left out because none of their images could be read (default: ()).
        class_names: the store's classes (default: ()).
        retried: skipped images tried again in this run, because they changed on disk or
            `retry_skipped` asked for it (default: 0).
        options: the options in effect: those given, except the ones that made an existing
            store's rows and splits, which come from the store (default: empty).
        options_differing: option -> (given, in effect) where the store's value was kept
            (default: empty).
    """

    store_path: str
    images: int
    computed: dict
    reused: dict
    skipped: tuple
    skipped_now: int
    added_images: int
    missing_on_disk: int
    seconds: float
    timings: dict = dataclasses.field(default_factory=dict)
    left_out: tuple = ()
    skipped_csv: str = ""
    dropped_classes: tuple = ()
    class_names: tuple = ()
    retried: int = 0
    options: dict = dataclasses.field(default_factory=dict)
    options_differing: dict = dataclasses.field(default_factory=dict)

    def lines(self):
        """The summary as lines of text for the terminal: counts by reason, never one line per file."""
        lines = [f"Store: {self.store_path} ({self.images} images, {len(self.class_names)} classes)"]
        for name in self.computed:
            lines.append(f"  {name}: computed {self.computed[name]}, reused {self.reused[name]}")
        if self.added_images:
            lines.append(f"  added {self.added_images} new image(s) to the store")
        if self.retried:
            lines.append(f"  tried {self.retried} skipped image(s) again (changed on disk, or --retry-skipped)")
        for key, (given, in_effect) in self.options_differing.items():
            lines.append(f"  {key}={given} given, but the store was made with {key}={in_effect}: its rows keep the "
                         f"splits they were made with, and {key}={in_effect} is recorded as the option in effect")
        if self.missing_on_disk:
            lines.append(f"  {self.missing_on_disk} stored image(s) are no longer on disk; their rows are kept")
        by_reason = collections.Counter(reason_kind(reason) for _, reason in self.skipped)
        lines.append(f"  skipped {len(self.skipped)} unreadable image(s)"
                     + (f" ({self.skipped_now} found in this run): " if self.skipped else "")
                     + ", ".join(f"{count} {kind}" for kind, count in by_reason.most_common()))
        for path, reason in self.skipped[:SUMMARY_MAX_SKIPPED]:
            lines.append(f"    {path}: {reason}")
        if len(self.skipped) > SUMMARY_MAX_SKIPPED:
            lines.append(f"    ... and {len(self.skipped) - SUMMARY_MAX_SKIPPED} more")
        if self.dropped_classes:
            lines.append(f"  {len(self.dropped_classes)} class(es) left out, none of their images could be read: "
                         + ", ".join(self.dropped_classes))
        if self.left_out:
            lines.append(f"  left out {len(self.left_out)} image(s) that the data names (CSV rows without a file or "
                         "outside DATA, broken symlinks, classes below --min-images-per-class)")
        if self.skipped_csv and (self.skipped or self.left_out):
            lines.append(f"  every skipped and left-out image, with its reason: {self.skipped_csv}")
        return lines


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"Unknown {name} '{value}'. Valid values: {', '.join(choices)}. Received: {name}={value!r}")


def _trace_for_any_batch_size(model):
    """TensorFlow-only fast path: make `model`'s compiled predict step accept any batch size.

    Keras's predict step is a `tf.function` with `reduce_retracing=True`: a second call with a
    new batch size traces it once more with the batch dimension unknown, and no batch size
    traces again. The last, short batch of a run then needs no padding (up to a whole batch of
    wasted compute). Other backends compile one program per shape and keep padding.
    """
    if keras.backend.backend() != "tensorflow":
        return
    shape = tuple(model.input_shape[1:])
    # The second trace is on purpose; TensorFlow's logger would warn about "excessive retracing".
    tensorflow_logger = logging.getLogger("tensorflow")
    level = tensorflow_logger.level
    tensorflow_logger.setLevel(logging.ERROR)
    try:
        for batch_size in (1, 2):
            model.predict_on_batch(np.zeros((batch_size,) + shape, np.float32))
    finally:
        tensorflow_logger.setLevel(level)
    model._fusionpipe_any_batch_size = True


def predict_in_batches(model, images, batch_size):
    """Run `model` on `images` in batches of `batch_size`, through its compiled predict step.

    The last batch is padded to `batch_size` so that the step keeps one shape and is not
    traced again, unless the model went through `_trace_for_any_batch_size` (TensorFlow).

    Example:
        >>> features = predict_in_batches(model, images, batch_size=32)
    """
    pad = not getattr(model, "_fusionpipe_any_batch_size", False)
    outputs = []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        count = len(batch)
        if pad and count < batch_size:
            batch = np.concatenate([batch, np.zeros((batch_size - count,) + batch.shape[1:], batch.dtype)])
        outputs.append(np.asarray(model.predict_on_batch(batch))[:count])
    return np.concatenate(outputs) if outputs else np.zeros((0,) + tuple(model.output_shape[1:]), np.float32)


def _backbone_attrs(name, input_size, pooling, weights, seed, dtype, precision, view_names, weights_file=None):
    spec = get_backbone_spec(name)
    return {
        "backbone": name,
        "input_size": input_size,
        "pooling": pooling,
        "weights": "none" if weights in (None, "none") else str(weights),
        "seed": seed,
        "dtype": dtype,
        "precision": precision,
        "preprocessing": f"keras.applications.{spec.preprocess_module}.preprocess_input",
        "resize": "bilinear, antialias, aspect ratio not kept",
        "views": ",".join(view_names) or "none",
        "keras_version": keras.__version__,
        "backend": keras.backend.backend(),
        "backend_version": _backend_version(),
        "weights_file": spec.weights_file,
        # For the record (not compared on resume: stores made before it have none).
        "weights_sha256": weights_sha256(weights_file) if weights_file else "none",
    }


def _backend_version():
    backend = keras.backend.backend()
    module = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}.get(backend, backend)
    return getattr(sys.modules.get(module), "__version__", "unknown")


# Attributes that must match for a stored backbone to be reused or resumed: any of them changes
# the features, so rows made with another value would be mixed in silently. The versions are
# recorded for the record only.
_MATCHING_ATTRS = ("input_size", "pooling", "weights", "seed", "dtype", "views", "precision", "backend")


def _check_stored_backbone(dataset, wanted, store_path):
    for key in _MATCHING_ATTRS:
        stored = dataset.attrs.get(key)
        stored = stored.decode() if isinstance(stored, bytes) else stored
        # The seed and the backend's random generator only make the network with random weights.
        if key in ("seed", "backend") and wanted["weights"] != "none":
            continue
        if str(stored) != str(wanted[key]):
            raise ValueError(
                f"Store {store_path} already holds '{wanted['backbone']}' features made with {key}={stored}, "
                f"but this run asks for {key}={wanted[key]}. Use another --out for different settings, "
                f"or the same settings to reuse them. Received: {key}={wanted[key]!r}")
    # A weights file replaced under the same name makes other features: compared where both runs know
    # the hash (stores written before it was recorded have none).
    stored_hash = dataset.attrs.get("weights_sha256")
    stored_hash = stored_hash.decode() if isinstance(stored_hash, bytes) else stored_hash
    if stored_hash not in (None, "none") and wanted["weights_sha256"] not in ("none", stored_hash):
        raise ValueError(
            f"Store {store_path} already holds '{wanted['backbone']}' features made with a weights file of sha256 "
            f"{stored_hash}, but {wanted['backbone']}'s weights file now has sha256 {wanted['weights_sha256']}: the "
            f"file was replaced, and its features would differ. Restore the file, or use another --out. "
            f"Received: weights_sha256={wanted['weights_sha256']!r}")


class _Writer(threading.Thread):
    """Writes computed rows to the store in the background; durable before marked done."""

    def __init__(self, store_path, max_batches=4):
        super().__init__(name="feature-store-writer", daemon=True)
        self.store_path = store_path
        self.jobs = queue.Queue(maxsize=max_batches)
        self.error = None

    def put(self, job):
        if self.error is not None:
            raise RuntimeError(f"Writing {self.store_path} failed: {self.error}") from self.error
        self.jobs.put(job)

    def run(self):
        try:
            with h5py.File(self.store_path, "r+") as store:
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


def _prepare_image(path, decode_size, sizes, views, max_pixels=DEFAULT_MAX_PIXELS):
    # The same function prediction uses, so the exported model sees the pixels stored here.
    try:
        return prepare_views(path, sizes, ("identity",) + tuple(views), decode_size, max_pixels)
    except UnreadableImageError as error:
        return error.reason


def _open_store(out):
    """Open an existing `out` for reading, refusing any file that is not a feature store (it stays untouched).

    A store that is damaged (truncated, datasets deleted, rows that do not line up) is refused
    with a `StoreError`, and left untouched too.
    """
    try:
        store = h5py.File(out, "r")
    except OSError as error:
        if feature_store.is_hdf5(out):
            feature_store.open_store(out)  # raises the StoreError that says it is damaged
        raise ValueError(f"{out} exists but is not an HDF5 file ({error}); it is left untouched. Choose another "
                         f"--out. Received: out={out}") from None
    try:
        with feature_store.store_errors(out):
            if "format_version" not in store.attrs or "images" not in store:
                raise ValueError(f"{out} is an HDF5 file but not a feature store written by run_precompute.py (no "
                                 f"format_version attribute or /images group); it is left untouched. Choose another "
                                 f"--out. Received: out={out}")
            feature_store.check_store(store, out, finished=False, require_features=False)
    except BaseException:
        store.close()
        raise
    return store


def _check_labels_unchanged(store_path, table, stored_paths, stored_labels, class_names):
    """Refuse a run whose data gives a stored image another label, as an edited CSV can."""
    def name(label, names):
        return names[label] if label >= 0 else None

    now = {path: name(label, table.class_names) for path, label in zip(table.paths, table.labels)}
    changed = [(path, name(label, class_names), now[path])
               for path, label in zip(stored_paths, stored_labels) if path in now and now[path] != name(label, class_names)]
    if changed:
        path, before, after = changed[0]
        raise ValueError(
            f"{len(changed)} image(s) have another label than in store {store_path}, e.g. {path}: stored "
            f"{before or 'unlabeled'}, now {after or 'unlabeled'}. The store keeps the labels it was made with; write "
            f"to a new --out for the new labels. Received: {len(changed)} relabeled image(s)")


def _reconcile(store_path, table, on_change, retry_skipped=False):
    """Compare the images on disk with the store; add new ones when allowed, retry skipped ones.

    A skipped image is tried again when its file changed on disk (a repaired file), or with
    `retry_skipped`: it leaves `/skipped` and is added as a new row.

    Returns:
        (added, missing, retried): images added, stored images missing on disk, skipped images retried.
    """
    disk_prints = fingerprints(table.root, table.paths)
    with feature_store.open_store(store_path) as store, feature_store.store_errors(store_path):
        stored_paths = feature_store.read_strings(store["images/path"])
        stored_prints = store["images/fingerprint"][()]
        stored_labels = store["images/label"][()]
        skipped_paths, skipped_reasons, skipped_prints = feature_store.read_skipped(store)
        class_names = feature_store.read_strings_attr(store, "class_names")
        count = len(stored_paths)
    _check_labels_unchanged(store_path, table, stored_paths, stored_labels, class_names)
    stored = dict(zip(stored_paths, map(tuple, stored_prints)))
    skipped = dict(zip(skipped_paths, map(tuple, skipped_prints)))
    on_disk = dict(zip(table.paths, map(tuple, disk_prints)))
    retry = [path for path in table.paths
             if path in skipped and path not in stored and (retry_skipped or skipped[path] != on_disk[path])]
    new = [path for path in table.paths if path not in stored and path not in skipped]
    changed = [path for path in table.paths if path in stored and stored[path] != on_disk[path]]
    missing = [path for path in stored_paths if path not in on_disk]
    if changed:
        raise ValueError(
            f"{len(changed)} image(s) changed on disk since they were stored in {store_path} (size or "
            f"modification time differ), e.g. {changed[0]}. Their features would no longer match: write to "
            f"a new --out. Received: changed={changed[:3]}")
    if (new or missing) and on_change != "add":
        raise ValueError(
            f"The images on disk no longer match store {store_path}: {len(new)} new image(s)"
            f"{f' (e.g. {new[0]})' if new else ''} and {len(missing)} stored image(s) missing on disk"
            f"{f' (e.g. {missing[0]})' if missing else ''}. Pass --on-change add to add the new images only "
            f"(missing ones keep their rows), or write to a new --out. Received: on_change={on_change!r}")
    added = new + retry
    if added:
        index_of = {path: i for i, path in enumerate(table.paths)}
        labels = []
        for path in added:
            label = table.labels[index_of[path]]
            if label >= 0 and table.class_names[label] not in class_names:
                # Only classes that an added image needs; a class whose images all stay skipped stays out.
                class_names.append(table.class_names[label])
            labels.append(class_names.index(table.class_names[label]) if label >= 0 else -1)
        retried = set(retry)
        kept = [i for i, path in enumerate(skipped_paths) if path not in retried]
        feature_store.rebuild_rows(
            store_path, np.arange(count),
            new_rows={"paths": added, "labels": labels, "splits": [table.splits[index_of[p]] for p in added],
                      "fingerprints": np.asarray([on_disk[p] for p in added]).reshape(-1, 2)},
            class_names=class_names,
            skipped=([skipped_paths[i] for i in kept], [skipped_reasons[i] for i in kept],
                     np.asarray(skipped_prints).reshape(-1, 2)[kept]))
    return len(new), len(missing), len(retry)


def precompute(data, out, backbones, *, weights="imagenet", seed=0, input_size=None, pooling="avg",
               dtype="float16", batch_size=32, views="none", precision="float32", val_fraction=0.1,
               test_fraction=0.1, csv=None, csv_path_column="path", csv_label_column="label",
               csv_split_column="split", on_change="refuse", retry_skipped=False, decode_workers=None, progress=True,
               split_map=None, recursive=False, min_images_per_class=1, require_all=False,
               allow_outside_data=False, max_pixels=DEFAULT_MAX_PIXELS, log=print):
    """Compute the features of every readable image of `data` with each backbone into store `out`.

    Resumable: run it again with the same arguments after an interruption and it continues;
    backbones already in the store are reused, new ones computed.

    Args:
        data: the data root (class folders, split folders, or the root of `csv` paths).
        out: the HDF5 store to create or complete.
        backbones: list of registry names, see `list_backbones()`.
        weights: "imagenet", "none" (seeded random), or a folder of Keras weight files (default: "imagenet").
        seed: seed of the random weights and of the split (default: 0).
        input_size: one input size for all backbones (default: None, each its native size).
        pooling: "avg", "max" or "none" for spatial maps (default: "avg").
        dtype: "float16" or "float32" for the stored features (default: "float16").
        batch_size: images per compiled predict call (default: 32).
        views: extra views to store, "none", "hflip" or "dihedral" (7 views; costs 8x) (default: "none").
        precision: "float32", "mixed_bfloat16" (CPU) or "mixed_float16" (GPU) compute (default: "float32").
        val_fraction: share of validation images when no split is given (default: 0.1).
        test_fraction: share of test images when no split is given (default: 0.1).
        csv: a CSV file of image paths (or ids) and labels (default: None, use folders).
        csv_path_column: CSV column of the path or id (default: "path").
        csv_label_column: CSV column of the label (default: "label").
        csv_split_column: CSV column of the split, used when present (default: "split").
        on_change: when the images on disk differ from the store: "refuse" or "add" the new
            ones (default: "refuse").
        retry_skipped: try every skipped image of the store again, not only those whose file
            changed on disk (default: False).
        decode_workers: threads decoding images (default: None, 4 or the CPU count if fewer).
        progress: show a tqdm progress bar on stderr (default: True).
        split_map: dict top folder name -> "train", "val", "test" or "skip", for split folders
            whose names do not say their split (default: None, read from the structure).
        recursive: read images in folders nested inside class folders into that class
            (default: False, such folders are an error).
        min_images_per_class: leave out classes with fewer images (default: 1).
        require_all: a CSV row without a file is an error instead of left out (default: False).
        allow_outside_data: read CSV rows whose file resolves outside `data` (`..`, an absolute
            path, a symlink pointing out); otherwise they are left out as "outside DATA" (default: False).
        max_pixels: images of more pixels (width x height) are skipped from their header, before
            decoding; None leaves only Pillow's own limit (default: 40,000,000).
        log: function that prints the data summary before any compute (default: print).

    Returns:
        A `PrecomputeSummary`.

    Example:
        >>> summary = precompute("flowers/", "cache.h5", ["resnet50"], weights="none", input_size=64)
        >>> summary.computed
        {'resnet50': 120}
    """
    started = time.perf_counter()
    backbones = check_backbone_names(backbones)
    _check_choice("pooling", pooling, ("avg", "max", "none"))
    _check_choice("dtype", dtype, DTYPES)
    _check_choice("precision", precision, PRECISIONS)
    _check_choice("on_change", on_change, ON_CHANGE)
    extra_views = get_view_names(views)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer. Received: batch_size={batch_size!r}")
    if decode_workers is not None and (not isinstance(decode_workers, int) or decode_workers < 1):
        raise ValueError(f"decode_workers must be a positive integer, or None for the default. "
                         f"Received: decode_workers={decode_workers!r}")
    check_max_pixels(max_pixels)
    input_sizes = {name: check_input_size(name, input_size) for name in backbones}
    # Weights are checked before anything else, so a missing file costs no work.
    weight_files = {name: resolve_weights(name, weights) for name in backbones}
    weights_label = "none" if weights in (None, "none") else ("imagenet" if weights == "imagenet" else str(Path(weights).resolve()))
    table = discover_images(data, csv_path=csv, csv_path_column=csv_path_column,
                            csv_label_column=csv_label_column, csv_split_column=csv_split_column,
                            val_fraction=val_fraction, test_fraction=test_fraction, seed=seed,
                            split_map=split_map, recursive=recursive, min_images_per_class=min_images_per_class,
                            require_all=require_all, allow_outside_data=allow_outside_data)
    out = Path(out)
    # A symlinked --out: the lock, the temporary copy and the replace act on the file it names,
    # so the link stays a link and two runs through two names still exclude each other.
    store_path = out.resolve()
    skipped_csv = out.with_name(out.name + ".skipped.csv")
    for line in table.describe(left_out_file=skipped_csv):
        log(line)
    store_path.parent.mkdir(parents=True, exist_ok=True)
    options = dict(data=str(Path(data).resolve()), backbones=backbones, weights=weights_label, seed=seed,
                   input_size=input_size, pooling=pooling, dtype=dtype, batch_size=batch_size, views=views,
                   precision=precision, val_fraction=val_fraction, test_fraction=test_fraction,
                   csv=str(csv) if csv else None, split_map=dict(split_map or {}), recursive=recursive,
                   min_images_per_class=min_images_per_class, allow_outside_data=allow_outside_data,
                   max_pixels=max_pixels)
    with feature_store.store_lock(store_path):
        added, missing, retried = 0, 0, 0
        created = not store_path.exists()
        if not created:
            # An --out that is not a store, or a damaged one, is refused before anything beside it is touched.
            _open_store(store_path).close()
        feature_store.remove_stale_temporary(store_path)
        if created:
            with feature_store.rewrite_store(store_path, copy=False) as store:
                store.attrs["format_version"] = feature_store.FORMAT_VERSION
                store.attrs["data_root"] = table.root
                store.attrs["layout"] = table.layout
                store.attrs["created_with"] = feature_store.options_json(options)
                feature_store.set_strings_attr(store, "class_names", table.class_names)
                feature_store.write_images(store, table.paths, table.labels, table.splits,
                                           fingerprints(table.root, table.paths))
                feature_store.write_skipped(store, [], [], np.zeros((0, 2), np.int64))
        wanted = {name: _backbone_attrs(name, input_sizes[name], pooling, weights_label, seed, dtype,
                                        precision, extra_views, weight_files[name]) for name in backbones}
        with _open_store(store_path) as store, feature_store.store_errors(store_path):
            to_add = [name for name in backbones if "features" not in store or name not in store["features"]]
            # Settings are checked before new images are added, so a refused run changes nothing.
            for name in backbones:
                if name not in to_add:
                    _check_stored_backbone(store["features"][name], wanted[name], store_path)
            # Rows to reuse or resume from are checked against their checksums before any work.
            feature_store.verify_store(store, store_path, [name for name in backbones if name not in to_add])
            created_with = _decode_options(store.attrs.get("created_with"))
        in_effect, differing = _options_in_effect(options, created_with, weights_label)
        if not created:
            added, missing, retried = _reconcile(store_path, table, on_change, retry_skipped)
        models = {}
        build_seconds = 0.0

        def get_model(name):
            nonlocal build_seconds
            if name not in models:
                building = time.perf_counter()
                models[name], built = _feature_extractor(name, input_sizes[name], weight_files[name], pooling,
                                                         seed, precision)
                build_seconds += time.perf_counter() - building if built else 0.0
            return models[name]

        if to_add:
            # The feature shape (spatial maps with pooling none) comes from the built model.
            for name in to_add:
                get_model(name)
            with feature_store.rewrite_store(store_path) as store:
                for name in to_add:
                    feature_store.add_backbone(store, name, models[name].output_shape[1:], dtype,
                                               wanted[name], extra_views)
        with feature_store.open_store(store_path) as store, feature_store.store_errors(store_path):
            paths = feature_store.read_strings(store["images/path"])
            unreadable = store["pending/unreadable"][()].astype(bool)
            done = {name: store["progress"][name][()].astype(bool) for name in backbones}
        reused = {name: int(np.sum(done[name] & ~unreadable)) for name in backbones}
        todo_rows = np.flatnonzero(~unreadable & ~np.all(np.stack([done[n] for n in backbones]), axis=0))
        active = [name for name in backbones if np.any(~done[name][todo_rows])] if len(todo_rows) else []
        for name in active:
            get_model(name)
        computed = {name: 0 for name in backbones}
        skipped_now = 0
        timings = {}
        if len(todo_rows):
            # Images are read from DATA as given now, not from the stored data_root: a data
            # folder moved since the store was made (same files, same fingerprints) still reads.
            computed, skipped_now, timings = _run(store_path, table.root, paths, todo_rows, done, models, active,
                                                  input_sizes, extra_views, batch_size, decode_workers, progress,
                                                  max_pixels)
        timings = {"build": build_seconds, **timings}
        dropped_classes = _finish(store_path, backbones)
        with feature_store.open_store(store_path) as store, feature_store.store_errors(store_path):
            skipped_paths, skipped_reasons, _ = feature_store.read_skipped(store)
            image_count = store["images/path"].shape[0]
            class_names = feature_store.read_strings_attr(store, "class_names")
        skipped = tuple(zip(skipped_paths, skipped_reasons))
        write_skipped_csv(skipped_csv, skipped + table.left_out)
    return PrecomputeSummary(str(out), image_count, computed, reused, skipped, skipped_now, added, missing,
                             time.perf_counter() - started, timings, table.left_out, str(skipped_csv),
                             dropped_classes, tuple(class_names), retried, in_effect, differing)


def _decode_options(text):
    if text is None:
        return {}
    try:
        return json.loads(text.decode("utf-8") if isinstance(text, bytes) else str(text))
    except ValueError:
        return {}


# Options that made an existing store's rows and splits: the store keeps what they made, so its
# values are the ones in effect. The seed makes the split too, but with random weights it also
# makes the features, and a stored backbone's seed must match (`_check_stored_backbone`).
_STORE_OPTIONS = ("val_fraction", "test_fraction", "split_map")


def _options_in_effect(given, created_with, weights_label):
    """The options in effect for this store, and option -> (given, in effect) where they differ."""
    keys = _STORE_OPTIONS + (("seed",) if weights_label != "none" else ())
    in_effect, differing = dict(given), {}
    for key in keys:
        if key in created_with and created_with[key] != given[key]:
            in_effect[key] = created_with[key]
            differing[key] = (given[key], created_with[key])
    return in_effect, differing


def write_skipped_csv(path, rows):
    """Write (path, reason) rows to the CSV `path` whole or not at all (temporary file, fsync, rename)."""
    with open_atomic(path, newline="", encoding="utf-8") as handle:
        writer = csv_writer(handle)
        writer.writerow(["path", "reason"])
        writer.writerows(rows)


# Built feature extractors of this process, so that a second `precompute` (a notebook cell run
# again, a benchmark after its warm-up) skips building the model and tracing its predict step,
# which costs seconds per backbone. Least recently used first; bounded to cap memory.
_EXTRACTORS = collections.OrderedDict()
_EXTRACTORS_MAX = 8
_EXTRACTORS_LOCK = threading.Lock()


def _extractor_key(name, input_size, weights_file, pooling, seed, precision):
    # A weights file replaced in place must not hit a stale model: key on its size and mtime too.
    weights_id = None
    if weights_file:
        status = os.stat(weights_file)
        weights_id = (str(Path(weights_file).resolve()), status.st_size, status.st_mtime_ns)
    return (name, input_size, weights_id, pooling, seed, precision, keras.backend.backend())


def _feature_extractor(name, input_size, weights_file, pooling, seed, precision):
    """The built backbone for these settings, from this process's cache when there. Returns (model, built)."""
    key = _extractor_key(name, input_size, weights_file, pooling, seed, precision)
    with _EXTRACTORS_LOCK:
        if key in _EXTRACTORS:
            _EXTRACTORS.move_to_end(key)
            return _EXTRACTORS[key], False
        model = _build(name, input_size, weights_file, pooling, seed, precision)
        _trace_for_any_batch_size(model)
        _EXTRACTORS[key] = model
        while len(_EXTRACTORS) > _EXTRACTORS_MAX:
            _EXTRACTORS.popitem(last=False)
        return model, True


def _build(name, input_size, weights_file, pooling, seed, precision):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        return create_backbone(name, input_size=input_size, weights=weights_file or "none",
                               pooling=pooling, seed=seed)
    finally:
        keras.config.set_dtype_policy(previous)


def _timed_prepare(path, decode_size, sizes, views, max_pixels=DEFAULT_MAX_PIXELS):
    started = time.perf_counter()
    return _prepare_image(path, decode_size, sizes, views, max_pixels), time.perf_counter() - started


def _run(out, root, paths, todo_rows, done, models, active, input_sizes, extra_views, batch_size,
         decode_workers, progress, max_pixels=DEFAULT_MAX_PIXELS):
    from tqdm import tqdm

    sizes = sorted({input_sizes[name] for name in active})
    decode_size = max(sizes)
    workers = decode_workers or min(4, os.cpu_count() or 1)
    computed = {name: 0 for name in done}
    skipped_now = 0
    timings = {"compute": 0.0, "decode_wait": 0.0, "write_wait": 0.0, "prepare": 0.0}
    writer = _Writer(out)
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
            results = []
            for future in futures:
                result, seconds = future.result()
                results.append(result)
                timings["prepare"] += seconds
            timings["decode_wait"] += time.perf_counter() - waiting
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
                features = predict_in_batches(models[name], stacked, batch_size)
                timings["compute"] += time.perf_counter() - computing
                features = features.reshape((len(rows), 1 + len(extra_views)) + features.shape[1:])
                _check_finite(features, name, rows, paths)
                put(("features", rows, name, features[:, 0], features[:, 1:] if extra_views else None))
                computed[name] += len(rows)
            bar.update(len(batch))
    finally:
        bar.close()
        executor.shutdown(wait=False, cancel_futures=True)
        # Everything computed so far is written before returning, also on Ctrl-C.
        writer.jobs.put(None)
        writer.join()
    if writer.error is not None:
        raise RuntimeError(f"Writing {out} failed: {writer.error}") from writer.error
    return computed, skipped_now, timings


def _check_finite(features, name, rows, paths):
    # NaN or inf would train a model to chance without a word: refused before the rows are marked done.
    finite = np.isfinite(features.reshape(len(rows), -1)).all(axis=1)
    if not finite.all():
        bad = [paths[row] for row in rows[~finite]]
        raise ValueError(
            f"Backbone {name} gave NaN or infinite features for {len(bad)} image(s), e.g. {bad[0]}; nothing of this "
            f"batch was stored. With --precision mixed_float16 values can overflow: try float32 or mixed_bfloat16; "
            f"with a weights folder, check its file. Received: {len(bad)} non-finite row(s)")


def _finish(out, backbones):
    """When every backbone is complete, drop unreadable rows into `/skipped`, and classes left without images.

    Returns the names of the classes dropped.
    """
    with feature_store.open_store(out) as store, feature_store.store_errors(out):
        unreadable = store["pending/unreadable"][()].astype(bool)
        complete = all(np.all(store["progress"][name][()][~unreadable] == 1) for name in backbones)
        if not complete or not np.any(unreadable):
            return ()
        bad_rows = np.flatnonzero(unreadable)
        paths = feature_store.read_strings(store["images/path"])
        reasons = [value.decode("utf-8", "replace") for value in store["pending/reason"][()][bad_rows]]
        if np.all(unreadable):
            # Nothing was computed, so nothing is lost by removing the store; keeping it would pin
            # every file as unreadable for the next run, which may name the right DATA.
            out.unlink()
            raise ValueError(
                f"None of the {len(paths)} image(s) could be read, so no store was written ({out} removed). "
                f"E.g. {paths[0]}: {reasons[0]}. Check DATA (paths in --csv are relative to it). "
                f"Received: {len(paths)} unreadable image(s)")
        old_paths, old_reasons, old_prints = feature_store.read_skipped(store)
        prints = store["images/fingerprint"][()][bad_rows]
        labels = store["images/label"][()]
        class_names = feature_store.read_strings_attr(store, "class_names")
    skipped = (old_paths + [paths[i] for i in bad_rows], old_reasons + reasons,
               np.concatenate([old_prints.reshape(-1, 2), prints]))
    # A class whose every image was unreadable is no class of the store: its index would name nothing.
    kept = set(labels[~unreadable].tolist())
    dropped = tuple(name for index, name in enumerate(class_names) if index not in kept)
    relabel = None
    if dropped:
        remaining = [index for index in range(len(class_names)) if index in kept]
        relabel = np.full(len(class_names) + 1, -1, np.int64)  # the last entry maps -1 to -1
        relabel[remaining] = np.arange(len(remaining))
        class_names = [class_names[index] for index in remaining]
    feature_store.rebuild_rows(out, np.flatnonzero(~unreadable), skipped=skipped, class_names=class_names,
                               relabel=relabel)
    return dropped
