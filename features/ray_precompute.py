"""The compute step of a run spread over Ray workers: shards planned here, computed by actors, joined to the store.

Ray Core actors, one per worker (`ShardWorker`), rather than a Ray Data `map_batches` pipeline:
each actor builds its backbones once and decodes its own images next to them, so only a
shard's row list crosses the cluster, never pixels; and each shard lands in a file of its own
whose name the driver chose, which is what lets a killed driver's finished shards be found and
reused, and a lost worker's shard be counted and given to another.

The driver (this module) holds the store's writer lock for the whole run; workers write only
their shard files. See `features.store._shards` for the shard files and how they join the store.
"""

import collections
import contextlib
import dataclasses
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

from features.shard_worker import ShardWorker, thread_settings
from features.store import (commit_copied, commit_mapped, plan_shards, read_finished, read_run_rows,
                            remove_unused_shards)

logger = logging.getLogger(__name__)

# A shard lost this many times (its worker died each time) stops the run: something kills the workers.
MAX_ATTEMPTS = 4
DEFAULT_SHARD_ROWS = 2048
# A lost worker is asked every PING_SECONDS whether it is back, MAX_PINGS times, before it is given up.
PING_SECONDS = 0.5
MAX_PINGS = 240
# Seconds the workers may take to start and answer (importing TensorFlow, waiting for free CPUs or GPUs).
START_TIMEOUT = 600


@dataclasses.dataclass(frozen=True)
class WorkerReport:
    """What one Ray worker did: its host and process, the shards and images it computed, and its seconds.

    `seconds` include `build_seconds`, the time the worker took to build and trace backbones it had
    not built before (a worker keeps them for the next run of the Ray session), so a run's steady
    part can be told from its start-up.
    """

    worker: int
    host: str
    pid: int
    shards: int
    images: int
    seconds: float
    build_seconds: float = 0.0

    @property
    def images_per_second(self):
        return self.images / self.seconds if self.seconds else 0.0


@dataclasses.dataclass(frozen=True)
class ShardingReport:
    """How a `--ray` run's shards went.

    Args:
        address: the Ray cluster joined ("local" for one started on this machine), None for this process.
        workers: one `WorkerReport` per worker.
        computed: shards computed in this run.
        reused: shards a stopped run had finished, found in the shards folder and reused.
        retried: shard attempts lost with their worker (killed, out of memory) and given out again.
        shard_rows: rows per shard.
        seconds: wall time from the first shard given out to the last one back.
        images: images in the shards computed in this run.
        compute_seconds: backbone -> seconds its predict calls took in the shards joined now.
        decode_seconds: seconds decoding and resizing took in them.
        decoded_images: images decoded in them.
    """

    address: str
    workers: tuple
    computed: int
    reused: int
    retried: int
    shard_rows: int
    seconds: float
    images: int
    compute_seconds: dict = dataclasses.field(default_factory=dict)
    decode_seconds: float = 0.0
    decoded_images: int = 0

    def lines(self):
        """The summary lines of the sharded compute: the cluster's images/s, then one line per worker."""
        rate = f", {self.images / self.seconds:.1f} images/s over the cluster" if self.seconds and self.images else ""
        where = f"Ray ({self.address}, {len(self.workers)} worker(s)" if self.address else "Shards (this process"
        lines = [f"  {where}, {self.shard_rows} rows per shard): "
                 f"{self.computed} shard(s) computed, {self.reused} reused from a stopped run, "
                 f"{self.retried} retried after a worker was lost{rate}"]
        for report in self.workers:
            lines.append(f"    worker {report.worker} on {report.host} (pid {report.pid}): {report.shards} shard(s), "
                         f"{report.images} images, {report.images_per_second:.1f} images/s")
        return lines


def check_ray_options(ray, workers, shard_rows):
    """Refuse bad `--ray`, `--workers` or `--shard-rows` values before any file is read."""
    if ray is not None and (not isinstance(ray, str) or not ray.strip()):
        raise ValueError(f"ray must be 'local', 'auto' or a cluster address such as 10.0.0.5:6379. "
                         f"Received: ray={ray!r}")
    if workers is not None and (not isinstance(workers, int) or isinstance(workers, bool) or workers < 1):
        raise ValueError(f"workers must be a positive integer, or None for the default. Received: workers={workers!r}")
    if not isinstance(shard_rows, int) or isinstance(shard_rows, bool) or shard_rows < 1:
        raise ValueError(f"shard_rows must be a positive integer. Received: shard_rows={shard_rows!r}")
    if ray is None and workers is not None:
        raise ValueError(f"workers applies to a run on Ray: add ray='local' (--ray local) or a cluster address. "
                         f"Received: workers={workers!r}, ray=None")


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ValueError("--ray needs the ray package: pip install 'ray>=2.9' (it is in requirements.txt). "
                         "Received: ray not installed") from None
    return ray


def connect(address, num_cpus=None):
    """Join the Ray cluster at `address` ("local" starts one here); returns (ray, whether this call started it).

    A Ray already initialised in this process (a notebook, a test's `ray.init(num_cpus=2)`) is used as it is.
    """
    ray = _import_ray()
    if ray.is_initialized():
        return ray, False
    # The driver's own logs stay quiet; a worker's error still reaches the driver as an exception.
    options = dict(include_dashboard=False, log_to_driver=False, configure_logging=True, logging_level=logging.WARNING)
    if address == "local":
        ray.init(num_cpus=num_cpus, **options)
    else:
        try:
            ray.init(address=address, **options)
        except ConnectionError as error:
            raise ValueError(f"No Ray cluster answers at {address!r} ({error}). Start one with `ray start --head` "
                             f"(or name a running cluster's address), or use --ray local to run Ray on this machine "
                             f"only. Received: ray={address!r}") from None
    return ray, True


def _worker_resources(ray, workers):
    """(workers, CPUs per worker, GPUs per worker) from the cluster's resources."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    cpus = float(resources.get("CPU", 1))
    # One worker per GPU: a backbone's batch fills one GPU, and two workers on one would fight for its memory.
    workers = workers or gpus or max(1, int(cpus) // 2)
    return workers, cpus / workers, 1 if gpus else 0


def _package_root():
    """The folder that holds the `features` package, so workers import the driver's code."""
    return str(Path(__file__).resolve().parent.parent)


# Workers started in this process, by (Ray job, workers, CPUs and GPUs each, Keras backend): a second
# run in the same Ray session (a notebook cell run again) reuses them, backbones already built.
_WORKERS = {}


def start_workers(ray, workers):
    """The worker actors for this run: started now, or those an earlier run of this Ray session started."""
    import keras

    workers, cpus, gpus = _worker_resources(ray, workers)
    key = (ray.get_runtime_context().get_job_id(), workers, cpus, gpus, keras.backend.backend())
    if key not in _WORKERS:
        # One pool at a time: another pool's actors would hold the CPUs or GPUs these need.
        for old_actors in _WORKERS.values():
            for old_actor in old_actors:
                with contextlib.suppress(Exception):  # gone already with its Ray session
                    ray.kill(old_actor)
        _WORKERS.clear()
        threads = max(1, int(cpus))
        path = [_package_root()] + [part for part in os.environ.get("PYTHONPATH", "").split(os.pathsep) if part]
        environment = {**thread_settings(threads), "KERAS_BACKEND": keras.backend.backend(),
                       "PYTHONPATH": os.pathsep.join(path)}
        # max_restarts=-1: Ray starts a lost worker again; the driver gives its shard out again and counts it.
        actor = ray.remote(ShardWorker).options(num_cpus=cpus, num_gpus=gpus, max_restarts=-1, max_task_retries=0,
                                                runtime_env={"env_vars": environment})
        _WORKERS[key] = [actor.remote() for _ in range(workers)]
    return _WORKERS[key]


def _no_room(ray, actors):
    return RuntimeError(f"{len(actors)} Ray worker(s) did not start within {START_TIMEOUT} s: the cluster has no room "
                        f"for them (resources: {ray.available_resources()}). Use fewer --workers, or free the cluster.")


def wait_until_up(ray, actors):
    """Wait for workers Ray is restarting (one lost in an earlier run of the session) to answer again."""
    for actor in actors:
        for _ in range(MAX_PINGS):
            try:
                ray.get(actor.ping.remote(), timeout=START_TIMEOUT)
                break
            except ray.exceptions.RayActorError:  # restarting: asked again shortly
                time.sleep(PING_SECONDS)
            except ray.exceptions.GetTimeoutError:
                raise _no_room(ray, actors) from None
        else:
            raise RuntimeError(f"A Ray worker lost earlier did not come back after {MAX_PINGS * PING_SECONDS:.0f} s; "
                               f"restart Ray (ray.shutdown() in a notebook, or `ray stop` and `ray start`).")


def check_workers_see(ray, actors, settings, sample_path):
    """Refuse, in one line, a run whose workers cannot see DATA or write the shards folder."""
    wait_until_up(ray, actors)
    for host, problem in ray.get([actor.where.remote(settings, sample_path) for actor in actors]):
        if problem:
            raise ValueError(
                f"A Ray worker on host {host} cannot see its input: {problem}. DATA and the folder of --out must be "
                f"on storage every node sees, at the same path (a shared file system). Received: "
                f"DATA={settings['data_root']}, shards folder={settings['shards_folder']}")


def compute_on_ray(ray, actors, tasks, settings, store_path, lacking, virtual, progress):
    """Give `tasks` out to `actors` one at a time each, retry shards lost with a worker, join each to the store.

    Shards whose backbones are all ordinary datasets are copied into the store as they come back;
    those of virtual backbones are mapped in one rewrite at the end (one copy of the small store,
    not one per shard).

    Returns:
        (results, retried, worker reports by actor index, seconds).
    """
    from tqdm import tqdm

    results, retried = [], 0
    attempts = collections.Counter()
    pending = collections.deque(tasks)
    in_flight = {}  # a shard's call -> (worker index, task)
    recovering = {}  # a lost worker's ping -> (worker index, pings so far): it takes shards again once it answers
    idle = list(range(len(actors)))
    stats = {index: dict(host="?", pid=0, shards=0, images=0, seconds=0.0, build=0.0) for index in range(len(actors))}
    bar = tqdm(total=sum(len(task.rows) for task in tasks), unit="img", file=sys.stderr, disable=not progress,
               desc="precompute (ray)")
    started = time.perf_counter()
    try:
        while pending or in_flight:
            while pending and idle:
                index, task = idle.pop(), pending.popleft()
                attempts[task.index] += 1
                in_flight[actors[index].compute.remote(task, settings)] = (index, task)
            if not in_flight and not recovering:
                raise RuntimeError(f"Every Ray worker was lost and none came back; {len(pending)} shard(s) are left. "
                                   f"Finished shards are kept: run the same command again to continue.")
            ready, _ = ray.wait(list(in_flight) + list(recovering), num_returns=1)
            if ready[0] in recovering:
                index, pings = recovering.pop(ready[0])
                try:
                    ray.get(ready[0])
                    idle.append(index)
                except ray.exceptions.RayActorError:
                    if pings < MAX_PINGS:  # still restarting
                        time.sleep(PING_SECONDS)
                        recovering[actors[index].ping.remote()] = (index, pings + 1)
                continue
            index, task = in_flight.pop(ready[0])
            try:
                host, pid, seconds, build = ray.get(ready[0])
            except ray.exceptions.RayActorError:
                # The worker died mid-shard (killed, out of memory): Ray restarts it, and the shard goes out
                # again, to the first worker free (this one once it answers again).
                if attempts[task.index] >= MAX_ATTEMPTS:
                    raise RuntimeError(f"Shard {task.file} was lost with its worker {attempts[task.index]} times; "
                                       f"something kills the workers (out of memory?). Finished shards are kept: run "
                                       f"the same command again to continue.") from None
                retried += 1
                logger.warning("A Ray worker was lost computing %s; the shard is given out again", task.file)
                pending.appendleft(task)
                recovering[actors[index].ping.remote()] = (index, 1)
                continue
            except ray.exceptions.RayTaskError as error:
                # An error of ours in the worker (NaN features, a damaged weights file): the same one line here.
                cause = error.cause if getattr(error, "cause", None) is not None else error
                raise cause from None
            idle.append(index)
            results.append(_join_finished(store_path, task, (host, pid, seconds, build), stats[index], lacking,
                                          virtual))
            bar.update(len(task.rows))
    finally:
        bar.close()
    return results, retried, stats, time.perf_counter() - started


def compute_here(tasks, settings, store_path, lacking, virtual, progress):
    """Compute `tasks` one after another in this process (a run without Ray on a store kept in shards).

    Returns what `compute_on_ray` returns, with one worker: this process.
    """
    from tqdm import tqdm

    worker, results = ShardWorker(), []
    record = dict(host="?", pid=0, shards=0, images=0, seconds=0.0, build=0.0)
    started = time.perf_counter()
    with tqdm(total=sum(len(task.rows) for task in tasks), unit="img", file=sys.stderr, disable=not progress,
              desc="precompute") as bar:
        for task in tasks:
            results.append(_join_finished(store_path, task, worker.compute(task, settings), record, lacking,
                                          virtual))
            bar.update(len(task.rows))
    return results, 0, {0: record}, time.perf_counter() - started


def _join_finished(store_path, task, answer, record, lacking, virtual):
    """Read the shard a worker reported finished, copy in its ordinary backbones, count it; returns its result.

    `answer` is the worker's (host, pid, seconds, build seconds); `record` its running totals.
    """
    host, pid, seconds, build = answer
    folder = Path(store_path).parent
    result = read_finished(folder, task)
    if result is None:
        raise RuntimeError(f"Worker on {host} reported shard {task.file} finished, but the driver cannot read "
                           f"it in {folder}: the shards folder must be on storage the driver and every worker "
                           f"see. Received: shard={task.file}")
    _commit_as_it_comes(store_path, result, lacking, virtual)
    record.update(host=host, pid=pid, shards=record["shards"] + 1, images=record["images"] + len(task.rows),
                  seconds=record["seconds"] + seconds, build=record["build"] + build)
    return result


def _commit_as_it_comes(store_path, result, lacking, virtual):
    ordinary = [name for name in result.task.backbones if name not in virtual]
    if ordinary:
        commit_copied(store_path, result, lacking, ordinary, count_decode=True)


def commit_at_end(store_path, results, lacking, virtual):
    """Map the virtual backbones onto every finished shard; delete the shard files that were copied in instead."""
    mapped = [result for result in results if any(name in virtual for name in result.task.backbones)]
    # A shard with an ordinary backbone had its decode cost counted when it was copied in.
    commit_mapped(store_path, mapped, lacking, virtual,
                  count_decode=lambda result: all(name in virtual for name in result.task.backbones))
    mapped_files = {result.task.file for result in mapped}
    remove_unused_shards(store_path, [result.task.file for result in results if result.task.file not in mapped_files])


def run_sharded(store_path, paths, todo_rows, done, active, recipes, virtual, settings, *, address,
                workers, shard_rows, progress):
    """Compute rows `todo_rows` of the store in shards, on Ray or here; returns (computed, skipped now, report).

    `computed` is backbone -> rows computed, the report a `ShardingReport`.

    Args:
        store_path: the store (under this process's writer lock).
        paths: every row's path relative to DATA.
        todo_rows: sorted rows some backbone of `active` lacks (unreadable rows left out).
        done: backbone -> bool array of the rows it has.
        active: the backbones lacking rows.
        recipes: backbone -> recipe attributes (they name the shard files' contents).
        virtual: the backbones whose store datasets are virtual (mapped onto shards, not copied).
        settings: the workers' settings (see `ShardWorker`).
        address: "local", "auto" or a cluster address; None computes the shards in this process.
        workers: Ray workers to start (None: one per GPU, else half the CPUs).
        shard_rows: rows per shard.
        progress: show a progress bar.
    """
    lacking = {name: ~done[name] for name in active}
    # The store's fingerprints name each row's file as it was: a replaced image makes another shard.
    fingerprints = read_run_rows(store_path).fingerprints
    tasks = plan_shards(store_path, paths, fingerprints, todo_rows, lacking, shard_rows,
                        {name: recipes[name] for name in active}, settings["extra_views"])
    folder = Path(store_path).parent
    reused = [result for result in (read_finished(folder, task) for task in tasks) if result is not None]
    for result in reused:
        result.reused = True
        _commit_as_it_comes(store_path, result, lacking, virtual)
    reused_indexes = {result.task.index for result in reused}
    to_compute = [task for task in tasks if task.index not in reused_indexes]
    results, retried, stats, seconds = [], 0, {}, 0.0
    if address is None:
        if to_compute:
            results, retried, stats, seconds = compute_here(to_compute, settings, store_path, lacking, virtual,
                                                            progress)
        return _finish(store_path, reused, results, retried, stats, seconds, lacking, virtual, done, active,
                       address, shard_rows)
    ray, started = connect(address)
    try:
        if to_compute:
            actors = start_workers(ray, workers)
            check_workers_see(ray, actors, settings, to_compute[0].paths[0])
            results, retried, stats, seconds = compute_on_ray(ray, actors, to_compute, settings, store_path, lacking,
                                                              virtual, progress)
    finally:
        if started:
            ray.shutdown()
    return _finish(store_path, reused, results, retried, stats, seconds, lacking, virtual, done, active, address,
                   shard_rows)


def _finish(store_path, reused, results, retried, stats, seconds, lacking, virtual, done, active, address,
            shard_rows):
    commit_at_end(store_path, reused + results, lacking, virtual)
    computed = {name: 0 for name in done}
    skipped_now = 0
    for result in reused + results:
        readable = np.ones(len(result.task.rows), bool)
        readable[result.unreadable] = False
        skipped_now += len(result.unreadable)
        for name in result.task.backbones:
            computed[name] += int(np.sum(lacking[name][result.task.rows] & readable))
    reports = tuple(WorkerReport(index + 1, record["host"], record["pid"], record["shards"], record["images"],
                                 record["seconds"], record["build"]) for index, record in sorted(stats.items()))
    joined = reused + results
    compute_seconds = {name: float(sum(r.costs[name][0] for r in joined if name in r.costs)) for name in active}
    report = ShardingReport(address, reports, len(results), len(reused), retried, shard_rows, seconds,
                            sum(len(result.task.rows) for result in results), compute_seconds,
                            float(sum(r.costs["decode"][0] for r in joined)),
                            int(sum(r.costs["decode"][1] for r in joined)))
    return computed, skipped_now, report
