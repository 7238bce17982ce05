"""The report's figures, each returned as a matplotlib `Figure` that a notebook shows inline and `save_figure` writes.

Nothing here chooses a backend: in Jupyter the figures display inline, in a script they become files.
Each figure is made with `pyplot.subplots`, so that the notebook's inline backend knows how to show
it, and closed from pyplot at once, so that Jupyter shows it once (as the value a cell returns) and
not again when the cell ends, and so that a long session does not pile up open figures. A closed
figure still draws: its canvas reverts to `FigureCanvasBase`, and both `savefig` and IPython's PNG
display switch to Agg for the print.
"""

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import Normalize, to_rgb
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from features.atomic_files import atomic_path
from fusion.leaderboard import rank_models, report_costs
from fusion.model_names import FUSION_HEAD_NAMES, MODEL_KINDS, TTA_SUFFIX, base_model, is_ablation, model_kind

# Past this many classes a confusion matrix plot is a wall of unreadable cells: the report lists
# the most confused pairs instead, and the full matrix stays in report.json.
CONFUSION_PLOT_MAX_CLASSES = 30
# Up to this many classes each cell of the confusion plot has room for its share as text.
CONFUSION_CELL_TEXT_MAX_CLASSES = 20
TICK_LABEL_MAX_CHARS = 18
KIND_COLORS = {"fusion": "tab:red", "baseline": "tab:blue", "single backbone": "tab:gray", "ablation": "tab:orange"}
# WCAG 2.x asks for a contrast ratio of 4.5:1 between normal text and its background.
MIN_TEXT_CONTRAST = 4.5
_CONFUSION_COLORMAP = "Blues"
# Training curves: one row of panels per kind of trained model.
_CURVE_GROUPS = (("fusion", "fusion heads"), ("single backbone", "single backbones"), ("ablation", "ablations"))
_INTERVAL_SHADE = "0.9"


def _new_figure(**subplots_options):
    """`pyplot.subplots`, then closed from pyplot: the caller owns the figure, pyplot forgets it."""
    figure, axes = plt.subplots(**subplots_options)
    plt.close(figure)
    return figure, axes


def save_figure(figure, path, dpi=100):
    """Write a figure to `path` whole or not at all; the format follows the suffix (`.png`, `.svg`, `.pdf`).

    Args:
        figure: a matplotlib `Figure`, e.g. from `plot_model_comparison`.
        path: the file to write; its folder is made if missing.
        dpi: resolution of raster formats (default: 100).

    Example:
        >>> save_figure(plot_model_comparison(run.report), "comparison.png")
        PosixPath('comparison.png')
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The temporary keeps the suffix, from which matplotlib takes the format.
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=dpi)
    return path


def _check_model(report, model, argument="model"):
    if model not in report["test"]:
        raise ValueError(f"Unknown model {model!r}: the report scores {', '.join(report['test'])}. Pass one of "
                         f"these names. Received: {argument}={model!r}")


def _interval(metrics):
    accuracy = metrics["accuracy"]
    low, high = metrics.get("accuracy_ci95") or (accuracy, accuracy)
    return float(low), float(high)


def _shorten(name, max_chars=TICK_LABEL_MAX_CHARS):
    return name if len(name) <= max_chars else name[: max_chars - 1] + "…"


def _kind_handles(kinds):
    """Legend entries, a coloured dot per kind of model present, in the order of MODEL_KINDS."""
    return [Line2D([], [], color=KIND_COLORS[kind], marker="o", linestyle="", label=kind)
            for kind in MODEL_KINDS if kind in kinds]


def plot_model_comparison(report):
    """Every model's test accuracy as a dot with its 95% bootstrap interval, best on top, coloured by kind.

    The accuracy axis spans the scores' range, not 0 to 1, so that models at 0.90 to 0.95 do not all
    look the same; the shaded band is the winner's interval, so that a model inside it is visibly
    within the test split's noise. Each model's accuracy and interval are written on the right.

    Args:
        report: a run's report (`run.report`, or report.json read back).

    Example:
        >>> plot_model_comparison(run.report)  # in a notebook, shows the figure
    """
    test, backbones = report["test"], report["backbones"]
    names = rank_models(test)[::-1]
    kinds = [model_kind(name, backbones) for name in names]
    intervals = [_interval(test[name]) for name in names]
    figure, axis = _new_figure(figsize=(9, 0.32 * len(names) + 1.8), layout="constrained")
    winner = report.get("summary", {}).get("winner", names[-1])
    axis.axvspan(*_interval(test[winner]), color=_INTERVAL_SHADE, zorder=0)
    for index, (name, kind, (low, high)) in enumerate(zip(names, kinds, intervals)):
        accuracy = test[name]["accuracy"]
        axis.errorbar(accuracy, index, xerr=[[accuracy - low], [high - accuracy]], fmt="o", color=KIND_COLORS[kind],
                      markersize=5, capsize=3, elinewidth=1.5)
    axis.set_ylim(-0.6, len(names) - 0.4)
    axis.set_yticks(range(len(names)), names)
    lowest, highest = min(low for low, _ in intervals), max(high for _, high in intervals)
    margin = max(0.01, 0.06 * (highest - lowest))
    axis.set_xlim(max(0.0, lowest - margin), min(1.0, highest + margin))
    axis.set_xlabel("test accuracy (dot) and its 95% bootstrap interval (bar)")
    axis.set_title("Test accuracy by model")
    axis.grid(axis="x", alpha=0.3)
    values = axis.twinx()  # the numbers beside each row, where a reader looks for them
    values.set_ylim(axis.get_ylim())
    values.set_yticks(range(len(names)), [f"{test[name]['accuracy']:.3f} ({low:.3f}–{high:.3f})"
                                          for name, (low, high) in zip(names, intervals)], fontsize=8)
    values.tick_params(axis="y", length=0)
    handles = _kind_handles(kinds) + [Patch(color=_INTERVAL_SHADE, label=f"{winner}'s 95% interval")]
    figure.legend(handles=handles, loc="outside right upper", fontsize=8, frameon=False)
    return figure


def _relative_luminance(color):
    # WCAG 2.x: sRGB channels linearised, weighted by the eye's sensitivity.
    channels = np.array(to_rgb(color))
    linear = np.where(channels <= 0.04045, channels / 12.92, ((channels + 0.055) / 1.055) ** 2.4)
    return float(linear @ [0.2126, 0.7152, 0.0722])


def contrast_ratio(foreground, background):
    """WCAG contrast ratio of two colours, from 1 (the same) to 21 (black on white).

    Example:
        >>> round(contrast_ratio("white", "black"))
        21
    """
    lighter, darker = sorted((_relative_luminance(foreground), _relative_luminance(background)), reverse=True)
    return (lighter + 0.05) / (darker + 0.05)


def _text_color_on(background):
    """White or black, whichever reads better on `background`; the better one always reaches 4.5:1."""
    return max(("white", "black"), key=lambda color: contrast_ratio(color, background))


def row_normalised(matrix):
    """Each row of a confusion matrix divided by its sum; rows of classes without test images stay 0."""
    matrix = np.asarray(matrix, dtype=np.float64)
    totals = matrix.sum(axis=1, keepdims=True)
    return np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)


def _percent(share):
    # A cell with one image in a large class must not read "0%".
    return "<1%" if share < 0.005 else f"{share:.0%}"


def _confusion_figure(matrix, class_names, model_name):
    shares = row_normalised(matrix)
    count = len(class_names)
    # Cells stay about 0.4 inch wide; the text shrinks from 10 points at 14 classes to 6 at 23 and more.
    font_size = float(np.clip(140 / count, 6, 10))
    size = max(4.5, 0.4 * count + 2.5)
    figure, axis = _new_figure(figsize=(size, size), layout="constrained")
    colormap, norm = plt.get_cmap(_CONFUSION_COLORMAP), Normalize(vmin=0, vmax=1)
    # vmin and vmax fixed, so that a colour means the same share in every run.
    image = axis.imshow(shares, cmap=colormap, norm=norm)
    colorbar = figure.colorbar(image, ax=axis, fraction=0.046)
    colorbar.set_label("share of the true class's test images (each row sums to 1)", fontsize=font_size)
    colorbar.ax.tick_params(labelsize=font_size)
    labels = [_shorten(name) for name in class_names]
    axis.set_xticks(range(count), labels, rotation=90, fontsize=font_size)
    axis.set_yticks(range(count), labels, fontsize=font_size)
    if count <= CONFUSION_CELL_TEXT_MAX_CLASSES:
        for (row, column), share in np.ndenumerate(shares):
            if share > 0:  # Empty cells stay blank, so that the errors stand out.
                axis.text(column, row, _percent(share), ha="center", va="center", fontsize=font_size - 1,
                          color=_text_color_on(colormap(norm(share))))
    axis.set_xlabel("predicted class", fontsize=font_size + 1)
    axis.set_ylabel("true class", fontsize=font_size + 1)
    axis.set_title(f"Confusion matrix of {model_name}", fontsize=font_size + 1, wrap=True)  # wraps at the figure edge
    return figure


def plot_confusion_matrix(report, model=None):
    """A model's confusion matrix normalised by row: how each true class's test images were classified.

    Cells show their share as text (up to 20 classes), white or black by contrast with the cell's
    colour; long class names are shortened with an ellipsis.

    Args:
        report: a run's report.
        model: the model to show (default: None, the report's winner).

    Example:
        >>> plot_confusion_matrix(run.report, model=run.fusion_head)
    """
    model = report["summary"]["winner"] if model is None else model
    _check_model(report, model)
    return _confusion_figure(report["test"][model]["confusion_matrix"], report["class_names"], model)


def _curve_group(name):
    if is_ablation(name):
        return "ablation"
    return "fusion" if base_model(name) in FUSION_HEAD_NAMES else "single backbone"


def _epoch_ticks(epochs):
    """Epoch numbers from 1: every epoch up to 10, then 1 and multiples of a round step."""
    if epochs <= 10:
        return list(range(1, epochs + 1))
    step = next(step for step in (2, 5, 10, 20, 50, 100, 200, 500, 1000, 10**9) if epochs / step <= 8)
    return [1] + list(range(step, epochs + 1, step))


def plot_training_curves(histories, models=None):
    """Loss and accuracy per epoch, one row of panels per kind of model: fusion heads, single backbones, ablations.

    Epochs count from 1, as the report's best epochs do. Solid lines are the validation split (the
    held-out fold), dashed lines of the same colour the training batches: the two are not the same
    measure (training loss is taken under dropout and averaged over the epoch), so each has its own
    line style rather than its own panel, which would hide the gap between them.

    Args:
        histories: dict model name -> history, a dict of per-epoch lists (`loss`, `val_loss`,
            `accuracy`, `val_accuracy`) as Keras's `History.history` or `FusionRun.histories()` give.
        models: the models to draw (default: None, every model in `histories`).

    Example:
        >>> plot_training_curves(run.histories(), models=["fusion", "resnet50"])
    """
    names = list(histories) if models is None else list(models)
    unknown = [name for name in names if name not in histories]
    if unknown:
        raise ValueError(f"No training history for {unknown}: histories hold {', '.join(histories) or 'none'}. "
                         f"Pass models from these. Received: models={names}")
    names = [name for name in names if len(histories[name].get("val_loss", ())) > 0]
    if not names:
        raise ValueError("No history with a val_loss to plot: pass the histories of trained models (dict name -> "
                         f"Keras history dict). Received: histories for {list(histories)}")
    groups = [(title, [name for name in names if _curve_group(name) == kind]) for kind, title in _CURVE_GROUPS]
    groups = [(title, group) for title, group in groups if group]
    figure, axes = _new_figure(nrows=len(groups), ncols=2, figsize=(11, 2.9 * len(groups) + 0.4),
                               layout="constrained", squeeze=False)
    ticks = _epoch_ticks(max(len(histories[name]["val_loss"]) for name in names))
    for (title, group), (loss_axis, accuracy_axis) in zip(groups, axes):
        for index, name in enumerate(group):
            history, color = histories[name], f"C{index % 10}"
            for axis, metric in ((loss_axis, "loss"), (accuracy_axis, "accuracy")):
                for key, style in ((f"val_{metric}", "-"), (metric, "--")):
                    if len(history.get(key, ())) > 0:
                        values = np.asarray(history[key], dtype=float)
                        axis.plot(np.arange(1, len(values) + 1), values, style, color=color, linewidth=1.4)
        for axis, metric in ((loss_axis, "loss"), (accuracy_axis, "accuracy")):
            axis.set_title(f"{title}: {metric}")
            axis.set_xlabel("epoch")
            axis.set_ylabel(metric)
            axis.set_xticks(ticks)
            axis.grid(alpha=0.3)
        handles = [Line2D([], [], color=f"C{index % 10}", label=name) for index, name in enumerate(group)]
        handles += [Line2D([], [], color="black", linestyle="-", label="validation"),
                    Line2D([], [], color="black", linestyle="--", label="training")]
        accuracy_axis.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0,
                             fontsize=8, frameon=False)
    return figure


def _calibration_models(report):
    """The winner, the chosen fusion head, the best single backbone and the average: those a reader compares."""
    summary, test = report.get("summary", {}), report["test"]
    candidates = [summary.get("winner"), summary.get("fusion_head", "fusion"), summary.get("best_single_backbone"),
                  "average"]
    return [name for name in dict.fromkeys(candidates) if name in test and "reliability" in test[name]]


def plot_reliability(report, models=None):
    """Reliability diagrams: per model, test accuracy against confidence in 15 bins, the diagonal, and bin counts.

    A bar below the diagonal is a confidence bin where the model is overconfident. The lower panels
    count the test images per bin, so a bar backed by few images reads as the noise it is. The
    title gives each model's expected calibration error (ECE).

    Args:
        report: a run's report (written by a fusionpipe that records `reliability`).
        models: the models to show (default: None, the winner, the chosen fusion head, the best
            single backbone and the average).

    Example:
        >>> plot_reliability(run.report, models=["fusion", "stacking"])
    """
    models = _calibration_models(report) if models is None else list(models)
    if not models:
        raise ValueError("No model to draw: pass models=[...] with names from the report. Received: models=[]")
    for name in models:
        _check_model(report, name, "models")
        if "reliability" not in report["test"][name]:
            raise ValueError(f"The report has no reliability bins for {name!r}: it was written before fusionpipe "
                             f"recorded calibration. Train the run again to get them. Received: models={models}")
    figure, axes = _new_figure(nrows=2, ncols=len(models), figsize=(3.2 * len(models) + 0.8, 5.4),
                               layout="constrained", squeeze=False, sharex=True,
                               gridspec_kw={"height_ratios": [3, 1]})
    for column, name in enumerate(models):
        metrics = report["test"][name]
        bins = metrics["reliability"]
        edges = np.asarray(bins["bin_edges"])
        left, widths = edges[:-1], np.diff(edges)
        filled = [index for index, count in enumerate(bins["counts"]) if count]
        top, bottom = axes[0, column], axes[1, column]
        top.plot([0, 1], [0, 1], "--", color="0.4", linewidth=1)
        top.bar(left[filled], [bins["accuracy"][index] for index in filled], width=widths[filled], align="edge",
                color="tab:blue", edgecolor="white", linewidth=0.5)
        top.set_xlim(0, 1)
        top.set_ylim(0, 1)
        top.set_title(f"{name}\nECE {metrics['ece']:.3f}" if "ece" in metrics else name, fontsize=10)
        bottom.bar(left, bins["counts"], width=widths, align="edge", color="0.55", edgecolor="white", linewidth=0.5)
        bottom.set_xlabel("confidence (top class probability)")
        if column == 0:
            top.set_ylabel("accuracy in the bin")
            bottom.set_ylabel("test images")
    handles = [Line2D([], [], color="0.4", linestyle="--", label="perfect calibration"),
               Patch(color="tab:blue", label="accuracy of the bin's test images"),
               Patch(color="0.55", label="test images in the bin")]
    figure.legend(handles=handles, loc="outside lower center", ncols=3, fontsize=8, frameon=False)
    return figure


def plot_cost(report):
    """Test accuracy against cost: per image (feature extraction over the model's backbones) and for training.

    Each model is a dot with its 95% interval. In the extraction panel an arrow runs from each
    `<head>_without_<b>` ablation to its head, labelled `+b`: how far adding backbone `b` moves the
    cost per image (right) and accuracy (up).
    A backbone whose arrow points right and not up does not pay for itself. Extraction seconds
    come from the store (precompute records them); where it does not, that panel says so. Models
    with test-time augmentation, which extract every view, are left out, and the training panel
    leaves out the ablations, which are diagnostics of what each backbone adds.

    Args:
        report: a run's report.

    Example:
        >>> plot_cost(run.report)
    """
    test, backbones = report["test"], report["backbones"]
    costs = report_costs(report)
    names = [name for name in rank_models(test) if name in costs and not name.endswith(TTA_SUFFIX)]
    figure, (extraction_axis, training_axis) = _new_figure(ncols=2, figsize=(12, 5), layout="constrained",
                                                           sharey=True)
    panels = ((extraction_axis, "precompute_seconds_per_image",
               "feature extraction, seconds per image\n(summed over the model's backbones)",
               "Accuracy against the cost of each prediction"),
              (training_axis, "training_seconds_in_all", "training seconds\n(a baseline: the backbone models it combines)",
               "Accuracy against the cost of training"))
    arrows = False
    for axis, key, label, title in panels:
        placed = {}
        for name in names:
            cost = costs[name].get(key)
            # An ablation's training time is no choice a team makes: its place is the extraction panel's arrows.
            if cost is None or (key == "training_seconds_in_all" and is_ablation(name)):
                continue
            accuracy, (low, high) = test[name]["accuracy"], _interval(test[name])
            axis.errorbar(cost, accuracy, yerr=[[accuracy - low], [high - accuracy]], fmt="o", capsize=3,
                          color=KIND_COLORS[model_kind(name, backbones)], markersize=5)
            placed[name] = (cost, accuracy)
        # Models at the same point (an ablation of two backbones is the other one's model) share one label.
        at_point = {}
        for name, point in placed.items():
            at_point.setdefault(point, []).append(name)
        for point, together in at_point.items():
            axis.annotate(", ".join(together), point, xytext=(4, 4), textcoords="offset points", fontsize=7)
        if key == "precompute_seconds_per_image":
            # Each backbone's step: from the head without it to the head, in extraction cost and accuracy.
            for name in placed:
                head, _, added = name.partition("_without_")
                if is_ablation(name) and head in placed:
                    arrows = True
                    axis.annotate("", xy=placed[head], xytext=placed[name],
                                  arrowprops={"arrowstyle": "->", "color": KIND_COLORS["ablation"], "alpha": 0.7})
                    axis.text(*np.mean([placed[head], placed[name]], axis=0), f"+{added}", fontsize=7,
                              color=KIND_COLORS["ablation"], ha="center", va="bottom")
        if not placed:
            axis.text(0.5, 0.5, "not recorded in the store\n(precompute records it per backbone)",
                      transform=axis.transAxes, ha="center", va="center", color="0.35")
        axis.set_xlabel(label)
        axis.set_title(title)
        axis.grid(alpha=0.3)
    extraction_axis.set_ylabel("test accuracy (95% interval)")
    handles = _kind_handles([model_kind(name, backbones) for name in names])
    if arrows:
        handles.append(Line2D([], [], color=KIND_COLORS["ablation"], marker=">", label="adding a backbone (+name)"))
    figure.legend(handles=handles, loc="outside right upper", fontsize=8, frameon=False)
    return figure


def plot_gate_weights(report, model=None):
    """Which backbone a gated fusion head relied on: its mean gate weight per backbone for each true class.

    Args:
        report: the report of a run with a `gated` head.
        model: the gated head (default: None, the first the report holds).

    Example:
        >>> plot_gate_weights(run.report, "gated_fusion")
    """
    gates = report.get("gate_weights", {})
    model = next(iter(gates), None) if model is None else model
    if model not in gates:
        raise ValueError(f"The report holds gate weights for {', '.join(gates) or 'no model'} (gated heads only; "
                         f"train with fusion=['gated']). Received: model={model!r}")
    per_class, backbones = gates[model], report["backbones"]
    classes = list(per_class)
    values = np.array([[per_class[name][backbone] for backbone in backbones] for name in classes])
    figure, axis = _new_figure(figsize=(1.2 * len(backbones) + 3, 0.35 * len(classes) + 1.8), layout="constrained")
    colormap, norm = plt.get_cmap(_CONFUSION_COLORMAP), Normalize(vmin=0, vmax=1)
    image = axis.imshow(values, cmap=colormap, norm=norm, aspect="auto")
    figure.colorbar(image, ax=axis, fraction=0.046).set_label("mean gate weight")
    axis.set_xticks(range(len(backbones)), [_shorten(name) for name in backbones], rotation=45, ha="right")
    axis.set_yticks(range(len(classes)), [_shorten(name) for name in classes])
    if len(classes) <= CONFUSION_CELL_TEXT_MAX_CLASSES:
        for (row, column), value in np.ndenumerate(values):
            axis.text(column, row, f"{value:.2f}", ha="center", va="center", fontsize=8,
                      color=_text_color_on(colormap(norm(value))))
    axis.set_xlabel("backbone")
    axis.set_ylabel("true class")
    axis.set_title(f"Gate weights of {model}")
    return figure


def report_figures(report, histories=None):
    """Every figure of a run's report, as `write_report` saves them: dict path in the run folder -> (title, Figure).

    Args:
        report: a run's report.
        histories: dict model name -> Keras history dict, for the training curves (default: None,
            no training curves).

    Example:
        >>> {title: figure for title, figure in report_figures(run.report, run.histories()).values()}
    """
    summary = report["summary"]
    winner, fusion_head = summary["winner"], summary.get("fusion_head", "fusion")
    figures = {"plots/model_comparison.png": ("model comparison", plot_model_comparison(report))}
    # Past CONFUSION_PLOT_MAX_CLASSES, the report lists the most confused pairs instead.
    if len(report["class_names"]) <= CONFUSION_PLOT_MAX_CLASSES:
        figures["plots/confusion_matrix.png"] = (f"confusion matrix of {winner}", plot_confusion_matrix(report, winner))
        if fusion_head != winner and fusion_head in report["test"]:
            figures[f"plots/confusion_matrix_{fusion_head}.png"] = (f"confusion matrix of {fusion_head}",
                                                                     plot_confusion_matrix(report, fusion_head))
    for model in report.get("gate_weights", {}):
        figures[f"plots/gate_weights_{model}.png"] = (f"gate weights of {model}", plot_gate_weights(report, model))
    trained = {name: history for name, history in (histories or {}).items() if len(history.get("val_loss", ())) > 0}
    if trained:
        figures["plots/training_curves.png"] = ("training curves", plot_training_curves(trained))
    if _calibration_models(report):
        figures["plots/reliability.png"] = ("reliability diagram", plot_reliability(report))
    figures["plots/accuracy_vs_cost.png"] = ("accuracy versus cost", plot_cost(report))
    return figures
