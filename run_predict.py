#!/usr/bin/env python
"""Classify new images with a finished run (or its exported model) and write a CSV of predictions."""

import argparse
import os
import sys
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from features.cli import add_config_option, exit_on_user_error, parse_args_with_config, program_name, save_options  # noqa: E402

PROGRAM = "run_predict.py"


def build_parser():
    parser = argparse.ArgumentParser(
        prog=program_name(PROGRAM),
        description="Classify images with a model exported from a run_train.py run folder.",
    )
    add_config_option(parser)
    source = parser.add_argument_group("model")
    source.add_argument("model", metavar="MODEL_OR_RUN",
                        help="an exported .keras model, or a run folder (its model exported to RUN/exported.keras, or "
                             "RUN/exported_NAME.keras for --model NAME, on first use)")
    source.add_argument("--model", dest="model_name", metavar="NAME", default=None,
                        help="for a run folder, which of its models to deploy: any name its report lists (a fusion "
                             "head, a backbone, an ablation, average, weighted_average, stacking, NAME+tta); an "
                             "unknown name is refused with the list (default: the report's winner, summary.winner)")
    source.add_argument("--store", default=None,
                        help="a feature store for a run folder: checked against the recipe the run recorded (backbones, "
                             "input size, pooling, weights, views, ...) and refused on any difference; a matching store keeps "
                             "the cached export; a run that records no recipe is exported from it, again each time. Not for an exported .keras model "
                             "(default: the run's own record, else the store in its config.json)"),
    source.add_argument("--export-only", action="store_true",
                        help="write the exported model and stop, classifying nothing (default: off)")
    source.add_argument("--export-to", default=None, metavar="FILE",
                        help="where --export-only writes the exported model; needs --export-only (default: "
                             "RUN/exported.keras, RUN/exported_NAME.keras with --model NAME)")
    inputs = parser.add_argument_group("images")
    inputs.add_argument("images", nargs="*", metavar="IMAGES",
                        help="image files, folders (searched recursively) or CSV files listing images")
    inputs.add_argument("--path-column", default="path",
                        help="column of image paths in CSV inputs, relative to the CSV's folder (default: path)")
    inputs.add_argument("--views", choices=("none", "hflip", "dihedral"), default=None,
                        help="average the probabilities over extra views of each image: hflip, or all flips and "
                             "90-degree rotations; costs one model pass per view (default: the model's own: the "
                             "run's test-time views for a NAME+tta model, else none)")
    inputs.add_argument("--batch-size", type=int, default=16, help="images per model call (default: 16)")
    output = parser.add_argument_group("output")
    output.add_argument("--out", default="predictions.csv", help="the CSV file to write (default: predictions.csv)")
    output.add_argument("--top-k", type=int, default=5, help="classes listed per image, most probable first (default: 5)")
    output.add_argument("--all-probabilities", action="store_true",
                        help="add one probability column per class (default: off)")
    output.add_argument("--no-progress", action="store_true", help="hide the progress bar (default: shown)")
    return parser


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    print(f"{program_name(PROGRAM)}: warning: {message}", file=file or sys.stderr)


def _check_arguments(args):
    """Every check that needs no model, before any work and before any file or folder is made."""
    from features.atomic_files import check_writable_file
    from fusion.export import cached_export_path, check_export_path

    for name, value in (("top_k", args.top_k), ("batch_size", args.batch_size)):
        if value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1. Received: {name}={value}")
    if args.export_only:
        if not Path(args.model).is_dir():
            raise ValueError(f"--export-only needs a run folder. Received: model={args.model!r}")
        target = check_export_path(args.export_to or cached_export_path(args.model, args.model_name))
        check_writable_file(target, "--export-to")
    else:
        if args.export_to:
            raise ValueError(f"--export-to is where --export-only writes the model; give both, or neither. "
                             f"Received: export_to={args.export_to!r}")
        check_writable_file(args.out, "--out")


def main(argv=None):
    parser = build_parser()
    args = parse_args_with_config(parser, argv)
    with exit_on_user_error(parser.prog), warnings.catch_warnings():
        warnings.showwarning = _one_line_warning
        from features.tensorflow_noise import import_keras_quietly

        import_keras_quietly()  # TensorFlow's start-up notices are not this script's output
        from fusion.export import export_model
        from fusion.image_inputs import gather_image_paths
        from fusion.predict import check_model_source, load_classifier, predict_images, write_predictions_csv
        from fusion.run_folder import record_written

        _check_arguments(args)
        image_paths = None if args.export_only else gather_image_paths(args.images, path_column=args.path_column)
        check_model_source(args.model, store=args.store, model=args.model_name)
        if args.export_only:
            exported = export_model(args.model, args.export_to, store=args.store, model=args.model_name)
            record_written(args.model, Path(str(exported) + ".options.json").resolve())
            save_options(args, Path(str(exported) + ".options.json"))
            print(f"exported model: {exported}")
            return 0
        model = load_classifier(args.model, store=args.store, model=args.model_name)
        predictions = predict_images(model, image_paths, batch_size=args.batch_size, views=args.views,
                                     progress=not args.no_progress)
        if Path(args.model).is_dir():  # files written into the run folder are the run's to replace
            record_written(args.model, Path(args.out).resolve(), Path(str(args.out) + ".options.json").resolve())
        out = write_predictions_csv(predictions, args.out, top_k=args.top_k,
                                    all_probabilities=args.all_probabilities)
        save_options(args, Path(str(out) + ".options.json"))
        print(f"classified {len(predictions.paths)} images, skipped {len(predictions.skipped)}: {out}")
        for path, reason in predictions.skipped:
            print(f"  skipped {path}: {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
