"""fusionpipe stage 2: fusion model, baselines and the comparison report, from a feature store."""

from fusion.baselines import StackingClassifier, WeightedAverage, average_probabilities
from fusion.data import FeatureBatches, open_feature_source
from fusion.evaluation import evaluate_probabilities, mcnemar_test
from fusion.model import build_fusion_model
from fusion.report import write_report
from fusion.run import FusionRun, load_run, train_run
from fusion.store import StoreInfo, read_store_info, select_backbones
from fusion.synthetic import write_synthetic_store
from fusion.training import class_weights, train_model

__all__ = [
    "FeatureBatches",
    "FusionRun",
    "StackingClassifier",
    "StoreInfo",
    "WeightedAverage",
    "average_probabilities",
    "build_fusion_model",
    "class_weights",
    "evaluate_probabilities",
    "load_run",
    "mcnemar_test",
    "open_feature_source",
    "read_store_info",
    "select_backbones",
    "train_model",
    "train_run",
    "write_report",
    "write_synthetic_store",
]
