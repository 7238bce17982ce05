"""Progress lines as Python logging records, shown on stdout while nothing else would show them.

The packages never print: `precompute`, `train_run` and `tune_head` log their progress lines at
INFO on their module loggers (`features.pipeline`, `fusion.run`, `fusion.tuning`). The logging
HOWTO asks a library to attach no handler of its own, so that the program decides where records
go; a program that configures logging (`logging.basicConfig`, a file handler) gets the lines
through its handlers and nothing else. A notebook or a plain script configures nothing, and there
Python would drop INFO records: `progress_shown` then attaches a plain `%(message)s` handler on
stdout for the length of one call, as `print` did, and takes it off again, so no state outlives
the call. AutoGluon instead attaches a handler to its package logger at import and keeps it; that
duplicates every line once the program configures logging too.
"""

import contextlib
import logging
import sys


def _handled(logger):
    """True when a record of `logger` reaches a handler that shows it somewhere (a NullHandler shows nothing)."""
    current = logger
    while current is not None:
        if any(not isinstance(handler, logging.NullHandler) for handler in current.handlers):
            return True
        if not current.propagate:
            return False
        current = current.parent
    return False


@contextlib.contextmanager
def progress_shown(logger_name, *, always=False, prefix=""):
    """Show the INFO records of `logger_name` (and its children) on stdout during the block, when logging would not.

    Args:
        logger_name: the package logger, e.g. "fusion" or "features".
        always: attach the handler even when logging is configured; for the scripts, whose output
            is their interface (default: False).
        prefix: text put before every line, e.g. an indent (default: "").

    Example:
        >>> with progress_shown("fusion"):
        ...     logging.getLogger("fusion.run").info("[1/3] fusion: training")  # shown in a notebook
    """
    logger = logging.getLogger(logger_name)
    if _handled(logger) and not always:
        yield
        return
    # sys.stdout as it is now: a notebook cell's stream, or pytest's capture.
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter(prefix + "%(message)s"))
    handler.setLevel(logging.INFO)
    # A level set on the logger is the program's choice (e.g. WARNING to silence it) and stays.
    set_level = logger.level == logging.NOTSET
    logger.addHandler(handler)
    if set_level:
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        if set_level:
            logger.setLevel(logging.NOTSET)
