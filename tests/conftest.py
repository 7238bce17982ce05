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
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Each xdist worker shares the cores with the others: one TensorFlow thread each rather than a pool
    # per core in every worker (two workers on two cores: test_run_train + test_predict 125 s -> 108 s).
    for variable in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS"):
        os.environ.setdefault(variable, "1")

from _run_fixtures import trained_run  # noqa: E402


@pytest.fixture(scope="session")
def float32_run(tmp_path_factory):
    """(images folder, float32 store with hflip views, run folder with exported.keras)."""
    return trained_run(tmp_path_factory, "float32")


@pytest.fixture(scope="session")
def float16_run(tmp_path_factory):
    """(images folder, float16 store with hflip views, run folder with exported.keras)."""
    return trained_run(tmp_path_factory, "float16")


# Under pytest-xdist (`make test` runs `-n 2`), the tests of each of these modules go to one worker,
# so that the expensive module or session fixture they share is built once rather than on both
# workers; every other test is handed out one by one as with `--dist load`. (`--dist loadgroup`
# would do this from marks, but pytest-xdist 3.8 cannot rename the test ids it needs under pytest 9.)
_SHARED_FIXTURE_MODULES = {
    "tests/test_run.py": "xor_run",  # a 20-epoch training run with ablations
    "tests/test_export.py": "trained_runs",  # float32_run and float16_run: precomputed, trained, exported
    "tests/test_predict.py": "trained_runs",
    "tests/test_mixed_store.py": "mixed_run",  # a CNN and a transformer, precomputed, trained, exported
    "tests/test_tuning.py": "tuning",  # a three-trial search
    "tests/test_ray_precompute.py": "ray",  # a local Ray cluster and the workers it keeps between tests
}


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "load":
        return None  # an explicit --dist other than the default keeps xdist's own scheduler
    from xdist.scheduler import LoadScopeScheduling

    class SharedFixtureScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            return _SHARED_FIXTURE_MODULES.get(nodeid.split("::", 1)[0], nodeid)

    return SharedFixtureScheduling(config, log)
