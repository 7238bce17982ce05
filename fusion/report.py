"""The comparison report of a run: report.json, report.md and PNG plots."""

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # Plots are files; no display is needed or wanted.
import matplotlib.pyplot as plt  # noqa: E402

SIGNIFICANCE_LEVEL = 0.05


def _model_kind(name, backbones):
    if name.startswith("fusion_without_"):
        return "ablation"
    if name.split("+")[0] == "fusion":
        return "fusion"
    if name.split("+")[0] in backbones:
        return "single backbone"
    return "baseline"


def rank_models(test_metrics):
    """Model names, best first: higher accuracy, then lower log loss."""
    return sorted(test_metrics, key=lambda name: (-test_metrics[name]["accuracy"], test_metrics[name]["log_loss"]))


def summarize(test_metrics, backbones, mcnemar):
    """The winner and its margin over the runner-up; fusion's margins over the average and the best backbone, and significance."""
    contenders = [name for name in rank_models(test_metrics) if not name.startswith("fusion_without_")]
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


def plot_model_comparison(test_metrics, backbones, path):
    names = rank_models(test_metrics)[::-1]
    colors = {"fusion": "tab:red", "baseline": "tab:blue", "single backbone": "tab:gray", "ablation": "tab:orange"}
    figure, axis = plt.subplots(figsize=(7, 0.35 * len(names) + 1.2))
    axis.barh(names, [test_metrics[n]["accuracy"] for n in names], color=[colors[_model_kind(n, backbones)] for n in names])
    for index, name in enumerate(names):
        axis.text(test_metrics[name]["accuracy"], index, f" {test_metrics[name]['accuracy']:.3f}", va="center", fontsize=8)
    axis.set_xlim(0, 1.08)
    axis.set_xlabel("test accuracy")
    axis.set_title("Models on the test split (red: fusion, blue: baselines, gray: single backbones, orange: ablation)", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_confusion_matrix(matrix, class_names, model_name, path):
    size = max(4, 0.4 * len(class_names) + 2)
    figure, axis = plt.subplots(figsize=(size, size))
    image = axis.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axis, fraction=0.046)
    axis.set_xticks(range(len(class_names)), class_names, rotation=90, fontsize=7)
    axis.set_yticks(range(len(class_names)), class_names, fontsize=7)
    if len(class_names) <= 20:
        for row, values in enumerate(matrix):
            for column, value in enumerate(values):
                axis.text(column, row, str(value), ha="center", va="center", fontsize=7)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(f"Confusion matrix of {model_name} (test)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_training_curves(histories, path):
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
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _number(value, digits=3):
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _signed(value):
    return "–" if value is None else f"{value:+.3f}"


def render_markdown(report):
    """report.md: what was trained, the table, the winner and by how much, significance, plots."""
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
    header = "| model | kind | accuracy |" + (" top-5 |" if has_top5 else "") + " log loss | macro F1 |"
    lines += [header, "|" + "---|" * (header.count("|") - 1)]
    for name in rank_models(test):
        metrics = test[name]
        lines.append(
            f"| {name} | {_model_kind(name, backbones)} | {metrics['accuracy']:.3f} |"
            + (f" {_number(metrics.get('top5_accuracy'))} |" if has_top5 else "")
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
    weights = report.get("weighted_average_weights")
    if weights:
        lines += ["", "Weights of the weighted average (fitted on the validation split): "
                  + ", ".join(f"{name} {weight:.2f}" for name, weight in weights.items()) + "."]
    lines += ["", f"## Per class, {winner}", "", "| class | precision | recall | images |", "|---|---|---|---|"]
    for name, scores in test[winner]["per_class"].items():
        lines.append(f"| {name} | {scores['precision']:.3f} | {scores['recall']:.3f} | {scores['support']} |")
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
        report: the report dict (see `fusion.run.train_run`); its `plots` entry is filled here.
        histories: dict model name -> Keras history dict, for the training curves.

    Example:
        >>> write_report("runs/exp1", report, histories)
    """
    run_dir = Path(run_dir)
    (run_dir / "plots").mkdir(parents=True, exist_ok=True)
    winner = report["summary"]["winner"]
    plot_model_comparison(report["test"], report["backbones"], run_dir / "plots" / "model_comparison.png")
    plot_confusion_matrix(
        report["test"][winner]["confusion_matrix"], report["class_names"], winner, run_dir / "plots" / "confusion_matrix.png"
    )
    plot_training_curves(histories, run_dir / "plots" / "training_curves.png")
    report["plots"] = {
        "model comparison": "plots/model_comparison.png",
        f"confusion matrix of {winner}": "plots/confusion_matrix.png",
        "training curves": "plots/training_curves.png",
    }
    (run_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    markdown_path = run_dir / "report.md"
    markdown_path.write_text(render_markdown(report), encoding="utf-8")
    return markdown_path
