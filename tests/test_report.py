"""report.md reads alone: the winner and by how much, significance, every model, the plots, at 2 and at 60 classes."""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from features.recipe import FeatureRecipe
from fusion.evaluation import evaluate_probabilities, mcnemar_test
from fusion.report import (
    _confusion_figure,
    _model_comparison_figure,
    _most_confused_pairs,
    _row_normalised,
    build_report,
    _rank_models,
    _render_markdown,
    store_warnings,
    _summarize,
    write_report,
)

HISTORIES = {name: {"loss": [1.0, 0.5], "val_loss": [1.1, 0.6], "val_accuracy": [0.5, 0.8]} for name in ("fusion", "a", "b")}


def _metrics(accuracy, log_loss):
    # cat: 45 of 50 right, dog: 40 of 50 right, so dog has the worse recall though it sorts after cat.
    return {"accuracy": accuracy, "accuracy_ci95": [accuracy - 0.06, accuracy + 0.05], "log_loss": log_loss,
            "macro_f1": accuracy, "num_images": 100,
            "per_class": {"cat": {"precision": 45 / 55, "recall": 0.9, "f1": 0.857, "support": 50},
                          "dog": {"precision": 40 / 45, "recall": 0.8, "f1": 0.842, "support": 50}},
            "classes_without_test_images": [], "confusion_matrix": [[45, 5], [10, 40]]}


def _report(fusion_accuracy, p_value):
    test = {"fusion": _metrics(fusion_accuracy, 0.3), "average": _metrics(0.80, 0.4), "weighted_average": _metrics(0.81, 0.4),
            "stacking": _metrics(0.82, 0.39), "a": _metrics(0.75, 0.5), "b": _metrics(0.70, 0.6),
            "fusion_without_a": _metrics(0.72, 0.55), "fusion_without_b": _metrics(0.80, 0.45)}
    mcnemar = {"only_a_correct": 12, "only_b_correct": 2, "p_value": p_value}
    return {"store": "cache.h5", "backbones": ["a", "b"], "class_names": ["cat", "dog"],
            "images_per_split": {"train": 600, "val": 200, "test": 100}, "test": test,
            "mcnemar": {"fusion_vs_average": mcnemar}, "summary": _summarize(test, ["a", "b"], mcnemar),
            "weighted_average_weights": {"a": 0.6, "b": 0.4}, "training": {}}


def _title_fits(figure):
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    title = figure.axes[0].title.get_window_extent(renderer)
    return figure.bbox.x0 <= title.x0 and title.x1 <= figure.bbox.x1 and title.y1 <= figure.bbox.y1


def test_summary_names_winner_margins_and_significance():
    summary = _report(0.90, 0.01)["summary"]
    assert summary["winner"] == "fusion" and summary["best_single_backbone"] == "a"
    assert summary["runner_up"] == "stacking" and np.isclose(summary["winner_minus_runner_up"], 0.08)
    assert np.isclose(summary["fusion_minus_average"], 0.10) and np.isclose(summary["fusion_minus_best_single_backbone"], 0.15)
    assert summary["fusion_vs_average_significant"] is True
    # Ablations never win: they are diagnostics of the fusion model.
    assert _rank_models({"x": _metrics(0.5, 1), "y": _metrics(0.5, 0.9)}) == ["y", "x"]


def test_markdown_says_who_wins_by_how_much_and_whether_it_is_significant(tmp_path):
    report = _report(0.90, 0.01)
    markdown = write_report(tmp_path, report, HISTORIES).read_text()
    assert "Best model on the test split: **fusion** (accuracy 0.900), +0.080 ahead of the runner-up, stacking (0.820)." in markdown
    assert "+0.100 against the averaging baseline (0.800)" in markdown
    assert "+0.150 against the best single backbone, a (0.750)" in markdown
    assert "p = 0.01: the difference is significant at the 5% level" in markdown
    for name in report["test"]:
        assert f"| {name} |" in markdown
    assert "| a | 0.720 | +0.180 |" in markdown  # fusion without a loses 0.18
    assert list(report["plots"]) == ["model comparison", "confusion matrix of fusion", "training curves"]
    for relative in report["plots"].values():
        assert (tmp_path / relative).stat().st_size > 1000 and f"]({relative})" in markdown
    assert json.loads((tmp_path / "report.json").read_text())["summary"]["winner"] == "fusion"


def test_markdown_at_two_classes_shows_intervals_and_the_worst_recall_first():
    lines = _render_markdown({**_report(0.90, 0.01), "plots": {}}).splitlines()
    assert "| model | kind | accuracy (95% CI) | log loss | macro F1 |" in lines  # No model has top-5 at 2 classes.
    assert "| fusion | fusion | 0.900 (0.840–0.950) | 0.300 | 0.900 |" in lines
    assert "| stacking | baseline | 0.820 (0.760–0.870) | 0.390 | 0.820 |" in lines
    table = lines.index("| class | precision | recall | F1 | test images |")
    assert lines[table - 2] == "## Per class, fusion (worst recall first)"
    assert lines[table + 2:table + 5] == ["| dog | 0.889 | 0.800 | 0.842 | 50 |", "| cat | 0.818 | 0.900 | 0.857 | 50 |", ""]
    assert not any(line.startswith("No test image") or "Most confused" in line for line in lines)


def test_markdown_when_fusion_does_not_pay():
    report = _report(0.79, 0.6)
    markdown = _render_markdown({**report, "plots": {}})
    assert "Best model on the test split: **stacking** (accuracy 0.820), +0.010 ahead of the runner-up, weighted_average (0.810)." in markdown
    assert "-0.010 against the averaging baseline" in markdown
    assert "is not significant at the 5% level. A learned fusion is not shown to be worth it here." in markdown


def test_confusion_plot_is_normalised_by_row_with_short_labels_and_readable_text():
    matrix = [[8, 2, 0], [3, 1, 0], [0, 0, 0]]  # The third class has no test image: its row stays 0.
    expected = [[0.8, 0.2, 0.0], [0.75, 0.25, 0.0], [0.0, 0.0, 0.0]]
    np.testing.assert_allclose(_row_normalised(matrix), expected)
    class_names = ["cat", "dog", "a_class_name_far_too_long_for_a_tick"]
    figure = _confusion_figure(matrix, class_names, "convnext_large_in22k_ft_in1k+tta")
    axis = figure.axes[0]
    np.testing.assert_allclose(axis.images[0].get_array(), expected)
    assert [label.get_text() for label in axis.get_yticklabels()] == ["cat", "dog", "a_class_name_far_…"]
    # Shares in the non-empty cells only; white on the dark cells (over 50%), black on the light ones.
    cells = {text.get_text(): text.get_color() for text in axis.texts}
    assert cells == {"80%": "white", "20%": "black", "75%": "white", "25%": "black"}
    # A long model name wraps onto a second line rather than running off the figure.
    assert _title_fits(figure) and axis.get_title() == "Confusion matrix of convnext_large_in22k_ft_in1k+tta"
    # 24 classes: smaller text, and no shares written in the cells.
    crowded = _confusion_figure(np.eye(24, dtype=int), [f"c{i}" for i in range(24)], "fusion")
    assert len(crowded.axes[0].texts) == 0 and crowded.axes[0].get_yticklabels()[0].get_fontsize() == pytest.approx(6.0)
    assert axis.get_yticklabels()[0].get_fontsize() == pytest.approx(10.0)


def test_report_at_60_classes_lists_the_most_confused_pairs_instead_of_a_plot(tmp_path):
    class_names = [f"class_{index:02d}" for index in range(60)]
    labels = np.repeat(np.arange(50), 10)  # class_50 to class_59 have no test image.
    fusion = labels.copy()
    fusion[labels == 7] = [12] * 6 + [7] * 4  # the most frequent confusion
    fusion[labels == 3] = [4] * 3 + [3] * 7
    fusion[labels == 20] = [55] * 2 + [20] * 8  # predicted as a class without test images
    average = fusion.copy()
    average[labels == 30] = 31

    def probabilities(predictions):
        # 0.9 on the prediction, the rest spread evenly.
        result = np.full((len(predictions), 60), 0.1 / 59)
        result[np.arange(len(predictions)), predictions] = 0.9
        return result

    test = {"fusion": evaluate_probabilities(labels, probabilities(fusion), class_names),
            "average": evaluate_probabilities(labels, probabilities(average), class_names)}
    mcnemar = mcnemar_test(labels, fusion, average)
    report = {"store": "cache.h5", "backbones": ["a", "b"], "class_names": class_names,
              "images_per_split": {"train": 1500, "val": 500, "test": 500}, "test": test,
              "mcnemar": {"fusion_vs_average": mcnemar}, "summary": _summarize(test, ["a", "b"], mcnemar),
              "weighted_average_weights": {"a": 0.5, "b": 0.5}, "training": {}}
    lines = write_report(tmp_path, report, HISTORIES).read_text().splitlines()

    assert not (tmp_path / "plots" / "confusion_matrix.png").exists()
    assert list(report["plots"]) == ["model comparison", "training curves"]
    on_disk = json.loads((tmp_path / "report.json").read_text())["test"]["fusion"]["confusion_matrix"]
    assert np.shape(on_disk) == (60, 60) and on_disk[7][12] == 6 and on_disk[20][55] == 2 and on_disk[7][7] == 4
    header = lines.index("| true class | predicted as | test images | share of the true class's test images |")
    assert "## Most confused pairs, fusion" in lines[header - 4]
    assert lines[header + 2:header + 6] == [
        "| class_07 | class_12 | 6 | 60.0% |", "| class_03 | class_04 | 3 | 30.0% |", "| class_20 | class_55 | 2 | 20.0% |", ""
    ]
    # Worst recall first, ties by name; the classes without test images named under the table.
    per_class = lines.index("| class | precision | recall | F1 | test images |")
    assert [line.split(" | ")[0] for line in lines[per_class + 2:per_class + 7]] == [
        "| class_07", "| class_03", "| class_20", "| class_00", "| class_01"
    ]
    assert lines[per_class + 2] == "| class_07 | 1.000 | 0.400 | 0.571 | 10 |"
    assert lines[per_class + 53] == "No test image, so not scored: " + ", ".join(class_names[50:]) + "."
    # 50 classes have test images, so the table has a top-5 column with its interval.
    assert "| model | kind | accuracy (95% CI) | top-5 (95% CI) | log loss | macro F1 |" in lines
    low, high = test["fusion"]["accuracy_ci95"]
    assert f"| fusion | fusion | 0.978 ({low:.3f}–{high:.3f}) |" in "\n".join(lines) and low < 0.978 < high
    assert _title_fits(_model_comparison_figure(test, ["a", "b"]))


def test_most_confused_pairs_keeps_the_largest_twenty_ties_by_name():
    class_names = [f"c{index:02d}" for index in range(40)]
    matrix = np.diag(np.full(40, 50))
    for index in range(25):  # c00 taken for c01 once, ..., c24 taken for c25 25 times
        matrix[index, index + 1] = index + 1
    matrix[30, 0] = 25  # ties with c24 -> c25, and comes after it: c24 sorts before c30
    pairs = _most_confused_pairs(matrix, class_names)
    assert len(pairs) == 20
    assert pairs[:3] == [("c24", "c25", 25, pytest.approx(25 / 75)), ("c30", "c00", 25, pytest.approx(25 / 75)),
                         ("c23", "c24", 24, pytest.approx(24 / 74))]
    assert [count for _, _, count, _ in pairs] == [25, 25] + list(range(24, 6, -1))
    assert _most_confused_pairs(np.eye(40, dtype=int), class_names) == []


def test_a_failure_while_writing_a_plot_leaves_the_old_report_whole_and_no_temporary(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    write_report(tmp_path, _report(0.90, 0.01), HISTORIES)
    before = {path.relative_to(tmp_path).as_posix(): path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}

    def savefig_half_then_fail(self, path, **kwargs):
        with open(path, "wb") as handle:
            handle.write(b"\x89PNG\r\n\x1a\n half a plot")
        raise OSError("No space left on device")

    monkeypatch.setattr(Figure, "savefig", savefig_half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        write_report(tmp_path, _report(0.70, 0.5), HISTORIES)
    after = {path.relative_to(tmp_path).as_posix(): path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
    assert after == before
    assert json.loads(after["report.json"])["summary"]["winner"] == "fusion"


def test_build_report_scores_every_model_on_the_test_labels_in_the_order_given():
    info = SimpleNamespace(path=Path("store.h5"), class_names=("cat", "dog"))
    rows = {"train": np.arange(6), "val": np.arange(6, 8), "test": np.arange(8, 12)}
    labels = {"train": np.array([0, 1] * 3), "val": np.array([0, 1]), "test": np.array([0, 0, 1, 1])}
    all_right = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6]])
    half_right = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4]])
    test_probabilities = {"fusion": all_right, "a": half_right, "b": half_right, "average": half_right}
    report = build_report(info, ("a", "b"), rows, labels, test_probabilities,
                          weighted_average_weights=np.array([0.25, 0.75]), training={"fusion": {"epochs_run": 2}},
                          warnings=["a warning"])
    assert list(report["test"]) == ["fusion", "a", "b", "average"]
    assert report["test"]["fusion"]["accuracy"] == 1.0 and report["test"]["a"]["accuracy"] == 0.5
    assert report["images_per_split"] == {"train": 6, "val": 2, "test": 4}
    assert report["weighted_average_weights"] == {"a": 0.25, "b": 0.75}
    assert report["summary"]["winner"] == "fusion" and report["summary"]["fusion_minus_average"] == 0.5
    assert report["mcnemar"]["fusion_vs_average"]["model_a"] == "fusion"
    assert report["mcnemar"]["fusion_vs_average"]["only_a_correct"] == 2  # fusion right where the average is wrong
    assert (report["store"], report["class_names"], report["warnings"]) == ("store.h5", ["cat", "dog"], ["a warning"])
    assert json.loads(json.dumps(report))["training"] == {"fusion": {"epochs_run": 2}}  # report.json takes it as it is


def test_store_warnings_name_randomly_initialised_and_constant_backbones():
    recipes = {name: FeatureRecipe(backbone=name, input_size=32, pooling="avg", weights=weights)
               for name, weights in (("a", "none"), ("b", "imagenet"), ("c", "none"))}
    info = SimpleNamespace(feature_recipes=recipes)
    varies, constant = (np.zeros(3), np.ones(3)), (np.zeros(3), np.zeros(3))
    warnings = store_warnings(info, ("a", "b", "c"), {"a": varies, "b": constant, "c": constant})
    assert len(warnings) == 2
    assert warnings[0].startswith("The backbones a, c were randomly initialised (precompute --weights none), not "
                                  "ImageNet-trained")
    assert warnings[1].startswith("The features of b, c are the same for every training image, so these backbones "
                                  "carry no information here")
    assert store_warnings(info, ("b",), {"b": varies}) == []
