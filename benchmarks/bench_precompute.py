"""Measure the precompute pipeline against the naive recipe and the compute bound, side by side.

    python benchmarks/bench_precompute.py --images 40 --backbones resnet50          # quick check
    python benchmarks/bench_precompute.py                                           # the target run

(a) this pipeline (`features.precompute`), (b) the naive recipe: for each backbone
`keras.utils.image_dataset_from_directory` at its size, `preprocess_input`, `model.predict`,
(c) the compute bound: the same backbones on tensors already in memory. Prints a/b, a/c and
the gain of mixed_bfloat16. Weights are random (`none`): speed does not depend on them.
"""

import argparse
import importlib
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _make_photos(folder, count, width, height, seed=0):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for index in range(count):
        class_folder = Path(folder) / f"class_{index % 2}"
        class_folder.mkdir(parents=True, exist_ok=True)
        small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        photo = Image.fromarray(small).resize((width, height), Image.BICUBIC)
        photo.save(class_folder / f"photo_{index:04d}.jpg", quality=90)


def _naive(data, backbones, batch_size):
    import keras

    from features.backbones import get_backbone_spec

    for name in backbones:
        spec = get_backbone_spec(name)
        keras.utils.set_random_seed(0)
        model = getattr(keras.applications, spec.constructor)(
            include_top=False, weights=None, pooling="avg", input_shape=(spec.input_size, spec.input_size, 3))
        preprocess = importlib.import_module(f"keras.applications.{spec.preprocess_module}").preprocess_input
        dataset = keras.utils.image_dataset_from_directory(
            data, image_size=(spec.input_size, spec.input_size), batch_size=batch_size, shuffle=False,
            labels="inferred", verbose=False)
        dataset = dataset.map(lambda images, labels: preprocess(images))
        model.predict(dataset, verbose=0)


def _compute_bound(backbones, count, batch_size, precision="float32"):
    import numpy as np

    from features.backbones import get_backbone_spec
    from features.precompute import _build, predict_in_batches

    seconds = 0.0
    for name in backbones:
        size = get_backbone_spec(name).input_size
        model = _build(name, size, None, "avg", 0, precision)
        images = np.random.default_rng(0).uniform(0, 255, (count, size, size, 3)).astype("float32")
        predict_in_batches(model, images[:batch_size], batch_size)  # trace once, as the pipeline's warm start
        started = time.perf_counter()
        predict_in_batches(model, images, batch_size)
        seconds += time.perf_counter() - started
    return seconds


def main(argv=None):
    """Run the three measurements and print images/s and the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="folder of class folders of JPEGs (default: generate them)")
    parser.add_argument("--images", type=int, default=200, help="photos to generate (default: 200)")
    parser.add_argument("--size", default="1600x1200", help="generated photo size WxH (default: 1600x1200)")
    parser.add_argument("--backbones", nargs="+",
                        default=["xception", "resnet50", "inception_v3", "densenet121", "vgg19"],
                        help="backbones at native size (default: xception resnet50 inception_v3 densenet121 vgg19)")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size for all three (default: 32)")
    parser.add_argument("--skip-mixed", action="store_true", help="skip the mixed_bfloat16 run (default: off)")
    args = parser.parse_args(argv)

    from features.precompute import precompute

    with tempfile.TemporaryDirectory() as scratch:
        data = args.data
        if data is None:
            width, height = (int(v) for v in args.size.split("x"))
            data = os.path.join(scratch, "photos")
            _make_photos(data, args.images, width, height)
        count = sum(1 for _ in Path(data).rglob("*.jpg"))
        print(f"{count} JPEGs, backbones {' '.join(args.backbones)}, batch {args.batch_size}, "
              f"{os.cpu_count()} CPUs", flush=True)

        # Build and trace each backbone once on a throwaway store, so (a) times the steady state like (c).
        precompute(data, os.path.join(scratch, "warm.h5"), args.backbones, weights="none",
                   batch_size=args.batch_size, progress=False, val_fraction=0, test_fraction=0)
        started = time.perf_counter()
        precompute(data, os.path.join(scratch, "a.h5"), args.backbones, weights="none",
                   batch_size=args.batch_size, progress=False, val_fraction=0, test_fraction=0)
        pipeline = time.perf_counter() - started
        print(f"(a) pipeline:      {pipeline:7.1f} s  {count / pipeline:6.2f} img/s", flush=True)

        started = time.perf_counter()
        _naive(data, args.backbones, args.batch_size)
        naive = time.perf_counter() - started
        print(f"(b) naive recipe:  {naive:7.1f} s  {count / naive:6.2f} img/s", flush=True)

        bound = _compute_bound(args.backbones, count, args.batch_size)
        print(f"(c) compute bound: {bound:7.1f} s  {count / bound:6.2f} img/s", flush=True)
        print(f"a/b speed-up over naive: {naive / pipeline:.2f}x (target >= 1.8)")
        print(f"a/c share of compute bound: {bound / pipeline:.2f} (target >= 0.90)", flush=True)
        if not args.skip_mixed:
            started = time.perf_counter()
            precompute(data, os.path.join(scratch, "mixed.h5"), args.backbones, weights="none",
                       batch_size=args.batch_size, precision="mixed_bfloat16", progress=False,
                       val_fraction=0, test_fraction=0)
            mixed = time.perf_counter() - started
            print(f"(a) mixed_bfloat16: {mixed:7.1f} s  {count / mixed:6.2f} img/s "
                  f"(gain over float32: {pipeline / mixed:.2f}x; first run includes its tracing)")


if __name__ == "__main__":
    main()
