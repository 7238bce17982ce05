"""The comparison report of a run: its contents (`build_report`) and its files (`write_report`).

report.json holds every number; report.md and report.html say the same in words, tables and plots
(rendered from one list of blocks, `fusion.report_content`); the plots are `fusion.plots` figures.
"""

import json
from pathlib import Path

import numpy as np

from features.atomic_files import write_text_atomic
from fusion.costs import model_costs
from fusion.evaluation import evaluate_probabilities, mcnemar_test
from fusion.leaderboard import rank_models
from fusion.model_names import HEAD_MODEL_NAMES, is_ablation
from fusion.plots import report_figures, save_figure
from fusion.report_content import report_blocks
from fusion.report_html import render_html
from fusion.report_markdown import render_markdown
from fusion.run_folder import record_written

__all__ = ["HEAD_MODEL_NAMES", "build_report", "store_warnings", "write_report"]

SIGNIFICANCE_LEVEL = 0.05
TIEBREAK = "more test images right, then lower log loss"


def _tied_with_winner(test_metrics, contenders, against_winner):
    """The contenders the test split cannot tell from the winner, and the rule that decided it.

    With per-image predictions: McNemar's exact test of each against the winner, p >= 0.05 a tie
    (it counts the images only one of the two gets right, so it sees the pairing that two
    bootstrap intervals ignore). Without them (a report put together by hand): the same number of
    test images right, the split's resolution of 1/N.
    """
    winner = contenders[0]
    if against_winner is not None:
        tied = [name for name in contenders[1:] if against_winner[name]["p_value"] >= SIGNIFICANCE_LEVEL]
        return tied, (f"McNemar's exact test against the winner on the test images, p >= {SIGNIFICANCE_LEVEL:g}: "
                      f"a tie")
    images = test_metrics[winner].get("num_images")

    def right(name):
        return round(test_metrics[name]["accuracy"] * images) if images else test_metrics[name]["accuracy"]

    return ([name for name in contenders[1:] if right(name) == right(winner)],
            "the same number of test images right (the split's resolution, 1/N)")


def _summarize(test_metrics, backbones, mcnemar, fusion_head="fusion", best_single=None, test_labels=None,
               test_predictions=None):
    """The winner, the models tied with it and its margin over the runner-up; the fusion head's margins and significance."""
    contenders = [name for name in rank_models(test_metrics) if not is_ablation(name)]
    winner = contenders[0]
    singles = [name for name in contenders if name in backbones]
    best_single = best_single or (singles[0] if singles else None)
    runner_up = contenders[1] if len(contenders) > 1 else None
    against_winner = None
    if test_predictions is not None:
        against_winner = {name: mcnemar_test(test_labels, test_predictions[winner], test_predictions[name])
                          for name in contenders[1:]}
    tied, tie_rule = _tied_with_winner(test_metrics, contenders, against_winner)
    summary = {
        "winner": winner,
        "winner_accuracy": test_metrics[winner]["accuracy"],
        "runner_up": runner_up,
        "winner_minus_runner_up": (
            test_metrics[winner]["accuracy"] - test_metrics[runner_up]["accuracy"] if runner_up else None
        ),
        "tied_with": tied,
        "tie_rule": tie_rule,
        "tiebreak": TIEBREAK,
        "fusion_head": fusion_head,
        "best_single_backbone": best_single,
        "fusion_minus_average": test_metrics[fusion_head]["accuracy"] - test_metrics["average"]["accuracy"],
        "fusion_minus_best_single_backbone": (
            test_metrics[fusion_head]["accuracy"] - test_metrics[best_single]["accuracy"] if best_single else None
        ),
        "fusion_vs_average_significant": mcnemar["p_value"] < SIGNIFICANCE_LEVEL,
        "significance_level": SIGNIFICANCE_LEVEL,
    }
    if against_winner is not None:
        summary["mcnemar_against_winner"] = against_winner
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
                 seed=0, heads=("fusion",), cross_validation=None, validation_scores=None, gate_weights=None,
                 precompute_seconds_per_image=None):
    """The report of a run as a dict: every model's test metrics and cost, fusion against the average, the summary.

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
        precompute_seconds_per_image: dict backbone -> feature-extraction seconds per image, as the
            store records them (`StoreInfo.precompute_seconds_per_image`), None where it does not
            (default: None, unknown).

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
    predictions = {name: np.asarray(probabilities).argmax(1) for name, probabilities in test_probabilities.items()}
    summary = _summarize(test_metrics, backbones, mcnemar, fusion_head=fusion_head, best_single=best_single,
                         test_labels=labels["test"], test_predictions=predictions)
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
        "cost": {
            "precompute_seconds_per_image": {backbone: (precompute_seconds_per_image or {}).get(backbone)
                                             for backbone in backbones},
            "models": model_costs(list(test_metrics), backbones, training, precompute_seconds_per_image),
        },
        "warnings": warnings,
    })
    if gate_weights:
        report["gate_weights"] = gate_weights
    return report


def write_report(run_dir, report, histories):
    """Write the plots, report.md, report.html and report.json of a run into `run_dir`; returns report.md's path.

    Args:
        run_dir: the run folder.
        report: the report dict (see `build_report`); its `plots` entry (title -> path) is filled here.
        histories: dict model name -> Keras history dict, for the training curves.

    Example:
        >>> write_report("runs/exp1", report, histories)
    """
    run_dir = Path(run_dir)
    (run_dir / "plots").mkdir(parents=True, exist_ok=True)
    figures = report_figures(report, histories)
    record_written(run_dir, "report.json", "report.md", "report.html", *figures)
    report["plots"] = {}
    images = {}
    for relative, (title, figure) in figures.items():
        save_figure(figure, run_dir / relative)
        images[relative] = (run_dir / relative).read_bytes()
        report["plots"][title] = relative
    blocks = report_blocks(report)
    # report.md and report.html first: report.json is what marks a run finished (see `fusion.saved_run.load_run`).
    markdown_path = write_text_atomic(run_dir / "report.md", render_markdown(blocks))
    write_text_atomic(run_dir / "report.html", render_html(blocks, images))
    write_text_atomic(run_dir / "report.json", json.dumps(report, indent=2) + "\n")
    return markdown_path
