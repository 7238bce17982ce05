"""What a model's name in a run says: its kind (fusion head, baseline, single backbone, ablation) and its backbones."""

# Each fusion head's name in the report; `fusion` is the concatenation head, as before there were others.
HEAD_MODEL_NAMES = {"concat": "fusion", "gated": "gated_fusion", "attention": "attention_fusion"}
FUSION_HEAD_NAMES = tuple(HEAD_MODEL_NAMES.values())
# The kinds of model a run compares, in the order the report's legends list them.
MODEL_KINDS = ("fusion", "baseline", "single backbone", "ablation")
TTA_SUFFIX = "+tta"


def base_model(name):
    """The trained model behind a name: `fusion+tta` is `fusion` averaged over views."""
    return name.split("+")[0]


def is_ablation(name):
    """Whether `name` is a drop-one ablation, `<head>_without_<backbone>`."""
    return "_without_" in name and name.split("_without_")[0] in FUSION_HEAD_NAMES


def model_kind(name, backbones):
    """`fusion`, `baseline`, `single backbone` or `ablation`.

    Args:
        name: the model's name in the report.
        backbones: the run's backbones, which tell single-backbone models from baselines.

    Example:
        >>> model_kind("fusion_without_resnet50", ["resnet50", "densenet121"])
        'ablation'
    """
    if is_ablation(name):
        return "ablation"
    if base_model(name) in FUSION_HEAD_NAMES:
        return "fusion"
    if base_model(name) in backbones:
        return "single backbone"
    return "baseline"


def model_backbones(name, backbones):
    """The backbones whose features a model needs: all for fusion heads and baselines, all but one for an ablation.

    Args:
        name: the model's name in the report.
        backbones: the run's backbones.

    Example:
        >>> model_backbones("fusion_without_b", ["a", "b", "c"])
        ['a', 'c']
    """
    base = base_model(name)
    if is_ablation(base):
        dropped = base.split("_without_", 1)[1]
        return [backbone for backbone in backbones if backbone != dropped]
    if base in backbones:
        return [base]
    return list(backbones)
