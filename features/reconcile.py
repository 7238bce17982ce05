"""The store's rows against the data: a new store, the images on disk compared with it, unreadable rows dropped."""

import numpy as np

from features import store as feature_store
from features.dataset import fingerprints


def create_store(store_path, table, options):
    """Write a new store for the images of `table`, with no backbone yet, atomically.

    Its root attributes record the format, the data root and layout, the options given, the
    class names and the version of fusionpipe that made it.

    Args:
        store_path: the store to create (under the writer lock).
        table: the `ImageTable` of the data.
        options: the options of the run, recorded as JSON in `created_with`.

    Example:
        >>> create_store(Path("cache.h5").resolve(), discover_images("flowers/"), {"seed": 0})
    """
    from features import __version__  # read at call time: the package imports this module

    feature_store.create_store(
        store_path, class_names=table.class_names, paths=table.paths, labels=table.labels, splits=table.splits,
        fingerprints=fingerprints(table.root, table.paths),
        root_attrs={"fusionpipe_version": __version__, "data_root": table.root, "layout": table.layout,
                    "created_with": feature_store.options_json(options)})


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


def reconcile(store_path, table, on_change, retry_skipped=False):
    """Compare the images on disk with the store; add new ones when allowed, retry skipped ones.

    A skipped image is tried again when its file changed on disk (a repaired file), or with
    `retry_skipped`: it leaves `/skipped` and is added as a new row.

    Returns:
        (added, missing, retried): images added, stored images missing on disk, skipped images retried.
    """
    disk_prints = fingerprints(table.root, table.paths)
    stored_rows = feature_store.read_run_rows(store_path)
    stored_paths, stored_prints, stored_labels = stored_rows.paths, stored_rows.fingerprints, stored_rows.labels
    skipped_paths, skipped_reasons, skipped_prints = stored_rows.skipped
    class_names = list(stored_rows.class_names)
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


def drop_unreadable_rows(out, backbones):
    """When every backbone is complete, drop unreadable rows into `/skipped`, and classes left without images.

    Returns the names of the classes dropped.
    """
    stored = feature_store.read_run_rows(out, backbones)
    unreadable = stored.unreadable
    complete = all(np.all(stored.done[name][~unreadable]) for name in backbones)
    if not complete or not np.any(unreadable):
        return ()
    bad_rows = np.flatnonzero(unreadable)
    paths = stored.paths
    reasons = stored.reasons(bad_rows)
    if np.all(unreadable):
        # Nothing was computed, so nothing is lost by removing the store; keeping it would pin
        # every file as unreadable for the next run, which may name the right DATA.
        out.unlink()
        raise ValueError(
            f"None of the {len(paths)} image(s) could be read, so no store was written ({out} removed). "
            f"E.g. {paths[0]}: {reasons[0]}. Check DATA (paths in --csv are relative to it). "
            f"Received: {len(paths)} unreadable image(s)")
    old_paths, old_reasons, old_prints = stored.skipped
    prints = stored.fingerprints[bad_rows]
    labels = stored.labels
    class_names = list(stored.class_names)
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
