"""Fetch Keras's ImageNet weight files when the machine is online, never leaving a half file behind."""

import os
import sys
import urllib.request
from pathlib import Path

# Set to 1 to never download (air-gapped machines, the test suite): a missing weights file is then
# an error at once that names the file and the folder to put it in.
OFFLINE_VARIABLE = "FUSIONPIPE_OFFLINE"

# Seconds without an answer before a download is given up; an offline machine usually fails at once.
TIMEOUT_SECONDS = 30

_BLOCK_BYTES = 1 << 20


def downloads_allowed():
    """Whether weight files may be downloaded: not when `FUSIONPIPE_OFFLINE` is set to a true value."""
    return os.environ.get(OFFLINE_VARIABLE, "").strip().lower() not in ("1", "true", "yes", "on")


def download_file(url, target, progress=True):
    """Download `url` to `target` through `target.part`, so an interruption leaves no partial file.

    Args:
        url: what to fetch.
        target: the file to create; its folder is created.
        progress: show a tqdm progress bar on stderr (default: True).

    Raises:
        OSError: the download failed (no network, HTTP error, time-out); nothing is left behind.

    Example:
        >>> download_file(spec.weights_url, Path("~/.keras/models").expanduser() / spec.weights_file)
    """
    from tqdm import tqdm

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response, open(partial, "wb") as handle:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, file=sys.stderr, disable=not progress,
                      desc=f"downloading {target.name}") as bar:
                while block := response.read(_BLOCK_BYTES):
                    handle.write(block)
                    bar.update(len(block))
            if total is not None and handle.tell() != total:
                raise OSError(f"got {handle.tell()} of {total} bytes")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target
