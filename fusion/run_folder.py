"""The run folder: the files a run writes, each recorded first, so that --overwrite removes those and nothing else.

Every file is recorded in `written_files.json` before it is written: a run killed half way
leaves a record that still covers what it wrote. Replacing a run deletes exactly the recorded
files and the folders that held them, and refuses a folder that holds anything else. The
writers of the run's JSON files and test predictions live here for that reason; reading a run
back is `fusion.saved_run`'s job.

Files are written whole or not at all through `features.atomic_files`; the temporary a killed
writer leaves (`<name>.tmp-<pid>-<random><suffix>`) belongs to the run when `<name>` is
recorded, and is removed with it.
"""

import contextlib
import csv
import json
import os
from pathlib import Path

import numpy as np

from features.atomic_files import atomic_path, open_atomic, temporary_target, write_text_atomic

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; concurrent writers of one record may lose an entry
    fcntl = None

MANIFEST_NAME = "written_files.json"


def _manifest(run_dir):
    return Path(run_dir) / MANIFEST_NAME


@contextlib.contextmanager
def _record_lock(run_dir):
    # Two processes recording at once (two predictions on one run) must not lose each other's entries:
    # the folder itself is locked, so no lock file joins the run's files.
    if fcntl is None:
        yield
        return
    descriptor = os.open(run_dir, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # releases the lock


def _read_written(run_dir):
    """The files recorded as written into `run_dir`, relative POSIX paths; None when it has no record.

    Example:
        >>> _read_written("runs/exp1")[:2]
        ['config.json', 'history/fusion.csv']
    """
    path = _manifest(run_dir)
    if not path.is_file():
        return None
    try:
        files = json.loads(path.read_text(encoding="utf-8"))["files"]
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path} is not a record of written files ({error}); remove the run folder by hand, or "
                         f"choose a new --out. Received: {path}") from None
    return sorted(str(file) for file in files)


def record_written(run_dir, *paths):
    """Record `paths` as written by fusionpipe, before writing them.

    Each path is relative to `run_dir` ("models/fusion.keras"), or absolute; absolute paths
    outside `run_dir` are ignored: a run folder answers only for its own files. A path relative
    to the working directory must be made absolute first.

    Example:
        >>> record_written(run_dir, "config.json", run_dir / "models" / "fusion.keras")
    """
    run_dir = Path(run_dir)
    resolved_dir = run_dir.resolve()
    with _record_lock(run_dir):
        files = set(_read_written(run_dir) or [])
        for path in paths:
            absolute = (run_dir / path).resolve()  # an absolute path stays as it is
            try:
                files.add(absolute.relative_to(resolved_dir).as_posix())
            except ValueError:
                continue
        write_text_atomic(_manifest(run_dir), json.dumps({"files": sorted(files)}, indent=1) + "\n")


def _temporaries_of(names, written):
    # Temporaries of `features.atomic_files` left by a killed writer: ours when the file they stand for is.
    written = set(written) | {MANIFEST_NAME}
    return {name for name in names if (target := temporary_target(Path(name).name)) is not None
            and (Path(name).parent / target).as_posix() in written}


def _present(run_dir):
    # Every file and folder below run_dir, relative, the record itself left out.
    run_dir = Path(run_dir)
    found = set()
    for folder, folder_names, file_names in os.walk(run_dir):
        base = Path(folder).relative_to(run_dir)
        found.update((base / name).as_posix() for name in folder_names + file_names)
    return found - {MANIFEST_NAME}


def prepare_run_folder(out_dir, overwrite):
    """Create an empty run folder, or empty one that fusionpipe wrote when `overwrite`; never touch other files.

    Args:
        out_dir: the run folder.
        overwrite: replace a run that is there (default behaviour of callers: refuse).

    Raises:
        FileExistsError: `out_dir` is a file, or not empty and `overwrite` is off, or holds files
            that are not recorded as fusionpipe's.

    Example:
        >>> run_dir = prepare_run_folder("runs/exp1", overwrite=True)
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"Run folder {out_dir.resolve()} is a file. Expected a folder; choose another --out.")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"Run folder {out_dir.resolve()} is not empty. Choose a new --out, or pass --overwrite "
                f"to replace the run in it. Received: out={out_dir}"
            )
        written = _read_written(out_dir)
        if written is None:
            raise FileExistsError(
                f"Refusing to overwrite {out_dir.resolve()}: it is not empty and holds no {MANIFEST_NAME}, the record "
                f"of the files a run wrote, so it is not a run folder (or one of an older version: delete it by hand). "
                f"Choose a new --out. Received: out={out_dir}"
            )
        present = _present(out_dir)
        leftovers = _temporaries_of(present, written)
        ours = set(written) | leftovers
        ours |= {parent.as_posix() for file in written for parent in Path(file).parents if parent != Path(".")}
        others = sorted(present - ours)
        if others:
            shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
            raise FileExistsError(
                f"Refusing to overwrite {out_dir.resolve()}: it holds files that no run wrote ({shown}). Move them "
                f"out, or choose a new --out. Received: out={out_dir}"
            )
        for file in set(written) | leftovers:
            (out_dir / file).unlink(missing_ok=True)
        # The folders that held them, deepest first, once empty.
        for folder in sorted(ours - set(written), key=lambda name: -name.count("/")):
            if (out_dir / folder).is_dir() and not any((out_dir / folder).iterdir()):
                (out_dir / folder).rmdir()
        _manifest(out_dir).unlink()
    out_dir.mkdir(parents=True, exist_ok=True)
    record_written(out_dir)
    return out_dir


def write_run_json(run_dir, name, content):
    """Record and write one JSON file of a run, indented, whole or not at all; returns its path.

    Args:
        run_dir: the run folder.
        name: the file, relative to `run_dir` ("config.json", "models/stacking.json").
        content: anything `json.dumps` takes.

    Example:
        >>> write_run_json(run_dir, "config.json", {"class_names": ["cat", "dog"]})
    """
    path = Path(run_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    record_written(run_dir, name)
    return write_text_atomic(path, json.dumps(content, indent=2) + "\n")


def write_test_predictions(run_dir, image_paths, class_names, test_rows, test_labels, probabilities_by_model):
    """Write each model's test predictions to `predictions/<model>.csv`, and all to `predictions/test_probabilities.npz`.

    Args:
        run_dir: the run folder.
        image_paths: the store's image paths, indexed by row.
        class_names: class names, in the order of the probabilities' columns.
        test_rows: the store rows of the test images.
        test_labels: their labels (class indices).
        probabilities_by_model: dict model name -> (len(test_rows), num_classes) probabilities; in the
            `.npz` a `+` in a name becomes `_plus_` (`fusion+tta` -> `fusion_plus_tta`).

    Example:
        >>> write_test_predictions(run_dir, info.paths, info.class_names, rows, labels, {"fusion": probabilities})
    """
    run_dir = Path(run_dir)
    folder = run_dir / "predictions"
    folder.mkdir(parents=True, exist_ok=True)
    record_written(run_dir, *(f"predictions/{name}.csv" for name in probabilities_by_model),
                   "predictions/test_probabilities.npz")
    class_names = list(class_names)
    for name, probabilities in probabilities_by_model.items():
        with open_atomic(folder / f"{name}.csv", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["path", "label", "predicted", "confidence"] + [f"p_{c}" for c in class_names])
            for row, label, probs in zip(test_rows, test_labels, probabilities):
                best = int(np.argmax(probs))
                writer.writerow(
                    [image_paths[row], class_names[label], class_names[best], f"{probs[best]:.6f}"]
                    + [f"{p:.6f}" for p in probs]
                )
    with atomic_path(folder / "test_probabilities.npz") as temporary:  # ends in .npz, so numpy keeps the name
        np.savez_compressed(
            temporary,
            rows=test_rows,
            labels=test_labels,
            **{name.replace("+", "_plus_"): probs for name, probs in probabilities_by_model.items()},
        )
