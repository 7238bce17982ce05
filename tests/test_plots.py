"""The report's figures: matplotlib Figures a notebook shows and save_figure writes, with the marks a reader needs."""

import importlib

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
from _report_fixtures import HISTORIES, WRONG, built_report
from matplotlib.backends.backend_agg import FigureCanvasAgg

from fusion import plots
from fusion.plots import (
    MIN_TEXT_CONTRAST,
    _text_color_on,
    contrast_ratio,
    plot_confusion_matrix,
    plot_cost,
    plot_model_comparison,
    plot_reliability,
    plot_training_curves,
    save_figure,
)

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def report():
    return built_report()


def _renderer(figure):
    """Lay the figure out on an Agg canvas (a figure closed from pyplot has none of its own)."""
    FigureCanvasAgg(figure)
    figure.canvas.draw()
    return figure.canvas.get_renderer()


def _inside(outer, inner):
    return outer.x0 - 1 <= inner.x0 and inner.x1 <= outer.x1 + 1 and outer.y0 - 1 <= inner.y0 and inner.y1 <= outer.y1 + 1


def _texts(legend):
    return [text.get_text() for text in legend.get_texts()]


def test_model_comparison_zooms_to_the_scores_and_draws_each_interval():
    # Real photos: every model between 0.90 and 0.95. Bars from 0 would make them all look alike.
    accuracies = {"fusion": 0.95, "stacking": 0.94, "average": 0.93, "a": 0.92, "b": 0.90}
    test = {name: {"accuracy": accuracy, "accuracy_ci95": [accuracy - 0.03, accuracy + 0.02], "log_loss": 1 - accuracy}
            for name, accuracy in accuracies.items()}
    figure = plot_model_comparison({"test": test, "backbones": ["a", "b"], "summary": {"winner": "fusion"}})
    axis, values = figure.axes
    # From the lowest interval (0.87) to the highest (0.97), with a margin of 0.01: not from 0.
    assert axis.get_xlim() == pytest.approx((0.86, 0.98))
    assert axis.get_xlabel() == "test accuracy (dot) and its 95% bootstrap interval (bar)"
    assert [label.get_text() for label in axis.get_yticklabels()] == ["b", "a", "average", "stacking", "fusion"]
    assert [label.get_text() for label in values.get_yticklabels()][-1] == "0.950 (0.920–0.970)"
    # One error bar per model, from its interval's low to its high end.
    assert len(axis.containers) == 5
    (start, _), (end, _) = axis.containers[-1].lines[2][0].get_segments()[0]
    assert (start, end) == pytest.approx((0.92, 0.97))
    # The winner's interval shaded: stacking and average, inside it, are within noise of it.
    band = axis.patches[0]
    assert (band.get_x(), band.get_x() + band.get_width()) == pytest.approx((0.92, 0.97))
    legend = figure.legends[0]
    assert _texts(legend) == ["fusion", "baseline", "single backbone", "fusion's 95% interval"]
    renderer = _renderer(figure)
    legend_box = legend.get_window_extent(renderer)
    # The colour key sits outside the plot area and inside the figure, and no title is cut.
    assert legend_box.x0 >= values.get_tightbbox(renderer).x1 - 1 and _inside(figure.bbox, legend_box)
    assert _inside(figure.bbox, axis.title.get_window_extent(renderer))


def test_confusion_matrix_text_reads_on_every_cell(report):
    figure = plot_confusion_matrix(report, model="b")
    axis = figure.axes[0]
    shares = axis.images[0].get_array()
    # b errs on 24 images, 8 per class, each taken for the next class: about 88% right, 12% wrong.
    np.testing.assert_allclose(shares.sum(axis=1), 1.0)
    assert shares[0, 0] == pytest.approx(59 / 67) and shares[0, 1] == pytest.approx(8 / 67)
    colors = {}
    for text in axis.texts:
        column, row = (int(round(value)) for value in text.get_position())
        background = axis.images[0].cmap(axis.images[0].norm(shares[row, column]))
        assert contrast_ratio(text.get_color(), background) >= MIN_TEXT_CONTRAST, text.get_text()
        colors[text.get_text()] = text.get_color()
    assert colors == {"88%": "white", "12%": "black"}
    assert [label.get_text() for label in axis.get_xticklabels()] == ["cat", "dog", "<b>&"]
    assert (axis.get_xlabel(), axis.get_ylabel()) == ("predicted class", "true class")
    assert axis.get_title() == "Confusion matrix of b"
    # Whatever the share, the text colour chosen reaches WCAG's 4.5:1 on the cell.
    colormap = plt.get_cmap("Blues")
    assert min(contrast_ratio(_text_color_on(colormap(share)), colormap(share))
               for share in np.linspace(0, 1, 201)) >= MIN_TEXT_CONTRAST
    assert contrast_ratio("white", "black") == pytest.approx(21) and contrast_ratio("white", "white") == 1
    assert plot_confusion_matrix(report).axes[0].get_title() == "Confusion matrix of fusion"  # the winner
    with pytest.raises(ValueError, match=r"Unknown model 'nope': the report scores fusion, a, .*Received: model='nope'"):
        plot_confusion_matrix(report, model="nope")


def test_training_curves_count_epochs_from_one_in_a_row_per_kind_with_training_dashed():
    figure = plot_training_curves(HISTORIES)
    axes = figure.axes
    assert [axis.get_title() for axis in axes] == [
        "fusion heads: loss", "fusion heads: accuracy", "single backbones: loss", "single backbones: accuracy",
        "ablations: loss", "ablations: accuracy"]
    assert [axis.get_ylabel() for axis in axes] == ["loss", "accuracy"] * 3
    for axis in axes:
        assert axis.get_xlabel() == "epoch" and list(axis.get_xticks()) == [1, 2, 3]
    # Single backbones, loss: per model its validation loss (solid) and its training loss (dashed, same colour).
    lines = axes[2].get_lines()
    assert [(line.get_linestyle(), list(line.get_xdata())) for line in lines] == [
        ("-", [1, 2, 3]), ("--", [1, 2, 3]), ("-", [1, 2]), ("--", [1, 2])]
    assert list(lines[0].get_ydata()) == [1.1, 0.7, 0.5] and list(lines[1].get_ydata()) == [1.0, 0.6, 0.4]
    assert lines[0].get_color() == lines[1].get_color() != lines[2].get_color()
    assert list(axes[3].get_lines()[0].get_ydata()) == [0.5, 0.75, 0.85]  # validation accuracy
    legends = [axis.get_legend() for axis in axes if axis.get_legend() is not None]
    assert [_texts(legend) for legend in legends] == [
        ["fusion", "validation", "training"], ["a", "b", "validation", "training"],
        ["fusion_without_a", "fusion_without_b", "validation", "training"]]
    renderer = _renderer(figure)
    for legend, axis in zip(legends, axes[1::2]):  # beside the accuracy panel, inside the figure
        box = legend.get_window_extent(renderer)
        assert box.x0 >= axis.get_window_extent(renderer).x1 and _inside(figure.bbox, box)
    only_fusion = plot_training_curves(HISTORIES, models=["fusion"])
    assert [axis.get_title() for axis in only_fusion.axes] == ["fusion heads: loss", "fusion heads: accuracy"]
    assert plots._epoch_ticks(60) == [1, 10, 20, 30, 40, 50, 60]
    with pytest.raises(ValueError, match=r"No training history for \['nope'\].*Received: models=\['nope'\]"):
        plot_training_curves(HISTORIES, models=["nope"])


def test_reliability_diagram_draws_accuracy_per_confidence_bin_the_diagonal_and_the_counts(report):
    figure = plot_reliability(report, models=["fusion", "average"])
    fusion_top, average_top, fusion_counts, _ = figure.axes
    # fusion gives 0.9 to every prediction and is right on 190 of 200: one bin, (14/15 - 1/15, 14/15], at 0.95.
    (bar,) = fusion_top.patches
    assert (bar.get_x(), bar.get_width(), bar.get_height()) == pytest.approx((13 / 15, 1 / 15, 0.95))
    diagonal = fusion_top.get_lines()[0]
    assert list(diagonal.get_xdata()) == [0, 1] and list(diagonal.get_ydata()) == [0, 1]
    assert fusion_top.get_title() == "fusion\nECE 0.050" and average_top.get_title() == "average\nECE 0.220"
    counts = [patch.get_height() for patch in fusion_counts.patches]
    assert len(counts) == 15 and counts[13] == 200 and sum(counts) == 200
    assert (fusion_top.get_ylabel(), fusion_counts.get_ylabel()) == ("accuracy in the bin", "test images")
    assert fusion_counts.get_xlabel() == "confidence (top class probability)"
    assert _texts(figure.legends[0]) == ["perfect calibration", "accuracy of the bin's test images",
                                         "test images in the bin"]
    # By default: the winner (also the fusion head), the best single backbone and the average.
    assert [axis.get_title().split("\n")[0] for axis in plot_reliability(report).axes[:3]] == ["fusion", "a", "average"]
    old = {**report, "test": {**report["test"], "a": {key: value for key, value in report["test"]["a"].items()
                                                      if key != "reliability"}}}
    with pytest.raises(ValueError, match=r"no reliability bins for 'a'.*Train the run again.*Received: models=\['a'\]"):
        plot_reliability(old, models=["a"])


def test_accuracy_versus_cost_places_each_model_at_its_backbones_cost_and_draws_each_backbones_step(report):
    figure = plot_cost(report)
    extraction, training = figure.axes
    points = {tuple(np.round(container.lines[0].get_xydata()[0], 6)) for container in extraction.containers}
    # Extraction seconds per image summed over each model's backbones (a 0.02, b 0.05), and test accuracy.
    assert {(0.07, 0.95), (0.02, 0.9), (0.05, 0.88), (0.05, 0.89), (0.02, 0.91)} <= points
    assert len(extraction.containers) == len(WRONG)
    arrows = [text for text in extraction.texts if getattr(text, "arrow_patch", None) is not None]
    # From fusion_without_a (b only) and fusion_without_b (a only) to fusion: the step that adding a backbone takes.
    assert sorted((tuple(np.round(arrow.xyann, 6)), tuple(np.round(arrow.xy, 6))) for arrow in arrows) == [
        ((0.02, 0.91), (0.07, 0.95)), ((0.05, 0.89), (0.07, 0.95))]
    assert {"+a", "+b"} <= {text.get_text() for text in extraction.texts}
    # Training: a baseline costs the backbone models it combines (10 s + 20 s).
    training_points = {tuple(np.round(container.lines[0].get_xydata()[0], 6)) for container in training.containers}
    assert (30.0, 0.94) in training_points and (10.0, 0.9) in training_points
    assert len(training.containers) == len(WRONG) - 2  # no ablations: their place is the arrows
    assert extraction.get_xlabel().startswith("feature extraction, seconds per image")
    assert extraction.get_ylabel() == "test accuracy (95% interval)"
    assert _texts(figure.legends[0]) == ["fusion", "baseline", "single backbone", "ablation",
                                         "adding a backbone (+name)"]
    unknown = plot_cost(built_report(precompute=None)).axes[0]
    assert len(unknown.containers) == 0 and "not recorded in the store" in unknown.texts[0].get_text()


def test_figures_are_closed_from_pyplot_yet_save_and_display_as_png(tmp_path, report):
    open_before = plt.get_fignums()
    figure = plot_model_comparison(report)
    # pyplot keeps no reference: Jupyter shows the returned figure once, not again at the end of the cell.
    assert plt.get_fignums() == open_before
    path = save_figure(figure, tmp_path / "plots" / "comparison.png")
    assert path.read_bytes()[:8] == PNG and [entry.name for entry in path.parent.iterdir()] == ["comparison.png"]
    assert save_figure(figure, tmp_path / "comparison.svg").read_text()[:200].lstrip().startswith("<?xml")
    # What Jupyter's inline display calls on a returned Figure.
    pylabtools = pytest.importorskip("IPython.core.pylabtools")
    assert pylabtools.print_figure(figure, "png")[:8] == PNG


def test_importing_the_plots_leaves_the_matplotlib_backend_alone():
    # fusion once called matplotlib.use("Agg") at import, which turned off inline plots in Jupyter.
    before = matplotlib.get_backend()
    try:
        matplotlib.use("svg")
        importlib.reload(plots)
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before)

