"""Time each stage script's `--help` in a fresh interpreter, next to importing Keras, side by side.

    python benchmarks/bench_cli.py              # 5 runs of each, the fastest one counts
    python benchmarks/bench_cli.py --repeats 1

`--help` should answer at once: the scripts import Keras (and TensorFlow, h5py, scikit-learn)
only once the arguments are parsed and work starts. Each command runs as a user would run it,
`python run_train.py --help`, from the repository root; the fastest of the repeats counts, as the
cores may be shared. Printed: seconds per command, and each as a share of `import keras`.
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from features.cli import add_config_option, exit_on_user_error, parse_args_with_config

_REPO_ROOT = Path(__file__).resolve().parent.parent
_SCRIPTS = ("run_precompute.py", "run_train.py", "run_predict.py")


def _build_parser():
    parser = argparse.ArgumentParser(prog="bench_cli.py", description=__doc__.splitlines()[0])
    add_config_option(parser)
    timing = parser.add_argument_group("timing")
    timing.add_argument("--repeats", type=int, default=5,
                        help="runs of each command; the fastest counts (default: 5)")
    return parser


def _fastest_seconds(command, repeats):
    """Wall seconds of the fastest of `repeats` runs of `command` (a list), started from the repository root."""
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, cwd=_REPO_ROOT, env=environment, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        seconds.append(time.perf_counter() - start)
    return min(seconds)


def main(argv=None):
    args = parse_args_with_config(_build_parser(), argv)
    with exit_on_user_error("bench_cli.py"):
        if args.repeats < 1:
            raise ValueError(f"--repeats must be at least 1. Received: repeats={args.repeats}")
        print(f"fastest of {args.repeats} run(s) each, fresh interpreter, load average "
              f"{os.getloadavg()[0]:.2f}")
        bare = _fastest_seconds([sys.executable, "-c", "pass"], args.repeats)
        keras_import = _fastest_seconds([sys.executable, "-c", "import keras"], args.repeats)
        print(f"{'python -c pass (interpreter start)':<36} {bare:7.3f} s")
        print(f"{'python -c import keras':<36} {keras_import:7.3f} s")
        for script in _SCRIPTS:
            seconds = _fastest_seconds([sys.executable, script, "--help"], args.repeats)
            print(f"{script + ' --help':<36} {seconds:7.3f} s   {seconds / keras_import:.3f} of import keras")
    return 0


if __name__ == "__main__":
    sys.exit(main())
