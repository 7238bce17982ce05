"""Classify image files with an exported model and write the predictions as CSV."""

import csv
import dataclasses
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import keras
import numpy as np

from features.images import UnreadableImageError, load_image
from features.views import apply_view, view_names
from fusion.export import EXPORT_FILE_NAME, class_names_of, export_model, input_sizes_of


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


def load_classifier(model_or_run, store=None):
    """Load an exported model from a `.keras` file, or from a run folder (exporting it there once).

    Args:
        model_or_run: an exported `.keras` file, or a folder written by `run_train.py`.
        store: the run's feature store, if it moved (default: the one in the run's config).

    Example:
        >>> model = load_classifier("runs/exp1")
    """
    path = Path(model_or_run)
    if path.is_dir():
        exported = path / EXPORT_FILE_NAME
        if not exported.is_file():
            export_model(path, exported, store=store)
        path = exported
    if not path.is_file():
        raise FileNotFoundError(
            f"Model not found: {path.resolve()}. Expected an exported .keras file or a run folder written by run_train.py."
        )
    return keras.saving.load_model(path, safe_mode=True)


def _decode(path, decode_size, views):
    try:
        image = load_image(path, min_size=decode_size)
    except UnreadableImageError as error:
        return None, error.reason
    return [apply_view(image, view).astype(np.float32) for view in views], None


def predict_images(model, image_paths, batch_size=16, views="none", progress=False):
    """Class probabilities of an exported model for image files; unreadable files are skipped.

    Images are decoded in a background thread while the model runs. Images of equal size go
    through the model together; each view of an image is classified and the probabilities are
    averaged over the views.

    Args:
        model: an exported model (see `load_classifier`).
        image_paths: paths of image files.
        batch_size: images per model call (default: 16).
        views: extra views to average over: "none", "hflip" or "dihedral" (default: "none").
        progress: show a progress bar on stderr (default: False).

    Example:
        >>> predictions = predict_images(load_classifier("runs/exp1"), ["a.jpg", "b.png"])
    """
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be a positive number of images. Received: batch_size={batch_size}")
    all_views = ("identity",) + tuple(view_names(views))
    class_names = class_names_of(model)
    decode_size = max(input_sizes_of(model))
    image_paths = [Path(path) for path in image_paths]
    sums = np.zeros((len(image_paths), len(class_names)), np.float64)
    readable = np.zeros(len(image_paths), bool)
    skipped = []
    pending = {}  # image shape -> list of (image index, view array)

    def run(shape):
        group = pending.pop(shape)
        probabilities = np.asarray(model.predict_on_batch(np.stack([image for _, image in group])))
        for (index, _), row in zip(group, probabilities):
            sums[index] += row

    from tqdm import tqdm

    with ThreadPoolExecutor(max_workers=2) as decoder:
        decoded = decoder.map(lambda path: _decode(path, decode_size, all_views), image_paths)
        for index, (images, reason) in enumerate(
            tqdm(decoded, total=len(image_paths), unit="img", disable=not progress, desc="predict")
        ):
            if images is None:
                skipped.append((str(image_paths[index]), reason))
                continue
            readable[index] = True
            for image in images:
                pending.setdefault(image.shape, []).append((index, image))
                if len(pending[image.shape]) >= batch_size:
                    run(image.shape)
        for shape in list(pending):
            run(shape)
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
    with open(out, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "predicted_class", "probability", "top_k", *probability_columns, "error"])
        for path, row, best in zip(predictions.paths, predictions.probabilities, predictions.top_k(top_k)):
            top = ";".join(f"{class_names[index]}:{row[index]:.4f}" for index in best)
            extra = [f"{value:.6f}" for value in row] if all_probabilities else []
            writer.writerow([path, class_names[best[0]], f"{row[best[0]]:.6f}", top, *extra, ""])
        for path, reason in predictions.skipped:
            writer.writerow([path, "", "", "", *([""] * len(probability_columns)), reason])
    return out
