"""report.md and report.html read alone: the winner or the tie, significance, every model with its calibration and
cost, per-class scores, the plots, at 2 and at 60 classes; report.json and the leaderboard hold the numbers."""

import base64
import json
import math
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from _report_fixtures import CLASS_NAMES, CONFIDENCE, WRONG, built_report
from _report_fixtures import HISTORIES as RUN_HISTORIES
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from features.recipe import FeatureRecipe
from fusion.costs import model_costs
from fusion.evaluation import evaluate_probabilities, mcnemar_test
from fusion.leaderboard import rank_models as _rank_models
from fusion.plots import _confusion_figure, plot_model_comparison
from fusion.plots import row_normalised as _row_normalised
from fusion.report import _summarize, build_report, store_warnings, write_report
from fusion.report_content import most_confused_pairs as _most_confused_pairs
from fusion.report_content import report_blocks
from fusion.report_markdown import render_markdown
from fusion.saved_run import FusionRun


def _render_markdown(report):
    return render_markdown(report_blocks(report))


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
    FigureCanvasAgg(figure)  # a figure closed from pyplot draws on Agg when asked
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
    assert ("Best model on the test split: **fusion** (accuracy 0.900), +0.080 ahead of the runner-up, stacking "
            "(0.820): 8 more of the 100 test images right.") in markdown
    assert "+0.100 against the averaging baseline (0.800)" in markdown
    assert "+0.150 against the best single backbone, a (0.750)" in markdown
    assert "p = 0.01: the difference is significant at the 5% level" in markdown
    for name in report["test"]:
        assert f"| {name} |" in markdown
    assert "| a | 0.720 | +0.180 |" in markdown  # fusion without a loses 0.18
    # No reliability diagram: these hand-made metrics have no reliability bins.
    assert list(report["plots"]) == ["model comparison", "confusion matrix of fusion", "training curves",
                                     "accuracy versus cost"]
    for relative in report["plots"].values():
        assert (tmp_path / relative).stat().st_size > 1000 and f"]({relative})" in markdown
    assert json.loads((tmp_path / "report.json").read_text())["summary"]["winner"] == "fusion"


def test_markdown_at_two_classes_shows_intervals_and_the_worst_recall_first():
    lines = _render_markdown({**_report(0.90, 0.01), "plots": {}}).splitlines()
    # No model has top-5 at 2 classes; nor, in these hand-made metrics, ECE, training or extraction times.
    assert "| model | kind | accuracy (95% CI) | log loss | macro F1 | ECE | training s | extraction s/image |" in lines
    assert "| fusion | fusion | 0.900 (0.840–0.950) | 0.300 | 0.900 | – | – | – |" in lines
    assert "| stacking | baseline | 0.820 (0.760–0.870) | 0.390 | 0.820 | – | 0.0 | – |" in lines
    table = lines.index("| class | precision | recall | F1 | test images |")
    assert lines[table - 2] == "## Per class, fusion (worst recall first)"
    assert lines[table + 2:table + 5] == ["| dog | 0.889 | 0.800 | 0.842 | 50 |", "| cat | 0.818 | 0.900 | 0.857 | 50 |", ""]
    assert not any(line.startswith("No test image") or "Most confused" in line for line in lines)


def test_markdown_when_fusion_does_not_pay():
    report = _report(0.79, 0.6)
    markdown = _render_markdown({**report, "plots": {}})
    # Without per-image predictions the tie rule is the split's resolution: 82 images right against 81 is a lead.
    assert ("Best model on the test split: **stacking** (accuracy 0.820), +0.010 ahead of the runner-up, "
            "weighted_average (0.810): 1 more of the 100 test images right.") in markdown
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
    assert list(report["plots"]) == ["model comparison", "training curves", "reliability diagram",
                                     "accuracy versus cost"]
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
    assert ("| model | kind | accuracy (95% CI) | top-5 (95% CI) | log loss | macro F1 | ECE | training s | "
            "extraction s/image |") in lines
    low, high = test["fusion"]["accuracy_ci95"]
    assert f"| fusion | fusion | 0.978 ({low:.3f}–{high:.3f}) |" in "\n".join(lines) and low < 0.978 < high
    assert _title_fits(plot_model_comparison(report))


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
        write_report(tmp_path, _report(0.85, 0.5), HISTORIES)
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


def test_a_lead_the_test_split_cannot_resolve_is_called_a_tie_with_the_tiebreak_named():
    report = built_report()
    summary = report["summary"]
    # fusion errs on 10 test images, stacking on those and 2 more: McNemar p = 0.5; weighted_average 4 more: 0.125;
    # average 6 more: p = 2 * 0.5**6 = 0.031, a real lead.
    assert summary["winner"] == "fusion" and summary["tied_with"] == ["stacking", "weighted_average"]
    against = summary["mcnemar_against_winner"]
    assert against["stacking"]["p_value"] == pytest.approx(0.5) and against["average"]["p_value"] == pytest.approx(2 / 64)
    assert summary["tiebreak"] == "more test images right, then lower log loss"
    assert summary["tie_rule"].startswith("McNemar's exact test against the winner")
    markdown = _render_markdown({**report, "plots": {}})
    assert ("Tied on the test split: **fusion** (accuracy 0.950) with stacking (0.940, p = 0.5) and weighted_average "
            "(0.930, p = 0.125): McNemar's exact test against fusion gives p ≥ 0.05 for each, so these 200 test images "
            "cannot tell them apart. Listed first by the tiebreak (more test images right, then lower log loss): "
            "fusion, with 190 test images right against 188 for stacking.") in markdown
    assert "ahead of the runner-up" not in markdown


def test_a_tie_in_test_images_goes_to_the_lower_log_loss_and_a_real_lead_says_how_sure_it_is():
    tied = built_report(wrong={"stacking": 10})  # the same 10 images wrong as fusion, but surer of the rest
    test, summary = tied["test"], tied["summary"]
    assert test["stacking"]["log_loss"] < test["fusion"]["log_loss"]
    assert summary["winner"] == "stacking" and summary["tied_with"] == ["fusion", "weighted_average"]
    assert (f"Listed first by the tiebreak (more test images right, then lower log loss): stacking, with the same 190 "
            f"test images right as fusion, and log loss {test['stacking']['log_loss']:.3f} against "
            f"{test['fusion']['log_loss']:.3f}.") in _render_markdown({**tied, "plots": {}})
    clear = built_report(wrong={"fusion": 0})
    assert clear["summary"]["tied_with"] == []
    assert ("Best model on the test split: **fusion** (accuracy 1.000), +0.060 ahead of the runner-up, stacking "
            "(0.940): 12 more of the 200 test images right, McNemar p = 0.000488, significant at the 5% level."
            ) in _render_markdown({**clear, "plots": {}})
    # A report put together without predictions: a tie is the same number of test images right.
    by_hand = _report(0.82, 0.5)
    assert by_hand["summary"]["tied_with"] == ["stacking"] and "1/N" in by_hand["summary"]["tie_rule"]
    assert ("with stacking (0.820): it has the same 82 of the 100 test images right. Listed first by the tiebreak "
            "(more test images right, then lower log loss): fusion, with the same 82 test images right as stacking, "
            "and log loss 0.300 against 0.390.") in _render_markdown({**by_hand, "plots": {}})
    # Log losses equal to three decimals get the decimals that show the difference which decided it.
    by_hand["test"]["stacking"]["log_loss"] = 0.3004
    assert "and log loss 0.3000 against 0.3004." in _render_markdown({**by_hand, "plots": {}})


def test_when_another_model_wins_the_report_shows_per_class_scores_and_confusion_of_both():
    from fusion.plots import report_figures

    report = built_report(wrong={"stacking": 10})
    assert (report["summary"]["winner"], report["summary"]["fusion_head"]) == ("stacking", "fusion")
    lines = _render_markdown({**report, "plots": {}}).splitlines()
    # The same 10 images wrong: 4 cats taken for dogs, 3 dogs for <b>&, 3 <b>& for cats.
    rows = ["| cat | 0.955 | 0.940 | 0.947 | 67 |", "| <b>& | 0.955 | 0.955 | 0.955 | 66 |",
            "| dog | 0.941 | 0.955 | 0.948 | 67 |"]
    for model in ("stacking", "fusion"):
        heading = lines.index(f"## Per class, {model} (worst recall first)")
        assert lines[heading + 2] == "| class | precision | recall | F1 | test images |"
        assert lines[heading + 4:heading + 7] == rows
    assert lines.index("## Per class, stacking (worst recall first)") < lines.index("## Per class, fusion (worst recall first)")
    figures = report_figures(report, RUN_HISTORIES)
    assert figures["plots/confusion_matrix.png"][0] == "confusion matrix of stacking"
    title, figure = figures["plots/confusion_matrix_fusion.png"]
    assert title == "confusion matrix of fusion" and figure.axes[0].get_title() == "Confusion matrix of fusion"


def test_calibration_error_of_every_model_is_in_report_json_and_the_tables():
    report = built_report()
    for name, wrong in WRONG.items():  # one confidence per model: ECE = |accuracy - confidence|
        assert report["test"][name]["ece"] == pytest.approx(abs(1 - wrong / 200 - CONFIDENCE[name]))
    on_disk = json.loads(json.dumps(report))  # as report.json holds it
    assert on_disk["test"]["fusion"]["reliability"]["counts"][13] == 200
    assert on_disk["test"]["average"]["ece"] == pytest.approx(0.22)
    lines = _render_markdown({**report, "plots": {}}).splitlines()
    fusion_row = next(line for line in lines if line.startswith("| fusion | fusion |"))
    assert fusion_row.split(" | ")[-3:] == ["0.050", "30.0", "0.07 |"]
    assert any("best calibrated stacking (0.000), least average (0.220)" in line for line in lines)


def test_cost_columns_sum_each_models_backbones_and_say_what_is_unknown():
    report = built_report(precompute={"a": 0.02, "b": None})
    costs = report["cost"]["models"]
    assert report["cost"]["precompute_seconds_per_image"] == {"a": 0.02, "b": None}
    assert costs["a"]["precompute_seconds_per_image"] == 0.02 and costs["fusion_without_b"]["precompute_seconds_per_image"] == 0.02
    assert costs["fusion"]["precompute_seconds_per_image"] is None and costs["b"]["precompute_seconds_per_image"] is None
    assert (costs["stacking"]["training_seconds"], costs["stacking"]["training_measured"]) == (0.0, False)
    assert costs["stacking"]["training_seconds_in_all"] == 30.0  # the backbone models it combines: 10 s + 20 s
    lines = _render_markdown({**report, "plots": {}}).splitlines()
    assert next(line for line in lines if line.startswith("| a | single backbone |")).endswith("| 10.0 | 0.02 |")
    assert next(line for line in lines if line.startswith("| fusion | fusion |")).endswith("| 30.0 | – |")
    assert next(line for line in lines if line.startswith("| stacking | baseline |")).endswith("| 0.0 | – |")
    notes = next(line for line in lines if line.startswith("ECE: expected calibration error"))
    assert ("average, weighted_average and stacking are fitted on the single-backbone models' probabilities in well "
            "under a second, counted 0") in notes and "– where the store does not record it" in notes
    table = lines.index("| backbone | extraction s/image | training s of its own model | its own model's test accuracy "
                        "| fusion minus fusion without it |")
    assert lines[table + 2:table + 4] == ["| a | 0.02 | 10.0 | 0.900 | +0.060 |", "| b | – | 20.0 | 0.880 | +0.040 |"]
    assert "| a | 0.890 | +0.060 | 0.02 |" in lines  # the ablation table: what dropping a saves per image


def test_training_seconds_sum_the_folds_and_follow_a_reused_model():
    training = {"fusion": {"folds": {"repeat1_fold1": {"seconds": 2.0}, "repeat1_fold2": {"seconds": 3.5}}},
                "a": {"folds": {}, "seconds": 7.0}, "fusion_without_b": {"same_as": "a", "seconds": 0.0}}
    costs = model_costs(["fusion", "a", "fusion_without_b", "fusion+tta", "average"], ["a"], training, {"a": 0.5})
    assert costs["fusion"]["training_seconds"] == 5.5 and costs["a"]["training_seconds"] == 7.0
    assert costs["fusion_without_b"]["training_seconds"] == 7.0  # it is a's model
    # Test-time augmentation extracts every view: its cost per image is not the store's.
    assert costs["fusion+tta"]["training_seconds"] == 5.5 and costs["fusion+tta"]["precompute_seconds_per_image"] is None
    assert costs["average"]["training_seconds_in_all"] == 7.0


class _PageParser(HTMLParser):
    """The headings, first table cells, image sources and links of an HTML page."""

    def __init__(self):
        super().__init__()
        self.headings, self.first_cells, self.images, self.links = [], [], [], []
        self._in, self._cell_index = None, 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "tr":
            self._cell_index = 0
        if tag in ("h1", "h2", "td"):
            self._in = (tag, self._cell_index)
            self._text = ""
        if tag == "td":
            self._cell_index += 1
        if tag == "img":
            self.images.append(attrs["src"])
        self.links += [value for key, value in attrs.items() if key in ("href",) or (key == "src" and tag != "img")]

    def handle_data(self, data):
        if self._in:
            self._text += data

    def handle_endtag(self, tag):
        if self._in and tag == self._in[0]:
            if tag == "td" and self._in[1] == 0:
                self.first_cells.append(self._text)
            elif tag in ("h1", "h2"):
                self.headings.append(self._text)
            self._in = None


def test_report_html_is_self_contained_with_every_model_every_plot_and_escaped_text(tmp_path, monkeypatch):
    import fusion.report

    written = []
    original = fusion.report.write_text_atomic
    monkeypatch.setattr(fusion.report, "write_text_atomic",
                        lambda path, text: written.append(Path(path).name) or original(path, text))
    report = built_report()
    markdown = write_report(tmp_path, report, RUN_HISTORIES).read_text()
    # report.json last: it is what marks the run finished.
    assert written == ["report.md", "report.html", "report.json"]
    assert report["plots"]["reliability diagram"] == "plots/reliability.png"
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    parser = _PageParser()
    parser.feed(page)
    parser.close()
    # The same sections as report.md.
    assert parser.headings == [line.lstrip("# ") for line in markdown.splitlines() if line.startswith("#")]
    assert set(WRONG) <= set(parser.first_cells)
    # Every plot inside the page as a PNG data URI; nothing fetched from elsewhere.
    assert len(parser.images) == len(report["plots"]) == 5
    for source in parser.images:
        assert source.startswith("data:image/png;base64,")
        assert base64.b64decode(source.removeprefix("data:image/png;base64,"))[:8] == b"\x89PNG\r\n\x1a\n"
    assert parser.links == [] and "http://" not in page and "https://" not in page
    assert "<link" not in page and "<script" not in page and "<style>" in page
    # A class named `<b>&` is text, not markup.
    assert CLASS_NAMES[2] == "<b>&" and "<td>&lt;b&gt;&amp;</td>" in page and "<b>&" not in page
    assert "report.html" in json.loads((tmp_path / "written_files.json").read_text())["files"]


def test_leaderboard_is_a_dataframe_with_one_row_per_model_best_first(tmp_path):
    report = built_report()
    run = FusionRun(run_dir=tmp_path, models={}, class_names=CLASS_NAMES, backbones=("a", "b"), report=report, config={})
    board = run.leaderboard()
    assert list(board.columns) == ["model", "kind", "accuracy", "accuracy_ci95_low", "accuracy_ci95_high", "log_loss",
                                   "macro_f1", "ece", "training_seconds", "precompute_seconds_per_image", "rank"]
    assert list(board["model"]) == sorted(WRONG, key=WRONG.get) and list(board["rank"]) == list(range(1, 9))
    fusion = board.iloc[0]
    assert (fusion["kind"], fusion["accuracy"], fusion["training_seconds"]) == ("fusion", 0.95, 30.0)
    assert fusion["ece"] == pytest.approx(0.05) and fusion["precompute_seconds_per_image"] == pytest.approx(0.07)
    assert (board["accuracy_ci95_low"] < board["accuracy"]).all() and (board["accuracy"] < board["accuracy_ci95_high"]).all()
    assert board.set_index("model").loc["stacking", "training_seconds"] == 0.0
    # Cross-validated: the mean and standard deviation over folds beside the test scores; NaN where a model has none.
    scores = {metric: {"mean": 0.9, "std": 0.02, "folds": [0.88, 0.92]} for metric in ("accuracy", "log_loss", "macro_f1")}
    folded = FusionRun(tmp_path, {}, CLASS_NAMES, ("a", "b"), {**report, "cv": {"fusion": scores}}, {}).leaderboard()
    assert list(folded.columns)[-7:] == ["cv_accuracy_mean", "cv_accuracy_std", "cv_log_loss_mean", "cv_log_loss_std",
                                         "cv_macro_f1_mean", "cv_macro_f1_std", "rank"]
    assert folded.iloc[0]["cv_accuracy_std"] == 0.02 and math.isnan(folded.iloc[1]["cv_accuracy_mean"])
    # A report written before calibration and costs were recorded still makes a leaderboard.
    old = FusionRun(tmp_path, {}, ("cat", "dog"), ("a", "b"), _report(0.9, 0.01), {}).leaderboard()
    assert old["ece"].isna().all() and old["precompute_seconds_per_image"].isna().all() and len(old) == 8


def test_a_saved_run_reads_its_histories_and_gives_the_reports_figures(tmp_path):
    (tmp_path / "history" / "a").mkdir(parents=True)
    (tmp_path / "history" / "fusion.csv").write_text(
        "epoch,accuracy,learning_rate,loss,val_accuracy,val_loss\n0,0.6,0.001,1.0,0.5,1.1\n1,0.8,NA,0.6,0.75,0.7\n")
    for fold, loss in (("repeat1_fold2", 9.0), ("repeat1_fold1", 2.0)):
        (tmp_path / "history" / "a" / f"{fold}.csv").write_text(f"epoch,loss,val_loss\n0,{loss},{loss}\n")
    report = built_report()
    run = FusionRun(tmp_path, {}, CLASS_NAMES, ("a", "b"), report, {})
    histories = run.histories()
    assert list(histories) == ["fusion", "a"]  # the report's order; models without a history left out
    assert histories["fusion"]["val_loss"] == [1.1, 0.7] and math.isnan(histories["fusion"]["learning_rate"][1])
    assert histories["a"] == {"loss": [2.0], "val_loss": [2.0]}  # with folds, the first fold's
    figures = run.figures()
    assert list(figures) == ["model comparison", "confusion matrix of fusion", "training curves", "reliability diagram",
                             "accuracy versus cost"]
    assert all(isinstance(figure, Figure) for figure in figures.values())
