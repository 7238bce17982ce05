"""Measure the precompute pipeline against the naive recipe and the compute bound, side by side.

    python benchmarks/bench_precompute.py --images 40 --backbones resnet50          # quick check
    python benchmarks/bench_precompute.py                                           # the target run

On the same photos, in one process: (a) this pipeline (`features.precompute`), (b) the naive
recipe: for each backbone `keras.utils.image_dataset_from_directory` at its size,
`preprocess_input`, `model.predict`, (c) the compute bound: the same backbones, same batches,
on tensors already in memory. All three are timed in steady state: every model is built and its
predict step traced beforehand (on 3 photos), and those one-time seconds are printed on their
own. Wall and CPU seconds of the process are printed: the cores may be shared, so note the
load average printed at the start and end. Prints a/b, a/c, the per-image cost of decoding, where the pipeline's time went, and the
gain of reduced precision (`--mixed-precision`: mixed_bfloat16 on CPUs, mixed_float16 on GPUs).
Weights are random (`none`): speed does not depend on them.
"""

import argparse
import concurrent.futures
import importlib
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
    # A few of the same photos, in one class folder, for building and tracing beforehand.
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


def _naive_models(tiny, backbones):
    """Build each naive model and trace its predict step on two batch shapes. Returns (models, seconds)."""
    import keras

    from features.backbones import get_backbone_spec

    models, seconds = {}, {}
    for name in backbones:
        started = time.perf_counter()
        spec = get_backbone_spec(name)
        keras.utils.set_random_seed(0)
        model = getattr(keras.applications, spec.constructor)(
            include_top=False, weights=None, pooling="avg", input_shape=(spec.input_size, spec.input_size, 3))
        preprocess = importlib.import_module(f"keras.applications.{spec.preprocess_module}").preprocess_input
        # Batches of 2 then 1: predict's tf.function retraces once to an any-batch-size signature.
        model.predict(_naive_dataset(tiny, spec.input_size, 2, preprocess), verbose=0)
        models[name] = (model, preprocess)
        seconds[name] = time.perf_counter() - started
    return models, seconds


def _traces(model):
    # How often predict's tf.function has traced (TensorFlow backend only; else 0).
    count = getattr(model.predict_function, "experimental_get_tracing_count", None)
    return count() if count else 0


def _naive(data, backbones, models, batch_size):
    """Run the naive recipe with the prebuilt models. Returns how often predict traced again."""
    from features.backbones import get_backbone_spec

    retraced = 0
    for name in backbones:
        model, preprocess = models[name]
        before = _traces(model)
        model.predict(_naive_dataset(data, get_backbone_spec(name).input_size, batch_size, preprocess), verbose=0)
        retraced += _traces(model) - before
    return retraced


def _compute_bound(backbones, count, batch_size, precision="float32"):
    import numpy as np

    from features.backbones import get_backbone_spec
    from features.extractors import feature_extractor, predict_in_batches

    seconds = 0.0
    for name in backbones:
        size = get_backbone_spec(name).input_size
        model, _ = feature_extractor(name, size, None, "avg", 0, precision)  # built and traced in the warm-up
        images = np.random.default_rng(0).uniform(0, 255, (count, size, size, 3)).astype("float32")
        started = time.perf_counter()
        predict_in_batches(model, images, batch_size)
        seconds += time.perf_counter() - started
    return seconds


def _decode_costs(data, backbones, samples=8):
    """Single-thread seconds per image: the pipeline's decode+resize vs the naive decodes+resizes."""
    import tensorflow as tf

    from features.backbones import get_backbone_spec
    from features.compute import _prepare_image

    paths = sorted(str(path) for path in Path(data).rglob("*.jpg"))[:samples]
    all_sizes = [get_backbone_spec(name).input_size for name in backbones]
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


def main(argv=None):
    """Run the three measurements and print images/s and the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="folder of class folders of JPEGs (default: generate them)")
    parser.add_argument("--images", type=int, default=200, help="photos to generate (default: 200)")
    parser.add_argument("--size", default="3000x2000", help="generated photo size WxH (default: 3000x2000)")
    parser.add_argument("--backbones", nargs="+",
                        default=["xception", "resnet50", "inception_v3", "densenet121", "vgg19"],
                        help="backbones at native size (default: xception resnet50 inception_v3 densenet121 vgg19)")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size for all three (default: 32)")
    parser.add_argument("--decode-workers", type=int, default=None,
                        help="pipeline decode threads (default: None, 4 or the CPU count if fewer)")
    parser.add_argument("--mixed-precision", choices=["mixed_bfloat16", "mixed_float16"], default="mixed_bfloat16",
                        help="reduced precision to measure against float32: mixed_bfloat16 for CPUs, "
                        "mixed_float16 for GPUs (default: mixed_bfloat16)")
    parser.add_argument("--skip-mixed", action="store_true", help="skip the reduced-precision run (default: off)")
    args = parser.parse_args(argv)

    import logging

    import numpy as np

    import keras

    from features.pipeline import precompute

    # The naive warm-up retraces predict on purpose (batches of 2, then 1); TF warns about it.
    logging.getLogger("tensorflow").setLevel(logging.ERROR)

    # The data summary of each precompute would come between the benchmark's own lines.
    common = dict(weights="none", batch_size=args.batch_size, decode_workers=args.decode_workers,
                  progress=False, val_fraction=0, test_fraction=0, log=lambda *_: None)
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
        print(f"{count} JPEGs ({megabytes:.2f} MB each on average), backbones {' '.join(args.backbones)}, "
              f"batch {args.batch_size}, {os.cpu_count()} CPUs, {_load()}", flush=True)
        tiny = _tiny_copy(data, os.path.join(scratch, "tiny"))

        pipeline_cost, naive_cost = _decode_costs(data, args.backbones)
        print(f"decode+resize per image, one thread: pipeline {pipeline_cost * 1000:.0f} ms (once, reduced DCT "
              f"scale, each distinct size), naive {naive_cost * 1000:.0f} ms (full decode per backbone)", flush=True)

        print("one-time build + trace (not in the timings below):", flush=True)
        naive_models = {}
        for name in args.backbones:
            started = time.perf_counter()
            precompute(tiny, os.path.join(scratch, f"warm_{name}.h5"), [name], **common)
            print(f"  {name}: pipeline {time.perf_counter() - started:.1f} s (with one padded batch)", end="",
                  flush=True)
            models, naive_seconds = _naive_models(tiny, [name])
            naive_models.update(models)
            print(f", naive {naive_seconds[name]:.1f} s", flush=True)

        print("steady state (models built and traced beforehand in all three):", flush=True)
        cpu = time.process_time()
        summary = precompute(data, os.path.join(scratch, "a.h5"), args.backbones, **common)
        pipeline, pipeline_cpu = summary.seconds, time.process_time() - cpu
        timings = summary.timings
        print(f"(a) pipeline:       {pipeline:7.1f} s  {count / pipeline:6.2f} img/s  "
              f"(CPU {pipeline_cpu:.0f} s; compute {timings['compute']:.1f} s, "
              f"waiting for decode {timings['decode_wait']:.1f} s, for the writer {timings['write_wait']:.1f} s, "
              f"build {timings['build']:.1f} s; decode threads busy {timings['prepare']:.1f} s)", flush=True)

        started, cpu = time.perf_counter(), time.process_time()
        retraced = _naive(data, args.backbones, naive_models, args.batch_size)
        naive, naive_cpu = time.perf_counter() - started, time.process_time() - cpu
        print(f"(b) naive recipe:   {naive:7.1f} s  {count / naive:6.2f} img/s  (CPU {naive_cpu:.0f} s; predict traced again {retraced} "
              f"time(s) while timed)", flush=True)

        cpu = time.process_time()
        bound = _compute_bound(args.backbones, count, args.batch_size)
        bound_cpu = time.process_time() - cpu
        # Like (a): the last short batch is padded only where the backend needs one compiled shape.
        padded = 0 if keras.backend.backend() == "tensorflow" else -count % args.batch_size
        padding = f"; like (a), computes {padded} padding images per backbone: {padded / count:.0%} extra" if padded else ""
        print(f"(c) compute bound:  {bound:7.1f} s  {count / bound:6.2f} img/s  (CPU {bound_cpu:.0f} s{padding})",
              flush=True)
        print(f"a/b speed-up over naive: {naive / pipeline:.2f}x (target >= 1.8)")
        print(f"a/c share of compute bound: {bound / pipeline:.2f} (target >= 0.90)", flush=True)
        if not args.skip_mixed:
            warm = time.perf_counter()
            precompute(tiny, os.path.join(scratch, "warm_mixed.h5"), args.backbones, precision=args.mixed_precision,
                       **common)
            print(f"one-time build + trace of {args.mixed_precision}, all backbones: {time.perf_counter() - warm:.1f} s",
                  flush=True)
            mixed = precompute(data, os.path.join(scratch, "mixed.h5"), args.backbones,
                               precision=args.mixed_precision, **common)
            print(f"(a) {args.mixed_precision}: {mixed.seconds:7.1f} s  {count / mixed.seconds:6.2f} img/s  "
                  f"(compute {mixed.timings['compute']:.1f} s; gain over float32 (a): "
                  f"{pipeline / mixed.seconds:.2f}x)", flush=True)
        print(_load())


if __name__ == "__main__":
    main()
