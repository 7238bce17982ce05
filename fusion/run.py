"""One training run: fusion model, baselines and ablation on one split, written to a run folder."""

import dataclasses
import platform
import time

import keras
import numpy as np
import sklearn

import features
from features import store as feature_store
from features.atomic_files import save_model_atomic
from fusion.baselines import LogisticStacking, WeightedAverage, average_probabilities
from fusion.data import FeatureBatches, open_feature_source
from fusion.model import build_fusion_model
from fusion.report import build_report, store_warnings, write_report
from fusion.run_folder import prepare_run_folder, record_written, write_run_json, write_test_predictions
from fusion.saved_run import FusionRun
from fusion.statistics import feature_statistics
from fusion.store import SPLITS, read_store_info, select_backbones
from fusion.training import class_weights, train_model

# Rows per contiguous read when streaming: large enough for cheap HDF5 reads, small enough
# that a batch mixes several places of a store written class by class.
STREAM_BLOCK_ROWS = 8


def train_run(
    store_path,
    out_dir,
    *,
    backbones=None,
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
    stream=None,
    block_rows=None,
    view_augment=False,
    tta=False,
    ablation=True,
    overwrite=False,
    options=None,
    log=print,
):
    """Train the fusion model, one classifier per backbone and the ablations, evaluate all, write the report.

    Every model sees the same split, batches, epochs and patience. Writes into `out_dir`:
    config.json, models/*.keras, history/*.csv, predictions/*.csv, report.json, report.md,
    plots/*.png.

    Args:
        store_path: the `.h5` feature store.
        out_dir: the run folder; must be empty or new unless `overwrite`.
        backbones: backbone names to use (default: None, all of the store's).
        units, dropout, l2, pooling, head_units, learning_rate: see `build_fusion_model`
            (defaults: 256, 0.5, 1e-4, "avg", (), 1e-3).
        batch_size: rows per batch (default: 32).
        epochs: most epochs per model (default: 60).
        patience: early-stopping patience in epochs (default: 10).
        class_weight: `none` or `balanced` (default: "none").
        seed: seed of weights, batches and views; the same seed repeats a run on CPU (default: 0).
        stream: True streams features from HDF5, False loads them, None decides by size (default: None).
        block_rows: consecutive rows per shuffled block (default: None, 1 in memory, 8 streamed).
        view_augment: train on a random view per image each epoch (default: False).
        tta: also report test metrics averaged over all views (default: False).
        ablation: train `fusion_without_<backbone>` for each backbone (default: True).
        overwrite: replace an existing run folder (default: False).
        options: extra dict saved in config.json, e.g. the command-line options (default: None).
        log: function that prints progress lines (default: print).

    Example:
        >>> run = train_run("cache.h5", "runs/exp1", head_units=[256])
        >>> run.report["test"]["fusion"]["accuracy"]
    """
    info = read_store_info(store_path)
    backbones = select_backbones(info, backbones)
    model_options = {"units": units, "dropout": dropout, "l2": l2, "pooling": pooling, "learning_rate": learning_rate}
    # Fail on bad options before any folder is touched or data is read.
    _check_options(info, backbones, model_options, head_units, batch_size=batch_size, epochs=epochs,
                   patience=patience, block_rows=block_rows, class_weight=class_weight, view_augment=view_augment,
                   tta=tta)
    rows = {split: info.split_rows(split) for split in SPLITS}
    labels = {split: info.labels[rows[split]] for split in SPLITS}
    _check_split_classes(info, labels)
    run_dir = prepare_run_folder(out_dir, overwrite)
    with_views = view_augment or tta
    source = open_feature_source(
        info.path, backbones, stream=stream, with_views=with_views,
        needed_bytes=info.feature_bytes(backbones, with_views=with_views),
    )
    if block_rows is None:
        block_rows = STREAM_BLOCK_ROWS if source.streamed else 1
    arguments = _RunArguments(
        store=str(info.path), backbones=list(backbones), **model_options, head_units=list(head_units or ()),
        batch_size=batch_size, epochs=epochs, patience=patience, class_weight=class_weight, seed=seed,
        streamed=source.streamed, block_rows=block_rows, view_augment=view_augment, tta=tta, ablation=ablation,
    )
    config = _run_config(info, arguments, options)
    write_run_json(run_dir, "config.json", config)
    # Measured on the training rows only, so validation and test stay unseen; from the source, so
    # features already in memory are not read from the store again (streamed ones in chunks).
    statistics = feature_statistics(source.features, rows["train"])
    trained = _ModelTrainer(run_dir, info, source, rows, labels, statistics, arguments, log).train_all()
    singles = [trained[name] for name in backbones]
    weighted, stacker = _fit_baselines(singles, labels["val"], seed)
    write_run_json(run_dir, "models/weighted_average.json",
                   {"backbones": list(backbones), "weights": weighted.weights_.tolist()})
    write_run_json(run_dir, "models/stacking.json", {"backbones": list(backbones), **stacker.to_dict()})
    test_probabilities = _test_probabilities(trained, singles, weighted, stacker, with_tta=tta)
    report = build_report(
        info, backbones, rows, labels, test_probabilities, weighted_average_weights=weighted.weights_,
        training={name: model.training for name, model in trained.items()},
        warnings=store_warnings(info, backbones, statistics), seed=seed,
    )
    write_test_predictions(run_dir, info.paths, info.class_names, rows["test"], labels["test"], test_probabilities)
    histories = {name: model.history for name, model in trained.items() if model.history is not None}
    markdown_path = write_report(run_dir, report, histories)
    if source.streamed:
        source.close()
    log(f"report: {markdown_path}")
    return FusionRun(
        run_dir=run_dir, models={name: model.model for name, model in trained.items()}, class_names=info.class_names,
        backbones=tuple(backbones), report=report, config=config,
    )


@dataclasses.dataclass(frozen=True)
class _RunArguments:
    """What every model of a run is built and trained with; config.json records it as `arguments`, in this order."""

    store: str
    backbones: list
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


def _check_options(info, backbones, model_options, head_units, *, batch_size, epochs, patience, block_rows,
                   class_weight, view_augment, tta):
    _check_view_options(info, backbones, view_augment, tta)
    positive = {"batch_size": batch_size, "epochs": epochs, "patience": patience,
                "block_rows": 1 if block_rows is None else block_rows}
    for name, value in positive.items():
        if value < 1:
            raise ValueError(f"{name} must be at least 1. Received: {name}={value}")
    class_weights([0], 1, class_weight)
    build_fusion_model({name: info.feature_shapes[name] for name in backbones}, len(info.class_names),
                       head_units=head_units, **model_options)


def _check_view_options(info, backbones, view_augment, tta):
    if (view_augment or tta) and not any(info.view_names[name] for name in backbones):
        flags = [flag for flag, on in (("--view-augment", view_augment), ("--tta", tta)) if on]
        raise ValueError(
            f"{' and '.join(flags)} {'need' if len(flags) > 1 else 'needs'} extra views in the store (/views/<backbone>), but {info.path} has "
            f"none for backbones {list(backbones)}. Precompute views (e.g. hflip) or drop the option. "
            f"Received: view_augment={view_augment}, tta={tta}"
        )


def _check_split_classes(info, labels):
    # Models learn from train; the weighted average and stacking are fitted on val. Both need
    # two classes, and finding out after every model has trained would waste the run.
    absent = [name for index, name in enumerate(info.class_names) if not np.any(labels["train"] == index)]
    if absent:
        raise ValueError(
            f"{len(absent)} class(es) of {info.path} have no labeled image in the train split, so no model can learn "
            f"them: {', '.join(absent[:10])}{' ...' if len(absent) > 10 else ''}. Re-run precompute to a new --out with "
            f"--min-images-per-class to leave small classes out, or give them training images. "
            f"Received: {len(info.class_names)} class names, {len(np.unique(labels['train']))} in train"
        )
    for split in ("train", "val"):
        present = np.unique(labels[split])
        if len(present) < 2:
            raise ValueError(
                f"The {split} split of {info.path} holds only class {info.class_names[present[0]]!r} "
                f"({len(labels[split])} labeled rows): training and the fitted baselines need at least 2 classes "
                f"in train and in val. Re-run precompute with a larger --val-fraction, or give a split with "
                f"more classes. Received: classes in {split}={[info.class_names[c] for c in present]}"
            )


@dataclasses.dataclass(frozen=True)
class _TrainedModel:
    """One model of a run and what training it gave.

    Attributes:
        model: the `keras.Model`, at its best epoch.
        history: its Keras history dict; None for a model reused under a second name.
        val_probabilities, test_probabilities: its class probabilities of the val and test rows.
        tta_probabilities: its test probabilities averaged over every view; None without `tta`.
        training: how training went: epochs run, best epoch and its val loss, seconds, `same_as` when reused.
    """

    model: keras.Model
    history: dict | None
    val_probabilities: np.ndarray
    test_probabilities: np.ndarray
    tta_probabilities: np.ndarray | None
    training: dict


class _ModelTrainer:
    """Builds and trains the models of a run alike: one split, batches, seed, epochs and patience for all."""

    def __init__(self, run_dir, info, source, rows, labels, statistics, arguments, log):
        self.run_dir = run_dir
        self.info = info
        self.source = source
        self.rows = rows
        self.labels = labels
        self.statistics = statistics
        self.arguments = arguments
        self.log = log
        self.class_weights = class_weights(labels["train"], len(info.class_names), arguments.class_weight)

    def train_all(self):
        """The fusion model, one per backbone, then the ablations: dict name -> `_TrainedModel`, in that order."""
        backbones, head_units = self.arguments.backbones, self.arguments.head_units
        trained = {"fusion": self._fit("fusion", backbones, head_units)}
        for backbone in backbones:
            trained[backbone] = self._fit(backbone, (backbone,), ())
        if self.arguments.ablation and len(backbones) > 1:
            for backbone in backbones:
                name, rest = f"fusion_without_{backbone}", tuple(n for n in backbones if n != backbone)
                if len(rest) == 1 and not head_units:
                    trained[name] = self._reuse(name, rest[0], trained[rest[0]])
                else:
                    trained[name] = self._fit(name, rest, head_units)
        return trained

    def _batches(self, split, names, **kwargs):
        return FeatureBatches(self.source, names, self.rows[split], self.labels[split],
                              batch_size=self.arguments.batch_size, seed=self.arguments.seed, **kwargs)

    def _fit(self, name, names, head_units):
        arguments, info = self.arguments, self.info
        keras.utils.set_random_seed(arguments.seed)
        started = time.perf_counter()
        model = build_fusion_model(
            {n: info.feature_shapes[n] for n in names}, len(info.class_names), units=arguments.units,
            dropout=arguments.dropout, l2=arguments.l2, pooling=arguments.pooling, head_units=head_units,
            learning_rate=arguments.learning_rate, feature_statistics={n: self.statistics[n] for n in names}, name=name,
        )
        record_written(self.run_dir, f"models/{name}.keras", f"history/{name}.csv")
        model_path, history_path = self.run_dir / "models" / f"{name}.keras", self.run_dir / "history" / f"{name}.csv"
        history = train_model(
            model,
            self._batches("train", names, shuffle=True, block_rows=arguments.block_rows,
                          view_augment=arguments.view_augment),
            self._batches("val", names, class_weight=self.class_weights),
            epochs=arguments.epochs, patience=arguments.patience, class_weight=self.class_weights,
            checkpoint_path=model_path, history_path=history_path,
        )
        # The checkpoint holds the best epoch; so does the model after EarlyStopping restores it.
        save_model_atomic(model, model_path)
        val_probabilities = model.predict(self._batches("val", names), verbose=0)
        test_probabilities = model.predict(self._batches("test", names), verbose=0)
        tta_probabilities = None
        if arguments.tta:
            num_views = max(len(info.view_names[n]) for n in names)
            per_view = [test_probabilities] + [
                model.predict(self._batches("test", names, view_index=index), verbose=0)
                for index in range(1, num_views + 1)
            ]
            tta_probabilities = np.mean(per_view, axis=0)
        best_epoch = int(np.argmin(history["val_loss"]))
        training = {
            "epochs_run": len(history["val_loss"]),
            "best_epoch": best_epoch + 1,
            "best_val_loss": float(history["val_loss"][best_epoch]),
            "seconds": round(time.perf_counter() - started, 2),
        }
        self.log(
            f"{name}: {training['epochs_run']} epochs, best val_loss {training['best_val_loss']:.4f} "
            f"at epoch {training['best_epoch']}, test accuracy "
            f"{np.mean(test_probabilities.argmax(1) == self.labels['test']):.3f}"
        )
        return _TrainedModel(model, history, val_probabilities, test_probabilities, tta_probabilities, training)

    def _reuse(self, name, same_as, trained):
        # The same inputs, layers and seed would train the same model again: reuse it, and say so.
        self.log(f"{name}: the same model as {same_as} (two backbones, no head units), not trained again")
        return dataclasses.replace(trained, history=None,
                                   training={**trained.training, "same_as": same_as, "seconds": 0.0})


def _fit_baselines(singles, val_labels, seed):
    # Fitted on the backbones' validation probabilities: the models learned from train.
    probabilities = [model.val_probabilities for model in singles]
    return (WeightedAverage().fit(probabilities, val_labels),
            LogisticStacking(seed=seed).fit(probabilities, val_labels))


def _test_probabilities(trained, singles, weighted, stacker, with_tta):
    """Test probabilities of every model the report compares, in its order: trained, baselines, then with TTA."""
    test_probabilities = {name: model.test_probabilities for name, model in trained.items()}
    singles_test = [model.test_probabilities for model in singles]
    test_probabilities["average"] = average_probabilities(singles_test)
    test_probabilities["weighted_average"] = weighted.predict_proba(singles_test)
    test_probabilities["stacking"] = stacker.predict_proba(singles_test)
    if with_tta:
        for name, model in trained.items():
            if not name.startswith("fusion_without_"):
                test_probabilities[f"{name}+tta"] = model.tta_probabilities
        test_probabilities["average+tta"] = average_probabilities([model.tta_probabilities for model in singles])
    return test_probabilities
