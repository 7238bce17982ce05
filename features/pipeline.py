"""`precompute`: frozen backbones run once over a data set into the HDF5 feature store, resumably.

The steps live in modules of their own: `reconcile` (the store's rows against the images on
disk), `extractors` (built backbones), `compute` (the decode and predict loop), `writer` (rows
written in the background) and `summary` (what a run did).
"""

import logging
import time
from pathlib import Path

import numpy as np

from features import store as feature_store
from features.backbones import (check_backbone_names, check_input_size, check_pooling_names, resolve_pooling,
                                resolve_weights)
from features.compute import compute_missing_rows
from features.dataset import discover_images
from features.extractors import ExtractorSet
from features.images import DEFAULT_MAX_PIXELS, check_max_pixels
from features.progress_log import progress_shown
from features.ray_precompute import DEFAULT_SHARD_ROWS, check_ray_options, run_sharded
from features.recipe import FeatureRecipe
from features.reconcile import create_store, drop_unreadable_rows, reconcile
from features.summary import PrecomputeSummary, write_skipped_csv
from features.views import view_names as get_view_names

DTYPES = ("float16", "float32")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
ON_CHANGE = ("refuse", "add")
logger = logging.getLogger(__name__)


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"Unknown {name} '{value}'. Valid values: {', '.join(choices)}. Received: {name}={value!r}")


def _check_arguments(backbones, pooling, dtype, precision, on_change, views, batch_size, decode_workers, max_pixels):
    """Refuse a bad argument before any file is read; returns (backbone names, backbone -> pooling, extra views)."""
    backbones = check_backbone_names(backbones)
    if isinstance(pooling, dict):
        check_pooling_names(pooling, backbones, pooling)
    poolings = {name: resolve_pooling(name, pooling) for name in backbones}
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
    return backbones, poolings, extra_views


def _weights_label(weights):
    """How the store records `weights`: "none", "imagenet", or the weights folder's absolute path."""
    if weights in (None, "none"):
        return "none"
    return "imagenet" if weights == "imagenet" else str(Path(weights).resolve())


def _check_stored_backbone(stored, wanted, store_path):
    """Refuse to reuse or resume features that `stored` (the store's recipe) made otherwise than `wanted` would."""
    if stored is None:
        raise ValueError(
            f"Store {store_path} holds '{wanted.backbone}' features without a record of how they were made (input "
            f"size, pooling, weights), so they cannot be reused or resumed. Use another --out. "
            f"Received: out={str(store_path)!r}")
    mismatch = wanted.reuse_mismatch(stored)
    if mismatch is None:
        return
    key, found, asked = mismatch
    if key == "weights_sha256":
        # A weights file replaced under the same name makes other features.
        raise ValueError(
            f"Store {store_path} already holds '{wanted.backbone}' features made with a weights file of sha256 "
            f"{found}, but {wanted.backbone}'s weights file now has sha256 {asked}: the file was replaced, and its "
            f"features would differ. Restore the file, or use another --out. Received: weights_sha256={asked!r}")
    raise ValueError(
        f"Store {store_path} already holds '{wanted.backbone}' features made with {key}={found}, but this run asks "
        f"for {key}={asked}. Use another --out for different settings, or the same settings to reuse them. "
        f"Received: {key}={wanted.to_attrs()[key]!r}")


def _check_stored_backbones(store_path, backbones, wanted):
    """Refuse stored backbones made otherwise, or with damaged rows; returns (backbones to add, `created_with`)."""
    with feature_store.open_to_resume(store_path) as store, feature_store.store_errors(store_path):
        stored_backbones = feature_store.stored_backbones(store)
        to_add = [name for name in backbones if name not in stored_backbones]
        # Settings are checked before new images are added, so a refused run changes nothing.
        for name in backbones:
            if name not in to_add:
                stored = FeatureRecipe.from_attrs(feature_store.feature_attrs(store, name), backbone=name)
                _check_stored_backbone(stored, wanted[name], store_path)
        # Rows to reuse or resume from are checked against their checksums before any work.
        feature_store.verify_store(store, store_path, [name for name in backbones if name not in to_add])
        created_with = feature_store.read_options(store)
    return to_add, created_with


# Options that made an existing store's rows and splits: the store keeps what they made, so its
# values are the ones in effect. The seed makes the split too, but with random weights it also
# makes the features, and a stored backbone's seed must match (`FeatureRecipe.reuse_mismatch`).
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


def _add_backbones(store_path, models, dtype, wanted, extra_views, virtual):
    # The feature shape (spatial maps with pooling none) comes from the built model.
    with feature_store.rewrite_store(store_path) as store:
        for name, model in models.items():
            feature_store.add_backbone(store, name, model.output_shape[1:], dtype, wanted[name].to_attrs(),
                                       extra_views, virtual=virtual)


def _virtual_backbones(store_path):
    with feature_store.open_store(store_path) as store:
        return feature_store.virtual_backbones(store)


def _merge(store_path):
    """Copy every row kept in shard files into the store, then delete those files."""
    files = feature_store.merge_shards(store_path)
    feature_store.remove_unused_shards(store_path, files)


def _read_progress(store_path, backbones):
    """Returns (stored paths, backbone -> rows done, backbone -> rows reused, rows to compute, backbones to run)."""
    stored = feature_store.read_run_rows(store_path, backbones)
    paths, unreadable, done = stored.paths, stored.unreadable, stored.done
    reused = {name: int(np.sum(done[name] & ~unreadable)) for name in backbones}
    todo_rows = np.flatnonzero(~unreadable & ~np.all(np.stack([done[n] for n in backbones]), axis=0))
    active = [name for name in backbones if np.any(~done[name][todo_rows])] if len(todo_rows) else []
    return paths, done, reused, todo_rows, active


def _read_outcome(store_path):
    """Returns ((path, reason) of every skipped image, the number of images, the class names) of the store."""
    stored = feature_store.read_run_rows(store_path)
    skipped_paths, skipped_reasons, _ = stored.skipped
    image_count, class_names = len(stored.paths), stored.class_names
    return tuple(zip(skipped_paths, skipped_reasons)), image_count, tuple(class_names)


def precompute(data, out, backbones, *, weights="imagenet", seed=0, input_size=None, pooling="auto",
               dtype="float16", batch_size=32, views="none", precision="float32", val_fraction=0.1,
               test_fraction=0.1, csv=None, csv_path_column="path", csv_label_column="label",
               csv_split_column="split", on_change="refuse", retry_skipped=False, decode_workers=None, progress=True,
               split_map=None, recursive=False, min_images_per_class=1, require_all=False,
               allow_outside_data=False, max_pixels=DEFAULT_MAX_PIXELS, ray=None, workers=None,
               shard_rows=DEFAULT_SHARD_ROWS, merge=False):
    """Compute the features of every readable image of `data` with each backbone into store `out`.

    Resumable: run it again with the same arguments after an interruption and it continues;
    backbones already in the store are reused, new ones computed. Before any compute, the data
    summary (layout, images per class and split, what was left out) is logged at INFO on the
    `features.pipeline` logger, and shown on stdout when logging is not configured; silence it
    with `logging.getLogger("features").setLevel(logging.WARNING)`.

    Args:
        data: the data root (class folders, split folders, or the root of `csv` paths).
        out: the HDF5 store to create or complete.
        backbones: list of registry names, see `list_backbones()`.
        weights: "imagenet", "none" (seeded random), or a folder of Keras weight files (default: "imagenet").
        seed: seed of the random weights and of the split (default: 0).
        input_size: one input size for all backbones (default: None, each its native size).
        pooling: "auto" (each backbone's default: avg for CNNs, see `features.backbones.default_pooling`),
            one pooling for all backbones ("avg", "max", "cls", "cls+avg", "none" where each
            backbone takes it), or a dict of backbone name -> pooling (default: "auto").
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
        ray: run the compute on Ray: "local" (a Ray started on this machine), "auto" (the cluster
            `ray start` joined this machine to) or a cluster address; DATA and the store's folder
            must be on storage every node sees. Rows go to shard files in `OUT.shards/` that the
            store maps as HDF5 virtual datasets (default: None, one process, Ray not imported).
        workers: Ray workers (default: None, one per GPU of the cluster, else half its CPUs).
        shard_rows: rows per shard, the unit a worker computes and a retry repeats (default: 2048).
        merge: make the store self-contained: rows kept in shard files are copied into it, and a
            Ray run copies its shards in as they finish (default: False).

    Returns:
        A `PrecomputeSummary`.

    Example:
        >>> summary = precompute("flowers/", "cache.h5", ["resnet50"], weights="none", input_size=64)
        >>> summary.computed
        {'resnet50': 120}
    """
    started = time.perf_counter()
    check_ray_options(ray, workers, shard_rows)
    backbones, poolings, extra_views = _check_arguments(backbones, pooling, dtype, precision, on_change, views, batch_size,
                                              decode_workers, max_pixels)
    input_sizes = {name: check_input_size(name, input_size) for name in backbones}
    # Weights are checked before anything else, so a missing file costs no work.
    weight_files = {name: resolve_weights(name, weights, input_sizes[name]) for name in backbones}
    weights_label = _weights_label(weights)
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
    # The data summary, before any compute: logged at INFO on `features.pipeline`, and shown on
    # stdout when logging is not configured (see `features.progress_log`).
    with progress_shown("features"):
        for line in table.describe(left_out_file=skipped_csv):
            logger.info(line)
    store_path.parent.mkdir(parents=True, exist_ok=True)
    options = dict(data=str(Path(data).resolve()), backbones=backbones, weights=weights_label, seed=seed,
                   input_size=input_size, pooling=poolings, dtype=dtype, batch_size=batch_size, views=views,
                   precision=precision, val_fraction=val_fraction, test_fraction=test_fraction,
                   csv=str(csv) if csv else None, split_map=dict(split_map or {}), recursive=recursive,
                   min_images_per_class=min_images_per_class, allow_outside_data=allow_outside_data,
                   max_pixels=max_pixels)
    with feature_store.store_lock(store_path):
        created = not store_path.exists()
        if not created:
            # An --out that is not a store, or a damaged one, is refused before anything beside it is touched.
            feature_store.open_to_resume(store_path).close()
        feature_store.remove_stale_temporary(store_path)
        if created:
            create_store(store_path, table, options)
        wanted = {name: FeatureRecipe.for_run(name, input_sizes[name], poolings[name], weights_label, seed, dtype,
                                              precision, extra_views, weight_files[name]) for name in backbones}
        to_add, created_with = _check_stored_backbones(store_path, backbones, wanted)
        in_effect, differing = _options_in_effect(options, created_with, weights_label)
        added, missing, retried = (0, 0, 0) if created else reconcile(store_path, table, on_change, retry_skipped)
        extractors = ExtractorSet(input_sizes, weight_files, poolings, seed, precision)
        if to_add:
            # A Ray run's new backbones map shard files (virtual datasets); with --merge they are copied in.
            _add_backbones(store_path, extractors.build(to_add), dtype, wanted, extra_views,
                           virtual=ray is not None and not merge)
        paths, done, reused, todo_rows, active = _read_progress(store_path, backbones)
        sharded = [name for name in _virtual_backbones(store_path) if name in active] if len(todo_rows) else []
        if sharded and ray is None and merge:
            _merge(store_path)
            sharded = []
        computed, skipped_now, timings, compute_seconds = {name: 0 for name in backbones}, 0, {}, {}
        sharding, decoded = None, len(todo_rows)
        # Rows of a backbone kept in shard files go to shard files, on Ray or, without --ray, in this process.
        if len(todo_rows) and (ray is not None or sharded):
            settings = dict(input_sizes=input_sizes, weight_files=weight_files, poolings=poolings, seed=seed,
                            precision=precision, dtype=dtype, extra_views=tuple(extra_views), batch_size=batch_size,
                            decode_workers=decode_workers, max_pixels=max_pixels, data_root=str(table.root),
                            store_folder=str(store_path.parent),
                            shards_folder=str(feature_store.shards_folder(store_path)))
            recipes = {name: wanted[name].to_attrs() for name in backbones}
            computed, skipped_now, sharding = run_sharded(
                store_path, paths, todo_rows, done, active, recipes,
                set(_virtual_backbones(store_path)), settings, address=ray, workers=workers,
                shard_rows=shard_rows, progress=progress)
            compute_seconds, timings["prepare"] = sharding.compute_seconds, sharding.decode_seconds
            decoded = sharding.decoded_images
        elif len(todo_rows):
            # Images are read from DATA as given now, not from the stored data_root: a data
            # folder moved since the store was made (same files, same fingerprints) still reads.
            computed, skipped_now, timings, compute_seconds = compute_missing_rows(
                store_path, table.root, paths, todo_rows, done, extractors.build(active), active, input_sizes,
                extra_views, batch_size, decode_workers, progress, max_pixels)
        timings = {"build": extractors.build_seconds, **timings}
        dropped_classes = drop_unreadable_rows(store_path, backbones)
        if merge:
            _merge(store_path)
        skipped, image_count, class_names = _read_outcome(store_path)
        write_skipped_csv(skipped_csv, skipped + table.left_out)
    return PrecomputeSummary(str(out), image_count, computed, reused, skipped, skipped_now, added, missing,
                             time.perf_counter() - started, timings, table.left_out, str(skipped_csv),
                             dropped_classes, class_names, retried, in_effect, differing,
                             compute_seconds=compute_seconds, decoded_images=decoded, sharding=sharding)
