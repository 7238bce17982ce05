"""TensorBoard logs of a run: Keras's `TensorBoard` callback writing one folder per model, and per fold under it.

`tensorboard --logdir DIR` then lists the models side by side (`fusion/train`, `a/validation`,
with cross-validation `fusion/repeat1_fold1/train`, ...). Event files written inside the run folder
are recorded in it, so that `--overwrite` replaces them with the run.
"""

import importlib.util
from pathlib import Path

import keras

from fusion.run_folder import record_written


def check_tensorboard_dir(tensorboard_dir, out_dir):
    """The absolute TensorBoard folder of a run, or None; refuses one that would mix runs, before any work.

    Args:
        tensorboard_dir: the folder to write, or None for no TensorBoard logs.
        out_dir: the run folder; a TensorBoard folder inside it is emptied with the run by `overwrite`.

    Example:
        >>> check_tensorboard_dir("runs/exp1/tensorboard", "runs/exp1")
        PosixPath('/home/me/runs/exp1/tensorboard')
    """
    if tensorboard_dir is None:
        return None
    # Keras writes them with TensorFlow's summary ops, which the tensorboard package implements (any backend).
    missing = [name for name in ("tensorflow", "tensorboard") if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(
            f"TensorBoard logs are written with TensorFlow's summary writer, which needs {' and '.join(missing)}, not "
            f"installed. Install with: pip install {' '.join(missing)} (or pip install -r requirements.txt), or leave "
            f"out --tensorboard. Received: tensorboard_dir={tensorboard_dir}"
        )
    folder = Path(tensorboard_dir).resolve()
    run_dir = Path(out_dir).resolve()
    if folder == run_dir:
        raise ValueError(
            f"The TensorBoard folder is the run folder itself, where model folders would sit among the run's own "
            f"files. Give a folder of its own, e.g. {run_dir / 'tensorboard'}. Received: tensorboard_dir={tensorboard_dir}"
        )
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"TensorBoard folder {folder} is a file. Expected a folder; choose another one. "
                              f"Received: tensorboard_dir={tensorboard_dir}")
    # Inside the run folder, the run's own earlier logs are recorded and go with --overwrite.
    if not folder.is_relative_to(run_dir) and folder.is_dir() and any(folder.iterdir()):
        raise FileExistsError(
            f"TensorBoard folder {folder} is not empty: TensorBoard would show this run's curves mixed with the ones "
            f"in it. Give a new folder per run, e.g. {run_dir / 'tensorboard'} (replaced with the run by --overwrite), "
            f"and point `tensorboard --logdir` at a parent folder to compare runs. Received: tensorboard_dir={tensorboard_dir}"
        )
    return folder


def tensorboard_callbacks(tensorboard_dir, run_dir, model_name, fold_name=None):
    """The callbacks that write one model's (one fold's) TensorBoard logs to `tensorboard_dir/model_name[/fold_name]`.

    Args:
        tensorboard_dir: the absolute folder of `check_tensorboard_dir`.
        run_dir: the run folder, where written event files are recorded when they are inside it.
        model_name: the model's name in the report, e.g. "fusion".
        fold_name: the fold's name with cross-validation, e.g. "repeat1_fold2" (default: None).

    Example:
        >>> train_model(model, train, val, callbacks=tensorboard_callbacks(folder, run_dir, "fusion"))
    """
    log_dir = Path(tensorboard_dir) / model_name / (fold_name or "")
    callbacks = [keras.callbacks.TensorBoard(log_dir=str(log_dir))]
    if log_dir.resolve().is_relative_to(Path(run_dir).resolve()):
        callbacks.append(_RecordEventFiles(run_dir, log_dir))
    return callbacks


class _RecordEventFiles(keras.callbacks.Callback):
    """Record the event files of a TensorBoard folder in the run folder, as soon as they are there.

    TensorBoard names its files (`events.out.tfevents.<time>.<host>...`) when it makes them, so they
    are recorded right after: when training begins (the model summary) and after each epoch.
    """

    def __init__(self, run_dir, log_dir):
        super().__init__()
        self.run_dir = Path(run_dir)
        self.log_dir = Path(log_dir)

    def _record(self):
        files = [path for path in self.log_dir.rglob("*") if path.is_file()]
        if files:
            record_written(self.run_dir, *files)

    def on_train_begin(self, logs=None):
        self._record()

    def on_epoch_end(self, epoch, logs=None):
        self._record()

    def on_train_end(self, logs=None):
        self._record()
