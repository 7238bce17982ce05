"""A finished run read back from its folder: its Keras models, report and config, each file checked as it loads.

Everything that reads a run folder goes through here (`load_run`, `read_run_config`), so export
and prediction never import the trainer. A file that is there but damaged is a one-line error
that names it, never taken for a missing one.
"""

import dataclasses
import json
import zipfile
from pathlib import Path

import keras
import numpy as np

from fusion.model_names import TTA_SUFFIX, base_model

# The baselines' models/<name>.keras files: each backbone's model and a combiner layer
# (fusion.combiners). Loaded on first use, so that loading a run stays as cheap as before.
BASELINE_MODEL_NAMES = ("average", "weighted_average", "stacking")

_DAMAGED_RUN = "train the run again (run_train.py --overwrite) or point to another run"


def run_model_names(report, trained=()):
    """Every model name a run's report lists (trained models, baselines, ablations, `+tta`), in its order.

    Args:
        report: the run's report.json contents.
        trained: names of trained models to add where the report lists none (default: ()).

    Example:
        >>> run_model_names(load_run("runs/exp1").report)[:3]
        ['fusion', 'resnet50', 'vgg16']
    """
    names = list(report.get("test") or {})
    return names + [name for name in trained if name not in names]


def check_model_name(model, valid_names, run_dir=None):
    """`model` if the run lists it, else a one-line ValueError naming the valid names.

    Example:
        >>> check_model_name("stacking", ["fusion", "stacking"])
        'stacking'
    """
    if model not in valid_names:
        where = f" of run {run_dir}" if run_dir is not None else ""
        raise ValueError(f"Unknown model {model!r}{where}. Valid names: {', '.join(valid_names)}. "
                         f"Received: model={model!r}")
    return model


def default_model_name(report, run_dir):
    """The model deployed when none is named: the report's winner.

    A run from a version that saved no baseline models, whose winner is a baseline, deploys its
    fusion head instead (`export_model` warns when it does).

    Example:
        >>> default_model_name(load_run("runs/exp1").report, "runs/exp1")
        'stacking'
    """
    summary = report.get("summary", {})
    fusion_head = summary.get("fusion_head", "fusion")
    winner = summary.get("winner") or fusion_head
    if base_model(winner) in BASELINE_MODEL_NAMES and not (
            Path(run_dir) / "models" / f"{base_model(winner)}.keras").is_file():
        return fusion_head
    return winner


@dataclasses.dataclass(frozen=True)
class FusionRun:
    """A finished run: its Keras models, class names, backbones, report and config.

    Attributes:
        run_dir: the run folder.
        models: dict model name -> `keras.Model` (each fusion head, each backbone, `<head>_without_<b>`);
            after cross-validation each is its fold ensemble. The baselines load on first use
            through `keras_model` (and `predict_proba`).
        class_names: tuple of class names, in the order of the softmax outputs.
        backbones: tuple of backbone names, the fusion model's input names.
        report: the contents of report.json.
        config: the contents of config.json (options, versions, store).
    """

    run_dir: Path
    models: dict
    class_names: tuple
    backbones: tuple
    report: dict
    config: dict
    _baselines: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

    @property
    def model_names(self):
        """Every model the report lists: the names `predict_proba`, `keras_model` and `export_model` take."""
        return run_model_names(self.report, self.models)

    @property
    def default_model(self):
        """The report's winner on test (`summary.winner`): what `export_model` and `run_predict.py` deploy."""
        return default_model_name(self.report, self.run_dir)

    def keras_model(self, model):
        """The Keras model on features behind a name the report lists; a `<model>+tta` name gives `<model>`'s.

        The baselines (`average`, `weighted_average`, `stacking`) are loaded from
        `models/<name>.keras` on first use.

        Example:
            >>> run.keras_model("stacking").predict({"resnet50": resnet_features, "vgg16": vgg_features})
        """
        base = base_model(check_model_name(model, self.model_names, self.run_dir))
        if base in self.models:
            return self.models[base]
        if base not in self._baselines:
            self._baselines[base] = load_keras_file(
                Path(self.run_dir) / "models" / f"{base}.keras",
                "runs trained before the baselines were saved as models have none: " + _DAMAGED_RUN)
        return self._baselines[base]

    @property
    def fusion_head(self):
        """The fusion head the run chose on held-out rows (`fusion` unless several heads were trained)."""
        return self.report.get("summary", {}).get("fusion_head", "fusion")

    def leaderboard(self):
        """Every model of the run as a pandas DataFrame, one row each, best first, as AutoGluon's `leaderboard()`.

        Columns: model, kind, test accuracy and its 95% interval, log loss, macro F1, ECE, training
        seconds, precompute seconds per image of its backbones, cross-validation means and standard
        deviations with `--folds`, rank (see `fusion.leaderboard.leaderboard`).

        Example:
            >>> load_run("runs/exp1").leaderboard()[["model", "accuracy", "ece", "rank"]].head(3)
        """
        from fusion.leaderboard import leaderboard

        return leaderboard(self.report)

    def histories(self):
        """Per trained model, its history: dict metric -> per-epoch values (with folds, the first fold's).

        Example:
            >>> plot_training_curves(load_run("runs/exp1").histories())
        """
        from fusion.histories import read_histories

        return read_histories(self.run_dir, models=list(self.report.get("training", {})) or None)

    def figures(self):
        """The report's figures as matplotlib Figures, dict title -> Figure; each shows inline in a notebook.

        Example:
            >>> load_run("runs/exp1").figures()["model comparison"]
        """
        from fusion.plots import report_figures  # matplotlib only when figures are asked for

        return {title: figure for title, figure in report_figures(self.report, self.histories()).values()}

    @property
    def fusion_model(self):
        """The chosen fusion head's model (its fold ensemble after cross-validation); export_model exports the winner."""
        return self.models[self.fusion_head]

    def predict_proba(self, features, model="fusion", batch_size=256, view_features=None):
        """Class probabilities of any model the report lists, for a dict {backbone: (N, ...) features}.

        A `<model>+tta` name averages `<model>`'s probabilities over the identity (`features`) and
        each extra view, as training's test-time augmentation does; it needs `view_features`.

        Args:
            features: dict backbone -> (N, ...) features (the store's `/features/<backbone>` rows).
            model: a name of `model_names` (default: "fusion").
            batch_size: rows per model call (default: 256).
            view_features: for a `+tta` model, one dict {backbone: (N, ...) features} per extra
                view (view k of the store's `/views/<backbone>[:, k]`); a backbone missing from a
                view uses its identity features, as training does for a backbone with fewer views
                (default: None).

        Example:
            >>> run.predict_proba({"resnet50": features}, model="resnet50")
            >>> run.predict_proba(features, model="fusion+tta", view_features=[{"resnet50": flipped}])
        """
        keras_model = self.keras_model(model)
        names = [tensor.name for tensor in keras_model.inputs]
        missing = [name for name in names if name not in features]
        if missing:
            raise ValueError(
                f"Model {model!r} needs features for backbones {names}. Missing: {missing}. "
                f"Received: features for {sorted(features)}"
            )
        inputs = {name: np.asarray(features[name], dtype="float32") for name in names}
        views = self._check_view_features(model, view_features)
        if not views:
            return keras_model.predict(inputs, batch_size=batch_size, verbose=0)
        per_view = [inputs] + [{name: np.asarray(view.get(name, inputs[name]), dtype="float32") for name in names}
                               for view in views]
        # The mean over views of each view's probabilities: what training reports for `+tta`.
        return np.mean([keras_model.predict(view, batch_size=batch_size, verbose=0) for view in per_view], axis=0)

    def _check_view_features(self, model, view_features):
        if not model.endswith(TTA_SUFFIX):
            if view_features is not None:
                raise ValueError(
                    f"Model {model!r} sees the identity view only; view_features are for the test-time augmentation "
                    f"models ({model + TTA_SUFFIX!r} where the run has it). Drop view_features or pick a +tta model. "
                    f"Received: view_features with {len(view_features)} views"
                )
            return []
        if not view_features or not all(isinstance(view, dict) for view in view_features):
            raise ValueError(
                f"Model {model!r} averages over the test-time views: pass view_features=[{{backbone: features of "
                f"view 1}}, ...], one dict per extra view (the store's /views/<backbone>[:, k]). "
                f"Received: view_features={_describe(view_features)}"
            )
        unknown = sorted({name for view in view_features for name in view if name not in self.backbones})
        if unknown:
            raise ValueError(f"view_features name backbones the run does not have: {unknown}. Expected some of "
                             f"{list(self.backbones)}. Received: view_features for {unknown}")
        return view_features


def _describe(value):
    # A short account of an argument that may hold large arrays.
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of {len(value)} {', '.join(sorted({type(item).__name__ for item in value}))}"
    return repr(value) if value is None else f"a {type(value).__name__}"


def _load_failure(error):
    """The first line of the innermost reason a Keras load failed (Keras nests causes into one long message)."""
    message = str(error).split("Exception encountered: ")[-1].strip()
    return message.splitlines()[0] if message else type(error).__name__


class ModelFileError(ValueError):
    """A `.keras` file that is there but does not load; `reason` says why in a few words."""

    def __init__(self, path, reason, remedy):
        super().__init__(f"Model file {Path(path).resolve()} {reason}; {remedy}.")
        self.path = Path(path)
        self.reason = reason


def _register_keras_hub_classes(path):
    """Import keras_hub when the file holds a KerasHub backbone: its classes are registered on import."""
    try:
        with zipfile.ZipFile(path) as archive:
            needs_keras_hub = b'"keras_hub' in archive.read("config.json")
    except (KeyError, OSError, zipfile.BadZipFile):
        return  # not a whole .keras file: loading it says so
    if needs_keras_hub:
        from features.hub_backbones import import_keras_hub

        import_keras_hub()


def load_keras_file(path, remedy):
    """Load a `.keras` file in safe mode; a file that does not load is a one-line `ModelFileError` naming it.

    Args:
        path: the `.keras` file.
        remedy: what the user can do, ending the message (e.g. "train the run again").

    Example:
        >>> model = load_keras_file("runs/exp1/models/fusion.keras", "train the run again")
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Model not found: {path.resolve()}. Expected a .keras file; {remedy}.")
    if not zipfile.is_zipfile(path):
        # Keras calls a file that is not a zip archive "not found"; here it is there, but cut short or not a model.
        raise ModelFileError(path, f"is damaged: not a whole .keras file ({path.stat().st_size} bytes, not a complete "
                                   f"zip archive; cut short?)", remedy)
    _register_keras_hub_classes(path)
    try:
        return keras.saving.load_model(path, safe_mode=True)
    except Exception as error:  # a zip that is no Keras model, a crafted or foreign config: all a bad file
        raise ModelFileError(path, f"does not load as a fusionpipe model ({_load_failure(error)})", remedy) from None


def _read_run_json(path, required):
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"{path.resolve()} is damaged: not valid JSON ({error}). Expected the file as run_train.py "
                         f"wrote it; train the run again (run_train.py --overwrite) or point to another run.") from None
    missing = [key for key in required if key not in content] if isinstance(content, dict) else ["JSON object"]
    if missing:
        raise ValueError(f"{path.resolve()} is damaged: it has no {', '.join(missing)}. Expected the file as "
                         f"run_train.py wrote it; train the run again (run_train.py --overwrite) or point to another run.")
    return content


def read_run_report(run_dir):
    """The report.json of a finished run, checked as `load_run` checks it, without loading any model.

    Example:
        >>> read_run_report("runs/exp1")["summary"]["winner"]
        'stacking'
    """
    path = Path(run_dir) / "report.json"
    if not path.is_file():
        raise FileNotFoundError(f"Not a finished run: {path.resolve()} is missing. Expected a folder written by "
                                f"run_train.py; train first or point to another run.")
    return _read_run_json(path, ())


def read_run_config(run_dir):
    """The config.json of a run folder: options, versions, class names, backbones and feature recipes.

    Example:
        >>> read_run_config("runs/exp1")["backbones"]
        ['resnet50', 'densenet121']
    """
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"Not a finished run: {path.resolve()} is missing. Expected a folder written by "
                                f"run_train.py; train first or point to another run.")
    return _read_run_json(path, ("class_names", "backbones"))


def load_run(run_dir):
    """Load a finished run: its Keras models (safe mode), class names, backbones, report and config.

    Args:
        run_dir: a folder written by `train_run` / `run_train.py`.

    Example:
        >>> run = load_run("runs/exp1")
        >>> probabilities = run.fusion_model.predict({"resnet50": features})
    """
    run_dir = Path(run_dir)
    for name in ("config.json", "report.json"):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(
                f"Not a finished run: {(run_dir / name).resolve()} is missing. Expected a folder written by "
                f"run_train.py; train first or point to another run."
            )
    config = read_run_config(run_dir)
    report = read_run_report(run_dir)
    chosen = report.get("summary", {}).get("fusion_head", "fusion")
    if not (run_dir / "models" / f"{chosen}.keras").is_file():
        raise FileNotFoundError(
            f"Not a finished run: {(run_dir / 'models' / f'{chosen}.keras').resolve()} is missing. Expected a folder "
            f"written by run_train.py; train first or point to another run."
        )
    models = {path.stem: load_keras_file(path, _DAMAGED_RUN) for path in sorted((run_dir / "models").glob("*.keras"))
              if path.stem not in BASELINE_MODEL_NAMES}
    for name, entry in report.get("training", {}).items():
        if "same_as" in entry:  # an ablation that is another model, saved once
            models[name] = models[entry["same_as"]]
    return FusionRun(
        run_dir=run_dir, models=models, class_names=tuple(config["class_names"]), backbones=tuple(config["backbones"]),
        report=report, config=config,
    )
