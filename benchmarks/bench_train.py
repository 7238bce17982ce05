"""Fusion-model training speed from memory and streamed from HDF5, and the cost of k-fold cross-validation, in one run.

    python benchmarks/bench_train.py            # 20k rows, backbones of 2048/1024/512 dims, float16
    python benchmarks/bench_train.py --rows 5000 --epochs 1
    python benchmarks/bench_train.py --folds 5 --cv-rows 3000   # the whole train_run, one split against 5 folds
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

# features and fusion come from the installed project: `pip install -e .` (make bench runs it).
from features.cli import add_config_option, exit_on_user_error, parse_args_with_config


def _build_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_option(parser)
    store = parser.add_argument_group("synthetic store")
    store.add_argument("--rows", type=int, default=20000, help="images in the store (default: 20000)")
    store.add_argument("--dims", type=int, nargs="+", default=[2048, 1024, 512],
                       help="feature size of each backbone (default: 2048 1024 512)")
    training = parser.add_argument_group("training")
    training.add_argument("--epochs", type=int, default=2, help="timed epochs per data source (default: 2)")
    training.add_argument("--batch-size", type=int, default=32, help="images per batch (default: 32)")
    training.add_argument("--block-rows", type=int, default=8,
                          help="consecutive rows per shuffled block when streaming (default: 8)")
    folds = parser.add_argument_group("cross-validation cost (a whole train_run: fusion, each backbone, baselines)")
    folds.add_argument("--folds", type=int, default=5,
                       help="folds timed against the store's one split; 0 skips this part (default: 5)")
    folds.add_argument("--cv-rows", type=int, default=3000, help="images in that store (default: 3000)")
    folds.add_argument("--cv-epochs", type=int, default=10,
                       help="epochs per model, all run (no early stop), so both sides do the same work per model "
                       "(default: 10)")
    return parser


def _cross_validation_cost(args, folder):
    """Seconds of a whole run on the store's split and with `--folds`, on one store, and their ratio."""
    from fusion import train_run, write_synthetic_store

    backbones = [f"backbone{index}_{dim}" for index, dim in enumerate(args.dims)]
    path = write_synthetic_store(Path(folder) / "cv.h5", kind="noisy_views", num_rows=args.cv_rows,
                                 backbones=backbones, feature_dims=args.dims, num_classes=10, dtype="float16")
    seconds = {}
    for folds in (0, args.folds):
        started = time.perf_counter()
        # patience = epochs: every model runs every epoch, so the ratio is the cost of the folds, not of early stopping.
        train_run(path, Path(folder) / f"run_{folds}", folds=folds, epochs=args.cv_epochs, patience=args.cv_epochs,
                  batch_size=args.batch_size, ablation=False, stream=False, verbose=0)
        seconds[folds] = time.perf_counter() - started
    print(f"cross-validation cost ({args.cv_rows} rows, fusion + {len(backbones)} backbones + baselines, "
          f"{args.cv_epochs} epochs each, in memory):")
    print(f"  one split (train/val/test 60/20/20):  {seconds[0]:7.1f} s")
    print(f"  --folds {args.folds} over train+val:            {seconds[args.folds]:7.1f} s")
    print(f"--folds {args.folds} / one split: {seconds[args.folds] / seconds[0]:.2f}x "
          f"(goal: at most {1.1 * args.folds:.1f}x)")


def _samples_per_second(source, info, rows, batch_size, block_rows, epochs):
    import keras

    from fusion import FeatureBatches, build_fusion_model

    keras.utils.set_random_seed(0)
    model = build_fusion_model({name: info.feature_shapes[name] for name in info.backbones}, len(info.class_names))
    batches = FeatureBatches(source, info.backbones, rows, info.labels[rows], batch_size=batch_size, shuffle=True,
                             block_rows=block_rows)
    model.fit(batches, epochs=1, verbose=0, shuffle=False)  # traces the step function; not timed
    started = time.perf_counter()
    model.fit(batches, epochs=epochs, verbose=0, shuffle=False)
    return epochs * len(rows) / (time.perf_counter() - started)


def main(argv=None):
    args = parse_args_with_config(_build_parser(), argv)
    with exit_on_user_error("bench_train.py"):
        from fusion import open_feature_source, read_store_info, write_synthetic_store

        with tempfile.TemporaryDirectory() as folder:
            backbones = [f"backbone{index}_{dim}" for index, dim in enumerate(args.dims)]
            started = time.perf_counter()
            path = write_synthetic_store(Path(folder) / "bench.h5", kind="noisy_views", num_rows=args.rows,
                                         backbones=backbones, feature_dims=args.dims, num_classes=10,
                                         split_fractions=(0.98, 0.01, 0.01), dtype="float16")
            info = read_store_info(path)
            rows = info.split_rows("train")
            print(f"store: {args.rows} rows, dims {args.dims}, float16, {path.stat().st_size / 2**20:.0f} MiB, "
                  f"written in {time.perf_counter() - started:.1f} s; {len(rows)} training rows, "
                  f"batch {args.batch_size}, {args.epochs} timed epochs each")
            memory = _samples_per_second(open_feature_source(path, info.backbones, stream=False), info, rows,
                                         args.batch_size, 1, args.epochs)
            print(f"in memory (rows shuffled):                 {memory:9.0f} samples/s")
            streamed = _samples_per_second(open_feature_source(path, info.backbones, stream=True), info, rows,
                                           args.batch_size, args.block_rows, args.epochs)
            print(f"streamed from HDF5 (blocks of {args.block_rows:>3} rows): {streamed:9.0f} samples/s")
            print(f"streamed / in memory: {streamed / memory:.2f}")
            if args.folds:
                _cross_validation_cost(args, folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
