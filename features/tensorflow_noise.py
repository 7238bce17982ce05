"""TensorFlow messages that are noise to a fusionpipe user, silenced one by one and only where they arise.

- Retracing warnings ("5 out of the last 5 calls to <function ...> triggered tf.function
  retracing"): TensorFlow counts traces per Python code object, and every Keras model traces its
  own copy of the same step functions (`one_step_on_data_distributed`, `multi_step_on_iterator`)
  on its first batch, and once more on a short last batch. A run trains and predicts with dozens
  of new small models over a few batches each, so most calls of that code object trace, as
  designed; the warning's advice (define the function outside the loop) does not apply.
  `retracing_warnings_silenced` drops exactly those records from the `tensorflow` logger while
  models are trained; any other TensorFlow warning still shows.
- Start-up notices of TensorFlow's native libraries ("WARNING: All log messages before
  absl::InitializeLog() is called are written to STDERR", the oneDNN and CPU-instruction notes):
  written to the process's stderr while TensorFlow loads, before Python can configure anything,
  and TF_CPP_MIN_LOG_LEVEL does not reach all of them. `import_keras_quietly` loads Keras for the
  scripts with those lines, and only those, held back.
"""

import contextlib
import logging
import os
import re
import sys
import tempfile

RETRACING_TEXT = "triggered tf.function retracing"

# The lines TensorFlow 2.x writes to stderr while it loads, on every import; everything else is passed on.
_STARTUP_NOTICES = (
    re.compile(r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$"),
    re.compile(r"^I\d{4} [\d:. ]+\d+ port\.cc:\d+\] oneDNN custom operations are on\."),
    re.compile(r"^I\d{4} [\d:. ]+\d+ cpu_feature_guard\.cc:\d+\] This TensorFlow binary is optimized"),
    re.compile(r"^To enable the following instructions: .*rebuild TensorFlow with the appropriate compiler flags\.$"),
)


class _RetracingFilter(logging.Filter):
    def filter(self, record):
        return RETRACING_TEXT not in record.getMessage()


@contextlib.contextmanager
def retracing_warnings_silenced():
    """Drop TensorFlow's "triggered tf.function retracing" warnings during the block; every other record passes.

    Example:
        >>> with retracing_warnings_silenced():
        ...     probabilities = [model.predict(inputs, verbose=0) for model in models]
    """
    logger = logging.getLogger("tensorflow")
    retracing_filter = _RetracingFilter()
    logger.addFilter(retracing_filter)
    try:
        yield
    finally:
        logger.removeFilter(retracing_filter)


def is_startup_notice(line):
    """True for a line TensorFlow's native libraries write to stderr on every start (see the module docstring)."""
    return any(pattern.match(line) for pattern in _STARTUP_NOTICES)


def import_keras_quietly():
    """Import Keras (and its backend) with TensorFlow's start-up notices held back; other stderr output is passed on.

    For the scripts, whose stderr is for errors: the process's stderr (file descriptor 2, where
    native code writes) goes to a temporary file while Keras loads, then every line of it but the
    known notices is written back. A failed import writes everything back before it raises.
    TF_CPP_MIN_LOG_LEVEL defaults to 1 here, so the native libraries' INFO lines during training
    ("Memory patch applied: ...") stay out too; their warnings and errors still show, and a value
    already set is kept. Once Keras is loaded this does nothing.

    Example:
        >>> import_keras_quietly()  # before the first `import keras` of a script
    """
    if "keras" in sys.modules:
        return
    # Read by TensorFlow once, when it loads: setting it later has no effect.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    sys.stderr.flush()
    try:
        saved_stderr = os.dup(2)
    except OSError:  # no stderr to hold back (a daemon's closed fd 2): import as it is
        import keras  # noqa: F401

        return
    failed = True
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import keras  # noqa: F401

            failed = False
        finally:
            sys.stderr.flush()
            os.dup2(saved_stderr, 2)
            os.close(saved_stderr)
            captured.seek(0)
            text = captured.read().decode("utf-8", errors="replace")
            kept = [line for line in text.splitlines(keepends=True) if failed or not is_startup_notice(line.rstrip("\n"))]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()
