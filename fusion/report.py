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


# Each fusion head's name in the report; `fusion` is the concatenation head, as before there were others.
HEAD_MODEL_NAMES = {"concat": "fusion", "gated": "gated_fusion", "attention": "attention_fusion"}
_FUSION_HEAD_NAMES = tuple(HEAD_MODEL_NAMES.values())


def _model_kind(name, backbones):
    if _is_ablation(name):
        return "ablation"
    if name.split("+")[0] in _FUSION_HEAD_NAMES:
        return "fusion"
    if name.split("+")[0] in backbones:
        return "single backbone"
    return "baseline"


def _rank_models(test_metrics):
    """Model names, best first: higher accuracy, then lower log loss."""
    return sorted(test_metrics, key=lambda name: (-test_metrics[name]["accuracy"], test_metrics[name]["log_loss"]))


def _is_ablation(name):
    return "_without_" in name and name.split("_without_")[0] in _FUSION_HEAD_NAMES


def _summarize(test_metrics, backbones, mcnemar, fusion_head="fusion", best_single=None):
    """The winner and its margin over the runner-up; the fusion head's margins over the average and the best backbone, and significance."""
    contenders = [name for name in _rank_models(test_metrics) if not _is_ablation(name)]
    winner = contenders[0]
    singles = [name for name in contenders if name in backbones]
    best_single = best_single or (singles[0] if singles else None)
    runner_up = contenders[1] if len(contenders) > 1 else None
    summary = {
        "winner": winner,
        "winner_accuracy": test_metrics[winner]["accuracy"],
        "runner_up": runner_up,
        "winner_minus_runner_up": (
            test_metrics[winner]["accuracy"] - test_metrics[runner_up]["accuracy"] if runner_up else None
        ),
        "fusion_head": fusion_head,
        "best_single_backbone": best_single,
        "fusion_minus_average": test_metrics[fusion_head]["accuracy"] - test_metrics["average"]["accuracy"],
        "fusion_minus_best_single_backbone": (
            test_metrics[fusion_head]["accuracy"] - test_metrics[best_single]["accuracy"] if best_single else None
        ),
        "fusion_vs_average_significant": mcnemar["p_value"] < SIGNIFICANCE_LEVEL,
        "significance_level": SIGNIFICANCE_LEVEL,
    }
    return summary


def _choose_head(heads, cross_validation, validation_scores):
    """The fusion head the run recommends and exports: best on held-out rows (folds or val), never on test."""
    if len(heads) == 1:
        return heads[0]
    if cross_validation is not None:
        return cross_validation.ranked(list(heads))[0]
    return sorted(heads, key=lambda name: (-validation_scores[name]["accuracy"], validation_scores[name]["log_loss"]))[0]


def _tests_between_models(heads, best_single, test_probabilities, test_labels, cross_validation):
    """Each fusion head against the average and the best single backbone, and (over folds) the average against that backbone."""
    tests = {}
    for head in heads:
        for other in ("average", best_single):
            if other is None:
                continue
            if cross_validation is not None:
                entry = cross_validation.compare(head, other, test_probabilities, test_labels)
            else:
                a, b = test_probabilities[head].argmax(1), test_probabilities[other].argmax(1)
                entry = {"model_a": head, "model_b": other, "metric": "accuracy",
                         "test_difference": float(np.mean(a == test_labels) - np.mean(b == test_labels)),
                         "test_mcnemar": mcnemar_test(test_labels, a, b)}
            tests[f"{head}_vs_{other}"] = entry
    if best_single is not None and cross_validation is not None:
        # Does plain averaging beat the best backbone at all? The first question before any learned fusion.
        tests[f"average_vs_{best_single}"] = cross_validation.compare("average", best_single, test_probabilities,
                                                                       test_labels)
    return tests


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
                 seed=0, heads=("fusion",), cross_validation=None, validation_scores=None, gate_weights=None):
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
        heads: the report names of the trained fusion heads (default: ("fusion",)).
        cross_validation: a `fusion.cross_validation.CrossValidation` of a k-fold run; its scores
            choose the head and the best backbone, and the tests between models run over its folds
            (default: None, a run on the store's split).
        validation_scores: model -> `fold_scores` on the val split, to choose among several heads
            without cross-validation (default: None).
        gate_weights: gated head -> class -> backbone -> mean gate weight (default: None).

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
    heads = list(heads)
    fusion_head = _choose_head(heads, cross_validation, validation_scores)
    best_single = cross_validation.ranked(list(backbones))[0] if cross_validation is not None else None
    mcnemar = mcnemar_test(
        labels["test"], test_probabilities[fusion_head].argmax(1), test_probabilities["average"].argmax(1)
    )
    summary = _summarize(test_metrics, backbones, mcnemar, fusion_head=fusion_head, best_single=best_single)
    report = {
        "store": str(info.path),
        "backbones": list(backbones),
        "class_names": list(info.class_names),
        "images_per_split": {split: int(len(split_rows)) for split, split_rows in rows.items()},
        "fusion_heads": heads,
    }
    if cross_validation is not None:
        report["cross_validation"] = {
            "folds": cross_validation.num_folds, "repeats": cross_validation.num_repeats,
            "images": int(len(cross_validation.pool_rows)), "stratified": True, "seed": seed,
            "held_out_images_per_fold": [int(len(fold.val_rows)) for fold in cross_validation.folds],
        }
        report["cv"] = cross_validation.summary()
    report.update({
        "test": test_metrics,
        "mcnemar": {"fusion_vs_average": {**mcnemar, "model_a": fusion_head, "model_b": "average"}},
        "tests_between_models": _tests_between_models(heads, summary["best_single_backbone"], test_probabilities,
                                                       labels["test"], cross_validation),
        "summary": summary,
        "weighted_average_weights": dict(zip(backbones, np.asarray(weighted_average_weights).tolist())),
        "training": training,
        "warnings": warnings,
    })
    if gate_weights:
        report["gate_weights"] = gate_weights
    return report


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
        style = "-" if name in _FUSION_HEAD_NAMES else "--" if _is_ablation(name) else ":"
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


def _points(difference):
    return f"{100 * difference:+.1f} points"


def _cross_validation_verdict(report):
    """The lead of a cross-validated report: each fusion head against the average and the best backbone, with tests."""
    setup = report["cross_validation"]
    repeats = f" x {setup['repeats']} repeats" if setup["repeats"] > 1 else ""
    level = report["summary"]["significance_level"]
    lines = [f"Cross-validation: {setup['folds']} stratified folds{repeats} over the {setup['images']} train+val "
             f"images; the test split scores each model's fold ensemble (the average of its fold models)."]
    for entry in report["tests_between_models"].values():
        a, b, test = entry["model_a"], entry["model_b"], entry["cv"]
        low, high = test["ci95"]
        if test["p_value"] < level:
            word = "beats" if test["mean_difference"] > 0 else "falls behind"
        else:
            word = "is not shown to differ from"
        cv = report["cv"]
        lines.append(
            f"- **{a}** {word} **{b}**: {_points(test['mean_difference'])} of out-of-fold accuracy "
            f"({cv[a]['accuracy']['mean']:.3f} ± {cv[a]['accuracy']['std']:.3f} against "
            f"{cv[b]['accuracy']['mean']:.3f} ± {cv[b]['accuracy']['std']:.3f}; 95% CI {_points(low)} to "
            f"{_points(high)}, corrected resampled t-test p = {test['p_value']:.3g}; McNemar on the out-of-fold "
            f"predictions p = {entry['oof_mcnemar']['p_value']:.3g}). On the test split: "
            f"{_points(entry['test_difference'])}, McNemar p = {entry['test_mcnemar']['p_value']:.3g}."
        )
    lines.append(f"(Decided by the corrected resampled t-test over folds (Nadeau and Bengio, 2003) at the "
                 f"{level:.0%} level; the plain t-test over folds would overstate certainty, since the folds' "
                 f"training sets overlap.)")
    lines.append("")
    return lines


def _cross_validation_tables(report):
    cv, test, setup = report["cv"], report["test"], report["cross_validation"]
    repeats = f" x {setup['repeats']} repeats" if setup["repeats"] > 1 else ""
    lines = ["", f"## Cross-validation ({setup['folds']} folds{repeats}, "
             f"out-of-fold scores, mean ± standard deviation over folds)", "",
             "| model | kind | accuracy | log loss | macro F1 | test accuracy of the fold ensemble |",
             "|---|---|---|---|---|---|"]
    ranked = sorted(cv, key=lambda name: (-cv[name]["accuracy"]["mean"], cv[name]["log_loss"]["mean"]))
    for name in ranked:
        scores = cv[name]
        lines.append(
            f"| {name} | {_model_kind(name, report['backbones'])} | {scores['accuracy']['mean']:.3f} ± "
            f"{scores['accuracy']['std']:.3f} | {scores['log_loss']['mean']:.3f} ± {scores['log_loss']['std']:.3f} | "
            f"{scores['macro_f1']['mean']:.3f} ± {scores['macro_f1']['std']:.3f} | "
            f"{_with_interval(test[name]['accuracy'], test[name].get('accuracy_ci95')) if name in test else '–'} |"
        )
    lines += ["", "The weighted average and stacking are scored per fold by a combiner fitted on the other folds' "
              "out-of-fold predictions, so no score uses labels its model saw."]
    return lines


def _gate_weight_table(model_name, per_class, backbones):
    lines = ["", f"## Which backbone {model_name} relied on", "",
             "Mean gate weight per backbone for the held-out images of each true class (rows sum to 1):", "",
             "| class | " + " | ".join(backbones) + " |", "|---|" + "---|" * len(backbones)]
    for class_name, weights in per_class.items():
        lines.append(f"| {class_name} | " + " | ".join(f"{weights[name]:.2f}" for name in backbones) + " |")
    return lines


def _gate_weight_figure(model_name, per_class, backbones):
    classes = list(per_class)
    values = np.array([[per_class[name][backbone] for backbone in backbones] for name in classes])
    figure, axis = plt.subplots(figsize=(1.2 * len(backbones) + 3, 0.35 * len(classes) + 1.8), layout="constrained")
    image = axis.imshow(values, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    figure.colorbar(image, ax=axis, fraction=0.046).set_label("mean gate weight")
    axis.set_xticks(range(len(backbones)), [_shorten(name) for name in backbones], rotation=45, ha="right")
    axis.set_yticks(range(len(classes)), [_shorten(name) for name in classes])
    if len(classes) <= CONFUSION_CELL_TEXT_MAX_CLASSES:
        for (row, column), value in np.ndenumerate(values):
            axis.text(column, row, f"{value:.2f}", ha="center", va="center", fontsize=8,
                      color="white" if value > 0.5 else "black")
    axis.set_xlabel("backbone")
    axis.set_ylabel("true class")
    axis.set_title(f"Gate weights of {model_name}")
    return figure


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
    if "cv" in report:
        lines += _cross_validation_verdict(report)
    lines.append(
        f"Best model on the test split: **{winner}** (accuracy {test[winner]['accuracy']:.3f})"
        + (
            f", {_signed(summary['winner_minus_runner_up'])} ahead of the runner-up, {runner_up} "
            f"({test[runner_up]['accuracy']:.3f})."
            if runner_up
            else "."
        )
    )
    fusion_head = summary.get("fusion_head", "fusion")
    difference = summary["fusion_minus_average"]
    verdict = "worth it" if difference > 0 and summary["fusion_vs_average_significant"] else "not shown to be worth it"
    lines.append(
        f"The fusion model{'' if fusion_head == 'fusion' else f' ({fusion_head}, chosen on held-out rows)'} reaches "
        f"{test[fusion_head]['accuracy']:.3f}, {_signed(difference)} against the "
        f"averaging baseline ({test['average']['accuracy']:.3f})"
        + (
            f" and {_signed(summary['fusion_minus_best_single_backbone'])} against the best single backbone, "
            f"{summary['best_single_backbone']} ({test[summary['best_single_backbone']]['accuracy']:.3f})."
            if summary["best_single_backbone"]
            else "."
        )
    )
    lines.append(
        f"McNemar's exact test, {fusion_head} against average: only {fusion_head} right on {mcnemar['only_a_correct']} test "
        f"images, only average right on {mcnemar['only_b_correct']}, p = {mcnemar['p_value']:.4g}: the difference "
        + ("is" if summary["fusion_vs_average_significant"] else "is not")
        + f" significant at the {summary['significance_level']:.0%} level"
        + (f" on the test split." if "cv" in report else f". A learned fusion is {verdict} here.")
    )
    if "cv" in report:
        lines += _cross_validation_tables(report)
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
    for head in report.get("fusion_heads", ["fusion"]):
        ablations = [name for name in test if name.startswith(f"{head}_without_")]
        if not ablations:
            continue
        title = "What each backbone adds (drop-one ablation)" + ("" if head == "fusion" else f", {head}")
        lines += ["", f"## {title}", "", f"| without | accuracy | {head} minus this |", "|---|---|---|"]
        for name in sorted(ablations, key=lambda n: test[n]["accuracy"]):
            lines.append(
                f"| {name.removeprefix(f'{head}_without_')} | {test[name]['accuracy']:.3f} | "
                f"{test[head]['accuracy'] - test[name]['accuracy']:+.3f} |"
            )
    if any(name.split("_without_")[0] in _FUSION_HEAD_NAMES for name in test if "_without_" in name):
        reused = {name: entry["same_as"] for name, entry in report.get("training", {}).items() if "same_as" in entry}
        if reused:
            lines += ["", "With two backbones and no head units, fusion without one backbone is the other backbone's own "
                      "model: " + ", ".join(f"{name} is {same_as}" for name, same_as in sorted(reused.items()))
                      + ", reused rather than trained again."]
    weights = report.get("weighted_average_weights")
    if weights:
        fitted_on = "the out-of-fold predictions of every train+val image" if "cv" in report else "the validation split"
        lines += ["", f"Weights of the weighted average (fitted on {fitted_on}): "
                  + ", ".join(f"{name} {weight:.2f}" for name, weight in weights.items()) + "."]
    for model_name, per_class in report.get("gate_weights", {}).items():
        lines += _gate_weight_table(model_name, per_class, report["backbones"])
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
    for model_name, per_class in report.get("gate_weights", {}).items():
        relative = f"plots/gate_weights_{model_name}.png"
        record_written(run_dir, relative)
        _save(_gate_weight_figure(model_name, per_class, report["backbones"]), run_dir / relative)
        report["plots"][f"gate weights of {model_name}"] = relative
    _plot_training_curves(histories, run_dir / "plots" / "training_curves.png")
    report["plots"]["training curves"] = "plots/training_curves.png"
    # report.md first: report.json is what marks a run finished (see `fusion.saved_run.load_run`).
    markdown_path = write_text_atomic(run_dir / "report.md", _render_markdown(report))
    write_text_atomic(run_dir / "report.json", json.dumps(report, indent=2) + "\n")
    return markdown_path
