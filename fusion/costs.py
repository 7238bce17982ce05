"""What each model of a run costs: feature-extraction seconds per image over its backbones, and training seconds."""

import math

from fusion.model_names import TTA_SUFFIX, base_model, model_backbones, model_kind


def _measured_training_seconds(name, training):
    """Seconds spent training `name`'s network (all folds of a fold ensemble); None when not recorded."""
    entry = training.get(base_model(name))
    if entry is None:
        return None
    if "same_as" in entry:  # an ablation that is another model, trained once under that name
        return _measured_training_seconds(entry["same_as"], training)
    if "seconds" in entry:
        return float(entry["seconds"])
    if "folds" in entry:
        return float(sum(fold.get("seconds", 0.0) for fold in entry["folds"].values()))
    return None


def model_costs(model_names, backbones, training, precompute_seconds_per_image=None):
    """Per model: its backbones, their summed extraction seconds per image, and its training seconds.

    `training_seconds` is the model's own training (the sum over folds for a fold ensemble; for an
    ablation that is another model, that model's), None when `training` does not record it; a
    baseline whose fit was not timed counts 0 (`training_measured` False): it is fitted on the
    backbone models' probabilities in well under a second. `training_seconds_in_all` adds, for a
    baseline, the training of the single-backbone models it combines: what it takes to have it.
    `precompute_seconds_per_image` is None where the store does not record a backbone's extraction
    time, and for test-time augmentation, which extracts every view.

    Args:
        model_names: the models of the report.
        backbones: the run's backbones.
        training: report.json's `training`: model -> epochs, seconds, ...
        precompute_seconds_per_image: dict backbone -> extraction seconds per image, None where
            unknown (default: None, unknown for all).

    Example:
        >>> model_costs(["fusion", "a", "average"], ["a"], {"fusion": {"seconds": 3.0}, "a": {"seconds": 2.0}},
        ...             {"a": 0.01})["average"]["training_seconds_in_all"]
        2.0
    """
    per_image = {backbone: (precompute_seconds_per_image or {}).get(backbone) for backbone in backbones}
    singles = {backbone: _measured_training_seconds(backbone, training) or 0.0 for backbone in backbones}
    costs = {}
    for name in model_names:
        names = model_backbones(name, backbones)
        extraction = [per_image[backbone] for backbone in names]
        unknown = any(value is None or math.isnan(value) for value in extraction) or name.endswith(TTA_SUFFIX)
        measured = _measured_training_seconds(name, training)
        seconds = in_all = measured
        if model_kind(name, backbones) == "baseline":
            seconds = 0.0 if measured is None else measured
            in_all = seconds + sum(singles[backbone] for backbone in names)
        costs[name] = {
            "backbones": names,
            "precompute_seconds_per_image": None if unknown else float(sum(extraction)),
            "training_seconds": seconds,
            "training_measured": measured is not None,
            "training_seconds_in_all": in_all,
        }
    return costs
