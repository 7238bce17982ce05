"""The whole pipeline on the embedded digits data set: images, precompute, train, report.

    python examples/demo.py            # what `make demo` runs
    python examples/demo.py --help

Uses ImageNet weights when Keras's weight files are on this machine or can be downloaded; otherwise
it says so at the start and in the report, and runs with randomly initialised backbones.
"""

import argparse
import os
import sys
import time
from pathlib import Path

# features and fusion come from the installed project: `pip install -e .` (make demo runs it).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from features.cli import add_config_option, exit_on_user_error, parse_args_with_config, save_options  # noqa: E402

PROGRAM = "demo.py"
DEMO_BACKBONES = ["resnet50", "densenet121", "inception_v3", "mobilenet_v2"]


def build_parser():
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description="Run fusionpipe end to end on scikit-learn's handwritten digits, written as RGB images.",
    )
    add_config_option(parser)
    data = parser.add_argument_group("data")
    data.add_argument("--out", default="demo_out", help="folder for images, store, run and options (default: demo_out)")
    data.add_argument("--limit", type=int, default=None,
                      help="use only the first N digits, for a quicker look (default: all 1,797)")
    backbones = parser.add_argument_group("backbones")
    backbones.add_argument("--backbones", nargs="+", default=DEMO_BACKBONES, metavar="NAME",
                           help=f"backbones to fuse (default: {' '.join(DEMO_BACKBONES)})")
    backbones.add_argument("--input-size", type=int, default=128,
                           help="input size for every backbone; smaller than native to finish in minutes on a "
                           "CPU (default: 128)")
    backbones.add_argument("--weights", choices=["auto", "imagenet", "none"], default="auto",
                           help="auto: imagenet when its files are on this machine or can be downloaded, else "
                           "random weights with a warning (default: auto)")
    training = parser.add_argument_group("training")
    training.add_argument("--epochs", type=int, default=60, help="most epochs per model (default: 60)")
    return parser


def choose_weights(requested, backbones, input_size=None):
    """Return ("imagenet" or "none", the reason to tell the user) for the demo's `--weights` choice.

    ImageNet weights missing on this machine are downloaded when it is online (see
    `features.resolve_weights`); `auto` falls back to random weights, loudly, only when that fails.
    """
    from features import get_backbone_spec, resolve_weights
    from features.backbones import keras_weights_folders

    if requested == "none":
        return "none", "random weights were asked for (--weights none)"
    missing = []
    for name in backbones:
        try:
            resolve_weights(name, "imagenet", input_size)
        except FileNotFoundError:
            if requested == "imagenet":
                raise  # the error names the file and the folder to put it in
            missing.append(name)
    if not missing:
        return "imagenet", "ImageNet weights found"
    files = ", ".join(get_backbone_spec(name).weights_for(input_size).weights_file for name in missing)
    return "none", (f"ImageNet weights are not on this machine ({files} not in {keras_weights_folders()[0]}) "
                    f"and could not be downloaded")


def main(argv=None):
    args = parse_args_with_config(build_parser(), argv)
    with exit_on_user_error(PROGRAM):
        from features.progress_log import progress_shown
        from features.tensorflow_noise import import_keras_quietly

        import_keras_quietly()
        import features
        import fusion
        from features.demo_data import write_digits_dataset

        started = time.perf_counter()
        out = Path(args.out)
        weights, reason = choose_weights(args.weights, args.backbones, args.input_size)
        if weights == "none":
            print("=" * 78)
            print(f"NOTE: {reason}: the backbones are RANDOMLY INITIALISED.")
            print("The demo shows the pipeline working; its accuracies are NOT representative of")
            print("ImageNet features. Put Keras's weight files in ~/.keras/models (see README,")
            print("'Weights offline') and run again for real numbers.")
            print("=" * 78, flush=True)
        save_options(args, out / "demo_options.json")
        # One images folder per --limit and one store per setting that changes the features, so
        # running again with other options computes what is new instead of hitting a stored mismatch.
        digits = out / ("digits" if args.limit is None else f"digits_first{args.limit}")
        count = write_digits_dataset(digits, limit=args.limit)
        print(f"[1/3] data: {count} digit images in {digits}", flush=True)
        store = out / f"{digits.name}_{args.input_size}px_{weights}.h5"
        with progress_shown("features", always=True):
            summary = features.precompute(digits, store, args.backbones, weights=weights,
                                          input_size=args.input_size, progress=True)
        computed = sum(summary.computed.values())
        print(f"[2/3] features: {store} ({computed} backbone-image pairs computed, "
              f"{sum(summary.reused.values())} reused)", flush=True)
        run_dir = out / "run"
        # One line when each model starts and when it ends, indented under the demo's own steps.
        with progress_shown("fusion", always=True, prefix="  "):
            fusion.train_run(store, run_dir, epochs=args.epochs, overwrite=True)
        report = run_dir / "report.md"
        print(f"[3/3] trained the fusion model, {len(args.backbones)} single-backbone models, the baselines "
              f"and the ablation in {run_dir}")
        print()
        print(_headline(run_dir))
        print(f"\nReport: {report.resolve()}  ({time.perf_counter() - started:.0f} s in all)")
    return 0


def _headline(run_dir):
    import json

    report = json.loads((Path(run_dir) / "report.json").read_text())
    rows = sorted(report["test"].items(), key=lambda item: -item[1]["accuracy"])
    lines = ["Test accuracy:"] + [f"  {name:32s} {metrics['accuracy']:.3f}" for name, metrics in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
