"""What a run's report says, as a list of blocks (headings, paragraphs, tables, plots) that report.md and report.html render.

Text may hold two inline marks, `**bold**` and `` `code` ``, which both renderers understand.
"""

import dataclasses
import math

import numpy as np

from fusion.leaderboard import leaderboard_rows, report_costs
from fusion.model_names import FUSION_HEAD_NAMES, model_kind
from fusion.plots import CONFUSION_PLOT_MAX_CLASSES, row_normalised

MOST_CONFUSED_PAIRS = 20


@dataclasses.dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclasses.dataclass(frozen=True)
class Paragraph:
    text: str


@dataclasses.dataclass(frozen=True)
class Alert:
    """A warning the reader must see before the verdict."""

    text: str


@dataclasses.dataclass(frozen=True)
class BulletList:
    items: tuple


@dataclasses.dataclass(frozen=True)
class Table:
    header: tuple
    rows: tuple


@dataclasses.dataclass(frozen=True)
class Image:
    """A plot of the run: `path` is relative to the run folder."""

    title: str
    path: str


def _number(value, digits=3):
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _signed(value):
    return "–" if value is None else f"{value:+.3f}"


def _with_interval(value, interval):
    """`0.972 (0.944–0.989)`: a value and its confidence interval; `–` when there is no value."""
    if value is None:
        return "–"
    return f"{value:.3f}" + (f" ({interval[0]:.3f}–{interval[1]:.3f})" if interval else "")


def _seconds(value):
    return "–" if value is None or math.isnan(value) else f"{value:.1f}"


def _per_image(value):
    return "–" if value is None or math.isnan(value) else f"{value:.3g}"


def _points(difference):
    return f"{100 * difference:+.1f} points"


def _join(words):
    words = list(words)
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _test_images(report, model):
    return report["test"][model].get("num_images") or report["images_per_split"]["test"]


def _images_right(report, model):
    return round(report["test"][model]["accuracy"] * _test_images(report, model))


def most_confused_pairs(matrix, class_names, top=MOST_CONFUSED_PAIRS):
    """(true class, predicted class, images, share of the true class's images) of the largest off-diagonal cells, most first."""
    matrix = np.asarray(matrix)
    shares = row_normalised(matrix)
    errors = matrix.copy()
    np.fill_diagonal(errors, 0)
    cells = sorted(zip(*np.nonzero(errors)), key=lambda cell: (-errors[cell], class_names[cell[0]], class_names[cell[1]]))
    return [(class_names[row], class_names[column], int(errors[row, column]), float(shares[row, column]))
            for row, column in cells[:top]]


def _tiebreak_reason(report, winner, other):
    """What lists `winner` before `other`, which the test split cannot tell apart from it."""
    test = report["test"]
    right, other_right = _images_right(report, winner), _images_right(report, other)
    if right != other_right:
        return f"{right} test images right against {other_right} for {other}"
    ours, theirs = test[winner]["log_loss"], test[other]["log_loss"]
    if ours != theirs:
        # As many decimals as it takes to show the difference that decided it (0.0121 against 0.0124).
        digits = next((d for d in range(3, 9) if f"{ours:.{d}f}" != f"{theirs:.{d}f}"), 9)
        return f"the same {right} test images right as {other}, and log loss {ours:.{digits}f} against {theirs:.{digits}f}"
    return f"the same {right} test images right and the same log loss as {other}, so the report's order decides"


def _winner_paragraph(report):
    """The best model on test and its lead, or the models tied with it and the tiebreak that lists it first."""
    test, summary = report["test"], report["summary"]
    winner, runner_up = summary["winner"], summary.get("runner_up")
    lead = f"**{winner}** (accuracy {test[winner]['accuracy']:.3f}"
    if not runner_up:
        return f"Best model on the test split: {lead})."
    images = _test_images(report, winner)
    against = summary.get("mcnemar_against_winner", {})
    level = summary.get("significance_level", 0.05)
    tied = summary.get("tied_with", [])
    if tied:
        others = [f"{name} ({test[name]['accuracy']:.3f}"
                  + (f", p = {against[name]['p_value']:.3g}" if name in against else "") + ")" for name in tied]
        if against:
            evidence = (f"McNemar's exact test against {winner} gives p ≥ {level:g}{' for each' if len(tied) > 1 else ''}"
                        f", so these {images} test images cannot tell them apart")
        else:
            evidence = (f"{'each has' if len(tied) > 1 else 'it has'} the same {_images_right(report, winner)} of the "
                        f"{images} test images right")
        return (f"Tied on the test split: {lead}) with {_join(others)}: {evidence}. Listed first by the tiebreak "
                f"({summary.get('tiebreak', 'more test images right, then lower log loss')}): {winner}, with "
                f"{_tiebreak_reason(report, winner, tied[0])}. Among tied models prefer the cheapest to run and to "
                f"train (see the cost columns).")
    more = _images_right(report, winner) - _images_right(report, runner_up)
    text = (f"Best model on the test split: {lead}), {_signed(summary['winner_minus_runner_up'])} ahead of the "
            f"runner-up, {runner_up} ({test[runner_up]['accuracy']:.3f}): {more} more of the {images} test images "
            f"right")
    if runner_up in against:
        text += f", McNemar p = {against[runner_up]['p_value']:.3g}, significant at the {level:.0%} level"
    return text + "."


def _fusion_paragraphs(report):
    test, summary = report["test"], report["summary"]
    mcnemar = report["mcnemar"]["fusion_vs_average"]
    fusion_head = summary.get("fusion_head", "fusion")
    difference = summary["fusion_minus_average"]
    significant = summary["fusion_vs_average_significant"]
    verdict = "worth it" if difference > 0 and significant else "not shown to be worth it"
    best_single = summary["best_single_backbone"]
    fusion = (
        f"The fusion model{'' if fusion_head == 'fusion' else f' ({fusion_head}, chosen on held-out rows)'} reaches "
        f"{test[fusion_head]['accuracy']:.3f}, {_signed(difference)} against the averaging baseline "
        f"({test['average']['accuracy']:.3f})"
        + (f" and {_signed(summary['fusion_minus_best_single_backbone'])} against the best single backbone, "
           f"{best_single} ({test[best_single]['accuracy']:.3f})." if best_single else ".")
    )
    test_line = (
        f"McNemar's exact test, {fusion_head} against average: only {fusion_head} right on {mcnemar['only_a_correct']} "
        f"test images, only average right on {mcnemar['only_b_correct']}, p = {mcnemar['p_value']:.4g}: the difference "
        + ("is" if significant else "is not")
        + f" significant at the {summary['significance_level']:.0%} level"
        + (" on the test split." if "cv" in report else f". A learned fusion is {verdict} here.")
    )
    return [Paragraph(fusion), Paragraph(test_line)]


def _cross_validation_verdict(report):
    """The lead of a cross-validated report: each fusion head against the average and the best backbone, with tests."""
    setup = report["cross_validation"]
    repeats = f" x {setup['repeats']} repeats" if setup["repeats"] > 1 else ""
    level = report["summary"]["significance_level"]
    items = []
    for entry in report["tests_between_models"].values():
        a, b, test = entry["model_a"], entry["model_b"], entry["cv"]
        low, high = test["ci95"]
        if test["p_value"] < level:
            word = "beats" if test["mean_difference"] > 0 else "falls behind"
        else:
            word = "is not shown to differ from"
        cv = report["cv"]
        items.append(
            f"**{a}** {word} **{b}**: {_points(test['mean_difference'])} of out-of-fold accuracy "
            f"({cv[a]['accuracy']['mean']:.3f} ± {cv[a]['accuracy']['std']:.3f} against "
            f"{cv[b]['accuracy']['mean']:.3f} ± {cv[b]['accuracy']['std']:.3f}; 95% CI {_points(low)} to "
            f"{_points(high)}, corrected resampled t-test p = {test['p_value']:.3g}; McNemar on the out-of-fold "
            f"predictions p = {entry['oof_mcnemar']['p_value']:.3g}). On the test split: "
            f"{_points(entry['test_difference'])}, McNemar p = {entry['test_mcnemar']['p_value']:.3g}."
        )
    return [
        Paragraph(f"Cross-validation: {setup['folds']} stratified folds{repeats} over the {setup['images']} train+val "
                  f"images; the test split scores each model's fold ensemble (the average of its fold models)."),
        BulletList(tuple(items)),
        Paragraph(f"(Decided by the corrected resampled t-test over folds (Nadeau and Bengio, 2003) at the "
                  f"{level:.0%} level; the plain t-test over folds would overstate certainty, since the folds' "
                  f"training sets overlap.)"),
    ]


def _cross_validation_tables(report):
    cv, test, setup = report["cv"], report["test"], report["cross_validation"]
    repeats = f" x {setup['repeats']} repeats" if setup["repeats"] > 1 else ""
    ranked = sorted(cv, key=lambda name: (-cv[name]["accuracy"]["mean"], cv[name]["log_loss"]["mean"]))
    rows = [
        (name, model_kind(name, report["backbones"]),
         f"{cv[name]['accuracy']['mean']:.3f} ± {cv[name]['accuracy']['std']:.3f}",
         f"{cv[name]['log_loss']['mean']:.3f} ± {cv[name]['log_loss']['std']:.3f}",
         f"{cv[name]['macro_f1']['mean']:.3f} ± {cv[name]['macro_f1']['std']:.3f}",
         _with_interval(test[name]["accuracy"], test[name].get("accuracy_ci95")) if name in test else "–")
        for name in ranked
    ]
    return [
        Heading(f"Cross-validation ({setup['folds']} folds{repeats}, out-of-fold scores, mean ± standard deviation "
                f"over folds)"),
        Table(("model", "kind", "accuracy", "log loss", "macro F1", "test accuracy of the fold ensemble"), tuple(rows)),
        Paragraph("The weighted average and stacking are scored per fold by a combiner fitted on the other folds' "
                  "out-of-fold predictions, so no score uses labels its model saw."),
    ]


def _models_table(report):
    test = report["test"]
    has_top5 = any("top5_accuracy" in metrics for metrics in test.values())
    header = ("model", "kind", "accuracy (95% CI)", *(("top-5 (95% CI)",) if has_top5 else ()), "log loss",
              "macro F1", "ECE", "training s", "extraction s/image")
    rows = []
    for row in leaderboard_rows(report):
        metrics = test[row["model"]]
        rows.append((
            row["model"], row["kind"], _with_interval(metrics["accuracy"], metrics.get("accuracy_ci95")),
            *((_with_interval(metrics.get("top5_accuracy"), metrics.get("top5_accuracy_ci95")),) if has_top5 else ()),
            f"{metrics['log_loss']:.3f}", f"{metrics['macro_f1']:.3f}", _number(metrics.get("ece")),
            _seconds(row["training_seconds"]), _per_image(row["precompute_seconds_per_image"]),
        ))
    costs = report_costs(report)
    untimed = [name for name in test if model_kind(name, report["backbones"]) == "baseline"
               and not costs.get(name, {}).get("training_measured", True)]
    notes = ["ECE: expected calibration error over 15 equal-width confidence bins (Guo et al., 2017), 0 when a "
             "model is exactly as often right as it is confident. training s: the model's own training, all folds of "
             "a fold ensemble" + (f"; {_join(untimed)} {'is' if len(untimed) == 1 else 'are'} fitted on the "
                                  f"single-backbone models' probabilities in well under a second, counted 0, after "
                                  f"those models are trained" if untimed else "")
             + ". extraction s/image: feature extraction per image over the model's backbones, as precompute "
               "measured it"]
    if any(cost.get("precompute_seconds_per_image") is None for cost in costs.values()):
        notes.append("– where the store does not record it, or with test-time augmentation (one extraction per view)")
    return [Heading("All models (test split)"), Table(header, tuple(rows)), Paragraph("; ".join(notes) + ".")]


def _ablation_blocks(report):
    test = report["test"]
    per_image = report.get("cost", {}).get("precompute_seconds_per_image", {})
    blocks = []
    for head in report.get("fusion_heads", ["fusion"]):
        ablations = [name for name in test if name.startswith(f"{head}_without_")]
        if not ablations:
            continue
        title = "What each backbone adds (drop-one ablation)" + ("" if head == "fusion" else f", {head}")
        rows = []
        for name in sorted(ablations, key=lambda n: test[n]["accuracy"]):
            dropped = name.removeprefix(f"{head}_without_")
            rows.append((dropped, f"{test[name]['accuracy']:.3f}", f"{test[head]['accuracy'] - test[name]['accuracy']:+.3f}",
                         _per_image(per_image.get(dropped))))
        blocks += [Heading(title),
                   Table(("without", "accuracy", f"{head} minus this", "extraction s/image it saves"), tuple(rows))]
    if any(name.split("_without_")[0] in FUSION_HEAD_NAMES for name in test if "_without_" in name):
        reused = {name: entry["same_as"] for name, entry in report.get("training", {}).items() if "same_as" in entry}
        if reused:
            blocks.append(Paragraph(
                "With two backbones and no head units, fusion without one backbone is the other backbone's own model: "
                + ", ".join(f"{name} is {same_as}" for name, same_as in sorted(reused.items()))
                + ", reused rather than trained again."))
    return blocks


def _gate_weight_blocks(model_name, per_class, backbones):
    rows = tuple((class_name, *(f"{weights[name]:.2f}" for name in backbones))
                 for class_name, weights in per_class.items())
    return [Heading(f"Which backbone {model_name} relied on"),
            Paragraph("Mean gate weight per backbone for the held-out images of each true class (rows sum to 1):"),
            Table(("class", *backbones), rows)]


def _calibration_blocks(report):
    test = report["test"]
    scored = sorted((name for name in test if test[name].get("ece") is not None), key=lambda name: test[name]["ece"])
    if not scored:
        return []
    best, worst = scored[0], scored[-1]
    return [Heading("Calibration"), Paragraph(
        f"How far each model's confidence is from how often it is right (ECE in the table above): best calibrated "
        f"{best} ({test[best]['ece']:.3f}), least {worst} ({test[worst]['ece']:.3f}). The reliability diagram shows "
        f"where: a bar below the diagonal is a confidence range in which the model is overconfident. Where the "
        f"probabilities drive a decision (a threshold, a ranking), prefer a well calibrated model among those tied.")]


def _cost_blocks(report):
    test, backbones, summary = report["test"], report["backbones"], report["summary"]
    per_image = report.get("cost", {}).get("precompute_seconds_per_image", {})
    costs = report_costs(report)
    head = summary.get("fusion_head", "fusion")
    rows = []
    for backbone in backbones:
        ablation = f"{head}_without_{backbone}"
        rows.append((backbone, _per_image(per_image.get(backbone)),
                     _seconds(costs.get(backbone, {}).get("training_seconds")),
                     f"{test[backbone]['accuracy']:.3f}" if backbone in test else "–",
                     f"{test[head]['accuracy'] - test[ablation]['accuracy']:+.3f}" if ablation in test else "–"))
    resolution = 1 / _test_images(report, summary["winner"])
    return [Heading("Cost per backbone"),
            Table(("backbone", "extraction s/image", "training s of its own model", "its own model's test accuracy",
                   f"{head} minus {head} without it"), tuple(rows)),
            Paragraph(f"A backbone pays for itself when dropping it costs {head} accuracy: a difference under one test "
                      f"image ({resolution:.3f}) is no evidence that it does, and its extraction time is spent on "
                      f"every image the model classifies. The accuracy-versus-cost plot draws each backbone's step.")]


def _per_class_blocks(report, model):
    test = report["test"][model]
    rows = tuple((name, f"{scores['precision']:.3f}", f"{scores['recall']:.3f}", _number(scores.get("f1")),
                  str(scores["support"]))
                 for name, scores in sorted(test["per_class"].items(), key=lambda item: (item[1]["recall"], item[0])))
    blocks = [Heading(f"Per class, {model} (worst recall first)"),
              Table(("class", "precision", "recall", "F1", "test images"), rows)]
    missing = test.get("classes_without_test_images", [])
    if missing:
        blocks.append(Paragraph(f"No test image, so not scored: {', '.join(missing)}."))
    return blocks


def _confused_pairs_blocks(report, model):
    class_names = report["class_names"]
    pairs = most_confused_pairs(report["test"][model]["confusion_matrix"], class_names)
    blocks = [Heading(f"Most confused pairs, {model}"), Paragraph(
        f"{len(class_names)} classes are too many for a readable confusion matrix plot: here are its largest "
        f"off-diagonal cells, at most {MOST_CONFUSED_PAIRS}. The full matrix is in report.json.")]
    if pairs:
        blocks.append(Table(("true class", "predicted as", "test images", "share of the true class's test images"),
                            tuple((true, predicted, str(count), f"{share:.1%}") for true, predicted, count, share in pairs)))
    else:
        blocks.append(Paragraph("No test image was misclassified."))
    return blocks


def report_blocks(report):
    """The report's content, in order: what was trained, the verdict, the tables, per-class scores, the plots.

    Args:
        report: a run's report (see `fusion.report.build_report`) with its `plots` (title -> path).

    Example:
        >>> render_markdown(report_blocks(report))
    """
    backbones, summary = report["backbones"], report["summary"]
    blocks = [
        Heading("Fusion report", level=1),
        Paragraph(f"Store `{report['store']}`: {len(backbones)} backbone{'' if len(backbones) == 1 else 's'} "
                  f"({', '.join(backbones)}), {len(report['class_names'])} classes, images per split: "
                  + ", ".join(f"{split} {count}" for split, count in report["images_per_split"].items()) + "."),
        *[Alert(warning) for warning in report.get("warnings", [])],
        Heading("Verdict"),
    ]
    if "cv" in report:
        blocks += _cross_validation_verdict(report)
    blocks.append(Paragraph(_winner_paragraph(report)))
    blocks += _fusion_paragraphs(report)
    if "cv" in report:
        blocks += _cross_validation_tables(report)
    blocks += _models_table(report)
    blocks += _ablation_blocks(report)
    weights = report.get("weighted_average_weights")
    if weights:
        fitted_on = "the out-of-fold predictions of every train+val image" if "cv" in report else "the validation split"
        blocks.append(Paragraph(f"Weights of the weighted average (fitted on {fitted_on}): "
                                + ", ".join(f"{name} {weight:.2f}" for name, weight in weights.items()) + "."))
    for model_name, per_class in report.get("gate_weights", {}).items():
        blocks += _gate_weight_blocks(model_name, per_class, backbones)
    blocks += _calibration_blocks(report)
    blocks += _cost_blocks(report)
    winner, fusion_head = summary["winner"], summary.get("fusion_head", "fusion")
    # The winner, and the fusion head the run exports when another model wins.
    described = [winner] + ([fusion_head] if fusion_head != winner and fusion_head in report["test"] else [])
    for model in described:
        blocks += _per_class_blocks(report, model)
    if len(report["class_names"]) > CONFUSION_PLOT_MAX_CLASSES:
        for model in described:
            blocks += _confused_pairs_blocks(report, model)
    blocks.append(Heading("Plots"))
    blocks += [Image(title, relative) for title, relative in report.get("plots", {}).items()]
    blocks.append(Paragraph(
        "Files: `report.html` (this report with its plots inside), `report.json` (every number), `models/*.keras` "
        "(every Keras model), `predictions/*.csv` (test predictions per model), `history/*.csv` (training curves), "
        "`config.json` (options and versions)."))
    return blocks

