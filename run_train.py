"""Train the fusion model and its baselines on a feature store and write the comparison report.

    python run_train.py cache.h5 --out runs/exp1
"""

import argparse
import sys

from features.cli import add_config_option, exit_on_user_error, parse_args_with_config, program_name, save_options

PROGRAM = "run_train.py"


def build_parser():
    parser = argparse.ArgumentParser(
        prog=program_name(PROGRAM),
        description="Train fusion models over the backbones of a feature store, with per-backbone, "
        "averaging, weighted-average and stacking baselines and a drop-one ablation, on the store's split or "
        "k folds, and write a report.",
    )
    parser.add_argument("store", help="feature store (.h5) written by run_precompute.py")
    add_config_option(parser)

    model = parser.add_argument_group("model")
    model.add_argument("--backbones", nargs="+", metavar="NAME",
                       help="train on these backbones of the store only (default: all of the store's)")
    model.add_argument("--fusion", nargs="+", choices=["concat", "gated", "attention"], default=["concat"],
                       metavar="HEAD",
                       help="fusion heads to train and compare, any of concat (branches concatenated), gated (a "
                       "per-image softmax gate weighs the backbones) and attention (Transformer blocks over one "
                       "token per backbone); reported as fusion, gated_fusion, attention_fusion (default: concat)")
    model.add_argument("--units", type=int, default=256, help="units of each backbone's Dense layer (default: 256)")
    model.add_argument("--dropout", type=float, default=0.5, help="dropout rate after each Dense layer (default: 0.5)")
    model.add_argument("--l2", type=float, default=1e-4, help="L2 penalty of the Dense weights (default: 0.0001)")
    model.add_argument("--head-units", type=int, nargs="+", default=[], metavar="N",
                       help="Dense layers between the concatenated branches and the softmax, so the model can "
                       "use interactions between backbones (default: none)")
    model.add_argument("--pooling", choices=["avg", "max", "avgmax"], default="avg",
                       help="pooling of spatial (H, W, D) features; pooled features are used as they are (default: avg)")

    training = parser.add_argument_group("training")
    training.add_argument("--learning-rate", type=float, default=1e-3, help="Adam learning rate (default: 0.001)")
    training.add_argument("--batch-size", type=int, default=32, help="images per batch (default: 32)")
    training.add_argument("--epochs", type=int, default=60, help="most epochs per model (default: 60)")
    training.add_argument("--patience", type=int, default=10,
                          help="stop after this many epochs without a better validation loss and keep the best "
                          "weights (default: 10)")
    training.add_argument("--class-weight", choices=["none", "balanced"], default="none",
                          help="'balanced' weights the loss so every class counts alike, for unbalanced data "
                          "(default: none)")
    training.add_argument("--seed", type=int, default=0,
                          help="seed of weights, batches, views and folds (default: 0)")
    training.add_argument("--folds", type=int, default=0,
                          help="K-fold cross-validation over the train+val images: every model trained once per "
                          "fold, baselines fitted out of fold, fold ensembles scored on test; 0 uses the store's "
                          "train/val split (default: 0)")
    training.add_argument("--repeats", type=int, default=1,
                          help="repeat the K folds with other fold seeds, for steadier comparisons (default: 1)")
    training.add_argument("--tune", type=int, default=0, metavar="N",
                          help="KerasTuner trials over each fusion head's units, dropout, L2 and learning rate "
                          "before training it, on the first fold's held-out loss (default: 0, no tuning)")

    data = parser.add_argument_group("data")
    data.add_argument("--stream", action="store_true",
                      help="stream features from the store instead of loading them; chosen automatically when "
                      "they take more than half the available memory (default: off)")
    data.add_argument("--block-rows", type=int, default=None,
                      help="consecutive rows per shuffled block; larger blocks make streamed reads cheaper "
                      "(default: 1 in memory, 8 streamed)")
    data.add_argument("--view-augment", action="store_true",
                      help="train on a random view per image each epoch, identity included; needs /views in the "
                      "store (default: off)")

    evaluation = parser.add_argument_group("evaluation")
    evaluation.add_argument("--tta", action="store_true",
                            help="also report test metrics averaged over all views (fusion+tta, ...); needs /views "
                            "in the store (default: off)")
    evaluation.add_argument("--no-ablation", action="store_true",
                            help="skip the drop-one-backbone models, which cost one model per backbone (default: off)")

    output = parser.add_argument_group("output")
    output.add_argument("--out", help="run folder to write, e.g. runs/exp1 (required; default: none)")
    output.add_argument("--overwrite", action="store_true",
                        help="replace an existing run folder instead of refusing (default: off)")
    output.add_argument("--verbose", action="store_true",
                        help="also show Keras's own output for each epoch of each model: its progress bar in a "
                        "terminal, one line per epoch in a file or pipe (default: off, one line when each model "
                        "starts and one when it ends)")
    output.add_argument("--tensorboard", metavar="DIR", default=None,
                        help="write TensorBoard logs under DIR, one folder per model (and per fold under it); view "
                        "them with `tensorboard --logdir DIR`. DIR must be new or empty, or inside --out, e.g. "
                        "runs/exp1/tensorboard (default: none)")
    return parser


def main(argv=None):
    parser = build_parser()
    with exit_on_user_error(parser.prog):
        args = parse_args_with_config(parser, argv)
        if not args.out:
            # Checked here rather than with required=True so that a --config file may give it.
            parser.error("the following arguments are required: --out (the run folder, e.g. runs/exp1)")
        # Imported after parsing: argument errors answer before the training package loads.
        from features.progress_log import progress_shown
        from features.tensorflow_noise import import_keras_quietly

        import_keras_quietly()
        from fusion import train_run
        from fusion.run_folder import record_written

        options = {key: value for key, value in vars(args).items() if key != "config"}
        # The progress lines are this script's output: on stdout, also when logging is configured.
        with progress_shown("fusion", always=True):
            run = train_run(
                args.store,
                args.out,
                backbones=args.backbones,
                fusion=args.fusion,
                units=args.units,
                dropout=args.dropout,
                l2=args.l2,
                pooling=args.pooling,
                head_units=args.head_units,
                learning_rate=args.learning_rate,
                batch_size=args.batch_size,
                epochs=args.epochs,
                patience=args.patience,
                class_weight=args.class_weight,
                seed=args.seed,
                folds=args.folds,
                repeats=args.repeats,
                tune=args.tune,
                stream=True if args.stream else None,
                block_rows=args.block_rows,
                view_augment=args.view_augment,
                tta=args.tta,
                ablation=not args.no_ablation,
                overwrite=args.overwrite,
                options=options,
                verbose=2 if args.verbose else 1,
                tensorboard_dir=args.tensorboard,
            )
        record_written(run.run_dir, "options.json")
        save_options(args, run.run_dir / "options.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
