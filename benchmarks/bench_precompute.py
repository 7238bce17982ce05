"""Measure the precompute pipeline against the naive recipe and the compute bound, side by side.

    python benchmarks/bench_precompute.py --images 40 --backbones resnet50          # quick check
    python benchmarks/bench_precompute.py                                           # the target run

On the same photos, in one process: start-up first, while the process has built nothing yet:
`features.precompute` of `--startup-images` photos, timed from the call to the first row
written, with each backbone's build + trace. Then, in steady state (every model built and
traced beforehand): (a) this pipeline (`features.precompute`), (b) the naive recipe: for each
backbone `keras.utils.image_dataset_from_directory` at its size, `preprocess_input`,
`model.predict` (only for backbones from `keras.applications`; others have no such recipe and
are said to be skipped), (c) the compute bound: the same models, same batches, on tensors
already in memory. Wall and CPU seconds of the process are printed: the cores may be shared,
so note the load average printed at the start and end. Prints a/b, a/c, the per-image cost of
decoding, where the pipeline's time went, and the gain of reduced precision
(`--mixed-precision`: mixed_bfloat16 on CPUs, mixed_float16 on GPUs). Last, per backbone, the
engines table (`--engines`, TensorFlow only): one in-memory batch of 16 through
`predict_on_batch`, a plain `tf.function`, one with XLA, and under the reduced precision where
the hardware has it, beside the precompute path on the same batch (`predict_in_batches` of
its `feature_extractor`, one call), with the path's ratio to the fastest correct engine.
Weights are random (`none`): speed does not depend on them. Any registry name is accepted.

    python benchmarks/bench_precompute.py --ray-workers 2 --images 64 --size 640x480    # Ray vs one process

With `--ray-workers N`, only the Ray comparison runs instead, on the same photos: (1) one process,
steady state (models built beforehand); (2) `ray="local"` with N workers on a Ray started once
here (`ray.init(num_cpus=os.cpu_count())`): a first small run whose time is the workers' start-up
(actor processes, TensorFlow import, model build + trace; the workers then stay up, models built,
for the next run of the Ray session), then the timed run, printed whole (store set-up and joining
the shards included) and as its steady part (the sharding report's seconds, first shard out to
last back, less the workers' mean build + trace of models new to them), and Ray/single of both; (3) the
coordinator limit: the zero-cost `identity` backbone on `--small-images` small generated JPEGs,
so that what is left is the pipeline's own cost per image: images/s and ms per image on Ray and
in one process, and the driver's CPU per image.
"""

import argparse
import concurrent.futures
import contextlib
import importlib
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

# features and fusion come from the installed project: `pip install -e .` (make bench runs it).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _make_photo(path, width, height, seed):
    import numpy as np
    from PIL import Image

    # Photo-like: smooth colour gradients, mid-scale structure and sensor-like noise, so that
    # the JPEG is as large (and as slow to decode) as a camera photo of that size.
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((width, height), Image.BICUBIC)
    detail = Image.fromarray(rng.integers(78, 178, (height // 12, width // 12, 3), dtype=np.uint8))
    detail = detail.resize((width, height), Image.BILINEAR)
    photo = np.asarray(coarse, np.int16) + np.asarray(detail, np.int16) - 128
    photo += rng.integers(-8, 9, (height, width, 1), dtype=np.int16)
    Image.fromarray(np.clip(photo, 0, 255).astype(np.uint8)).save(path, quality=90)


def _make_photos(folder, count, width, height):
    paths = []
    for index in range(count):
        class_folder = Path(folder) / f"class_{index % 2}"
        class_folder.mkdir(parents=True, exist_ok=True)
        paths.append(class_folder / f"photo_{index:04d}.jpg")
    with concurrent.futures.ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(_make_photo, paths, [width] * count, [height] * count, range(count)))


def _tiny_copy(data, folder, count=3):
    # A few of the same photos, in one class folder: for building and tracing beforehand, or timing start-up.
    target = Path(folder) / "class_0"
    target.mkdir(parents=True)
    for path in sorted(Path(data).rglob("*.jpg"))[:count]:
        shutil.copy(path, target / path.name)
    return folder


def _naive_dataset(data, size, batch_size, preprocess):
    import keras

    dataset = keras.utils.image_dataset_from_directory(
        data, image_size=(size, size), batch_size=batch_size, shuffle=False, labels="inferred", verbose=False)
    return dataset.map(lambda images, labels: preprocess(images))


def _source(name):
    from features.backbones import get_backbone_spec

    # Registry entries from keras.applications have no `source` field.
    return getattr(get_backbone_spec(name), "source", "keras.applications")


def _naive_models(tiny, backbones, sizes):
    """Build each naive model and trace its predict step on two batch shapes. Returns (models, seconds)."""
    import keras

    from features.backbones import get_backbone_spec

    models, seconds = {}, {}
    for name in backbones:
        started = time.perf_counter()
        spec = get_backbone_spec(name)
        keras.utils.set_random_seed(0)
        model = getattr(keras.applications, spec.constructor)(
            include_top=False, weights=None, pooling="avg", input_shape=(sizes[name], sizes[name], 3))
        preprocess = importlib.import_module(f"keras.applications.{spec.preprocess_module}").preprocess_input
        # Batches of 2 then 1: predict's tf.function retraces once to an any-batch-size signature.
        model.predict(_naive_dataset(tiny, sizes[name], 2, preprocess), verbose=0)
        models[name] = (model, preprocess)
        seconds[name] = time.perf_counter() - started
    return models, seconds


def _traces(model):
    # How often predict's tf.function has traced (TensorFlow backend only; else 0).
    count = getattr(model.predict_function, "experimental_get_tracing_count", None)
    return count() if count else 0


def _naive(data, models, sizes, batch_size):
    """Run the naive recipe with the prebuilt models. Returns how often predict traced again."""
    retraced = 0
    for name, (model, preprocess) in models.items():
        before = _traces(model)
        model.predict(_naive_dataset(data, sizes[name], batch_size, preprocess), verbose=0)
        retraced += _traces(model) - before
    return retraced


def _compute_bound(backbones, sizes, poolings, count, batch_size, precision="float32"):
    import numpy as np

    from features.extractors import feature_extractor, predict_in_batches

    seconds = 0.0
    for name in backbones:
        # `create_backbone(name, weights="none")` through the extractor cache: built and traced before.
        model, _ = feature_extractor(name, sizes[name], None, poolings[name], 0, precision)
        images = np.random.default_rng(0).uniform(0, 255, (count, sizes[name], sizes[name], 3)).astype("float32")
        started = time.perf_counter()
        predict_in_batches(model, images, batch_size)
        seconds += time.perf_counter() - started
    return seconds


@contextlib.contextmanager
def _startup_clock():
    """Benchmark hook: yields a dict that gets "first_row", the time the store's first computed row was marked
    done, and "build", backbone name -> seconds `feature_extractor` took to build and trace it."""
    from features import extractors, store

    real_filler, real_extractor = store.RowFiller, extractors.feature_extractor
    clock = {"build": {}}

    class ClockedFiller(real_filler):
        def mark_done(self, backbone, rows):
            super().mark_done(backbone, rows)
            clock.setdefault("first_row", time.perf_counter())

    def clocked_extractor(name, *args):
        started = time.perf_counter()
        model, built = real_extractor(name, *args)
        if built:
            clock["build"][name] = time.perf_counter() - started
        return model, built

    # The writer thread opens `store.RowFiller` and ExtractorSet calls `extractors.feature_extractor` at run time.
    store.RowFiller, extractors.feature_extractor = ClockedFiller, clocked_extractor
    try:
        yield clock
    finally:
        store.RowFiller, extractors.feature_extractor = real_filler, real_extractor


ENGINE_BATCH = 16
ENGINES = ("function", "xla", "mixed", "mixed_xla")
# Largest relative difference (max |a - b| / max |b|) from predict_on_batch for an engine to count
# as correct: float32 engines differ only by the order of sums; reduced precision keeps ~3 digits.
_FLOAT32_TOLERANCE = 1e-4
_MIXED_TOLERANCE = 0.05


def _reduced_precision_available(policy):
    """Why `policy` cannot run fast here, or None when it can: bf16 needs avx512_bf16 or amx_bf16 (or a GPU)."""
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return None
    if policy == "mixed_float16":
        return "mixed_float16 needs a GPU"
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return "no /proc/cpuinfo to check the CPU for bfloat16"
    return None if flags & {"avx512_bf16", "amx_bf16"} else "this CPU has neither avx512_bf16 nor amx_bf16"


def _relative_difference(result, reference):
    import numpy as np

    return float(np.abs(result - reference).max() / max(float(np.abs(reference).max()), 1e-30))


def _engine_table(name, size, pooling, chosen, mixed, rounds):
    """Time one batch of 16 through each engine and the precompute path; print the table and the path's ratios."""
    import numpy as np
    import tensorflow as tf

    from features.extractors import feature_extractor, predict_in_batches

    images = np.random.default_rng(1).uniform(0, 255, (ENGINE_BATCH, size, size, 3)).astype("float32")

    def function(model, jit_compile):
        # As the precompute path's: any batch size, inference mode, float32 out.
        signature = [tf.TensorSpec((None, size, size, 3), tf.float32)]
        compiled = tf.function(lambda batch: tf.cast(model(batch, training=False), tf.float32),
                               input_signature=signature, jit_compile=jit_compile)
        return lambda batch: compiled(batch).numpy()

    # label -> (run one batch, precision); the precompute path's own rows are not engines.
    model, _ = feature_extractor(name, size, None, pooling, 0, "float32")
    engines = {"predict_on_batch": (lambda batch: np.asarray(model.predict_on_batch(batch)), "float32")}
    if "function" in chosen:
        engines["tf.function"] = (function(model, False), "float32")
    if "xla" in chosen:
        engines["tf.function, XLA"] = (function(model, True), "float32")
    paths = {"float32": "precompute path"}
    engines[paths["float32"]] = (lambda batch: predict_in_batches(model, batch, ENGINE_BATCH), "float32")
    unavailable = _reduced_precision_available(mixed)
    if not unavailable:
        mixed_model, _ = feature_extractor(name, size, None, pooling, 0, mixed)
        if "mixed" in chosen:
            engines[f"{mixed} tf.function"] = (function(mixed_model, False), mixed)
        if "mixed_xla" in chosen:
            engines[f"{mixed} tf.function, XLA"] = (function(mixed_model, True), mixed)
        paths[mixed] = f"precompute path, {mixed}"
        engines[paths[mixed]] = (lambda batch: predict_in_batches(mixed_model, batch, ENGINE_BATCH), mixed)
    first_call, differences, seconds = {}, {}, {label: [] for label in engines}
    reference = None
    for label, (engine, _) in engines.items():
        started = time.perf_counter()
        features = np.asarray(engine(images), np.float32)
        first_call[label] = time.perf_counter() - started
        reference = features if reference is None else reference
        differences[label] = _relative_difference(features, reference)
        engine(images)  # some kernels set up on the second call too
    # Interleaved rounds, best per engine: a job sharing the cores only ever slows a call down. Each round
    # starts one engine later, so that none always follows the same one (XLA's threads spin for a while).
    labels = list(engines)
    for round_index in range(rounds):
        for label in labels[round_index % len(labels):] + labels[:round_index % len(labels)]:
            engine = engines[label][0]
            started = time.perf_counter()
            engine(images)
            seconds[label].append(time.perf_counter() - started)
    speed = {label: ENGINE_BATCH / min(seconds[label]) for label in engines}
    print(f"  {name} at {size} px, pooling {pooling}, batch {ENGINE_BATCH}, best of {rounds} interleaved rounds:",
          flush=True)
    for label, (_, precision) in engines.items():
        tolerance = _FLOAT32_TOLERANCE if precision == "float32" else _MIXED_TOLERANCE
        correct = differences[label] <= tolerance
        print(f"    {label:34s} {speed[label]:7.2f} img/s  first call {first_call[label]:5.1f} s  "
              f"max rel. diff from predict_on_batch {differences[label]:.1e}"
              + ("" if correct else f" > {tolerance:g}: wrong, left out of the ratios"), flush=True)
        if not correct:
            speed[label] = None
    for precision, path in paths.items():
        candidates = {label: speed[label] for label, (_, engine_precision) in engines.items()
                      if engine_precision == precision and label != path and speed[label]}
        if candidates and speed[path]:
            fastest = max(candidates, key=candidates.get)
            print(f"    precompute path / fastest {precision} engine ({fastest}): "
                  f"{speed[path] / candidates[fastest]:.2f} (target >= 0.90)", flush=True)
    if unavailable:
        print(f"    {mixed} engines skipped: {unavailable}", flush=True)


def _decode_costs(data, backbones, sizes_by_name, samples=8):
    """Single-thread seconds per image: the pipeline's decode+resize vs the naive decodes+resizes."""
    import tensorflow as tf

    from features.compute import _prepare_image

    paths = sorted(str(path) for path in Path(data).rglob("*.jpg"))[:samples]
    all_sizes = [sizes_by_name[name] for name in backbones]
    sizes = sorted(set(all_sizes))
    _prepare_image(paths[0], max(sizes), sizes, ())
    started = time.perf_counter()
    for path in paths:
        _prepare_image(path, max(sizes), sizes, ())
    pipeline = (time.perf_counter() - started) / len(paths)
    started = time.perf_counter()
    for path in paths:
        for size in all_sizes:  # as image_dataset_from_directory: full decode, bilinear resize
            image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
            tf.image.resize(image, (size, size), method="bilinear").numpy()
    naive = (time.perf_counter() - started) / len(paths)
    return pipeline, naive


def _load():
    return "load average %.2f %.2f %.2f" % os.getloadavg()


def _auto_shard_rows(count, workers):
    # About four shards per worker, so that no worker idles long at the end; at most 256 rows.
    return max(1, min(256, -(-count // (4 * workers))))


def _ray_run(data, out, backbones, common, workers, shard_rows):
    """One `precompute(ray="local")`; returns (summary, whole-call seconds, driver CPU seconds, steady seconds).

    Steady seconds: the sharding report's (first shard given out to the last back) less the workers' mean
    model build + trace of backbones new to them (0 once a first run of the session built them).
    """
    from features.pipeline import precompute

    started, cpu = time.perf_counter(), time.process_time()
    summary = precompute(data, out, backbones, ray="local", workers=workers, shard_rows=shard_rows, **common)
    wall, driver_cpu = time.perf_counter() - started, time.process_time() - cpu
    sharding = summary.sharding
    builds = [report.build_seconds for report in sharding.workers] or [0.0]
    return summary, wall, driver_cpu, sharding.seconds - sum(builds) / len(builds)


def _ray_benchmark(args, data, scratch, backbones, common):
    """Print one process against Ray on the same photos, then the coordinator limit with `identity`."""
    import ray

    from features.backbones import check_input_size
    from features.compute import _prepare_image
    from features.pipeline import precompute

    workers = args.ray_workers
    photos = sorted(Path(data).rglob("*.jpg"))
    count = len(photos)
    shard_rows = args.shard_rows or _auto_shard_rows(count, workers)
    tiny = _tiny_copy(data, os.path.join(scratch, "tiny"))
    sizes = {name: check_input_size(name, args.input_size) for name in backbones}
    pipeline_cost, _ = _decode_costs(data, backbones, sizes)
    print(f"decode+resize per image, one thread: {pipeline_cost * 1000:.1f} ms (the pipeline's: once, reduced DCT "
          f"scale, each distinct size)", flush=True)

    started = time.perf_counter()
    precompute(tiny, os.path.join(scratch, "warm_single.h5"), backbones, **common)
    print(f"one process, build + trace of every backbone (not timed below): {time.perf_counter() - started:.1f} s",
          flush=True)
    cpu = time.process_time()
    single = precompute(data, os.path.join(scratch, "single.h5"), backbones, **common)
    print(f"(1) one process, steady state: {single.seconds:7.1f} s  {count / single.seconds:6.2f} img/s  "
          f"(CPU {time.process_time() - cpu:.0f} s; compute {single.timings['compute']:.1f} s)", flush=True)

    started = time.perf_counter()
    # As precompute's own `connect`, but with every CPU here; precompute then uses this Ray and leaves it running.
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=True,
             logging_level=logging.WARNING)
    print(f"ray.init(num_cpus={os.cpu_count()}): {time.perf_counter() - started:.1f} s; {workers} workers, "
          f"{shard_rows} rows per shard (--shard-rows), {_load()}", flush=True)
    try:
        warm_data = _tiny_copy(data, os.path.join(scratch, "ray_warm"), workers)
        warm, warm_wall, _, _ = _ray_run(warm_data, os.path.join(scratch, "ray_warm.h5"), backbones, common,
                                         workers, 1)
        builds = [report.build_seconds for report in warm.sharding.workers]
        print(f"(2) Ray start-up, a first run of {workers} photos, one per worker: whole call {warm_wall:.1f} s, "
              f"of which before the first shard went out {warm_wall - warm.sharding.seconds:.1f} s (actors start, "
              f"import TensorFlow; store set-up) and model build + trace on the first shard "
              f"{max(builds):.1f} s (longest worker)", flush=True)
        timed, wall, driver_cpu, steady = _ray_run(data, os.path.join(scratch, "ray.h5"), backbones, common,
                                                   workers, shard_rows)
        sharding = timed.sharding
        mean_build = sum(report.build_seconds for report in sharding.workers) / len(sharding.workers)
        print(f"(2) Ray, {workers} workers:  whole call {wall:7.1f} s  {count / wall:6.2f} img/s  (store set-up "
              f"and joining included); first shard out to last back {sharding.seconds:.1f} s; steady (that less the workers' "
              f"mean build + trace {mean_build:.1f} s) {steady:7.1f} s  {count / steady:6.2f} img/s  "
              f"(driver CPU {driver_cpu:.1f} s)", flush=True)
        for report in sharding.workers:
            print(f"      worker {report.worker} (pid {report.pid}): {report.shards} shard(s), {report.images} images, "
                  f"{report.seconds:.1f} s of which build + trace {report.build_seconds:.1f} s", flush=True)
        print(f"Ray/single, steady: {single.seconds / steady:.2f} (target >= 0.85 with 2 workers on the heavy five)",
              flush=True)
        print(f"Ray/single, whole call: {single.seconds / wall:.2f}", flush=True)

        # The coordinator limit: a zero-cost model on small images leaves only the pipeline's own cost per image.
        width, height = (int(value) for value in args.small_size.split("x"))
        small = os.path.join(scratch, "small")
        started = time.perf_counter()
        _make_photos(small, args.small_images, width, height)
        small_paths = sorted(str(path) for path in Path(small).rglob("*.jpg"))
        sample = small_paths[:200]
        _prepare_image(sample[0], 32, [32], ())
        decoding = time.perf_counter()
        for path in sample:
            _prepare_image(path, 32, [32], ())
        decode = (time.perf_counter() - decoding) / len(sample)
        small_rows = args.small_shard_rows or _auto_shard_rows(len(small_paths), workers)
        print(f"coordinator limit: identity (no network) on {len(small_paths)} JPEGs of {width}x{height} (generated "
              f"in {decoding - started:.0f} s; decode+resize {decode * 1000:.2f} ms per image, one thread), "
              f"{small_rows} rows per shard, {_load()}", flush=True)
        precompute(os.path.join(scratch, "tiny"), os.path.join(scratch, "warm_identity.h5"), ["identity"], **common)
        identity_single = precompute(small, os.path.join(scratch, "identity.h5"), ["identity"], **common)
        single_rate = len(small_paths) / identity_single.seconds
        print(f"(3) one process, identity:   {identity_single.seconds:6.1f} s  {single_rate:7.0f} img/s  "
              f"{1000 / single_rate:.3f} ms per image", flush=True)
        identity, wall, driver_cpu, steady = _ray_run(small, os.path.join(scratch, "identity_ray.h5"), ["identity"],
                                                      common, workers, small_rows)
        rate = len(small_paths) / steady
        print(f"(3) Ray, {workers} workers, identity: whole call {wall:6.1f} s  {len(small_paths) / wall:7.0f} img/s "
              f"(store set-up and joining included); steady {steady:6.1f} s  {rate:7.0f} img/s  {1000 / rate:.3f} ms per image; "
              f"driver CPU {driver_cpu * 1000 / len(small_paths):.3f} ms per image "
              f"({len(small_paths) / max(driver_cpu, 1e-9):.0f} img/s per driver core)", flush=True)
        print(f"coordinator limit, images/s one driver coordinates (Ray steady, identity): {rate:.0f} "
              f"(target > 2000)", flush=True)
        print(f"Ray/single, identity: {identity_single.seconds / steady:.2f}", flush=True)
    finally:
        ray.shutdown()
    print(_load())


def main(argv=None):
    """Run the measurements and print start-up, images/s and the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="folder of class folders of JPEGs (default: generate them)")
    parser.add_argument("--images", type=int, default=200, help="photos to generate (default: 200)")
    parser.add_argument("--size", default="3000x2000", help="generated photo size WxH (default: 3000x2000)")
    parser.add_argument("--backbones", nargs="+",
                        default=["xception", "resnet50", "inception_v3", "densenet121", "vgg19"],
                        help="registry names (default: xception resnet50 inception_v3 densenet121 vgg19)")
    parser.add_argument("--input-size", type=int, default=None,
                        help="input size of every backbone, for quick runs (default: None, each its native size)")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size for all three (default: 32)")
    parser.add_argument("--startup-images", type=int, default=16,
                        help="photos of the start-up run, the first thing timed (default: 16)")
    parser.add_argument("--decode-workers", type=int, default=None,
                        help="pipeline decode threads (default: None, 4 or the CPU count if fewer)")
    parser.add_argument("--mixed-precision", choices=["mixed_bfloat16", "mixed_float16"], default="mixed_bfloat16",
                        help="reduced precision to measure against float32: mixed_bfloat16 for CPUs, "
                        "mixed_float16 for GPUs (default: mixed_bfloat16)")
    parser.add_argument("--skip-mixed", action="store_true", help="skip the reduced-precision run (default: off)")
    parser.add_argument("--engines", nargs="+", choices=ENGINES + ("none",), default=["function", "xla", "mixed"],
                        help="engines to time beside predict_on_batch and the precompute path, per backbone; "
                        "mixed is --mixed-precision through a tf.function; none skips the table "
                        "(default: function xla mixed)")
    parser.add_argument("--engine-rounds", type=int, default=5,
                        help="timed calls per engine, interleaved (default: 5)")
    ray_options = parser.add_argument_group("Ray", "with --ray-workers, only the Ray comparison runs")
    ray_options.add_argument("--ray-workers", type=int, default=None,
                             help="compare one process with ray='local' and this many workers, then measure the "
                             "coordinator limit with the identity backbone (default: None, the one-process benchmark)")
    ray_options.add_argument("--shard-rows", type=int, default=None,
                             help="rows per shard of the Ray run on the photos (default: None, about four shards per "
                             "worker, at most 256)")
    ray_options.add_argument("--small-images", type=int, default=2000,
                             help="small photos of the coordinator-limit run (default: 2000)")
    ray_options.add_argument("--small-size", default="64x64",
                             help="size WxH of those photos (default: 64x64)")
    ray_options.add_argument("--small-shard-rows", type=int, default=None,
                             help="rows per shard of the coordinator-limit run (default: None, about four shards per "
                             "worker, at most 256)")
    args = parser.parse_args(argv)
    if args.ray_workers is not None and args.ray_workers < 1:
        parser.error(f"--ray-workers must be a positive integer. Received: --ray-workers {args.ray_workers}")

    import numpy as np

    import keras

    from features.backbones import check_backbone_names, check_input_size, resolve_pooling
    from features.pipeline import precompute

    # The naive warm-up retraces predict on purpose (batches of 2, then 1); TF warns about it.
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    backbones = check_backbone_names(args.backbones)
    sizes = {name: check_input_size(name, args.input_size) for name in backbones}
    poolings = {name: resolve_pooling(name, "auto") for name in backbones}  # as precompute's default
    naive_names = [name for name in backbones if _source(name) == "keras.applications"]

    # The data summary of each precompute would come between the benchmark's own lines: its logger is
    # set above INFO, the standard way to silence a library's progress lines.
    logging.getLogger("features.pipeline").setLevel(logging.WARNING)
    common = dict(weights="none", input_size=args.input_size, batch_size=args.batch_size,
                  decode_workers=args.decode_workers, progress=False, val_fraction=0, test_fraction=0)
    with tempfile.TemporaryDirectory() as scratch:
        data = args.data
        if data is None:
            width, height = (int(v) for v in args.size.split("x"))
            data = os.path.join(scratch, "photos")
            started = time.perf_counter()
            _make_photos(data, args.images, width, height)
            print(f"generated {args.images} photos of {width}x{height} in {time.perf_counter() - started:.0f} s",
                  flush=True)
        photos = sorted(Path(data).rglob("*.jpg"))
        count = len(photos)
        megabytes = np.mean([path.stat().st_size for path in photos]) / 1e6
        print(f"{count} JPEGs ({megabytes:.2f} MB each on average), backbones {' '.join(backbones)}, "
              f"batch {args.batch_size}, {os.cpu_count()} CPUs, {_load()}", flush=True)
        if args.ray_workers:
            _ray_benchmark(args, data, scratch, backbones, common)
            return
        tiny = _tiny_copy(data, os.path.join(scratch, "tiny"))
        startup_data = _tiny_copy(data, os.path.join(scratch, "startup"), args.startup_images)

        pipeline_cost, naive_cost = _decode_costs(data, backbones, sizes)
        print(f"decode+resize per image, one thread: pipeline {pipeline_cost * 1000:.0f} ms (once, reduced DCT "
              f"scale, each distinct size), naive {naive_cost * 1000:.0f} ms (full decode per backbone)", flush=True)

        # Start-up before anything is built in this process, as a fresh `fusionpipe-precompute` run.
        startup_count = len(list(Path(startup_data).rglob("*.jpg")))
        with _startup_clock() as clock:
            started = time.perf_counter()
            cold = precompute(startup_data, os.path.join(scratch, "startup.h5"), backbones, **common)
        first_row = clock["first_row"] - started
        print(f"start-up, nothing built yet: first row written {first_row:.1f} s after calling precompute "
              f"(build + trace {sum(clock['build'].values()):.1f} s); whole run on {startup_count} photos "
              f"{cold.seconds:.1f} s", flush=True)

        print("one-time build + trace (not in the timings below):", flush=True)
        naive_models = {}
        for name in backbones:
            print(f"  {name}: pipeline {clock['build'][name]:.1f} s", end="", flush=True)
            if name in naive_names:
                models, naive_seconds = _naive_models(tiny, [name], sizes)
                naive_models.update(models)
                print(f", naive {naive_seconds[name]:.1f} s", flush=True)
            else:
                print(f", naive recipe skipped: source {_source(name)}, not keras.applications", flush=True)

        print("steady state (models built and traced beforehand in all three):", flush=True)
        cpu = time.process_time()
        summary = precompute(data, os.path.join(scratch, "a.h5"), backbones, **common)
        pipeline, pipeline_cpu = summary.seconds, time.process_time() - cpu
        timings = summary.timings
        print(f"(a) pipeline:       {pipeline:7.1f} s  {count / pipeline:6.2f} img/s  "
              f"(CPU {pipeline_cpu:.0f} s; compute {timings['compute']:.1f} s, "
              f"waiting for decode {timings['decode_wait']:.1f} s, for the writer {timings['write_wait']:.1f} s, "
              f"build {timings['build']:.1f} s; decode threads busy {timings['prepare']:.1f} s)", flush=True)

        naive = None
        if naive_models:
            started, cpu = time.perf_counter(), time.process_time()
            retraced = _naive(data, naive_models, sizes, args.batch_size)
            naive, naive_cpu = time.perf_counter() - started, time.process_time() - cpu
            only = "" if len(naive_names) == len(backbones) else f"; only {' '.join(naive_names)}"
            print(f"(b) naive recipe:   {naive:7.1f} s  {count / naive:6.2f} img/s  (CPU {naive_cpu:.0f} s; predict "
                  f"traced again {retraced} time(s) while timed{only})", flush=True)
        else:
            print("(b) naive recipe:   skipped: no backbone from keras.applications", flush=True)

        cpu = time.process_time()
        bound = _compute_bound(backbones, sizes, poolings, count, args.batch_size)
        bound_cpu = time.process_time() - cpu
        # Like (a): the last short batch is padded only where the backend needs one compiled shape.
        padded = 0 if keras.backend.backend() == "tensorflow" else -count % args.batch_size
        padding = f"; like (a), computes {padded} padding images per backbone: {padded / count:.0%} extra" if padded else ""
        print(f"(c) compute bound:  {bound:7.1f} s  {count / bound:6.2f} img/s  (CPU {bound_cpu:.0f} s{padding})",
              flush=True)
        if naive and len(naive_names) == len(backbones):
            print(f"a/b speed-up over naive: {naive / pipeline:.2f}x (target >= 1.8)")
        else:
            print("a/b speed-up over naive: not measured, (b) did not run every backbone")
        print(f"a/c share of compute bound: {bound / pipeline:.2f} (target >= 0.90)", flush=True)
        if not args.skip_mixed:
            warm = time.perf_counter()
            precompute(tiny, os.path.join(scratch, "warm_mixed.h5"), backbones, precision=args.mixed_precision,
                       **common)
            print(f"one-time build + trace of {args.mixed_precision}, all backbones: {time.perf_counter() - warm:.1f} s",
                  flush=True)
            mixed = precompute(data, os.path.join(scratch, "mixed.h5"), backbones,
                               precision=args.mixed_precision, **common)
            print(f"(a) {args.mixed_precision}: {mixed.seconds:7.1f} s  {count / mixed.seconds:6.2f} img/s  "
                  f"(compute {mixed.timings['compute']:.1f} s; gain over float32 (a): "
                  f"{pipeline / mixed.seconds:.2f}x)", flush=True)
        engines = [engine for engine in args.engines if engine != "none"]
        if engines and keras.backend.backend() != "tensorflow":
            print(f"engines: skipped, they are TensorFlow's and the backend is {keras.backend.backend()}")
        elif engines:
            print(f"engines ({_load()}):", flush=True)
            for name in backbones:
                _engine_table(name, sizes[name], poolings[name], engines, args.mixed_precision, args.engine_rounds)
        print(_load())


if __name__ == "__main__":
    main()
