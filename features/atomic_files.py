"""Write files whole or not at all: to a temporary in the same folder, fsync, then rename over the target.

A reader, a second writer or a kill at any moment sees either the old file (or none) or the
new one, never a part: `os.replace` within one folder is atomic on POSIX and Windows. The
temporary is named after the target, `<name>.tmp-<pid>-<random><suffix>`, so that it keeps the
suffix writers look at (Keras wants `.keras`, matplotlib picks the format from it) and two
writers never share one; a run folder counts it as its own (see `fusion.run_folder`).
"""

import contextlib
import os
import re
import secrets
from pathlib import Path

# `report.json` -> `report.json.tmp-1234-0a1b2c3d.json`; matches only names `_temporary_path` makes.
_TEMPORARY_PATTERN = re.compile(r"^(?P<target>.+)\.tmp-\d+-[0-9a-f]{8}(?P<suffix>\.[^./]*)?$")


def _temporary_path(path):
    """A fresh temporary name next to `path`, with the same suffix.

    Example:
        >>> _temporary_path("runs/exp1/report.json")
        PosixPath('runs/exp1/report.json.tmp-1234-0a1b2c3d.json')
    """
    path = Path(path)
    return path.with_name(f"{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}{path.suffix}")


def temporary_target(name):
    """The file name a temporary of `_temporary_path` stands for, or None when `name` is not one.

    Example:
        >>> temporary_target("report.json.tmp-1234-0a1b2c3d.json")
        'report.json'
    """
    match = _TEMPORARY_PATTERN.match(name)
    if not match or not match["target"].endswith(match["suffix"] or ""):
        return None
    return match["target"]


def _fsync(path, directory=False):
    # A folder is synced so that the rename itself survives a power cut; not every system can.
    try:
        descriptor = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    except OSError:
        if directory:
            return
        raise
    try:
        os.fsync(descriptor)
    except OSError:
        if not directory:
            raise
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path to write; on success it replaces `path`, on any error it is removed.

    The folder of `path` must exist. The temporary is fsynced before the rename, and the folder
    after it.

    Args:
        path: the file to write.

    Example:
        >>> with atomic_path("runs/exp1/plot.png") as temporary:
        ...     figure.savefig(temporary)
    """
    path = Path(path)
    temporary = _temporary_path(path)
    try:
        yield temporary
        if not temporary.is_file():
            raise FileNotFoundError(f"Nothing was written for {path.resolve()}: the writer made no file at {temporary}.")
        _fsync(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync(path.parent, directory=True)


def write_text_atomic(path, text, encoding="utf-8"):
    """Write `text` to `path` whole or not at all; returns `path`.

    Example:
        >>> write_text_atomic("runs/exp1/config.json", json.dumps(config))
    """
    with atomic_path(path) as temporary:
        Path(temporary).write_text(text, encoding=encoding)
    return Path(path)


@contextlib.contextmanager
def open_atomic(path, mode="w", **kwargs):
    """`open(path, mode)` whose file replaces `path` only when the block ends without error.

    Example:
        >>> with open_atomic("predictions.csv", newline="") as handle:
        ...     csv.writer(handle).writerow(["path", "class"])
    """
    with atomic_path(path) as temporary:
        with open(temporary, mode, **kwargs) as handle:
            yield handle


def save_model_atomic(model, path):
    """`model.save(path)` whole or not at all: a `.keras` file appears complete or stays as it was.

    Example:
        >>> save_model_atomic(model, "runs/exp1/models/fusion.keras")
    """
    path = Path(path)
    if path.suffix != ".keras":
        raise ValueError(f"Models are saved in the .keras format; name the file *.keras. Received: path={str(path)!r}")
    with atomic_path(path) as temporary:
        model.save(temporary)
    return path


def check_writable_file(path, option="--out"):
    """Refuse an output file that cannot be written, before any work and without creating anything.

    The file need not exist, nor its folder: the nearest folder above it that exists must be a
    folder this process may write in (the file is written through a temporary beside it).

    Args:
        path: the file to be written.
        option: the option that named it, for the message (default: "--out").

    Example:
        >>> check_writable_file("/proc/predictions.csv")
        Traceback (most recent call last):
        ValueError: --out /proc/predictions.csv cannot be written: ...
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{option} {path} is a folder. Expected a file name to write. Received: {option}={str(path)!r}")
    folder = path.absolute().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise ValueError(f"{option} {path} cannot be written: {folder} is a file, not a folder. Choose another "
                         f"{option}. Received: {option}={str(path)!r}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {path} cannot be written: no permission to write in {folder} (or it is on a "
                         f"read-only file system). Choose another {option}. Received: {option}={str(path)!r}")
    return path
