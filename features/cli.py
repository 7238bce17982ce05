"""Command-line plumbing shared by the `run_*.py` scripts.

Each script builds an `argparse` parser with option groups, then calls
`parse_args_with_config` (options may come from a JSON or TOML file given with
`--config`), saves the final options next to its outputs with `save_options`, and
runs its work inside `exit_on_user_error`, which turns the errors a user can cause
into one line on stderr and a non-zero exit instead of a traceback.
"""

import argparse
import contextlib
import json
import sys
import tomllib
from pathlib import Path

from features.atomic_files import write_text_atomic

# Errors a user can cause (bad value, missing file, missing package). Anything else is
# a bug and keeps its traceback.
_USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, ImportError, OSError)

_EXIT_USER_ERROR = 2
_EXIT_INTERRUPTED = 130


def program_name(script):
    """The name usage lines and errors print: the console script's (`fusionpipe-train`) when run as one, else `script`.

    Example:
        >>> program_name("run_train.py")  # in `python run_train.py ...`
        'run_train.py'
    """
    invoked = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    return invoked if invoked.startswith("fusionpipe-") else script


def add_config_option(parser):
    """Add `--config FILE` to `parser`; values in the file become the defaults."""
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="JSON or TOML file of options, keyed by long option name with '-' or '_' "
        "(e.g. {\"batch-size\": 32}); the command line wins over the file (default: none)",
    )


def _read_config_file(config_path):
    path = Path(config_path)
    if not path.is_file():
        raise FileNotFoundError(f"Config file not found: {path.resolve()}")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".toml":
            return tomllib.loads(text)
        return json.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as error:
        raise ValueError(
            f"Config file {path} is not valid {'TOML' if path.suffix.lower() == '.toml' else 'JSON'}: "
            f"{error}. Received: config={config_path}"
        ) from None


# What a value of each argparse `type` must be in a config file: (one, several).
_TYPE_WORDS = {int: ("an integer", "integers"), float: ("a number", "numbers"), str: ("a string", "strings"),
               None: ("a string", "strings")}


def _config_scalar(action, value):
    """(value, ok) of one value from a config file for `action`, typed as the command line would type it."""
    kind = action.type
    if kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif kind in (None, str):
        ok = isinstance(value, str)
    else:
        try:
            value, ok = kind(value), True
        except (TypeError, ValueError, argparse.ArgumentTypeError):
            ok = False
    return value, ok and (action.choices is None or value in action.choices)


def _expected(action, many):
    one, several = _TYPE_WORDS.get(action.type, (f"a valid {getattr(action.type, '__name__', 'value')}", "values"))
    if action.choices is not None:
        one = several = "one of " + ", ".join(repr(choice) for choice in action.choices)
        return f"a list, each {one}" if many else one
    return f"a list of {several}" if many else one


def _config_value(action, key, value, config_path):
    """A config file's `value` for `action`, checked against its type, choices and number of values.

    The command line gives strings that argparse converts and checks; a file gives JSON or TOML values that
    argparse takes as they are, so a float `epochs` or a string `batch_size` would pass unseen and fail after
    work began. Raises ValueError naming the key, the value and what was expected.
    """
    original = value
    many = action.nargs in ("+", "*") or (isinstance(action.nargs, int) and action.nargs > 0)
    if action.nargs == 0:  # a flag: store_true, store_false
        expected, ok = "true or false", isinstance(value, bool)
    elif value is None:
        expected, ok = _expected(action, many), action.default is None
    elif many:
        # An empty list is what `--head-units` and the like save when not given: it must load back.
        empty_ok = action.nargs != "+" or action.default == []
        expected = _expected(action, many) + ("" if empty_ok else " (at least one)")
        if isinstance(value, dict):
            value = [f"{name}={item}" for name, item in value.items()]  # a mapping, as the NAME=VALUE words it takes
        ok = isinstance(value, list) and bool(value or empty_ok)
        if ok:
            checked = [_config_scalar(action, item) for item in value]
            ok = all(item_ok for _, item_ok in checked)
            value = [item for item, _ in checked]
    else:
        expected = _expected(action, many)
        checked, ok = _config_scalar(action, value)
        value = checked if ok else value
    if not ok:
        raise ValueError(f"Option '{key}' in config file {config_path} must be {expected}. Fix the value in the file "
                         f"(numbers without quotes, true/false for flags). Received: {key}={original!r}")
    return value


def parse_args_with_config(parser, argv=None):
    """Parse `argv`, taking defaults from the `--config` file when one is given.

    Values in the file are checked against each option's type, choices and number of values
    (see `_config_value`); a bad one is one line and exit status 2, before any work.

    Args:
        parser: an `argparse.ArgumentParser` that went through `add_config_option`.
        argv: the arguments to parse (default: `sys.argv[1:]`).

    Example:
        >>> args = parse_args_with_config(parser, ["--config", "opts.json", "data/"])
    """
    # A separate parser finds --config without tripping over missing positionals.
    config_finder = argparse.ArgumentParser(add_help=False)
    config_finder.add_argument("--config")
    pre_args, _ = config_finder.parse_known_args(argv)
    if pre_args.config:
        try:
            file_options = _read_config_file(pre_args.config)
        except (ValueError, FileNotFoundError) as error:
            parser.error(str(error))  # one line and exit status 2, like any bad option
        known = {action.dest: action for action in parser._actions}
        defaults = {}
        for key, value in file_options.items():
            dest = key.replace("-", "_")
            if dest not in known or dest in ("help", "config"):
                valid = sorted(name.replace("_", "-") for name in known if name not in ("help", "config"))
                parser.error(
                    f"Unknown option '{key}' in config file {pre_args.config}. "
                    f"Valid options: {', '.join(valid)}. Received: {key}={value!r}"
                )
            try:
                defaults[dest] = _config_value(known[dest], key, value, pre_args.config)
            except ValueError as error:
                parser.error(str(error))  # before any work or folder, like a bad option
        # Positional arguments from the file are passed as defaults too; argparse
        # then no longer requires them on the command line.
        for action in parser._actions:
            if action.dest in defaults and not action.option_strings:
                action.nargs = "*" if action.nargs in ("+", "*") else "?"
        parser.set_defaults(**defaults)
    # Intermixed: positionals may follow options, as in `run_predict.py RUN --out p.csv a.jpg`.
    return parser.parse_intermixed_args(argv)


def _jsonable(value):
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    return value


def save_options(args, path):
    """Write the final options of a run to `path` as JSON, loadable again with `--config`.

    Args:
        args: an `argparse.Namespace` or a dict of option values.
        path: the JSON file to write; its folder is created.

    Example:
        >>> save_options(args, "runs/exp1/options.json")
    """
    options = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    options = {key: _jsonable(value) for key, value in options.items() if key != "config"}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(path, json.dumps(options, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def exit_on_user_error(program):
    """Turn user errors into `program: error: message` and exit status 2; Ctrl-C into 130.

    Example:
        >>> with exit_on_user_error("run_train.py"):
        ...     train(args)
    """
    try:
        yield
    except KeyboardInterrupt:
        print(f"{program}: interrupted; run the same command again to continue.", file=sys.stderr)
        sys.exit(_EXIT_INTERRUPTED)
    except _USER_ERRORS as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"{program}: error: {message}", file=sys.stderr)
        sys.exit(_EXIT_USER_ERROR)
