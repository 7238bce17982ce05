"""The project installs as one distribution: declared dependencies, one version, the packages and the scripts."""

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

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
    assert sorted(PYPROJECT["project"]["optional-dependencies"]["hub"]) == _requirements("requirements-hub.txt")
    # keras-hub itself is installed without its dependencies (tensorflow-text would pull the full tensorflow).
    assert [Requirement(line).name for line in _requirements("requirements-nodeps.txt")] == ["keras-hub"]
    assert "--no-deps -r requirements-nodeps.txt" in (ROOT / "Makefile").read_text()


def test_every_requirement_is_pinned_in_constraints_to_a_version_it_allows():
    requirements = [Requirement(line) for name in ("requirements.txt", "requirements-dev.txt", "requirements-hub.txt",
                                                   "requirements-nodeps.txt")
                    for line in _requirements(name)]
    pins = {}
    for line in _requirements("constraints.txt"):
        name, separator, version = line.partition("==")
        assert separator, f"constraints.txt must pin exact versions (name==version). Received: {line!r}"
        pins[canonicalize_name(name)] = version.strip()
    unpinned = sorted(str(requirement) for requirement in requirements if canonicalize_name(requirement.name) not in pins)
    assert unpinned == [], f"Requirements without a pin in constraints.txt: {unpinned}"
    outside = sorted(f"{requirement} (pinned {pins[canonicalize_name(requirement.name)]})" for requirement in requirements
                     if not requirement.specifier.contains(pins[canonicalize_name(requirement.name)], prereleases=True))
    assert outside == [], f"constraints.txt pins versions the requirements exclude: {outside}"


def test_every_third_party_module_the_packages_import_is_declared():
    # Import name -> distribution name where they differ.
    distribution = {"sklearn": "scikit-learn", "PIL": "pillow", "tensorflow": "tensorflow-cpu", "keras_hub": "keras-hub",
                    "keras_tuner": "keras-tuner"}
    declared = {re.split(r"[<>=!\[ ]", requirement)[0] for requirement in PYPROJECT["project"]["dependencies"]
                + PYPROJECT["project"]["optional-dependencies"]["hub"] + _requirements("requirements-nodeps.txt")}
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
    for module in ("features/store/__init__.py", "features/store/_read.py", "fusion/run.py", "run_precompute.py", "run_train.py", "run_predict.py"):
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
    assert result.stdout.startswith(f"usage: {script} ")  # the name the user typed, not run_*.py


# Modules that take seconds to import; `--help` must answer before any of them loads.
HEAVY_MODULES = ("keras", "tensorflow", "h5py", "sklearn", "jax", "scipy", "matplotlib")

HELP_PROBE = """
import contextlib, io, json, runpy, sys
sys.argv = [sys.argv[1], "--help"]
printed = io.StringIO()
with contextlib.redirect_stdout(printed):
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
    except SystemExit:
        pass
heavy = sorted({{name.split(".")[0] for name in sys.modules}} & set({heavy!r}))
print(json.dumps({{"heavy": heavy, "help": printed.getvalue()}}))
"""

SCRIPTS = ["run_precompute.py", "run_train.py", "run_predict.py", "examples/demo.py",
           "benchmarks/bench_precompute.py", "benchmarks/bench_train.py", "benchmarks/bench_cli.py"]


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_help_imports_no_heavy_module(script, tmp_path):
    # A fresh interpreter, this checkout first on the path; the time it takes is benchmarks/bench_cli.py's to show.
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", HELP_PROBE.format(heavy=HEAVY_MODULES), str(ROOT / script)],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path, env=environment)
    assert result.returncode == 0, result.stderr[-2000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["help"].startswith("usage: ")
    assert outcome["heavy"] == [], f"{script} --help imported {outcome['heavy']}"
