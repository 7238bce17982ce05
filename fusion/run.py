"""One training run: fusion model, baselines and ablation on one split, written to a run folder."""

import csv
import json
import platform
import time

import h5py
import keras
import numpy as np
import sklearn

from features.atomic_files import atomic_path, open_atomic, save_model_atomic, write_text_atomic
from fusion.baselines import StackingClassifier, WeightedAverage, average_probabilities
from fusion.data import FeatureBatches, open_feature_source
from fusion.evaluation import evaluate_probabilities, mcnemar_test
from fusion.model import build_fusion_model
from fusion.report import summarize, write_report
from fusion.run_folder import prepare_run_folder, record_written
from fusion.saved_run import FusionRun
from fusion.statistics import feature_statistics
from fusion.store import SPLITS, read_store_info, select_backbones
from fusion.training import class_weights, train_model

# Rows per contiguous read when streaming: large enough for cheap HDF5 reads, small enough
# that a batch mixes several places of a store written class by class.
STREAM_BLOCK_ROWS = 8


def _versions():
    return {
        "python": platform.python_version(),
        "keras": keras.__version__,
        "backend": keras.backend.backend(),
        "numpy": np.__version__,
        "h5py": h5py.__version__,
        "sklearn": sklearn.__version__,
    }


def _store_warnings(info, backbones, statistics):
    """Warnings a reader of the report must see, about how the store's features were made."""
    warnings = []
    random = [name for name in backbones if str(info.feature_recipes[name].get("weights", "")) == "none"]
    if random:
        warnings.append(
            f"The backbones {', '.join(random)} were randomly initialised (precompute --weights none), not "
            f"ImageNet-trained: these numbers show the pipeline working and are not representative of what "
            f"ImageNet features achieve."
        )
    constant = [name for name in backbones if not np.any(statistics[name][1] > 0)]
    if constant:
        warnings.append(
            f"The features of {', '.join(constant)} are the same for every training image, so "
            f"{'this backbone carries' if len(constant) == 1 else 'these backbones carry'} no information here: "
            f"a randomly initialised network can collapse like this; with ImageNet weights, check the weight file."
        )
    return warnings


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


def _write_predictions(run_dir, info, test_rows, test_labels, probabilities_by_model):
    folder = run_dir / "predictions"
    folder.mkdir(parents=True, exist_ok=True)
    record_written(run_dir, *(f"predictions/{name}.csv" for name in probabilities_by_model),
                   "predictions/test_probabilities.npz")
    class_names = list(info.class_names)
    for name, probabilities in probabilities_by_model.items():
        with open_atomic(folder / f"{name}.csv", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["path", "label", "predicted", "confidence"] + [f"p_{c}" for c in class_names])
            for row, label, probs in zip(test_rows, test_labels, probabilities):
                best = int(np.argmax(probs))
                writer.writerow(
                    [info.paths[row], class_names[label], class_names[best], f"{probs[best]:.6f}"]
                    + [f"{p:.6f}" for p in probs]
                )
    with atomic_path(folder / "test_probabilities.npz") as temporary:  # ends in .npz, so numpy keeps the name
        np.savez_compressed(
            temporary,
            rows=test_rows,
            labels=test_labels,
            **{name.replace("+", "_plus_"): probs for name, probs in probabilities_by_model.items()},
        )


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
    class_weight_mode = class_weight
    _check_view_options(info, backbones, view_augment, tta)
    for name, value in (("batch_size", batch_size), ("epochs", epochs), ("patience", patience), ("block_rows", 1 if block_rows is None else block_rows)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1. Received: {name}={value}")
    # Fail on bad options before any folder is touched or data is read.
    class_weights([0], 1, class_weight_mode)
    build_fusion_model(
        {name: info.feature_shapes[name] for name in backbones}, len(info.class_names), units=units,
        dropout=dropout, l2=l2, pooling=pooling, head_units=head_units, learning_rate=learning_rate,
    )
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
    config = {
        "options": dict(options or {}),
        "arguments": {
            "store": str(info.path), "backbones": list(backbones), "units": units, "dropout": dropout, "l2": l2,
            "pooling": pooling, "head_units": list(head_units or ()), "learning_rate": learning_rate,
            "batch_size": batch_size, "epochs": epochs, "patience": patience, "class_weight": class_weight_mode,
            "seed": seed, "streamed": source.streamed, "block_rows": block_rows, "view_augment": view_augment,
            "tta": tta, "ablation": ablation,
        },
        "versions": _versions(),
        "class_names": list(info.class_names),
        "backbones": list(backbones),
        "feature_shapes": {name: list(info.feature_shapes[name]) for name in backbones},
        # How each backbone's features were made, so the run can be exported without the store.
        "feature_recipes": {name: info.feature_recipes[name] for name in backbones},
    }
    record_written(run_dir, "config.json")
    write_text_atomic(run_dir / "config.json", json.dumps(config, indent=2) + "\n")
    weights = class_weights(labels["train"], len(info.class_names), class_weight_mode)
    # Measured on the training rows only, so validation and test stay unseen; from the source, so
    # features already in memory are not read from the store again (streamed ones in chunks).
    statistics = feature_statistics(source.features, rows["train"])

    def batches(split, names, **kwargs):
        return FeatureBatches(source, names, rows[split], labels[split], batch_size=batch_size, seed=seed, **kwargs)

    histories, val_probabilities, test_probabilities, tta_probabilities, training = {}, {}, {}, {}, {}
    models = {}

    def fit(name, names, heads):
        keras.utils.set_random_seed(seed)
        started = time.perf_counter()
        model = build_fusion_model(
            {n: info.feature_shapes[n] for n in names}, len(info.class_names), units=units, dropout=dropout,
            l2=l2, pooling=pooling, head_units=heads, learning_rate=learning_rate,
            feature_statistics={n: statistics[n] for n in names}, name=name,
        )
        record_written(run_dir, f"models/{name}.keras", f"history/{name}.csv")
        history = train_model(
            model,
            batches("train", names, shuffle=True, block_rows=block_rows, view_augment=view_augment),
            batches("val", names, class_weight=weights),
            epochs=epochs, patience=patience, class_weight=weights,
            checkpoint_path=run_dir / "models" / f"{name}.keras", history_path=run_dir / "history" / f"{name}.csv",
        )
        # The checkpoint holds the best epoch; so does the model after EarlyStopping restores it.
        save_model_atomic(model, run_dir / "models" / f"{name}.keras")
        models[name] = model
        histories[name] = history
        val_probabilities[name] = model.predict(batches("val", names), verbose=0)
        test_probabilities[name] = model.predict(batches("test", names), verbose=0)
        if tta:
            num_views = max(len(info.view_names[n]) for n in names)
            per_view = [test_probabilities[name]] + [
                model.predict(batches("test", names, view_index=index), verbose=0) for index in range(1, num_views + 1)
            ]
            tta_probabilities[name] = np.mean(per_view, axis=0)
        best_epoch = int(np.argmin(history["val_loss"]))
        training[name] = {
            "epochs_run": len(history["val_loss"]),
            "best_epoch": best_epoch + 1,
            "best_val_loss": float(history["val_loss"][best_epoch]),
            "seconds": round(time.perf_counter() - started, 2),
        }
        log(
            f"{name}: {training[name]['epochs_run']} epochs, best val_loss {training[name]['best_val_loss']:.4f} "
            f"at epoch {training[name]['best_epoch']}, test accuracy "
            f"{np.mean(test_probabilities[name].argmax(1) == labels['test']):.3f}"
        )

    fit("fusion", backbones, head_units)
    for backbone in backbones:
        fit(backbone, (backbone,), ())
    def reuse(name, same_as):
        # The same inputs, layers and seed would train the same model again: reuse it, and say so.
        models[name] = models[same_as]
        for probabilities in (val_probabilities, test_probabilities, tta_probabilities):
            if same_as in probabilities:
                probabilities[name] = probabilities[same_as]
        training[name] = {**training[same_as], "same_as": same_as, "seconds": 0.0}
        log(f"{name}: the same model as {same_as} (two backbones, no head units), not trained again")

    if ablation and len(backbones) > 1:
        for backbone in backbones:
            rest = tuple(n for n in backbones if n != backbone)
            if len(rest) == 1 and not head_units:
                reuse(f"fusion_without_{backbone}", rest[0])
            else:
                fit(f"fusion_without_{backbone}", rest, head_units)

    singles_val = [val_probabilities[name] for name in backbones]
    singles_test = [test_probabilities[name] for name in backbones]
    test_probabilities["average"] = average_probabilities(singles_test)
    weighted = WeightedAverage().fit(singles_val, labels["val"])
    test_probabilities["weighted_average"] = weighted.predict_proba(singles_test)
    stacker = StackingClassifier(seed=seed).fit(singles_val, labels["val"])
    test_probabilities["stacking"] = stacker.predict_proba(singles_test)
    if tta:
        for name, probabilities in list(tta_probabilities.items()):
            if not name.startswith("fusion_without_"):
                test_probabilities[f"{name}+tta"] = probabilities
        test_probabilities["average+tta"] = average_probabilities([tta_probabilities[name] for name in backbones])
    record_written(run_dir, "models/weighted_average.json", "models/stacking.json")
    write_text_atomic(run_dir / "models" / "weighted_average.json",
                      json.dumps({"backbones": list(backbones), "weights": weighted.weights_.tolist()}, indent=2) + "\n")
    write_text_atomic(run_dir / "models" / "stacking.json",
                      json.dumps({"backbones": list(backbones), **stacker.to_dict()}, indent=2) + "\n")
    test_metrics = {
        name: evaluate_probabilities(labels["test"], probabilities, info.class_names, seed=seed)
        for name, probabilities in test_probabilities.items()
    }
    mcnemar = mcnemar_test(
        labels["test"], test_probabilities["fusion"].argmax(1), test_probabilities["average"].argmax(1)
    )
    report = {
        "store": str(info.path),
        "backbones": list(backbones),
        "class_names": list(info.class_names),
        "images_per_split": {split: int(len(rows[split])) for split in SPLITS},
        "test": test_metrics,
        "mcnemar": {"fusion_vs_average": {**mcnemar, "model_a": "fusion", "model_b": "average"}},
        "summary": summarize(test_metrics, backbones, mcnemar),
        "weighted_average_weights": dict(zip(backbones, weighted.weights_.tolist())),
        "training": training,
        "warnings": _store_warnings(info, backbones, statistics),
    }
    _write_predictions(run_dir, info, rows["test"], labels["test"], test_probabilities)
    markdown_path = write_report(run_dir, report, histories)
    if source.streamed:
        source.close()
    log(f"report: {markdown_path}")
    return FusionRun(
        run_dir=run_dir, models=models, class_names=info.class_names, backbones=tuple(backbones),
        report=report, config=config,
    )
