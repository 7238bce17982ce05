"""Errors, opening a store, the writer lock and atomic rewrites: the file-level rules of the store."""

import contextlib
import fcntl
import os
import shutil
from pathlib import Path

import h5py


class StoreBusyError(OSError):
    """Another process is writing the same store."""


class StoreError(ValueError):
    """A feature store is unfinished or damaged; the message says what is wrong and how to finish or rebuild it."""


REBUILD = "Rebuild it with run_precompute.py and a new --out (or delete the file and run the same command again)"


def _damaged(path, what, received):
    return StoreError(f"Feature store {path} is damaged: {what}. {REBUILD}. Received: {received}")


@contextlib.contextmanager
def store_errors(path):
    """Turn what h5py raises on a damaged file (OSError, RuntimeError, KeyError, bad UTF-8) into one `StoreError` line.

    Example:
        >>> with h5py.File("cache.h5", "r") as store_file, store_errors("cache.h5"):
        ...     labels = store_file["images/label"][()]
    """
    try:
        yield
    except (StoreError, StoreBusyError, FileNotFoundError):
        raise
    except UnicodeDecodeError as error:
        raise _damaged(path, f"a string in it is not valid UTF-8 ({error.reason} at byte {error.start})",
                       "UnicodeDecodeError") from None
    except (OSError, RuntimeError, KeyError) as error:
        text = error.args[0] if isinstance(error, KeyError) and error.args else error
        detail = " ".join(str(text).split()) or type(error).__name__
        raise _damaged(path, f"HDF5 could not read it ({detail})", type(error).__name__) from None


def open_store(path):
    """Open a feature store read-only: FileNotFoundError when missing, `StoreError` when it cannot be read.

    Example:
        >>> with open_store("cache.h5") as store_file:
        ...     print(list(store_file["features"]))
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Feature store not found: {path.resolve()}")
    try:
        return h5py.File(path, "r")
    except OSError as error:
        detail = " ".join(str(error).split())
        if _is_hdf5(path):
            raise _damaged(path, f"HDF5 cannot open it ({detail}); the file is truncated or its bytes were changed",
                           "an unreadable HDF5 file") from None
        raise StoreError(f"{path.resolve()} is not a readable HDF5 feature store ({detail}). Expected a file "
                         f"written by run_precompute.py. Received: store={path}") from None


def h5py_version():
    """The version of h5py that reads and writes stores, for a run's record."""
    return h5py.__version__


def _is_hdf5(path):
    """Whether the file at `path` begins with the HDF5 signature."""
    with open(path, "rb") as handle:
        return handle.read(len(_HDF5_SIGNATURE)) == _HDF5_SIGNATURE


def _lock_path(store_path):
    """The lock file that guards `store_path` against two writers."""
    store_path = Path(store_path)
    return store_path.with_name(store_path.name + ".lock")


@contextlib.contextmanager
def store_lock(store_path):
    """Hold an exclusive, non-blocking lock on `store_path` for the duration of the block.

    Raises:
        StoreBusyError: another run holds the lock.

    Example:
        >>> with store_lock("cache.h5"):
        ...     pass
    """
    path = _lock_path(store_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreBusyError(
                f"Another run is writing {Path(store_path).resolve()} (lock file {path.resolve()} is held). "
                f"Wait for it to finish, or write to another --out. Received: out={store_path}"
            ) from None
        handle.seek(0), handle.truncate(), handle.write(f"{os.getpid()}\n"), handle.flush()
        yield path
    finally:
        handle.close()


def _fsync_path(path):
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _temporary_path(store_path):
    store_path = Path(store_path)
    return store_path.with_name(store_path.name + ".tmp")


# The first bytes of every HDF5 file: a stale OUT.tmp without them is not a copy this module began.
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def remove_stale_temporary(store_path):
    """Delete the half-written copy a killed structural change may have left (call under the lock).

    Call it only once `store_path` is known to be a store, or absent. A file of that name that is
    not HDF5 is someone else's: it is refused, not deleted.
    """
    temporary = _temporary_path(store_path)
    if not temporary.is_file():
        return
    with open(temporary, "rb") as handle:
        head = handle.read(len(_HDF5_SIGNATURE))
    if head and head != _HDF5_SIGNATURE:
        raise ValueError(f"{temporary} exists and is not a half-written copy of a feature store (not HDF5); it is left "
                         f"untouched. Move it, or choose another --out. Received: out={store_path}")
    temporary.unlink()


@contextlib.contextmanager
def rewrite_store(store_path, copy=True):
    """Change the store's structure atomically: yield a writable copy, then fsync and replace.

    If the block raises (or the process dies), the store stays as it was.

    Args:
        store_path: the store.
        copy: start from a copy of the store (True) or from an empty file (default: True).

    Example:
        >>> with rewrite_store("cache.h5") as store:
        ...     store.attrs["note"] = "changed atomically"
    """
    store_path = Path(store_path)
    temporary = _temporary_path(store_path)
    if copy:
        shutil.copyfile(store_path, temporary)
    try:
        # The HDF5 1.8 format checksums its metadata, so a flipped byte there is an error, not a wrong
        # value. Not 1.10 as the lowest: its superblock stays marked "open for write" after a kill,
        # refusing readers. 1.10 as the highest only lets virtual datasets (shards) be written.
        with h5py.File(temporary, "a" if copy else "w", libver=("v108", "v110")) as store:
            yield store
        _fsync_path(temporary)
        os.replace(temporary, store_path)
        _fsync_path(store_path.parent)
    finally:
        temporary.unlink(missing_ok=True)
