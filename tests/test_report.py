"""report.md reads alone: the winner and by how much, significance, every model, the plots."""

import json

import numpy as np

from fusion.report import rank_models, render_markdown, summarize, write_report


def _metrics(accuracy, log_loss):
    return {"accuracy": accuracy, "log_loss": log_loss, "macro_f1": accuracy, "num_images": 100,
            "per_class": {"cat": {"precision": 0.9, "recall": 0.8, "support": 50},
                          "dog": {"precision": 0.8, "recall": 0.9, "support": 50}},
            "confusion_matrix": [[40, 10], [5, 45]]}


def _report(fusion_accuracy, p_value):
    test = {"fusion": _metrics(fusion_accuracy, 0.3), "average": _metrics(0.80, 0.4), "weighted_average": _metrics(0.81, 0.4),
            "stacking": _metrics(0.82, 0.39), "a": _metrics(0.75, 0.5), "b": _metrics(0.70, 0.6),
            "fusion_without_a": _metrics(0.72, 0.55), "fusion_without_b": _metrics(0.80, 0.45)}
    mcnemar = {"only_a_correct": 12, "only_b_correct": 2, "p_value": p_value}
    return {"store": "cache.h5", "backbones": ["a", "b"], "class_names": ["cat", "dog"],
            "images_per_split": {"train": 600, "val": 200, "test": 100}, "test": test,
            "mcnemar": {"fusion_vs_average": mcnemar}, "summary": summarize(test, ["a", "b"], mcnemar),
            "weighted_average_weights": {"a": 0.6, "b": 0.4}, "training": {}}


def test_summary_names_winner_margins_and_significance():
    summary = _report(0.90, 0.01)["summary"]
    assert summary["winner"] == "fusion" and summary["best_single_backbone"] == "a"
    assert summary["runner_up"] == "stacking" and np.isclose(summary["winner_minus_runner_up"], 0.08)
    assert np.isclose(summary["fusion_minus_average"], 0.10) and np.isclose(summary["fusion_minus_best_single_backbone"], 0.15)
    assert summary["fusion_vs_average_significant"] is True
    # Ablations never win: they are diagnostics of the fusion model.
    assert rank_models({"x": _metrics(0.5, 1), "y": _metrics(0.5, 0.9)}) == ["y", "x"]


def test_markdown_says_who_wins_by_how_much_and_whether_it_is_significant(tmp_path):
    histories = {name: {"loss": [1.0, 0.5], "val_loss": [1.1, 0.6], "val_accuracy": [0.5, 0.8]} for name in ("fusion", "a", "b")}
    report = _report(0.90, 0.01)
    markdown = write_report(tmp_path, report, histories).read_text()
    assert "Best model on the test split: **fusion** (accuracy 0.900), +0.080 ahead of the runner-up, stacking (0.820)." in markdown
    assert "+0.100 against the averaging baseline (0.800)" in markdown
    assert "+0.150 against the best single backbone, a (0.750)" in markdown
    assert "p = 0.01: the difference is significant at the 5% level" in markdown
    for name in report["test"]:
        assert f"| {name} |" in markdown
    assert "| a | 0.720 | +0.180 |" in markdown  # fusion without a loses 0.18
    for relative in report["plots"].values():
        assert (tmp_path / relative).stat().st_size > 1000 and f"]({relative})" in markdown
    assert json.loads((tmp_path / "report.json").read_text())["summary"]["winner"] == "fusion"


def test_markdown_when_fusion_does_not_pay():
    report = _report(0.79, 0.6)
    markdown = render_markdown({**report, "plots": {}})
    assert "Best model on the test split: **stacking** (accuracy 0.820), +0.010 ahead of the runner-up, weighted_average (0.810)." in markdown
    assert "-0.010 against the averaging baseline" in markdown
    assert "is not significant at the 5% level. A learned fusion is not shown to be worth it here." in markdown
