"""fusionpipe stages 2 and 3: fusion model, baselines and the report; the exported model and prediction."""

from fusion.baselines import StackingClassifier, WeightedAverage, average_probabilities
from fusion.data import FeatureBatches, open_feature_source
from fusion.evaluation import bootstrap_accuracy_interval, evaluate_probabilities, mcnemar_test
from fusion.classifier import FusionClassifier
from fusion.export import build_pixel_model, class_names_of, export_model
from fusion.image_inputs import gather_image_paths
from fusion.model import build_fusion_model
from fusion.predict import Predictions, load_classifier, predict_images, write_predictions_csv
from fusion.report import write_report
from fusion.run import train_run
from fusion.saved_run import FusionRun, load_run
from fusion.statistics import feature_statistics
from fusion.store import StoreInfo, read_store_info, select_backbones
from fusion.synthetic import write_synthetic_store
from fusion.training import class_weights, train_model

__all__ = [
    "FeatureBatches",
    "FusionClassifier",
    "FusionRun",
    "Predictions",
    "StackingClassifier",
    "StoreInfo",
    "WeightedAverage",
    "average_probabilities",
    "bootstrap_accuracy_interval",
    "build_fusion_model",
    "build_pixel_model",
    "class_names_of",
    "class_weights",
    "evaluate_probabilities",
    "export_model",
    "feature_statistics",
    "gather_image_paths",
    "load_classifier",
    "load_run",
    "mcnemar_test",
    "open_feature_source",
    "predict_images",
    "read_store_info",
    "select_backbones",
    "train_model",
    "train_run",
    "write_predictions_csv",
    "write_report",
    "write_synthetic_store",
]
