"""Test settings: quiet TensorFlow, no weight downloads.

The repository root comes first on sys.path through pytest.ini (`pythonpath = .`), so that a checkout or
worktree tests its own packages even where another checkout is installed editable.
"""

import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# Never download ImageNet weights from the tests, also on a machine that could.
os.environ["FUSIONPIPE_OFFLINE"] = "1"

from _run_fixtures import trained_run  # noqa: E402


@pytest.fixture(scope="session")
def float32_run(tmp_path_factory):
    """(images folder, float32 store with hflip views, run folder with exported.keras)."""
    return trained_run(tmp_path_factory, "float32")


@pytest.fixture(scope="session")
def float16_run(tmp_path_factory):
    """(images folder, float16 store with hflip views, run folder with exported.keras)."""
    return trained_run(tmp_path_factory, "float16")
