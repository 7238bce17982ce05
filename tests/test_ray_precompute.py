"""Precompute on Ray (`--ray`): the same store as one process, through lost workers and a killed driver."""

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from _run_fixtures import write_two_class_images

pytestmark = pytest.mark.slow

ray = pytest.importorskip("ray")

BACKBONES = ["mobilenet_v2", "identity"]
OPTIONS = dict(weights="none", input_size=32, views="hflip", val_fraction=0.25, test_fraction=0.25, progress=False)
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def cluster():
    # What the issue asks of the suite: Ray on this machine with two CPUs, shared by the module's tests.
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _images(root, per_class=10):
    data = write_two_class_images(root, per_class=per_class)
    (data / "class_0" / "broken.png").write_bytes(b"not a png")  # a row dropped at the end: the mapping must close up
    return data


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return _images(tmp_path_factory.mktemp("ray") / "images")


@pytest.fixture(scope="module")
def single(data, tmp_path_factory):
    import features

    out = tmp_path_factory.mktemp("single") / "single.h5"
    features.precompute(data, out, BACKBONES, **OPTIONS)
    return out


def _assert_same_store(store, reference, backbones=BACKBONES):
    """Row by row: the same images, labels, splits and skipped files, features within the float16 rounding."""
    with h5py.File(store, "r") as got, h5py.File(reference, "r") as want:
        for key in ("images/path", "images/label", "images/split", "skipped/path"):
            assert list(got[key][()]) == list(want[key][()]), key
        for backbone in backbones:
            for group in ("features", "views"):
                values, expected = got[f"{group}/{backbone}"][()], want[f"{group}/{backbone}"][()]
                assert values.shape == expected.shape
                np.testing.assert_allclose(values.astype(np.float32), expected.astype(np.float32), rtol=2e-3,
                                           atol=2e-3, err_msg=f"{group}/{backbone}")
            assert np.all(got[f"progress/{backbone}"][()] == 1)
    import features

    features.load_store(store)  # checksums, finished, shard files present


def _shard_files(out):
    folder = Path(f"{out}.shards")
    return sorted(folder.glob("rows-*.h5")) if folder.is_dir() else []


def test_a_ray_store_equals_the_single_process_store_mapped_or_merged(cluster, data, single, tmp_path):
    import features

    out = tmp_path / "virtual" / "cache.h5"
    summary = features.precompute(data, out, BACKBONES, **OPTIONS, ray="local", workers=2, shard_rows=6)
    _assert_same_store(out, single)
    with h5py.File(out, "r") as store:
        assert store["features/mobilenet_v2"].is_virtual and store["views/identity"].is_virtual
    # 21 rows (20 images and the broken file) in shards of 6: 4 shards, each its own file.
    assert len(_shard_files(out)) == 4
    assert summary.sharding.computed == 4 and summary.sharding.retried == 0
    assert sum(worker.images for worker in summary.sharding.workers) == 21
    assert summary.computed == {"mobilenet_v2": 20, "identity": 20} and len(summary.skipped) == 1
    assert any("images/s over the cluster" in line for line in summary.lines())
    assert sum(line.lstrip().startswith("worker ") for line in summary.lines()) == 2
    # The store and its shards folder move together: the mapping is relative to the store's folder.
    moved = tmp_path / "moved"
    shutil.move(out.parent, moved)
    _assert_same_store(moved / "cache.h5", single)
    # Training reads it like any store (streamed rows through the mapping, checksums checked).
    from fusion import train_run

    run = train_run(moved / "cache.h5", tmp_path / "run", units=8, epochs=1, batch_size=8, ablation=False, verbose=0)
    assert set(run.model_names) >= {"fusion", "mobilenet_v2", "identity"}

    merged = tmp_path / "merged.h5"
    features.precompute(data, merged, BACKBONES, **OPTIONS, ray="local", workers=2, shard_rows=6, merge=True)
    _assert_same_store(merged, single)
    with h5py.File(merged, "r") as store:
        assert not store["features/mobilenet_v2"].is_virtual
    assert not Path(f"{merged}.shards").exists()


def test_a_store_without_its_shards_folder_is_one_line_not_zeros(cluster, data, tmp_path):
    import features
    from features.store import StoreError

    out = tmp_path / "cache.h5"
    features.precompute(data, out, ["identity"], **OPTIONS, ray="local", workers=2, shard_rows=32)
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(out, alone / "cache.h5")
    with pytest.raises(StoreError, match=r"keeps the /features/identity rows in shard files, and 1 of them are missing"):
        features.load_store(alone / "cache.h5")
    # --merge without --ray makes it self-contained.
    features.precompute(data, out, ["identity"], **OPTIONS, merge=True)
    shutil.copy(out, alone / "cache.h5")
    assert features.load_store(alone / "cache.h5").features["identity"].shape == (20, 3)


def _shard_worker_pids(title=b"ray::ShardWorker.compute", session=None):
    """Ray shard worker processes by their title (Ray sets `ray::ShardWorker.compute` while one runs a shard)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().startswith(title) and (
                        session is None or os.getsid(int(entry.name)) == session):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def test_a_worker_killed_mid_shard_is_retried_counted_and_the_store_is_undisturbed(cluster, data, tmp_path):
    import features

    # 40 px: a size the workers have not built, so each first shard builds its backbones (seconds to catch it in).
    options = dict(OPTIONS, input_size=40)
    reference = tmp_path / "single.h5"
    features.precompute(data, reference, BACKBONES, **options)
    from features.ray_precompute import start_workers, wait_until_up

    # This cluster's workers only (another test process may run a Ray of its own on the machine).
    actors = start_workers(ray, 2)
    wait_until_up(ray, actors)  # a worker an earlier test killed may still be restarting
    ours = set(ray.get([actor.ping.remote() for actor in actors]))
    killed = []

    def kill_one_worker_mid_shard():
        deadline = time.time() + 120
        while not killed and time.time() < deadline:
            for pid in set(_shard_worker_pids()) & ours:
                # Stopped first, then checked: a worker still titled as computing is caught mid-shard.
                os.kill(pid, signal.SIGSTOP)
                if pid in _shard_worker_pids():
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    break
                os.kill(pid, signal.SIGCONT)
            time.sleep(0.005)

    killer = threading.Thread(target=kill_one_worker_mid_shard, daemon=True)
    killer.start()
    out = tmp_path / "cache.h5"
    summary = features.precompute(data, out, BACKBONES, **options, ray="local", workers=2, shard_rows=6)
    killer.join()
    assert killed, "no worker was seen computing a shard"
    assert summary.sharding.retried >= 1, (killed, summary.sharding)
    assert any(f"{summary.sharding.retried} retried after a worker was lost" in line for line in summary.lines())
    _assert_same_store(out, reference)


def test_a_worker_lost_between_runs_is_waited_for_not_an_error(cluster, data, tmp_path):
    import features
    from features.ray_precompute import start_workers, wait_until_up

    actors = start_workers(ray, 2)
    wait_until_up(ray, actors)  # a worker an earlier test killed may still be restarting
    os.kill(ray.get(actors[0].ping.remote()), signal.SIGKILL)  # idle: Ray restarts it, no shard is lost
    summary = features.precompute(data, tmp_path / "cache.h5", ["identity"], **OPTIONS, ray="local", workers=2,
                                  shard_rows=8)
    assert summary.sharding.computed == 3 and summary.sharding.retried == 0


def test_a_killed_driver_run_again_reuses_the_finished_shards(cluster, data, single, tmp_path):
    import features

    out = tmp_path / "cache.h5"
    command = [sys.executable, str(ROOT / "run_precompute.py"), str(data), "--out", str(out), "--backbones",
               *BACKBONES, "--weights", "none", "--input-size", "32", "--views", "hflip", "--val-fraction", "0.25",
               "--test-fraction", "0.25", "--ray", "local", "--workers", "1", "--shard-rows", "3", "--no-progress"]
    driver = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        deadline = time.time() + 150
        while len(_shard_files(out)) < 2 and time.time() < deadline and driver.poll() is None:
            time.sleep(0.005)
        # Hold its worker still, so the kill comes mid-run whatever the speed of the machine.
        for pid in _shard_worker_pids(b"ray::ShardWorker", session=driver.pid):
            os.kill(pid, signal.SIGSTOP)
        finished_before = len(_shard_files(out))
        assert finished_before >= 2, "the driver did not finish two shards in time"
    finally:
        # kill -9 the driver and every process of its session (the Ray it started, its worker).
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
        for pid in _shard_worker_pids(b"ray::", session=driver.pid):
            os.kill(pid, signal.SIGKILL)
    with h5py.File(out, "r") as store:
        done_before = int(store["progress/mobilenet_v2"][()].sum())
    assert done_before == 0  # shards were on disk, not yet joined to the store
    summary = features.precompute(data, out, BACKBONES, **OPTIONS, ray="local", workers=2, shard_rows=3)
    assert summary.sharding.reused >= finished_before >= 2
    assert summary.sharding.reused + summary.sharding.computed == 7  # 21 rows in shards of 3
    _assert_same_store(out, single)


def test_adding_images_and_a_backbone_to_a_ray_store(cluster, tmp_path):
    import features

    data = _images(tmp_path / "images", per_class=6)
    out = tmp_path / "cache.h5"
    features.precompute(data, out, ["identity"], **OPTIONS, ray="local", workers=2, shard_rows=4)
    for index in range(6, 9):  # three new images of each class
        for label in ("class_0", "class_1"):
            shutil.copy(data / label / "image_0.png", data / label / f"new_{index}.png")
    # On Ray: the new images for the sharded backbone and a new backbone for all images.
    summary = features.precompute(data, out, ["identity", "mobilenet_v2"], **OPTIONS, on_change="add",
                                  ray="local", workers=2, shard_rows=4)
    assert summary.added_images == 6
    assert summary.computed == {"identity": 6, "mobilenet_v2": 18}
    # Without --ray as well: the new rows of the backbones kept in shards go to a shard file of this process.
    (data / "class_1" / "late.png").write_bytes((data / "class_1" / "image_1.png").read_bytes())
    summary = features.precompute(data, out, ["identity", "mobilenet_v2"], **OPTIONS, on_change="add")
    assert summary.added_images == 1 and summary.computed == {"identity": 1, "mobilenet_v2": 1}
    assert any("Shards (this process, 2048 rows per shard): 1 shard(s) computed" in line for line in summary.lines())
    reference = tmp_path / "reference.h5"
    shutil.copytree(data, tmp_path / "same_images")
    features.precompute(tmp_path / "same_images", reference, ["identity", "mobilenet_v2"], **OPTIONS)
    with h5py.File(out, "r") as got, h5py.File(reference, "r") as want:
        # Added rows come after the old ones; compare by path.
        order = {path: row for row, path in enumerate(want["images/path"][()])}
        rows = [order[path] for path in got["images/path"][()]]
        for backbone in ("identity", "mobilenet_v2"):
            np.testing.assert_allclose(got[f"features/{backbone}"][()].astype(np.float32),
                                       want[f"features/{backbone}"][()][rows].astype(np.float32), atol=2e-3, rtol=2e-3)
    features.load_store(out)


def test_two_drivers_on_one_store_the_second_is_refused(cluster, data, tmp_path):
    import features
    from features.store import StoreBusyError, store_lock

    out = tmp_path / "cache.h5"
    with store_lock(out.resolve()):
        with pytest.raises(StoreBusyError, match="Another run is writing"):
            features.precompute(data, out, ["identity"], **OPTIONS, ray="local", workers=2)


def test_workers_that_cannot_see_data_are_refused_in_one_line_before_any_shard(cluster, data, tmp_path, monkeypatch):
    import features
    from features import ray_precompute

    check_workers_see = ray_precompute.check_workers_see

    def on_a_node_without_data(ray_module, actors, settings, sample_path):
        # A node where DATA is not mounted: the workers look for DATA at a path that is not there.
        check_workers_see(ray_module, actors, dict(settings, data_root=str(tmp_path / "not-mounted")), sample_path)

    monkeypatch.setattr(ray_precompute, "check_workers_see", on_a_node_without_data)
    out = tmp_path / "cache.h5"
    with pytest.raises(ValueError, match=r"A Ray worker on host .* cannot see its input: DATA .*not-mounted is not a "
                                         r"folder there\. DATA and the folder of --out must be on storage every node"):
        features.precompute(data, out, ["identity"], **OPTIONS, ray="local", workers=2)
    assert _shard_files(out) == []


def test_cli_ray_run_prints_the_workers_and_saves_its_options(cluster, data, tmp_path, capsys):
    import json

    import run_precompute

    out = tmp_path / "cache.h5"
    code = run_precompute.main([str(data), "--out", str(out), "--backbones", "identity", "--weights", "none",
                                "--input-size", "16", "--ray", "local", "--workers", "2", "--shard-rows", "8",
                                "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "Ray (local, 2 worker(s), 8 rows per shard): 3 shard(s) computed, 0 reused" in printed
    assert printed.count(" worker ") >= 2 and "images/s" in printed
    options = json.loads(Path(f"{out}.options.json").read_text())
    assert options["ray"] == "local" and options["workers"] == 2 and options["shard_rows"] == 8


@pytest.mark.parametrize("argv, message", [
    (["--workers", "2"], r"workers applies to a run on Ray"),
    (["--ray", "local", "--shard-rows", "0"], r"shard_rows must be a positive integer. Received: shard_rows=0"),
    (["--ray", "local", "--workers", "0"], r"workers must be a positive integer"),
])
def test_bad_ray_options_are_one_line_before_any_work(data, tmp_path, capsys, argv, message):
    import re

    import run_precompute

    out = tmp_path / "cache.h5"
    with pytest.raises(SystemExit) as exit_info:
        run_precompute.main([str(data), "--out", str(out), "--backbones", "identity", "--weights", "none", *argv])
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err)
    assert not out.exists()


def test_without_ray_nothing_imports_it(tmp_path):
    data = write_two_class_images(tmp_path / "images", per_class=3)
    script = ("import sys, features; "
              f"features.precompute({str(data)!r}, {str(tmp_path / 'cache.h5')!r}, ['identity'], weights='none', "
              "progress=False); print('ray imported:', 'ray' in sys.modules)")
    printed = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
    assert "ray imported: False" in printed.stdout


class _Cluster:
    """What `_worker_resources` asks of Ray: the cluster's resources."""

    def __init__(self, resources):
        self.resources = resources

    def cluster_resources(self):
        return self.resources


@pytest.mark.parametrize("resources, workers, expected", [
    ({"CPU": 64.0, "GPU": 4.0}, None, (4, 16.0, 1)),  # one worker per GPU, the CPUs shared among them
    ({"CPU": 64.0, "GPU": 4.0}, 2, (2, 32.0, 1)),
    ({"CPU": 2.0}, 2, (2, 1.0, 0)),  # this machine: two workers of one core each
    ({"CPU": 16.0}, None, (8, 2.0, 0)),
])
def test_one_worker_per_gpu_and_cpu_workers_share_the_cores(resources, workers, expected):
    from features.ray_precompute import _worker_resources
    from features.shard_worker import thread_settings

    assert _worker_resources(_Cluster(resources), workers) == expected
    assert thread_settings(expected[1]) == {
        "TF_NUM_INTRAOP_THREADS": str(int(expected[1])), "TF_NUM_INTEROP_THREADS": "1",
        "OMP_NUM_THREADS": str(int(expected[1])),
        "XLA_FLAGS": f"--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads={int(expected[1])}"}


def test_shards_left_by_a_deleted_store_are_reused_only_for_unchanged_images(cluster, tmp_path):
    import features

    data = _images(tmp_path / "images", per_class=4)
    out = tmp_path / "cache.h5"
    features.precompute(data, out, ["identity"], **OPTIONS, ray="local", workers=2, shard_rows=3)
    out.unlink()  # the store deleted, its shards folder kept
    # One image replaced under the same name (another colour, another size on disk).
    from PIL import Image

    Image.new("RGB", (44, 52), (0, 200, 0)).save(data / "class_0" / "image_0.png")
    summary = features.precompute(data, out, ["identity"], **OPTIONS, ray="local", workers=2, shard_rows=3)
    assert summary.sharding.computed == 1 and summary.sharding.reused == 2  # 9 rows in shards of 3
    reference = tmp_path / "reference.h5"
    features.precompute(data, reference, ["identity"], **OPTIONS)
    _assert_same_store(out, reference, backbones=["identity"])
