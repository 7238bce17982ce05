"""Test settings: quiet TensorFlow, no weight downloads, the repository root on sys.path."""

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# Never download ImageNet weights from the tests, also on a machine that could.
os.environ["FUSIONPIPE_OFFLINE"] = "1"

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from _run_fixtures import trained_run  # noqa: E402


@pytest.fixture(scope="session")
def float32_run(tmp_path_factory):
    """(images folder, float32 store with hflip views, run folder with exported.keras)."""
    return trained_run(tmp_path_factory, "float32")


@pytest.fixture(scope="session")
def float16_run(tmp_path_factory):
    """(images folder, float16 store with hflip views, run folder with exported.keras)."""
    return trained_run(tmp_path_factory, "float16")
