"""Fetch Keras's ImageNet weight files when the machine is online: hash-checked, never leaving a half file behind."""

import os
import shutil
import tempfile
from pathlib import Path

# Set to 1 to never download (air-gapped machines, the test suite): a missing weights file is then
# an error at once that names the file and the folder to put it in.
OFFLINE_VARIABLE = "FUSIONPIPE_OFFLINE"


def downloads_allowed():
    """Whether weight files may be downloaded: not when `FUSIONPIPE_OFFLINE` is set to a true value."""
    return os.environ.get(OFFLINE_VARIABLE, "").strip().lower() not in ("1", "true", "yes", "on")


def fetch_file(url, target, file_hash=None):
    """Download `url` to `target` with `keras.utils.get_file`, checking `file_hash`; whole or not at all.

    `get_file` downloads into a private folder beside `target` (it checks the hash there); only a
    file that passed is fsynced and renamed to `target`, so an interruption or a wrong file never
    leaves anything that a later run would take for the weights.

    Args:
        url: what to fetch.
        target: the file to create; its folder is created.
        file_hash: the expected md5 or sha256 hex digest, or None to check nothing (default: None).

    Raises:
        OSError: the download failed (no network, HTTP error) or gave a file of another hash;
            nothing is left behind.

    Example:
        >>> fetch_file(spec.weights_url, Path("~/.keras/models").expanduser() / spec.weights_file, spec.weights_hash)
    """
    import keras

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".download-", dir=target.parent))
    try:
        try:
            fetched = keras.utils.get_file(target.name, url, file_hash=file_hash, cache_dir=str(staging),
                                           cache_subdir=str(staging))
        except ValueError as error:
            # get_file's only ValueError after a download: the hash differs (the file stays; it is removed below).
            raise OSError(f"the file from {url} does not match Keras's published hash {file_hash} ({error}); "
                          "it was not kept") from None
        except Exception as error:  # noqa: BLE001 - get_file raises a bare Exception for network errors
            raise OSError(str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__) from None
        descriptor = os.open(fetched, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(fetched, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
