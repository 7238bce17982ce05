"""The project installs as one distribution: declared dependencies, one version, the packages and the scripts."""

import importlib.metadata
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

import features

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _requirements(name):
    lines = (ROOT / name).read_text().splitlines()
    return sorted(line.strip() for line in lines if line.strip() and not line.startswith("#"))


def _imported_top_level_modules(folder):
    names = set()
    for path in (ROOT / folder).glob("*.py"):
        for match in re.finditer(r"^\s*(?:import|from)\s+([A-Za-z_]\w*)", path.read_text(), re.MULTILINE):
            names.add(match.group(1))
    return names


def test_requirements_files_and_pyproject_declare_the_same_dependencies():
    assert sorted(PYPROJECT["project"]["dependencies"]) == _requirements("requirements.txt")
    assert sorted(PYPROJECT["project"]["optional-dependencies"]["dev"]) == _requirements("requirements-dev.txt")


def test_every_third_party_module_the_packages_import_is_declared():
    # Import name -> distribution name where they differ.
    distribution = {"sklearn": "scikit-learn", "PIL": "pillow", "tensorflow": "tensorflow-cpu"}
    declared = {re.split(r"[<>=\[ ]", requirement)[0] for requirement in PYPROJECT["project"]["dependencies"]}
    standard = set(sys.stdlib_module_names) | {"features", "fusion", "__future__"}
    imported = _imported_top_level_modules("features") | _imported_top_level_modules("fusion")
    undeclared = sorted(name for name in imported - standard if distribution.get(name, name) not in declared)
    assert undeclared == []


def test_the_version_has_one_source():
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "features.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", features.__version__)
    assert f"## {features.__version__}" in (ROOT / "CHANGELOG.md").read_text()


def test_the_wheel_holds_both_packages_the_stage_scripts_and_their_console_entry_points(tmp_path):
    # Built from a copy: setuptools writes build/ and *.egg-info beside the sources.
    source = tmp_path / "source"
    skip = shutil.ignore_patterns(".venv", ".git", "tests", "__pycache__", "*_out", "runs", "*.h5")
    shutil.copytree(ROOT, source, ignore=skip)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(tmp_path), str(source)], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("fusionpipe-*.whl")
    assert wheel.name.startswith(f"fusionpipe-{features.__version__}-")
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in ("features/store.py", "fusion/run.py", "run_precompute.py", "run_train.py", "run_predict.py"):
        assert module in names
    assert not any(name.startswith("tests/") for name in names)
    entry_points = zipfile.ZipFile(wheel).read(
        f"fusionpipe-{features.__version__}.dist-info/entry_points.txt").decode()
    for line in ("fusionpipe-precompute = run_precompute:main", "fusionpipe-train = run_train:main",
                 "fusionpipe-predict = run_predict:main"):
        assert line in entry_points


@pytest.mark.slow
@pytest.mark.parametrize("script", ["fusionpipe-precompute", "fusionpipe-train", "fusionpipe-predict"])
def test_installed_console_scripts_run(script, tmp_path):
    try:
        installed = importlib.metadata.version("fusionpipe")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("fusionpipe is not installed in this environment (make test installs it with pip install -e .)")
    assert installed == features.__version__
    program = Path(sys.executable).parent / script
    result = subprocess.run([str(program), "--help"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("usage: run_")
