"""fusionpipe stages 2 and 3: fusion model, baselines and the report; the exported model and prediction.

The public names below load on first use (PEP 562), as in `features`; importing the package itself
loads the modules that register fusionpipe's Keras classes (see the end of this file).
"""

from features._lazy import lazy_exports as _lazy_exports

# Public name -> the submodule that defines it.
_EXPORTS = {
    "LogisticStacking": "fusion.baselines",
    "WeightedAverage": "fusion.baselines",
    "average_probabilities": "fusion.baselines",
    "LogisticStackingCombiner": "fusion.combiners",
    "WeightedAverageCombiner": "fusion.combiners",
    "make_folds": "fusion.cross_validation",
    "fold_ensemble": "fusion.ensemble",
    "FeatureBatches": "fusion.data",
    "open_feature_source": "fusion.data",
    "bootstrap_accuracy_interval": "fusion.evaluation",
    "corrected_resampled_ttest": "fusion.evaluation",
    "evaluate_probabilities": "fusion.evaluation",
    "expected_calibration_error": "fusion.evaluation",
    "mcnemar_test": "fusion.evaluation",
    "FusionClassifier": "fusion.classifier",
    "build_pixel_model": "fusion.export",
    "class_names_of": "fusion.export",
    "export_model": "fusion.export",
    "gather_image_paths": "fusion.image_inputs",
    "gate_weights": "fusion.heads",
    "FUSION_HEADS": "fusion.model",
    "build_fusion_model": "fusion.model",
    "plot_confusion_matrix": "fusion.plots",
    "plot_cost": "fusion.plots",
    "plot_gate_weights": "fusion.plots",
    "plot_model_comparison": "fusion.plots",
    "plot_reliability": "fusion.plots",
    "plot_training_curves": "fusion.plots",
    "save_figure": "fusion.plots",
    "Predictions": "fusion.predict",
    "load_classifier": "fusion.predict",
    "predict_images": "fusion.predict",
    "write_predictions_csv": "fusion.predict",
    "write_report": "fusion.report",
    "FusionRun": "fusion.saved_run",
    "load_run": "fusion.saved_run",
    "train_run": "fusion.run",
    "feature_statistics": "fusion.statistics",
    "StoreInfo": "fusion.store",
    "read_store_info": "fusion.store",
    "select_backbones": "fusion.store",
    "write_synthetic_store": "fusion.synthetic",
    "class_weights": "fusion.training",
    "train_model": "fusion.training",
    "tune_head": "fusion.tuning",
}

__all__ = [
    "FUSION_HEADS",
    "FeatureBatches",
    "FusionClassifier",
    "FusionRun",
    "LogisticStacking",
    "LogisticStackingCombiner",
    "Predictions",
    "StoreInfo",
    "WeightedAverage",
    "WeightedAverageCombiner",
    "average_probabilities",
    "bootstrap_accuracy_interval",
    "build_fusion_model",
    "build_pixel_model",
    "class_names_of",
    "class_weights",
    "corrected_resampled_ttest",
    "evaluate_probabilities",
    "expected_calibration_error",
    "export_model",
    "feature_statistics",
    "fold_ensemble",
    "gate_weights",
    "gather_image_paths",
    "load_classifier",
    "load_run",
    "make_folds",
    "mcnemar_test",
    "open_feature_source",
    "plot_confusion_matrix",
    "plot_cost",
    "plot_gate_weights",
    "plot_model_comparison",
    "plot_reliability",
    "plot_training_curves",
    "predict_images",
    "read_store_info",
    "save_figure",
    "select_backbones",
    "train_model",
    "train_run",
    "tune_head",
    "write_predictions_csv",
    "write_report",
    "write_synthetic_store",
]


__getattr__, __dir__ = _lazy_exports(globals(), _EXPORTS)


# Importing fusion registers fusionpipe's Keras classes, so that exported models load with safe mode
# after `import fusion`, as README.md promises: `PreprocessInput` (features.backbones), `FusionClassifier`
# (fusion.classifier), the baselines' combiner layers (fusion.combiners), the layers of the gated and
# attention heads (fusion.heads) and the layer that exports before it used (fusion.export). These
# imports are eager; they load Keras, with TensorFlow's start-up notices held back (in a notebook
# they would fill the import cell: features.tensorflow_noise).
from features.tensorflow_noise import import_keras_quietly as _import_keras_quietly  # noqa: E402

_import_keras_quietly()
from features import backbones as _backbones  # noqa: E402, F401
from fusion import classifier as _classifier  # noqa: E402, F401
from fusion import combiners as _combiners  # noqa: E402, F401
from fusion import export as _export  # noqa: E402, F401
from fusion import heads as _heads  # noqa: E402, F401
