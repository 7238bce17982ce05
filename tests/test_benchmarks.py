"""The README's benchmark commands run, on tiny inputs, and print the ratios they promise."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

# Whole runs of a script or notebook: in `make test`, not in `make test-fast`.
pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = REPO_ROOT / "benchmarks"


def _run(name, *args):
    """Run a benchmark script as a user would; returns what it printed."""
    result = subprocess.run([sys.executable, str(BENCHMARKS / f"{name}.py"), *args], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO_ROOT)})
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def _number(pattern, text):
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not in:\n{text}"
    return float(match.group(1))


def test_bench_precompute_prints_both_ratios_and_the_precision_gain():
    printed = _run("bench_precompute", "--images", "6", "--size", "320x240", "--backbones", "mobilenet_v2",
                   "--batch-size", "4", "--startup-images", "5", "--engines", "function", "--engine-rounds", "1")
    for label in (r"\(a\) pipeline", r"\(b\) naive recipe", r"\(c\) compute bound", r"\(a\) mixed_bfloat16"):
        assert _number(label + r": +[\d.]+ s +([\d.]+) img/s", printed) > 0
    assert _number(r"a/b speed-up over naive: ([\d.]+)x", printed) > 0
    assert _number(r"a/c share of compute bound: ([\d.]+)", printed) > 0
    assert _number(r"gain over float32 \(a\): ([\d.]+)x", printed) > 0
    # Start-up comes first and apart: the first row of a process that had built nothing, within the whole run.
    first_row = _number(r"start-up, nothing built yet: first row written ([\d.]+) s after calling precompute", printed)
    build = _number(r"after calling precompute \(build \+ trace ([\d.]+) s\)", printed)
    assert 0 < build <= first_row <= _number(r"whole run on 5 photos ([\d.]+) s", printed)
    # The engines table: the precompute path beside the engines asked for, on the same batch, with its ratio.
    table = printed[printed.index("engines ("):]
    assert "mobilenet_v2 at 224 px, pooling avg, batch 16" in table and "tf.function, XLA" not in table
    path_speed = _number(r"precompute path +([\d.]+) img/s", table)
    function_speed = _number(r"tf\.function +([\d.]+) img/s", table)
    assert _number(r"precompute path +[\d.]+ img/s .* max rel\. diff from predict_on_batch ([\d.e+-]+)\n", table) < 1e-4
    ratio = _number(r"precompute path / fastest float32 engine \([^)]+\): ([\d.]+)", table)
    assert abs(ratio - path_speed / max(function_speed, _number(r"predict_on_batch +([\d.]+) img/s", table))) < 0.02


def test_bench_train_prints_memory_and_streamed_speed_and_the_cost_of_folds():
    printed = _run("bench_train", "--rows", "400", "--dims", "16", "8", "--epochs", "1", "--folds", "2",
                   "--cv-rows", "200", "--cv-epochs", "1")
    memory = _number(r"in memory \(rows shuffled\): +(\d+) samples/s", printed)
    streamed = _number(r"streamed from HDF5 \(blocks of +8 rows\): +(\d+) samples/s", printed)
    assert memory > 0 and streamed > 0
    assert abs(_number(r"streamed / in memory: ([\d.]+)", printed) - streamed / memory) < 0.02
    one_split = _number(r"one split \(train/val/test 60/20/20\): +([\d.]+) s", printed)
    folds = _number(r"--folds 2 over train\+val: +([\d.]+) s", printed)
    assert 0 < one_split and 0 < folds
    assert abs(_number(r"--folds 2 / one split: ([\d.]+)x \(goal: at most 2.2x\)", printed) - folds / one_split) < 0.02


def test_bench_cli_prints_each_scripts_help_time_beside_importing_keras():
    printed = _run("bench_cli", "--repeats", "1")
    keras_seconds = _number(r"python -c import keras +([\d.]+) s", printed)
    for script in ("run_precompute.py", "run_train.py", "run_predict.py"):
        seconds = _number(rf"{script} --help +([\d.]+) s", printed)
        share = _number(rf"{script} --help +[\d.]+ s +([\d.]+) of import keras", printed)
        assert abs(share - seconds / keras_seconds) < 0.002


def test_bench_precompute_ray_workers_prints_ray_against_one_process_and_the_coordinator_limit():
    printed = _run("bench_precompute", "--ray-workers", "2", "--images", "6", "--size", "96x64", "--backbones",
                   "identity", "--batch-size", "4", "--small-images", "120", "--small-size", "32x32")
    assert "2 workers, 1 rows per shard (--shard-rows)" in printed  # 6 photos: about four shards per worker
    single = _number(r"\(1\) one process, steady state: +[\d.]+ s +([\d.]+) img/s", printed)
    startup = _number(r"\(2\) Ray start-up, a first run of 2 photos, one per worker: whole call ([\d.]+) s", printed)
    whole = _number(r"\(2\) Ray, 2 workers: +whole call +([\d.]+) s", printed)
    steady = _number(r"steady \(that less the workers' mean build \+ trace [\d.]+ s\) +[\d.]+ s +([\d.]+) img/s",
                     printed)
    assert single > 0 and steady > 0 and startup > 0 and whole > 0
    ratio = _number(r"Ray/single, steady: ([\d.]+) \(target >= 0.85", printed)
    assert abs(ratio - steady / single) <= 0.01 + 0.02 * ratio
    assert _number(r"Ray/single, whole call: ([\d.]+)", printed) <= ratio  # plus store set-up and joining
    # The coordinator limit: identity on the small photos, in images/s and in ms per image (one over it).
    assert "identity (no network) on 120 JPEGs of 32x32" in printed
    limit = _number(r"images/s one driver coordinates \(Ray steady, identity\): (\d+) \(target > 2000\)", printed)
    per_image = _number(r"steady +[\d.]+ s +\d+ img/s +([\d.]+) ms per image; driver CPU", printed)
    assert limit > 0 and abs(per_image - 1000 / limit) <= 0.01 * per_image + 0.002
    assert _number(r"\(3\) one process, identity: +[\d.]+ s +(\d+) img/s", printed) > 0
    assert _number(r"Ray/single, identity: ([\d.]+)", printed) > 0
