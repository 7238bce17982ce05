"""One training run: fusion heads, single backbones, baselines and ablations on one split or k folds, written to a run folder."""

import dataclasses
import logging
import platform
import sys
import time

import keras
import numpy as np
import sklearn

import features
from features import store as feature_store
from features.atomic_files import save_model_atomic
from features.progress_log import progress_shown
from features.tensorflow_noise import retracing_warnings_silenced
from fusion.baselines import LogisticStacking, WeightedAverage, average_probabilities
from fusion.combiners import WeightedAverageCombiner, combined_model
from fusion.cross_validation import (
    CrossValidation, check_fold_options, cross_fitted, fold_scores, make_folds, out_of_fold, small_class_warning,
    store_split,
)
from fusion.data import FeatureBatches, open_feature_source
from fusion.ensemble import fold_ensemble
from fusion.heads import gate_weights
from fusion.model import build_fusion_model
from fusion.report import HEAD_MODEL_NAMES, build_report, store_warnings, write_report
from fusion.run_folder import prepare_run_folder, record_written, write_run_json, write_test_predictions
from fusion.saved_run import FusionRun
from fusion.statistics import feature_statistics
from fusion.store import SPLITS, read_store_info, select_backbones
from fusion.tensorboard_logs import check_tensorboard_dir, tensorboard_callbacks
from fusion.training import class_weights, train_model
from fusion.tuning import tune_head

logger = logging.getLogger(__name__)

# Rows per contiguous read when streaming: large enough for cheap HDF5 reads, small enough
# that a batch mixes several places of a store written class by class.
STREAM_BLOCK_ROWS = 8


def train_run(
    store_path,
    out_dir,
    *,
    backbones=None,
    fusion=("concat",),
    units=256,
    dropout=0.5,
    l2=1e-4,
    pooling="avg",
    head_units=(),
    learning_rate=1e-3,
    batch_size=32,
    epochs=60,
    patience=10,
    class_weight="none",
    seed=0,
    folds=0,
    repeats=1,
    tune=0,
    stream=None,
    block_rows=None,
    view_augment=False,
    tta=False,
    ablation=True,
    overwrite=False,
    options=None,
    verbose=1,
    callbacks=None,
    tensorboard_dir=None,
):
    """Train the fusion heads, one classifier per backbone and the ablations, evaluate all, write the report.

    Every model sees the same splits, batches, epochs and patience. With `folds` K >= 2 every model
    is trained once per fold of a stratified K-fold split of the train+val rows (the held-out fold
    stops it early and gets its out-of-fold predictions), the baselines are fitted on the
    out-of-fold probabilities, and on test each model is the average of its fold models. The test
    split is used only for the final scores. Writes into `out_dir`: config.json, models/*.keras,
    history/*.csv, predictions/*.csv, report.json, report.md, plots/*.png.

    Args:
        store_path: the `.h5` feature store.
        out_dir: the run folder; must be empty or new unless `overwrite`.
        backbones: backbone names to use (default: None, all of the store's).
        fusion: the fusion heads to train, any of `concat`, `gated`, `attention`; reported as
            `fusion`, `gated_fusion` and `attention_fusion` (default: ("concat",)).
        units, dropout, l2, pooling, head_units, learning_rate: see `build_fusion_model`
            (defaults: 256, 0.5, 1e-4, "avg", (), 1e-3).
        batch_size: rows per batch (default: 32).
        epochs: most epochs per model (default: 60).
        patience: early-stopping patience in epochs (default: 10).
        class_weight: `none` or `balanced` (default: "none").
        seed: seed of weights, batches, views and folds; the same seed repeats a run on CPU (default: 0).
        folds: 0 trains on the store's train split and stops on val; K >= 2 runs K-fold
            cross-validation over train+val (default: 0).
        repeats: repeat the K-fold split with other fold seeds (default: 1).
        tune: KerasTuner trials per fusion head before training it, on the first fold's held-out
            (or val) loss (default: 0, no tuning).
        stream: True streams features from HDF5, False loads them, None decides by size (default: None).
        block_rows: consecutive rows per shuffled block (default: None, 1 in memory, 8 streamed).
        view_augment: train on a random view per image each epoch (default: False).
        tta: also report test metrics averaged over all views (default: False).
        ablation: train `<head>_without_<backbone>` for each head and backbone (default: True).
        overwrite: replace an existing run folder (default: False).
        options: extra dict saved in config.json, e.g. the command-line options (default: None).
        verbose: 0 silent; 1 a line when each model starts and when it ends; 2 also Keras's own
            output per epoch (its progress bar in a terminal or notebook, one line per epoch in a file
            or pipe). The lines are logged at INFO on the `fusion.run` logger; with logging not
            configured they are shown on stdout (see `features.progress_log`) (default: 1).
        callbacks: `keras.callbacks.Callback`s passed to every model's `fit`, fold by fold: the
            same objects each time, so a callback that keeps state sees every epoch of every model
            (`self.model.name` tells which: "fusion", or "fusion_repeat1_fold2" with folds).
            Keras calls `set_model` and `on_train_begin` at each fit, where its built-in callbacks
            reset. Tuning trials do not get them (default: None).
        tensorboard_dir: write TensorBoard logs (Keras's `TensorBoard` callback) to one folder per
            model under it, per fold below that with cross-validation; a new or empty folder, or
            one inside the run folder, e.g. "runs/exp1/tensorboard" (default: None, no logs).

    Example:
        >>> run = train_run("cache.h5", "runs/cv", folds=5, fusion=["concat", "gated"])
        >>> run.report["cv"]["gated_fusion"]["accuracy"]["mean"]
    """
    info = read_store_info(store_path)
    backbones = select_backbones(info, backbones)
    heads = _check_heads(fusion)
    model_options = {"units": units, "dropout": dropout, "l2": l2, "pooling": pooling, "learning_rate": learning_rate}
    # Fail on bad options before any folder is touched or data is read.
    _check_options(info, backbones, heads, model_options, head_units, batch_size=batch_size, epochs=epochs,
                   patience=patience, block_rows=block_rows, class_weight=class_weight, view_augment=view_augment,
                   tta=tta, folds=folds, repeats=repeats, tune=tune)
    _check_observers(verbose, callbacks)
    tensorboard_dir = check_tensorboard_dir(tensorboard_dir, out_dir)
    rows = {split: info.split_rows(split) for split in SPLITS}
    labels = {split: info.labels[rows[split]] for split in SPLITS}
    _check_split_classes(info, labels, cross_validated=folds > 0)
    pool_rows = np.sort(np.concatenate([rows["train"], rows["val"]]))
    run_folds = (make_folds(pool_rows, info.labels[pool_rows], folds, repeats, seed) if folds
                 else store_split(rows["train"], rows["val"], seed))
    run_dir = prepare_run_folder(out_dir, overwrite)
    with_views = view_augment or tta
    source = open_feature_source(
        info.path, backbones, stream=stream, with_views=with_views,
        needed_bytes=info.feature_bytes(backbones, with_views=with_views),
    )
    if block_rows is None:
        block_rows = STREAM_BLOCK_ROWS if source.streamed else 1
    arguments = _RunArguments(
        store=str(info.path), backbones=list(backbones), fusion=list(heads), **model_options,
        head_units=list(head_units or ()), batch_size=batch_size, epochs=epochs, patience=patience,
        class_weight=class_weight, seed=seed, folds=folds, repeats=repeats, tune=tune, streamed=source.streamed,
        block_rows=block_rows, view_augment=view_augment, tta=tta, ablation=ablation,
    )
    config = _run_config(info, arguments, options)
    write_run_json(run_dir, "config.json", config)
    trainer = _ModelTrainer(run_dir, info, source, run_folds, rows["test"], arguments, verbose=verbose,
                            callbacks=callbacks, tensorboard_dir=tensorboard_dir)
    trained = trainer.train_all()
    singles = [trained[name] for name in backbones]
    weighted, stacker = _fit_baselines(singles, run_folds, pool_rows, info.labels, seed)
    _save_baselines(run_dir, [model.model for model in singles], weighted, stacker)
    test_probabilities = _test_probabilities(trained, singles, weighted, stacker, with_tta=tta)
    warnings = store_warnings(info, backbones, trainer.statistics[0])
    cross_validation = None
    if folds:
        cross_validation = _cross_validation(trained, singles, run_folds, pool_rows, info.labels, seed)
        warning = small_class_warning(info.labels[pool_rows], info.class_names, folds)
        warnings += [warning] if warning else []
    report = build_report(
        info, backbones, rows, labels, test_probabilities, weighted_average_weights=weighted.weights_,
        training={name: model.training for name, model in trained.items()}, warnings=warnings, seed=seed,
        heads=[HEAD_MODEL_NAMES[head] for head in heads], cross_validation=cross_validation,
        precompute_seconds_per_image=info.precompute_seconds_per_image,
        validation_scores={name: model.fold_scores[0] for name, model in trained.items()},
        gate_weights={name: trained[name].gate_weights for name in HEAD_MODEL_NAMES.values()
                      if name in trained and trained[name].gate_weights},
    )
    write_test_predictions(run_dir, info.paths, info.class_names, rows["test"], labels["test"], test_probabilities)
    histories = {name: model.history for name, model in trained.items() if model.history is not None}
    markdown_path = write_report(run_dir, report, histories)
    if source.streamed:
        source.close()
    trainer.say(f"report: {markdown_path}")
    return FusionRun(
        run_dir=run_dir, models={name: model.model for name, model in trained.items()}, class_names=info.class_names,
        backbones=tuple(backbones), report=report, config=config,
    )


@dataclasses.dataclass(frozen=True)
class _RunArguments:
    """What every model of a run is built and trained with; config.json records it as `arguments`, in this order."""

    store: str
    backbones: list
    fusion: list
    units: int
    dropout: float
    l2: float
    pooling: str
    head_units: list
    learning_rate: float
    batch_size: int
    epochs: int
    patience: int
    class_weight: str
    seed: int
    folds: int
    repeats: int
    tune: int
    streamed: bool
    block_rows: int
    view_augment: bool
    tta: bool
    ablation: bool


def _versions():
    return {
        "python": platform.python_version(),
        "keras": keras.__version__,
        "backend": keras.backend.backend(),
        "numpy": np.__version__,
        "h5py": feature_store.h5py_version(),
        "sklearn": sklearn.__version__,
    }


def _run_config(info, arguments, options):
    # Everything needed to tell how the run was made, and to export it without the store.
    backbones = arguments.backbones
    return {
        "options": dict(options or {}),
        "arguments": dataclasses.asdict(arguments),
        "versions": _versions(),
        "fusionpipe_version": features.__version__,
        "class_names": list(info.class_names),
        "backbones": list(backbones),
        "feature_shapes": {name: list(info.feature_shapes[name]) for name in backbones},
        # How each backbone's features were made, so the run can be exported without the store.
        "feature_recipes": {name: info.feature_recipes[name].to_attrs() if info.feature_recipes[name] else {}
                            for name in backbones},
    }


def _check_heads(fusion):
    heads = [fusion] if isinstance(fusion, str) else list(fusion or ())
    unknown = [head for head in heads if head not in HEAD_MODEL_NAMES]
    if not heads or unknown:
        problem = f"Unknown fusion head {unknown[0]!r}." if unknown else "Give at least one fusion head."
        raise ValueError(f"{problem} Valid values: {', '.join(HEAD_MODEL_NAMES)}. Received: fusion={heads}")
    if len(set(heads)) != len(heads):
        raise ValueError(f"Each fusion head may be given once. Received: fusion={heads}")
    return tuple(heads)


def _check_options(info, backbones, heads, model_options, head_units, *, batch_size, epochs, patience, block_rows,
                   class_weight, view_augment, tta, folds, repeats, tune):
    _check_view_options(info, backbones, view_augment, tta)
    check_fold_options(folds, repeats)
    positive = {"batch_size": batch_size, "epochs": epochs, "patience": patience,
                "block_rows": 1 if block_rows is None else block_rows}
    for name, value in positive.items():
        if value < 1:
            raise ValueError(f"{name} must be at least 1. Received: {name}={value}")
    if tune < 0:
        raise ValueError(f"tune is the number of tuning trials per fusion head: 0 (no tuning) or more. Received: tune={tune}")
    class_weights([0], 1, class_weight)
    for head in heads:
        build_fusion_model({name: info.feature_shapes[name] for name in backbones}, len(info.class_names),
                           fusion=head, head_units=head_units, **model_options)


def _check_observers(verbose, callbacks):
    if isinstance(verbose, bool) or verbose not in (0, 1, 2):
        raise ValueError(f"verbose must be 0 (silent), 1 (a line per model) or 2 (also Keras's output per epoch). "
                         f"Received: verbose={verbose!r}")
    if callbacks is not None and (not isinstance(callbacks, (list, tuple))
                                  or not all(isinstance(item, keras.callbacks.Callback) for item in callbacks)):
        raise ValueError(f"callbacks must be a list of keras.callbacks.Callback objects, as Model.fit takes them, "
                         f"e.g. callbacks=[keras.callbacks.CSVLogger('log.csv')]. Received: callbacks={callbacks!r}")


def _check_view_options(info, backbones, view_augment, tta):
    if (view_augment or tta) and not any(info.view_names[name] for name in backbones):
        flags = [flag for flag, on in (("--view-augment", view_augment), ("--tta", tta)) if on]
        raise ValueError(
            f"{' and '.join(flags)} {'need' if len(flags) > 1 else 'needs'} extra views in the store (/views/<backbone>), but {info.path} has "
            f"none for backbones {list(backbones)}. Precompute views (e.g. hflip) or drop the option. "
            f"Received: view_augment={view_augment}, tta={tta}"
        )


def _check_split_classes(info, labels, cross_validated=False):
    # Models learn from train (from train+val in cross-validation); the weighted average and
    # stacking are fitted on val (on out-of-fold predictions). Both need two classes, and finding
    # out after every model has trained would waste the run.
    learned = np.concatenate([labels["train"], labels["val"]]) if cross_validated else labels["train"]
    where = "the train and val splits" if cross_validated else "the train split"
    absent = [name for index, name in enumerate(info.class_names) if not np.any(learned == index)]
    if absent:
        raise ValueError(
            f"{len(absent)} class(es) of {info.path} have no labeled image in {where}, so no model can learn "
            f"them: {', '.join(absent[:10])}{' ...' if len(absent) > 10 else ''}. Re-run precompute to a new --out with "
            f"--min-images-per-class to leave small classes out, or give them training images. "
            f"Received: {len(info.class_names)} class names, {len(np.unique(learned))} in {where}"
        )
    for split in ("train and val",) if cross_validated else ("train", "val"):
        split_labels = learned if cross_validated else labels[split]
        present = np.unique(split_labels)
        if len(present) < 2:
            raise ValueError(
                f"The {split} split{'s' if cross_validated else ''} of {info.path} hold{'' if cross_validated else 's'} "
                f"only class {info.class_names[present[0]]!r} ({len(split_labels)} labeled rows): training and the "
                f"fitted baselines need at least 2 classes in train and in val. Re-run precompute with a larger "
                f"--val-fraction, or give a split with more classes. Received: classes in {split}="
                f"{[info.class_names[c] for c in present]}"
            )




@dataclasses.dataclass(frozen=True)
class _FoldResult:
    """What one model trained on one fold gave.

    Attributes:
        val_probabilities: class probabilities of the fold's held-out rows (the val split without folds).
        test_probabilities: class probabilities of the test rows.
        tta_probabilities: test probabilities averaged over every view; None without `tta`.
        scores: `fold_scores` of the held-out rows.
        training: epochs run, best epoch and its val loss, seconds.
        gate_weights: (held-out rows, backbones) gate weights of a gated head; None for other models.
    """

    val_probabilities: np.ndarray
    test_probabilities: np.ndarray
    tta_probabilities: np.ndarray | None
    scores: dict
    training: dict
    gate_weights: np.ndarray | None


@dataclasses.dataclass(frozen=True)
class _TrainedModel:
    """One model of a run and what training it gave.

    Attributes:
        model: the `keras.Model`: the one fold's model at its best epoch, or the fold ensemble.
        history: the (first) fold's Keras history dict; None for a model reused under a second name.
        folds: one `_FoldResult` per fold, in the order of the run's folds.
        training: how training went: epochs run, best epoch and val loss, seconds, per fold with
            cross-validation; `same_as` when reused.
        gate_weights: class name -> backbone -> mean gate weight on the held-out rows; None but for gated heads.
    """

    model: keras.Model
    history: dict | None
    folds: tuple
    training: dict
    gate_weights: dict | None = None

    @property
    def test_probabilities(self):
        # On test, a cross-validated model is its fold ensemble: the mean of its fold models.
        return np.mean([fold.test_probabilities for fold in self.folds], axis=0)

    @property
    def tta_probabilities(self):
        if self.folds[0].tta_probabilities is None:
            return None
        return np.mean([fold.tta_probabilities for fold in self.folds], axis=0)

    @property
    def fold_probabilities(self):
        return [fold.val_probabilities for fold in self.folds]

    @property
    def fold_scores(self):
        return [fold.scores for fold in self.folds]


class _ModelTrainer:
    """Builds and trains the models of a run alike: the same folds, batches, seeds, epochs and patience for all."""

    def __init__(self, run_dir, info, source, folds, test_rows, arguments, *, verbose=1, callbacks=None,
                 tensorboard_dir=None):
        self.run_dir = run_dir
        self.info = info
        self.source = source
        self.folds = folds
        self.test_rows = test_rows
        self.arguments = arguments
        self.verbose = verbose
        self.callbacks = list(callbacks or ())
        self.tensorboard_dir = tensorboard_dir
        self.cross_validated = arguments.folds > 0
        # "[3/9] densenet121": each model's number in the order of `train_all`, given when it starts.
        self.model_numbers = {}
        # Measured per fold on its training rows only, so held-out and test rows stay unseen; from
        # the source, so features in memory are not read from the store again (streamed ones in chunks).
        self.statistics = [feature_statistics(source.features, fold.train_rows) for fold in folds]
        self.class_weights = [class_weights(info.labels[fold.train_rows], len(info.class_names),
                                            arguments.class_weight) for fold in folds]
        self.head_options = {}
        self.tunings = {}

    def say(self, line):
        """Log one progress line at INFO, shown on stdout when logging is not configured; nothing with verbose 0."""
        if self.verbose:
            with progress_shown("fusion"):
                logger.info(line)

    def _started(self, name, doing):
        number = self.model_numbers.setdefault(name, len(self.model_numbers) + 1)
        self.say(f"[{number}/{self._model_count()}] {name}: {doing}")

    def _model_count(self):
        heads, backbones = len(self.arguments.fusion), len(self.arguments.backbones)
        ablations = heads * backbones if self.arguments.ablation and backbones > 1 else 0
        return heads + backbones + ablations

    def _keras_verbose(self):
        # Keras's progress bar redraws itself in a terminal or notebook; in a file or pipe it would
        # leave control characters, so there one plain line per epoch.
        if self.verbose < 2:
            return 0
        return 1 if (sys.stdout.isatty() or "ipykernel" in sys.modules) else 2

    def train_all(self):
        """The fusion heads, one model per backbone, then the ablations: dict name -> `_TrainedModel`, in that order."""
        # Every model here is new and traces its own step functions: see `features.tensorflow_noise`.
        with retracing_warnings_silenced():
            return self._train_all()

    def _train_all(self):
        backbones, head_units = self.arguments.backbones, self.arguments.head_units
        trained = {}
        for head in self.arguments.fusion:
            if self.arguments.tune:
                self._tune(HEAD_MODEL_NAMES[head], backbones, head_units, head)
            trained[HEAD_MODEL_NAMES[head]] = self._fit(HEAD_MODEL_NAMES[head], backbones, head_units, head)
        for backbone in backbones:
            trained[backbone] = self._fit(backbone, (backbone,), (), "concat")
        if self.arguments.ablation and len(backbones) > 1:
            for head in self.arguments.fusion:
                for backbone in backbones:
                    name = f"{HEAD_MODEL_NAMES[head]}_without_{backbone}"
                    rest = tuple(n for n in backbones if n != backbone)
                    if len(rest) == 1 and not head_units:
                        trained[name] = self._reuse(name, rest[0], trained[rest[0]])
                    else:
                        trained[name] = self._fit(name, rest, head_units, head)
        return trained

    def _batches(self, rows, names, fold_number, **kwargs):
        return FeatureBatches(self.source, names, rows, self.info.labels[rows], batch_size=self.arguments.batch_size,
                              seed=self.folds[fold_number].seed, **kwargs)

    def _model_options(self, head):
        arguments = self.arguments
        options = {"units": arguments.units, "dropout": arguments.dropout, "l2": arguments.l2,
                   "learning_rate": arguments.learning_rate}
        return {**options, **self.head_options.get(head, {})}

    def _build_arguments(self, name, names, head_units, head, number):
        fold = self.folds[number]
        return dict(
            feature_shapes={n: self.info.feature_shapes[n] for n in names}, num_classes=len(self.info.class_names),
            fusion=head, pooling=self.arguments.pooling, head_units=head_units,
            feature_statistics={n: self.statistics[number][n] for n in names},
            name=f"{name}_{fold.name}" if self.cross_validated else name,
        )

    def _tune(self, name, names, head_units, head):
        # On the first fold only (its held-out rows, or the val split): tuning on every fold would
        # multiply the cost by K, and the chosen values then train every fold of this head and its ablations.
        arguments, fold = self.arguments, self.folds[0]
        self._started(name, f"tuning ({arguments.tune} trials)")
        build_arguments = self._build_arguments(name, names, head_units, head, 0)
        build_arguments["name"] = name
        tuning = tune_head(
            build_arguments,
            self._batches(fold.train_rows, names, 0, shuffle=True, block_rows=arguments.block_rows,
                          view_augment=arguments.view_augment),
            self._batches(fold.val_rows, names, 0, class_weight=self.class_weights[0]),
            trials=arguments.tune, directory=self.run_dir / "tuning", epochs=arguments.epochs,
            patience=arguments.patience, class_weight=self.class_weights[0], seed=fold.seed, verbose=min(self.verbose, 1),
        )
        # KerasTuner names its own files as it goes; they are recorded once it is done.
        record_written(self.run_dir, *tuning.files)
        self.head_options[head] = dict(tuning.best_hyperparameters)
        self.tunings[name] = tuning.to_dict()
        self.say(f"{name}: tuned over {len(tuning.trials)} trials: "
                 + ", ".join(f"{key}={value:.3g}" for key, value in tuning.best_hyperparameters.items()))

    def _fit(self, name, names, head_units, head):
        started = time.perf_counter()
        epochs = f"up to {self.arguments.epochs} epochs"
        self._started(name, f"training ({f'{self._setup()}, {epochs} each' if self.cross_validated else epochs})")
        results, models, history = [], [], None
        for number, fold in enumerate(self.folds):
            if self.cross_validated and self.verbose >= 2:
                self.say(f"{name}: fold {fold.name} ({number + 1}/{len(self.folds)})")
            model, fold_history, result = self._fit_fold(name, names, head_units, head, number)
            results.append(result)
            models.append(model)
            history = fold_history if history is None else history
        model_path = self.run_dir / "models" / f"{name}.keras"
        if self.cross_validated:
            record_written(self.run_dir, f"models/{name}.keras")
            model = fold_ensemble(models, name)
            training = {"folds": {fold.name: result.training for fold, result in zip(self.folds, results)},
                        "seconds": round(time.perf_counter() - started, 2)}
        else:
            model, training = models[0], results[0].training
        if name in self.tunings:
            training = {**training, "tuning": self.tunings[name]}
        # The checkpoint holds the best epoch; so does the model after EarlyStopping restores it.
        model_path.parent.mkdir(parents=True, exist_ok=True)
        save_model_atomic(model, model_path)
        trained = _TrainedModel(model, history, tuple(results), training, self._mean_gate_weights(names, results))
        self.say(self._summary_line(name, trained))
        return trained

    def _setup(self):
        return f"{self.arguments.folds} folds" + (f" x {self.arguments.repeats} repeats" if self.arguments.repeats > 1 else "")

    def _summary_line(self, name, trained):
        test_accuracy = np.mean(trained.test_probabilities.argmax(1) == self.info.labels[self.test_rows])
        if not self.cross_validated:
            training = trained.training
            return (f"{name}: {training['epochs_run']} epochs, best val_loss {training['best_val_loss']:.4f} "
                    f"at epoch {training['best_epoch']}, test accuracy {test_accuracy:.3f}")
        accuracies = [scores["accuracy"] for scores in trained.fold_scores]
        return (f"{name}: {self._setup()}, out-of-fold accuracy {np.mean(accuracies):.3f} "
                f"± {np.std(accuracies, ddof=1):.3f}, test accuracy of the fold ensemble {test_accuracy:.3f}")

    def _fit_fold(self, name, names, head_units, head, number):
        arguments, info, fold = self.arguments, self.info, self.folds[number]
        keras.utils.set_random_seed(fold.seed)
        started = time.perf_counter()
        model = build_fusion_model(**self._build_arguments(name, names, head_units, head, number),
                                   **self._model_options(head))
        if self.cross_validated:
            # The fold ensemble is the model file; a fold's own checkpoint would only cost time.
            checkpoint, history_name = None, f"history/{name}/{fold.name}.csv"
            record_written(self.run_dir, history_name)
        else:
            checkpoint, history_name = self.run_dir / "models" / f"{name}.keras", f"history/{name}.csv"
            record_written(self.run_dir, f"models/{name}.keras", history_name)
        class_weight = self.class_weights[number]
        history = train_model(
            model,
            self._batches(fold.train_rows, names, number, shuffle=True, block_rows=arguments.block_rows,
                          view_augment=arguments.view_augment),
            self._batches(fold.val_rows, names, number, class_weight=class_weight),
            epochs=arguments.epochs, patience=arguments.patience, class_weight=class_weight,
            checkpoint_path=checkpoint, history_path=self.run_dir / history_name, verbose=self._keras_verbose(),
            callbacks=self._fit_callbacks(name, fold),
        )
        val_probabilities = model.predict(self._batches(fold.val_rows, names, number), verbose=0)
        test_probabilities = model.predict(self._batches(self.test_rows, names, number), verbose=0)
        tta_probabilities = None
        if arguments.tta:
            num_views = max(len(info.view_names[n]) for n in names)
            per_view = [test_probabilities] + [
                model.predict(self._batches(self.test_rows, names, number, view_index=index), verbose=0)
                for index in range(1, num_views + 1)
            ]
            tta_probabilities = np.mean(per_view, axis=0)
        gates = None
        if head == "gated" and len(names) > 1:
            gates = gate_weights(model, self._batches(fold.val_rows, names, number))
        best_epoch = int(np.argmin(history["val_loss"]))
        training = {
            "epochs_run": len(history["val_loss"]),
            "best_epoch": best_epoch + 1,
            "best_val_loss": float(history["val_loss"][best_epoch]),
            "seconds": round(time.perf_counter() - started, 2),
        }
        scores = fold_scores(info.labels[fold.val_rows], val_probabilities)
        return model, history, _FoldResult(val_probabilities, test_probabilities, tta_probabilities, scores,
                                           training, gates)

    def _fit_callbacks(self, name, fold):
        # The caller's callbacks are the same objects for every fit: see `train_run`'s `callbacks`.
        if self.tensorboard_dir is None:
            return self.callbacks
        fold_name = fold.name if self.cross_validated else None
        return tensorboard_callbacks(self.tensorboard_dir, self.run_dir, name, fold_name) + self.callbacks

    def _mean_gate_weights(self, names, results):
        # Which backbone the gate trusted, per true class, over every held-out row of every fold.
        if results[0].gate_weights is None:
            return None
        gates = np.concatenate([result.gate_weights for result in results])
        labels = self.info.labels[np.concatenate([fold.val_rows for fold in self.folds])]
        return {class_name: dict(zip(names, gates[labels == index].mean(axis=0).tolist()))
                for index, class_name in enumerate(self.info.class_names) if np.any(labels == index)}

    def _reuse(self, name, same_as, trained):
        # The same inputs, layers and seed would train the same model again: reuse it, and say so.
        self._started(name, f"the same model as {same_as} (two backbones, no head units), not trained again")
        return dataclasses.replace(trained, history=None,
                                   training={**trained.training, "same_as": same_as, "seconds": 0.0})


def _fit_baselines(singles, folds, pool_rows, labels, seed):
    # Fitted on the backbones' held-out probabilities, which no model learned from: the val split,
    # or with cross-validation every out-of-fold prediction of the train+val rows (each repeat's).
    if folds[0].name == "split":
        probabilities = [model.folds[0].val_probabilities for model in singles]
        fit_labels = labels[folds[0].val_rows]
    else:
        per_single = [out_of_fold(folds, model.fold_probabilities, pool_rows) for model in singles]
        probabilities = [np.concatenate(oof) for oof in per_single]
        fit_labels = np.tile(labels[pool_rows], len(per_single[0]))
    return (WeightedAverage().fit(probabilities, fit_labels),
            LogisticStacking(random_state=seed).fit(probabilities, fit_labels))


def _save_baselines(run_dir, single_models, weighted, stacker):
    # Each baseline as one Keras model over the backbones' own models (their fold ensembles), so
    # that it loads, exports and predicts as any model of the run does.
    for name, combiner in (("average", WeightedAverageCombiner(name="average")),
                           ("weighted_average", weighted.to_layer("weighted_average")),
                           ("stacking", stacker.to_layer("stacking"))):
        record_written(run_dir, f"models/{name}.keras")
        save_model_atomic(combined_model(single_models, combiner, name), run_dir / "models" / f"{name}.keras")


def _cross_validation(trained, singles, folds, pool_rows, labels, seed):
    """Per model, the per-fold scores and the first repeat's out-of-fold probabilities; baselines cross-fitted."""
    pool_labels = labels[pool_rows]
    fold_probabilities = {name: model.fold_probabilities for name, model in trained.items()}
    singles_per_fold = [model.fold_probabilities for model in singles]
    fold_probabilities["average"] = [average_probabilities(list(per_fold)) for per_fold in zip(*singles_per_fold)]
    fold_probabilities["weighted_average"] = cross_fitted(folds, singles_per_fold, pool_rows, pool_labels,
                                                          WeightedAverage)
    fold_probabilities["stacking"] = cross_fitted(folds, singles_per_fold, pool_rows, pool_labels,
                                                  lambda: LogisticStacking(random_state=seed))
    return CrossValidation(
        folds=folds, pool_rows=pool_rows, pool_labels=pool_labels,
        scores={name: [fold_scores(labels[fold.val_rows], probabilities)
                       for fold, probabilities in zip(folds, per_fold)]
                for name, per_fold in fold_probabilities.items()},
        out_of_fold={name: out_of_fold(folds, per_fold, pool_rows)[0] for name, per_fold in fold_probabilities.items()},
    )


def _test_probabilities(trained, singles, weighted, stacker, with_tta):
    """Test probabilities of every model the report compares, in its order: trained, baselines, then with TTA."""
    test_probabilities = {name: model.test_probabilities for name, model in trained.items()}
    singles_test = [model.test_probabilities for model in singles]
    test_probabilities["average"] = average_probabilities(singles_test)
    test_probabilities["weighted_average"] = weighted.predict_proba(singles_test)
    test_probabilities["stacking"] = stacker.predict_proba(singles_test)
    if with_tta:
        for name, model in trained.items():
            if "_without_" not in name:
                test_probabilities[f"{name}+tta"] = model.tta_probabilities
        test_probabilities["average+tta"] = average_probabilities([model.tta_probabilities for model in singles])
    return test_probabilities
