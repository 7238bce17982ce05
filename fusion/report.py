"""The comparison report of a run: its contents, and report.json, report.md and PNG plots."""

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # Plots are files; no display is needed or wanted.
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from features.atomic_files import atomic_path, write_text_atomic  # noqa: E402
from fusion.evaluation import evaluate_probabilities, mcnemar_test  # noqa: E402
from fusion.run_folder import record_written  # noqa: E402

SIGNIFICANCE_LEVEL = 0.05
# Past this many classes a confusion matrix plot is a wall of unreadable cells: the report lists
# the most confused pairs instead, and the full matrix stays in report.json.
CONFUSION_PLOT_MAX_CLASSES = 30
# Up to this many classes each cell of the confusion plot has room for its share as text.
CONFUSION_CELL_TEXT_MAX_CLASSES = 20
MOST_CONFUSED_PAIRS = 20
TICK_LABEL_MAX_CHARS = 18
_KIND_COLORS = {"fusion": "tab:red", "baseline": "tab:blue", "single backbone": "tab:gray", "ablation": "tab:orange"}


def _model_kind(name, backbones):
    if name.startswith("fusion_without_"):
        return "ablation"
    if name.split("+")[0] == "fusion":
        return "fusion"
    if name.split("+")[0] in backbones:
        return "single backbone"
    return "baseline"


def _rank_models(test_metrics):
    """Model names, best first: higher accuracy, then lower log loss."""
    return sorted(test_metrics, key=lambda name: (-test_metrics[name]["accuracy"], test_metrics[name]["log_loss"]))


def _summarize(test_metrics, backbones, mcnemar):
    """The winner and its margin over the runner-up; fusion's margins over the average and the best backbone, and significance."""
    contenders = [name for name in _rank_models(test_metrics) if not name.startswith("fusion_without_")]
    winner = contenders[0]
    singles = [name for name in contenders if name in backbones]
    best_single = singles[0] if singles else None
    runner_up = contenders[1] if len(contenders) > 1 else None
    summary = {
        "winner": winner,
        "winner_accuracy": test_metrics[winner]["accuracy"],
        "runner_up": runner_up,
        "winner_minus_runner_up": (
            test_metrics[winner]["accuracy"] - test_metrics[runner_up]["accuracy"] if runner_up else None
        ),
        "best_single_backbone": best_single,
        "fusion_minus_average": test_metrics["fusion"]["accuracy"] - test_metrics["average"]["accuracy"],
        "fusion_minus_best_single_backbone": (
            test_metrics["fusion"]["accuracy"] - test_metrics[best_single]["accuracy"] if best_single else None
        ),
        "fusion_vs_average_significant": mcnemar["p_value"] < SIGNIFICANCE_LEVEL,
        "significance_level": SIGNIFICANCE_LEVEL,
    }
    return summary


def store_warnings(info, backbones, statistics):
    """Warnings a reader of the report must see, about how the store's features were made.

    Args:
        info: the store's `StoreInfo`.
        backbones: the backbones of the run.
        statistics: dict backbone -> (mean, variance) of its training features (`feature_statistics`).

    Example:
        >>> store_warnings(info, ("resnet50",), feature_statistics(source.features, train_rows))
        []
    """
    warnings = []
    random = [name for name in backbones if info.feature_recipes[name] and info.feature_recipes[name].weights == "none"]
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


def build_report(info, backbones, rows, labels, test_probabilities, *, weighted_average_weights, training, warnings,
                 seed=0):
    """The report of a run as a dict: every model's test metrics, fusion against the average, the summary.

    Args:
        info: the store's `StoreInfo`.
        backbones: the backbones of the run.
        rows: dict split -> store rows of its images.
        labels: dict split -> their labels; the test labels score the models.
        test_probabilities: dict model name -> test probabilities, in the order the report lists them.
        weighted_average_weights: the fitted weight of each backbone in the weighted average.
        training: dict model name -> how its training went (epochs, best epoch and val loss, seconds).
        warnings: lines a reader must see (see `store_warnings`).
        seed: seed of the bootstrap confidence intervals (default: 0).

    Example:
        >>> report = build_report(info, backbones, rows, labels, test_probabilities,
        ...                       weighted_average_weights=weights, training=training, warnings=[])
        >>> report["summary"]["winner"]
        'fusion'
    """
    test_metrics = {
        name: evaluate_probabilities(labels["test"], probabilities, info.class_names, seed=seed)
        for name, probabilities in test_probabilities.items()
    }
    mcnemar = mcnemar_test(
        labels["test"], test_probabilities["fusion"].argmax(1), test_probabilities["average"].argmax(1)
    )
    return {
        "store": str(info.path),
        "backbones": list(backbones),
        "class_names": list(info.class_names),
        "images_per_split": {split: int(len(split_rows)) for split, split_rows in rows.items()},
        "test": test_metrics,
        "mcnemar": {"fusion_vs_average": {**mcnemar, "model_a": "fusion", "model_b": "average"}},
        "summary": _summarize(test_metrics, backbones, mcnemar),
        "weighted_average_weights": dict(zip(backbones, np.asarray(weighted_average_weights).tolist())),
        "training": training,
        "warnings": warnings,
    }


def _save(figure, path):
    # The temporary keeps the .png suffix, from which matplotlib takes the format.
    try:
        with atomic_path(path) as temporary:
            figure.savefig(temporary, dpi=100)
    finally:
        plt.close(figure)


def _model_comparison_figure(test_metrics, backbones):
    names = _rank_models(test_metrics)[::-1]
    kinds = [_model_kind(name, backbones) for name in names]
    # constrained layout makes room for the legend below the axes.
    figure, axis = plt.subplots(figsize=(7, 0.35 * len(names) + 1.6), layout="constrained")
    axis.barh(names, [test_metrics[n]["accuracy"] for n in names], color=[_KIND_COLORS[kind] for kind in kinds])
    for index, name in enumerate(names):
        axis.text(test_metrics[name]["accuracy"], index, f" {test_metrics[name]['accuracy']:.3f}", va="center", fontsize=8)
    axis.set_xlim(0, 1.08)
    axis.set_xlabel("test accuracy")
    axis.set_title("Test accuracy by model")
    handles = [Patch(color=color, label=kind) for kind, color in _KIND_COLORS.items() if kind in kinds]
    figure.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8, frameon=False)
    return figure


def _plot_model_comparison(test_metrics, backbones, path):
    """Save a bar chart of every model's test accuracy, best on top, coloured by kind of model.

    Args:
        test_metrics: dict model name -> metrics of `fusion.evaluation.evaluate_probabilities`.
        backbones: the backbone names, which tell single-backbone models from baselines.
        path: the PNG file to write.

    Example:
        >>> _plot_model_comparison(report["test"], report["backbones"], "plots/model_comparison.png")
    """
    _save(_model_comparison_figure(test_metrics, backbones), path)


def _row_normalised(matrix):
    """Each row of a confusion matrix divided by its sum; rows of classes without test images stay 0."""
    matrix = np.asarray(matrix, dtype=np.float64)
    totals = matrix.sum(axis=1, keepdims=True)
    return np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)


def _shorten(name, max_chars=TICK_LABEL_MAX_CHARS):
    return name if len(name) <= max_chars else name[: max_chars - 1] + "…"


def _percent(share):
    # A cell with one image in a large class must not read "0%".
    return "<1%" if share < 0.005 else f"{share:.0%}"


def _confusion_figure(matrix, class_names, model_name):
    shares = _row_normalised(matrix)
    count = len(class_names)
    # Cells stay about 0.4 inch wide; the text shrinks from 10 points at 14 classes to 6 at 23 and more.
    font_size = float(np.clip(140 / count, 6, 10))
    size = max(4.5, 0.4 * count + 2.5)
    figure, axis = plt.subplots(figsize=(size, size), layout="constrained")
    # vmin and vmax fixed, so that a colour means the same share in every run.
    image = axis.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    colorbar = figure.colorbar(image, ax=axis, fraction=0.046)
    colorbar.set_label("share of the true class's test images", fontsize=font_size)
    colorbar.ax.tick_params(labelsize=font_size)
    labels = [_shorten(name) for name in class_names]
    axis.set_xticks(range(count), labels, rotation=90, fontsize=font_size)
    axis.set_yticks(range(count), labels, fontsize=font_size)
    if count <= CONFUSION_CELL_TEXT_MAX_CLASSES:
        for (row, column), share in np.ndenumerate(shares):
            if share > 0:  # Empty cells stay blank, so that the errors stand out.
                color = "white" if share > 0.5 else "black"  # Readable on the dark and the light end of Blues.
                axis.text(column, row, _percent(share), ha="center", va="center", fontsize=font_size - 1, color=color)
    axis.set_xlabel("predicted", fontsize=font_size + 1)
    axis.set_ylabel("true", fontsize=font_size + 1)
    axis.set_title(f"Confusion matrix of {model_name}", fontsize=font_size + 1, wrap=True)  # wraps at the figure edge
    return figure


def _plot_confusion_matrix(matrix, class_names, model_name, path):
    """Save a confusion matrix plot normalised by row: each true class's test images split by prediction.

    Args:
        matrix: C x C counts, rows true classes and columns predicted ones.
        class_names: the C class names; tick labels shorten long ones with an ellipsis.
        model_name: the model, for the title.
        path: the PNG file to write.

    Example:
        >>> _plot_confusion_matrix(metrics["confusion_matrix"], class_names, "fusion", "plots/confusion_matrix.png")
    """
    _save(_confusion_figure(matrix, class_names, model_name), path)


def _most_confused_pairs(matrix, class_names, top=MOST_CONFUSED_PAIRS):
    """(true class, predicted class, images, share of the true class's images) of the largest off-diagonal cells, most first."""
    matrix = np.asarray(matrix)
    shares = _row_normalised(matrix)
    errors = matrix.copy()
    np.fill_diagonal(errors, 0)
    cells = sorted(zip(*np.nonzero(errors)), key=lambda cell: (-errors[cell], class_names[cell[0]], class_names[cell[1]]))
    return [(class_names[row], class_names[column], int(errors[row, column]), float(shares[row, column]))
            for row, column in cells[:top]]


def _plot_training_curves(histories, path):
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, history in histories.items():
        style = "-" if name == "fusion" else "--" if name.startswith("fusion_without_") else ":"
        axes[0].plot(history["val_loss"], style, label=name)
        axes[1].plot(history["val_accuracy"], style, label=name)
    if "fusion" in histories:
        axes[0].plot(histories["fusion"]["loss"], "-", color="black", alpha=0.4, label="fusion (train)")
    for axis, title in zip(axes, ("validation loss", "validation accuracy")):
        axis.set_xlabel("epoch")
        axis.set_title(title)
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=7)
    figure.tight_layout()
    _save(figure, path)


def _number(value, digits=3):
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _signed(value):
    return "–" if value is None else f"{value:+.3f}"


def _with_interval(value, interval):
    """`0.972 (0.944–0.989)`: a value and its confidence interval; `–` when there is no value."""
    if value is None:
        return "–"
    return f"{value:.3f}" + (f" ({interval[0]:.3f}–{interval[1]:.3f})" if interval else "")


def _confusion_as_table(class_names):
    return len(class_names) > CONFUSION_PLOT_MAX_CLASSES


def _render_markdown(report):
    """report.md: what was trained, the table, the winner and by how much, significance, per-class scores, plots.

    Past CONFUSION_PLOT_MAX_CLASSES classes, a table of the winner's most confused pairs stands in for
    the confusion matrix plot. `report["test"]` holds the metrics of
    `fusion.evaluation.evaluate_probabilities` for each model.
    """
    test = report["test"]
    backbones = report["backbones"]
    summary = report["summary"]
    mcnemar = report["mcnemar"]["fusion_vs_average"]
    has_top5 = any("top5_accuracy" in metrics for metrics in test.values())
    lines = [
        "# Fusion report",
        "",
        f"Store `{report['store']}`: {len(backbones)} backbone{'' if len(backbones) == 1 else 's'} ({', '.join(backbones)}), "
        f"{len(report['class_names'])} classes, images per split: "
        + ", ".join(f"{split} {count}" for split, count in report["images_per_split"].items())
        + ".",
        "",
        *[f"> **Warning:** {warning}\n" for warning in report.get("warnings", [])],
        "## Verdict",
        "",
    ]
    winner = summary["winner"]
    runner_up = summary.get("runner_up")
    lines.append(
        f"Best model on the test split: **{winner}** (accuracy {test[winner]['accuracy']:.3f})"
        + (
            f", {_signed(summary['winner_minus_runner_up'])} ahead of the runner-up, {runner_up} "
            f"({test[runner_up]['accuracy']:.3f})."
            if runner_up
            else "."
        )
    )
    difference = summary["fusion_minus_average"]
    verdict = "worth it" if difference > 0 and summary["fusion_vs_average_significant"] else "not shown to be worth it"
    lines.append(
        f"The fusion model reaches {test['fusion']['accuracy']:.3f}, {_signed(difference)} against the "
        f"averaging baseline ({test['average']['accuracy']:.3f})"
        + (
            f" and {_signed(summary['fusion_minus_best_single_backbone'])} against the best single backbone, "
            f"{summary['best_single_backbone']} ({test[summary['best_single_backbone']]['accuracy']:.3f})."
            if summary["best_single_backbone"]
            else "."
        )
    )
    lines.append(
        f"McNemar's exact test, fusion against average: only fusion right on {mcnemar['only_a_correct']} test "
        f"images, only average right on {mcnemar['only_b_correct']}, p = {mcnemar['p_value']:.4g}: the difference "
        + ("is" if summary["fusion_vs_average_significant"] else "is not")
        + f" significant at the {summary['significance_level']:.0%} level. A learned fusion is {verdict} here."
    )
    lines += ["", "## All models (test split)", ""]
    header = "| model | kind | accuracy (95% CI) |" + (" top-5 (95% CI) |" if has_top5 else "") + " log loss | macro F1 |"
    lines += [header, "|" + "---|" * (header.count("|") - 1)]
    for name in _rank_models(test):
        metrics = test[name]
        lines.append(
            f"| {name} | {_model_kind(name, backbones)} | {_with_interval(metrics['accuracy'], metrics.get('accuracy_ci95'))} |"
            + (f" {_with_interval(metrics.get('top5_accuracy'), metrics.get('top5_accuracy_ci95'))} |" if has_top5 else "")
            + f" {metrics['log_loss']:.3f} | {metrics['macro_f1']:.3f} |"
        )
    ablations = [name for name in test if name.startswith("fusion_without_")]
    if ablations:
        lines += ["", "## What each backbone adds (drop-one ablation)", "", "| without | accuracy | fusion minus this |", "|---|---|---|"]
        for name in sorted(ablations, key=lambda n: test[n]["accuracy"]):
            lines.append(
                f"| {name.removeprefix('fusion_without_')} | {test[name]['accuracy']:.3f} | "
                f"{test['fusion']['accuracy'] - test[name]['accuracy']:+.3f} |"
            )
        reused = {name: entry["same_as"] for name, entry in report.get("training", {}).items() if "same_as" in entry}
        if reused:
            lines += ["", "With two backbones and no head units, fusion without one backbone is the other backbone's own "
                      "model: " + ", ".join(f"{name} is {same_as}" for name, same_as in sorted(reused.items()))
                      + ", reused rather than trained again."]
    weights = report.get("weighted_average_weights")
    if weights:
        lines += ["", "Weights of the weighted average (fitted on the validation split): "
                  + ", ".join(f"{name} {weight:.2f}" for name, weight in weights.items()) + "."]
    lines += [
        "", f"## Per class, {winner} (worst recall first)", "",
        "| class | precision | recall | F1 | test images |", "|---|---|---|---|---|",
    ]
    for name, scores in sorted(test[winner]["per_class"].items(), key=lambda item: (item[1]["recall"], item[0])):
        lines.append(
            f"| {name} | {scores['precision']:.3f} | {scores['recall']:.3f} | {_number(scores.get('f1'))} | {scores['support']} |"
        )
    missing = test[winner].get("classes_without_test_images", [])
    if missing:
        lines += ["", f"No test image, so not scored: {', '.join(missing)}."]
    if _confusion_as_table(report["class_names"]):
        pairs = _most_confused_pairs(test[winner]["confusion_matrix"], report["class_names"])
        lines += [
            "", f"## Most confused pairs, {winner}", "",
            f"{len(report['class_names'])} classes are too many for a readable confusion matrix plot: here are its "
            f"largest off-diagonal cells, at most {MOST_CONFUSED_PAIRS}. The full matrix is in report.json.", "",
        ]
        if pairs:
            lines += ["| true class | predicted as | test images | share of the true class's test images |", "|---|---|---|---|"]
            lines += [f"| {true} | {predicted} | {count} | {share:.1%} |" for true, predicted, count, share in pairs]
        else:
            lines.append("No test image was misclassified.")
    lines += ["", "## Plots", ""]
    for title, relative in report["plots"].items():
        lines += [f"![{title}]({relative})", ""]
    lines += [
        "Files: `models/*.keras` (every Keras model), `predictions/*.csv` (test predictions per model), "
        "`history/*.csv` (training curves), `config.json` (options and versions).",
        "",
    ]
    return "\n".join(lines)


def write_report(run_dir, report, histories):
    """Write the plots, report.json and report.md of a run into `run_dir`; returns report.md's path.

    Args:
        run_dir: the run folder.
        report: the report dict (see `build_report`); its `plots` entry is filled here.
        histories: dict model name -> Keras history dict, for the training curves.

    Example:
        >>> write_report("runs/exp1", report, histories)
    """
    run_dir = Path(run_dir)
    (run_dir / "plots").mkdir(parents=True, exist_ok=True)
    record_written(run_dir, "report.json", "report.md",
                   *(f"plots/{name}.png" for name in ("model_comparison", "confusion_matrix", "training_curves")))
    winner = report["summary"]["winner"]
    report["plots"] = {"model comparison": "plots/model_comparison.png"}
    _plot_model_comparison(report["test"], report["backbones"], run_dir / "plots" / "model_comparison.png")
    # Past CONFUSION_PLOT_MAX_CLASSES, report.md lists the most confused pairs instead.
    if not _confusion_as_table(report["class_names"]):
        _plot_confusion_matrix(
            report["test"][winner]["confusion_matrix"], report["class_names"], winner, run_dir / "plots" / "confusion_matrix.png"
        )
        report["plots"][f"confusion matrix of {winner}"] = "plots/confusion_matrix.png"
    _plot_training_curves(histories, run_dir / "plots" / "training_curves.png")
    report["plots"]["training curves"] = "plots/training_curves.png"
    # report.md first: report.json is what marks a run finished (see `fusion.saved_run.load_run`).
    markdown_path = write_text_atomic(run_dir / "report.md", _render_markdown(report))
    write_text_atomic(run_dir / "report.json", json.dumps(report, indent=2) + "\n")
    return markdown_path
