"""Classify image files with an exported model and write the predictions as CSV."""

import collections
import csv
import dataclasses
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from features.atomic_files import open_atomic
from features.images import UnreadableImageError, prepare_views
from features.views import view_names
from fusion.classifier import FusionClassifier
from fusion.export import (
    cached_export_path, class_names_of, export_model, export_model_name, exported_model_name, matches_run,
    records_recipes, run_recipes,
)
from fusion.saved_run import ModelFileError, load_keras_file


@dataclasses.dataclass(frozen=True)
class Predictions:
    """Class probabilities of the images that could be read, and the ones that could not.

    Attributes:
        paths: the images classified, in input order.
        probabilities: (len(paths), C) array, averaged over the views when views were asked for.
        class_names: the C class names.
        skipped: list of (path, reason) for images that could not be read.
    """

    paths: list
    probabilities: np.ndarray
    class_names: tuple
    skipped: list

    def top_k(self, k=5):
        """Indices of the k most probable classes per image, most probable first."""
        return np.argsort(-self.probabilities, axis=1, kind="stable")[:, :k]


def check_model_source(model_or_run, store=None, model=None):
    """Refuse model arguments that cannot work, before any work: a missing path, `store` or `model` with a model file.

    With a run folder, `store` is checked against the recipe the run recorded (see
    `fusion.export.check_store_recipes`), so a store made otherwise is refused here, and `model`
    against the names its report lists.

    Example:
        >>> check_model_source("runs/exp1", store="cache_64px.h5")
        Traceback (most recent call last):
        ValueError: Store cache_64px.h5 was made with another recipe than the run was trained on: ...
    """
    path = Path(model_or_run)
    if path.is_dir():
        if model is not None:
            export_model_name(path, model)
        if store is not None:
            run_recipes(path, store)
        return path
    if not path.is_file():
        raise FileNotFoundError(
            f"Model not found: {path.resolve()}. Expected an exported .keras file or a run folder written by run_train.py."
        )
    for flag, value in (("--store", store), ("--model", model)):
        if value is not None:
            what = "whose recipe it is checked against" if flag == "--store" else "whose report names its models"
            raise ValueError(
                f"{flag} applies to a run folder, {what}; the exported model {path} already holds its backbones and "
                f"model and is used as it is. Drop {flag}, or pass the run folder. Received: {flag[2:]}={str(value)!r}"
            )
    return path


def load_classifier(model_or_run, store=None, model=None):
    """Load an exported model from a `.keras` file, or from a run folder (exporting its model there once).

    From a run folder, the model is `model` or by default the report's winner; its export is
    cached as `exported.keras` (the default) or `exported_<MODEL>.keras`, and reused when it loads
    and holds that model of the run; one that does not (cut short by a kill, damaged, of another
    model or recipe) is exported again, with a warning that says so. With `store`, the store is
    first checked against the run's recorded recipe and refused on any difference; when it
    matches, the export made from that recipe is reused. A run that recorded no recipe is
    exported again from `store`.

    Args:
        model_or_run: an exported `.keras` file, or a folder written by `run_train.py`.
        store: the run's feature store, checked against the run's recorded recipe (default:
            None, the run's own record, else the store its config.json names).
        model: for a run folder, the model to load, as the report names it (default: None, the
            report's winner).

    Example:
        >>> model = load_classifier("runs/exp1")
        >>> stacking = load_classifier("runs/exp1", model="stacking")
    """
    path = check_model_source(model_or_run, store, model)
    if not path.is_dir():
        return load_keras_file(path, "export it again with `python run_predict.py RUN_DIR --export-only`")
    name = export_model_name(path, model)
    exported = cached_export_path(path, name)
    remedy = "delete it to export the run again"
    if exported.is_file() and (store is None or records_recipes(path)):
        try:
            loaded = load_keras_file(exported, remedy)
        except ModelFileError as error:
            warnings.warn(f"{exported} {error.reason}; exporting the run again.", stacklevel=2)
        else:
            if matches_run(loaded, path, name):
                return loaded
            if not isinstance(loaded, FusionClassifier):
                reason = "is not a FusionClassifier (an export of an older fusionpipe?)"
            elif exported_model_name(loaded, path) != name:
                reason = f"holds model {exported_model_name(loaded, path)!r}, not {name!r}"
            else:
                reason = "was not made from this run's recipe (input sizes or class names differ)"
            warnings.warn(f"{exported} {reason}; exporting the run again.", stacklevel=2)
    elif exported.is_file():
        warnings.warn(f"Run {path} records no feature recipe to check {exported} against; exporting it again from "
                      f"--store {store}.", stacklevel=2)
    if model is None:
        export_model(path, exported, store=store)  # the default, resolved there (and a fallback from the winner said)
    else:
        export_model(path, exported, store=store, model=model)
    return load_keras_file(exported, remedy)


def _map_ahead(executor, function, items, window):
    """Like `executor.map`, but with at most `window` items decoded ahead, so memory stays bounded."""
    pending = collections.deque()
    for item in items:
        pending.append(executor.submit(function, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _prepare(path, decode_size, views, input_sizes):
    """Decode one image and resize each of its views once per distinct input size.

    Through `features.images.prepare_views`, as precompute does, so the model sees the stored pixels.
    """
    try:
        by_size = prepare_views(path, input_sizes.values(), views, decode_size)
    except UnreadableImageError as error:
        return None, error.reason
    return [{name: by_size[size][index] for name, size in input_sizes.items()} for index in range(len(views))], None


def predict_images(model, image_paths, batch_size=16, views=None, progress=False):
    """Class probabilities of an exported model for image files; unreadable files are skipped.

    Images are decoded and resized in background threads while the model runs in fixed-size
    batches. With views, each view of an image is classified and the probabilities averaged.

    Args:
        model: an exported model (see `load_classifier`).
        image_paths: paths of image files.
        batch_size: images per model call (default: 16).
        views: extra views to average over: "none", "hflip" or "dihedral" (default: None, the
            model's `test_time_views`: those of training for a `+tta` export, else none).
        progress: show a progress bar on stderr (default: False).

    Example:
        >>> predictions = predict_images(load_classifier("runs/exp1"), ["a.jpg", "b.png"])
    """
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be a positive number of images. Received: batch_size={batch_size}")
    class_names = class_names_of(model)
    all_views = ("identity",) + (tuple(model.test_time_views) if views is None else tuple(view_names(views)))
    # One input per backbone at its fixed size: calling `model` on ever new image sizes would trace it for each.
    fixed_size_model, input_sizes = model.resized_input_model(), dict(model.input_sizes)
    decode_size = max(input_sizes.values())
    image_paths = [Path(path) for path in image_paths]
    sums = np.zeros((len(image_paths), len(class_names)), np.float64)
    readable = np.zeros(len(image_paths), bool)
    skipped = []
    batch = []  # (image index, {backbone: resized view})

    def run_batch():
        # Padded to a full batch, so the compiled step keeps one shape.
        padding = [batch[-1][1]] * (batch_size - len(batch))
        inputs = {name: np.stack([views_[name] for _, views_ in batch] + [view[name] for view in padding])
                  for name in input_sizes}
        probabilities = np.asarray(fixed_size_model.predict_on_batch(inputs))
        for (index, _), row in zip(batch, probabilities):
            sums[index] += row
        batch.clear()

    from tqdm import tqdm

    with ThreadPoolExecutor(max_workers=2) as decoder:
        prepared = _map_ahead(decoder, lambda path: _prepare(path, decode_size, all_views, input_sizes),
                              image_paths, window=2 * batch_size)
        for index, (image_views, reason) in enumerate(
            tqdm(prepared, total=len(image_paths), unit="img", disable=not progress, desc="predict")
        ):
            if image_views is None:
                skipped.append((str(image_paths[index]), reason))
                continue
            readable[index] = True
            for resized in image_views:
                batch.append((index, resized))
                if len(batch) == batch_size:
                    run_batch()
        if batch:
            run_batch()
    probabilities = (sums[readable] / len(all_views)).astype(np.float32)
    return Predictions(
        paths=[str(path) for path, ok in zip(image_paths, readable) if ok],
        probabilities=probabilities,
        class_names=tuple(class_names),
        skipped=skipped,
    )


def write_predictions_csv(predictions, out, top_k=5, all_probabilities=False):
    """Write one CSV row per image: path, predicted class, its probability, top-k, and skipped files.

    Columns: `path`, `predicted_class`, `probability`, `top_k` (`class:probability` pairs joined
    by `;`), one `p_<class>` column per class with `all_probabilities`, and `error` (the reason an
    image was skipped; empty otherwise). Skipped images come last, with empty predictions.

    Args:
        predictions: a `Predictions`.
        out: the CSV file to write.
        top_k: how many classes to list per image (default: 5).
        all_probabilities: add one probability column per class (default: False).

    Example:
        >>> write_predictions_csv(predictions, "predictions.csv", top_k=3)
    """
    if int(top_k) < 1:
        raise ValueError(f"top_k must be at least 1. Received: top_k={top_k}")
    class_names = predictions.class_names
    top_k = min(int(top_k), len(class_names))
    probability_columns = [f"p_{name}" for name in class_names] if all_probabilities else []
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open_atomic(out, newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "predicted_class", "probability", "top_k", *probability_columns, "error"])
        for path, row, best in zip(predictions.paths, predictions.probabilities, predictions.top_k(top_k)):
            top = ";".join(f"{class_names[index]}:{row[index]:.4f}" for index in best)
            extra = [f"{value:.6f}" for value in row] if all_probabilities else []
            writer.writerow([path, class_names[best[0]], f"{row[best[0]]:.6f}", top, *extra, ""])
        for path, reason in predictions.skipped:
            writer.writerow([path, "", "", "", *([""] * len(probability_columns)), reason])
    return out
