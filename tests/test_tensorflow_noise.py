"""TensorFlow's noise is silenced one message at a time: the retracing warning, the start-up notices; nothing else."""

import logging

from _run_fixtures import logged_lines
from features.tensorflow_noise import is_startup_notice, retracing_warnings_silenced

RETRACING = ("5 out of the last 5 calls to <function TensorFlowTrainer.make_predict_function.<locals>."
             "one_step_on_data_distributed at 0x7f4697863420> triggered tf.function retracing. Tracing is expensive")


def test_only_the_retracing_warning_is_dropped_and_only_inside_the_block():
    tensorflow_logger = logging.getLogger("tensorflow")
    with logged_lines("tensorflow") as lines:
        with retracing_warnings_silenced():
            tensorflow_logger.warning(RETRACING)
            tensorflow_logger.warning("Gradients do not exist for variables ['dense/kernel'] when minimizing the loss.")
        tensorflow_logger.warning(RETRACING)
    assert lines == ["Gradients do not exist for variables ['dense/kernel'] when minimizing the loss.", RETRACING]
    assert tensorflow_logger.filters == []


def test_startup_notices_are_told_from_other_stderr_lines():
    notices = [
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
        "I0000 00:00:1796152767.830668   26482 port.cc:153] oneDNN custom operations are on. You may see slightly "
        "different numerical results due to floating-point round-off errors from different computation orders.",
        "I0000 00:00:1796152774.605780   26601 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use "
        "available CPU instructions in performance-critical operations.",
        "To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild TensorFlow with the "
        "appropriate compiler flags.",
    ]
    others = [
        "W0000 00:00:1796153248.068168   32064 generator_dataset_op.cc:113] Error occurred when finalizing "
        "GeneratorDataset iterator: FAILED_PRECONDITION: Python interpreter state is not initialized.",
        "E0000 00:00:1796153248.068168   32064 cuda_dnn.cc:8310] Unable to register cuDNN factory",
        "Traceback (most recent call last):",
        "WARNING: something else",
    ]
    assert [is_startup_notice(line) for line in notices] == [True] * 4
    assert [is_startup_notice(line) for line in others] == [False] * 4
