"""The models of a run ranked, one row each: scores, calibration and cost, as a list of dicts or a pandas DataFrame."""

import math

from fusion.costs import model_costs
from fusion.model_names import model_kind

_CV_METRICS = ("accuracy", "log_loss", "macro_f1")


def rank_models(test_metrics):
    """Model names, best first: higher test accuracy, then lower log loss; models equal in both keep their order.

    Example:
        >>> rank_models({"a": {"accuracy": 0.9, "log_loss": 0.4}, "b": {"accuracy": 0.9, "log_loss": 0.3}})
        ['b', 'a']
    """
    return sorted(test_metrics, key=lambda name: (-test_metrics[name]["accuracy"], test_metrics[name]["log_loss"]))


def report_costs(report):
    """report.json's per-model `cost`; for a report written before costs were recorded, from its training times."""
    recorded = report.get("cost", {}).get("models")
    return recorded or model_costs(list(report["test"]), report["backbones"], report.get("training", {}))


def _value(value):
    return math.nan if value is None else float(value)


def leaderboard_rows(report):
    """One dict per model of a report, best first (see `leaderboard` for the columns).

    Example:
        >>> leaderboard_rows(run.report)[0]["model"] == run.report["summary"]["winner"]
        True
    """
    test, backbones = report["test"], report["backbones"]
    costs = report_costs(report)
    cv = report.get("cv", {})
    with_top5 = any("top5_accuracy" in metrics for metrics in test.values())
    rows = []
    for rank, name in enumerate(rank_models(test), start=1):
        metrics = test[name]
        low, high = metrics.get("accuracy_ci95") or (None, None)
        row = {"model": name, "kind": model_kind(name, backbones), "accuracy": metrics["accuracy"],
               "accuracy_ci95_low": _value(low), "accuracy_ci95_high": _value(high)}
        if with_top5:
            row["top5_accuracy"] = _value(metrics.get("top5_accuracy"))
        row.update({"log_loss": metrics["log_loss"], "macro_f1": metrics["macro_f1"], "ece": _value(metrics.get("ece")),
                    "training_seconds": _value(costs.get(name, {}).get("training_seconds")),
                    "precompute_seconds_per_image": _value(costs.get(name, {}).get("precompute_seconds_per_image"))})
        if cv:
            for metric in _CV_METRICS:
                scores = cv.get(name, {}).get(metric, {})
                row[f"cv_{metric}_mean"] = _value(scores.get("mean"))
                row[f"cv_{metric}_std"] = _value(scores.get("std"))
        row["rank"] = rank
        rows.append(row)
    return rows


def leaderboard(report):
    """Every model of a report as a pandas DataFrame, best first, as AutoGluon's `leaderboard()` lists its models.

    Columns: `model`, `kind` (fusion, baseline, single backbone, ablation), `accuracy` on the test
    split with its 95% bootstrap interval (`accuracy_ci95_low`, `accuracy_ci95_high`),
    `top5_accuracy` (more than 5 classes), `log_loss`, `macro_f1`, `ece` (expected calibration
    error), `training_seconds` (all folds of a fold ensemble; 0 for a baseline, fitted in well
    under a second), `precompute_seconds_per_image` (feature extraction over the model's
    backbones; NaN where the store does not record it), with cross-validation `cv_<metric>_mean`
    and `cv_<metric>_std` for accuracy, log loss and macro F1 (NaN for models without folds), and
    `rank` (1 is the best test accuracy, ties broken by lower log loss). Unknown values are NaN.

    Args:
        report: the contents of a run's report.json (`FusionRun.report`).

    Example:
        >>> leaderboard(load_run("runs/exp1").report)[["model", "accuracy", "ece"]].head(3)
    """
    import pandas  # here, so that loading a run to predict does not import pandas

    rows = leaderboard_rows(report)
    return pandas.DataFrame(rows, columns=list(rows[0]) if rows else ["model", "kind", "accuracy", "rank"])
