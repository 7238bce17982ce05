"""Precompute the features of frozen ImageNet backbones over a folder of images into one HDF5 store.

    python run_precompute.py DATA --out cache.h5 --backbones xception resnet50 inception_v3
"""

import argparse
import sys


def build_parser():
    """The argument parser of `run_precompute.py`."""
    from features.cli import add_config_option, program_name

    parser = argparse.ArgumentParser(
        prog=program_name("run_precompute.py"),
        description="Run frozen ImageNet backbones over DATA once and store their features in one "
        "HDF5 file. Run the same command again to resume, or with more backbones to add them.")
    parser.add_argument("data", metavar="DATA", help="data root: class folders, split folders "
                        "under any name that says train, val or test (train/, Training/, seg_train/, ...), or the "
                        "folder that --csv paths are relative to (required)")
    add_config_option(parser)
    output = parser.add_argument_group("output")
    output.add_argument("--out", default="cache.h5", help="HDF5 feature store to create or complete "
                        "(default: cache.h5)")
    output.add_argument("--dtype", default="float16", choices=["float16", "float32"],
                        help="dtype of the stored features (default: float16)")
    output.add_argument("--on-change", default="refuse", choices=["refuse", "add"],
                        help="when the images on disk no longer match the store: refuse, or add the "
                        "new images only (default: refuse)")
    output.add_argument("--retry-skipped", action="store_true",
                        help="try every skipped (unreadable) image of the store again; a skipped file that changed "
                        "on disk is always tried again (default: off)")
    models = parser.add_argument_group("backbones")
    models.add_argument("--backbones", nargs="+", default=["resnet50"], metavar="NAME",
                        help="registry names, e.g. xception resnet50 inception_v3 densenet201 vgg19; "
                        "--list-backbones shows all (default: resnet50)")
    models.add_argument("--list-backbones", action="store_true",
                        help="print the registered backbones (name, family, native input size, default pooling, "
                        "feature size with it, parameters of KerasHub presets, source) and exit (default: off)")
    models.add_argument("--weights", default="imagenet", metavar="imagenet|none|FOLDER",
                        help="imagenet (from ~/.keras/models or $KERAS_HOME/models), none (seeded "
                        "random, for tests and timing), or a folder holding Keras's weight files "
                        "under their Keras names (default: imagenet)")
    models.add_argument("--seed", type=int, default=0,
                        help="seed of random weights and of the train/val/test split (default: 0)")
    models.add_argument("--input-size", type=int, default=None, metavar="N",
                        help="one input size for all backbones (default: each backbone's native size)")
    models.add_argument("--pooling", nargs="+", default=["auto"], metavar="POOLING|NAME=POOLING",
                        help="how each backbone's output becomes features: avg or max (CNNs), cls, avg or cls+avg "
                        "(transformers: class token or pooled output, mean of patch tokens, both), none (the "
                        "spatial map or token grid), auto (avg for CNNs, cls+avg for DINOv2/v3, cls for "
                        "SigLIP, CLIP, ViT); one for all, or NAME=POOLING per backbone (default: auto)")
    models.add_argument("--views", default="none", choices=["none", "hflip", "dihedral"],
                        help="extra views stored in /views for test-time augmentation; each costs one "
                        "more pass: hflip 2x, dihedral (7 flips/rotations) 8x the compute (default: none)")
    speed = parser.add_argument_group("speed")
    speed.add_argument("--batch-size", type=int, default=32,
                       help="images per compiled predict call (default: 32)")
    speed.add_argument("--precision", default="float32",
                       choices=["float32", "mixed_bfloat16", "mixed_float16"],
                       help="compute precision: mixed_bfloat16 for CPUs, mixed_float16 for GPUs "
                       "(default: float32)")
    speed.add_argument("--decode-workers", type=int, default=None,
                       help="threads decoding images (default: 4, or the CPU count if fewer)")
    speed.add_argument("--no-progress", action="store_true", help="hide the progress bar (default: shown)")
    speed.add_argument("--max-pixels", type=int, default=40_000_000, metavar="N",
                       help="skip images of more pixels (width x height), read from the file's header before "
                       "decoding: a small file can decode to GBs (a decompression bomb), and Pillow's own limit "
                       "(89,478,485) only warns; 40 MP keeps photos of most cameras (default: 40000000)")
    cluster = parser.add_argument_group("several machines (Ray)")
    cluster.add_argument("--ray", default=None, metavar="local|auto|ADDRESS",
                         help="compute on Ray workers: local (start Ray on this machine), auto (the cluster `ray "
                         "start` joined this machine to) or a cluster address; DATA and the folder of --out must be "
                         "on storage every node sees. Rows go to shard files in OUT.shards/, which the store reads "
                         "as HDF5 virtual datasets (default: off, one process, Ray not imported)")
    cluster.add_argument("--workers", type=int, default=None, metavar="N",
                         help="Ray workers, each building its backbones once (default: one per GPU of the cluster, "
                         "else half its CPUs)")
    cluster.add_argument("--shard-rows", type=int, default=2048, metavar="N",
                         help="images per shard: the unit a worker computes, writes to a file of its own and, if the "
                         "worker is lost, computes again (default: 2048)")
    cluster.add_argument("--merge", action="store_true",
                         help="make the store one self-contained file: rows kept in OUT.shards/ are copied into it "
                         "(and a --ray run copies each shard in as it finishes) (default: off)")
    splits = parser.add_argument_group("labels and splits")
    splits.add_argument("--val-fraction", type=float, default=0.1,
                        help="share of validation images when the data gives no split (default: 0.1)")
    splits.add_argument("--test-fraction", type=float, default=0.1,
                        help="share of test images when the data gives no split (default: 0.1)")
    splits.add_argument("--csv", default=None, metavar="FILE",
                        help="CSV of image path (or id) and label, optionally split, paths relative "
                        "to DATA (default: none, use folders)")
    splits.add_argument("--csv-path-column", default="path",
                        help="CSV column of the image path or id (default: path)")
    splits.add_argument("--csv-label-column", default="label",
                        help="CSV column of the class name (default: label)")
    splits.add_argument("--csv-split-column", default="split",
                        help="CSV column of the split (train/val/test), used when present (default: split)")
    splits.add_argument("--split-map", nargs="+", default=None, metavar="FOLDER=SPLIT",
                        help="the top folders of DATA are splits, mapped by hand to train, val, test or skip, e.g. "
                        "fold_a=train fold_b=test pred=skip; needed only when their names do not say it "
                        "(default: read from names and structure)")
    splits.add_argument("--recursive", action="store_true",
                        help="read images in folders nested inside a class folder into that class (default: off, "
                        "such folders are an error)")
    splits.add_argument("--min-images-per-class", type=int, default=1, metavar="N",
                        help="leave out classes with fewer images, e.g. 3 for one per split (default: 1)")
    splits.add_argument("--require-all", action="store_true",
                        help="a --csv row without a file is an error instead of left out (default: off)")
    splits.add_argument("--allow-outside-data", action="store_true",
                        help="read --csv rows whose file lies outside DATA once '..' and symlinks are resolved (an "
                        "absolute path elsewhere, ../x.jpg, a file in DATA that links out); without it they are "
                        "left out as 'outside DATA' and listed in OUT.skipped.csv (default: off)")
    return parser


def main(argv=None):
    """Parse the command line, run `features.precompute`, print the summary."""
    from features.cli import exit_on_user_error, parse_args_with_config, save_options

    parser = build_parser()
    if argv is None:
        argv = sys.argv[1:]
    from features.tensorflow_noise import import_keras_quietly

    if "--list-backbones" in argv:
        import_keras_quietly()
        from features.backbones import describe_backbones

        print(f"{'name':34s} {'family':17s} {'input':>5s} {'pooling':>8s} {'features':>8s} {'params':>7s}  source")
        for row in describe_backbones():
            params = f"{row['params'] / 1e6:6.0f}M" if row["params"] else "      -"
            print(f"{row['name']:34s} {row['family']:17s} {row['input_size']:5d} {row['pooling']:>8s} "
                  f"{row['features']:8d} {params:>7s}  {row['source']}")
        return 0
    with exit_on_user_error(parser.prog):
        args = parse_args_with_config(parser, argv)
        import_keras_quietly()
        from features.backbones import parse_pooling
        from features.layout import parse_split_map
        from features.pipeline import precompute
        from features.progress_log import progress_shown

        # The data summary is this script's output: on stdout, also when logging is configured.
        with progress_shown("features", always=True):
            summary = precompute(
                args.data, args.out, args.backbones, weights=args.weights, seed=args.seed,
                input_size=args.input_size, pooling=parse_pooling(args.pooling, args.backbones), dtype=args.dtype, batch_size=args.batch_size,
                views=args.views, precision=args.precision, val_fraction=args.val_fraction,
                test_fraction=args.test_fraction, csv=args.csv, csv_path_column=args.csv_path_column,
                csv_label_column=args.csv_label_column, csv_split_column=args.csv_split_column,
                on_change=args.on_change, retry_skipped=args.retry_skipped, decode_workers=args.decode_workers, progress=not args.no_progress,
                split_map=parse_split_map(args.split_map), recursive=args.recursive,
                min_images_per_class=args.min_images_per_class, require_all=args.require_all,
                allow_outside_data=args.allow_outside_data, max_pixels=args.max_pixels, ray=args.ray,
                workers=args.workers, shard_rows=args.shard_rows, merge=args.merge)
        # The options in effect: an existing store's splits were made with its own options, not today's.
        for key, (_, in_effect) in summary.options_differing.items():
            if key == "split_map":
                in_effect = [f"{folder}={split}" for folder, split in in_effect.items()] or None
            setattr(args, key, in_effect)
        save_options(args, f"{args.out}.options.json")
        print("\n".join(summary.lines()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
