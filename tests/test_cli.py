import argparse
import json
import re
import sys

import pytest

from features.cli import add_config_option, exit_on_user_error, parse_args_with_config, program_name, save_options


def _parser():
    parser = argparse.ArgumentParser(prog="tool")
    add_config_option(parser)
    parser.add_argument("data")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--backbones", nargs="+", default=["resnet50"])
    return parser


def test_command_line_without_config():
    args = parse_args_with_config(_parser(), ["images", "--batch-size", "3"])
    assert (args.data, args.batch_size, args.backbones) == ("images", 3, ["resnet50"])


def test_json_config_gives_defaults_and_command_line_wins(tmp_path):
    config = tmp_path / "options.json"
    config.write_text(json.dumps({"data": "from_file", "batch-size": 4, "backbones": ["vgg19", "xception"]}))
    args = parse_args_with_config(_parser(), ["--config", str(config)])
    assert (args.data, args.batch_size, args.backbones) == ("from_file", 4, ["vgg19", "xception"])
    args = parse_args_with_config(_parser(), ["--config", str(config), "cli_data", "--batch-size", "16"])
    assert (args.data, args.batch_size) == ("cli_data", 16)


def test_toml_config_with_underscored_keys(tmp_path):
    config = tmp_path / "options.toml"
    config.write_text('data = "x"\nbatch_size = 32\n')
    args = parse_args_with_config(_parser(), ["--config", str(config)])
    assert args.batch_size == 32


def test_saved_options_load_back_as_config(tmp_path):
    args = parse_args_with_config(_parser(), ["images", "--batch-size", "5"])
    saved = save_options(args, tmp_path / "run" / "options.json")
    assert json.loads(saved.read_text()) == {"data": "images", "batch_size": 5, "backbones": ["resnet50"]}
    again = parse_args_with_config(_parser(), ["--config", str(saved)])
    assert (again.data, again.batch_size) == ("images", 5)


def _config_error(capsys, argv):
    """The one stderr line and exit status of a parse that fails on its config file."""
    with pytest.raises(SystemExit) as raised:
        parse_args_with_config(_parser(), argv)
    lines = capsys.readouterr().err.strip().splitlines()
    assert raised.value.code == 2
    return lines[-1]


def test_unknown_config_key_names_valid_options(tmp_path, capsys):
    config = tmp_path / "options.json"
    config.write_text(json.dumps({"batch-sise": 4}))
    line = _config_error(capsys, ["x", "--config", str(config)])
    assert re.fullmatch(r"tool: error: Unknown option 'batch-sise'.*Valid options: backbones, batch-size, data.*", line)


def test_missing_config_file_gives_full_path(tmp_path, capsys):
    line = _config_error(capsys, ["x", "--config", str(tmp_path / "nope.json")])
    assert line == f"tool: error: Config file not found: {tmp_path / 'nope.json'}"


def test_malformed_config_file(tmp_path, capsys):
    config = tmp_path / "options.json"
    config.write_text("{batch-size: 4")
    assert "is not valid JSON" in _config_error(capsys, ["x", "--config", str(config)])


def test_positionals_may_follow_options():
    parser = _parser()
    parser.add_argument("images", nargs="*")
    args = parse_args_with_config(parser, ["run", "--batch-size", "2", "a.jpg", "b.jpg"])
    assert (args.data, args.batch_size, args.images) == ("run", 2, ["a.jpg", "b.jpg"])


def test_user_error_becomes_one_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as raised:
        with exit_on_user_error("tool"):
            raise ValueError("Bad value.\nsecond line")
    assert raised.value.code == 2
    assert capsys.readouterr().err == "tool: error: Bad value.\n"


def test_interrupt_exits_130_with_a_resume_hint(capsys):
    with pytest.raises(SystemExit) as raised:
        with exit_on_user_error("tool"):
            raise KeyboardInterrupt
    assert raised.value.code == 130
    assert "run the same command again" in capsys.readouterr().err


def test_bugs_keep_their_traceback():
    with pytest.raises(ZeroDivisionError):
        with exit_on_user_error("tool"):
            1 / 0


def _script_parsers():
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    for relative in ("run_precompute.py", "run_train.py", "run_predict.py", "examples/demo.py"):
        spec = importlib.util.spec_from_file_location(f"script_{Path(relative).stem}", root / relative)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield relative, module.build_parser()


def test_every_script_groups_its_options_and_states_each_default():
    for script, parser in _script_parsers():
        groups = [group for group in parser._action_groups if group.title not in ("positional arguments", "options")]
        assert len(groups) >= 2, f"{script}: options are not grouped"
        help_text = parser.format_help()
        assert "--config FILE" in help_text, script
        for action in parser._actions:
            if action.option_strings and action.dest != "help":
                assert "default: " in (action.help or ""), f"{script} {action.option_strings[0]}: no default in its help"


def _typed_parser():
    parser = _parser()
    parser.add_argument("--rate", type=float, default=0.1)
    parser.add_argument("--pooling", choices=["avg", "max"], default="avg")
    parser.add_argument("--sizes", type=int, nargs="*", default=[])
    parser.add_argument("--split-map", nargs="+", default=None)
    parser.add_argument("--input-size", type=int, default=None)
    parser.add_argument("--stream", action="store_true")
    return parser


def _typed_config_error(tmp_path, capsys, options):
    config = tmp_path / "options.json"
    config.write_text(json.dumps(options))
    with pytest.raises(SystemExit) as raised:
        parse_args_with_config(_typed_parser(), ["x", "--config", str(config)])
    assert raised.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize("key, value, expected", [
    ("batch-size", 8.0, "an integer"),
    ("batch_size", "32", "an integer"),
    ("batch-size", True, "an integer"),
    ("rate", "0.5", "a number"),
    ("pooling", "sum", "one of 'avg', 'max'"),
    ("backbones", "resnet50", r"a list of strings \(at least one\)"),
    ("backbones", [], r"a list of strings \(at least one\)"),
    ("backbones", ["resnet50", 7], r"a list of strings \(at least one\)"),
    ("sizes", [32, 64.5], "a list of integers"),
    ("stream", "yes", "true or false"),
    ("batch-size", None, "an integer"),
    ("data", 5, "a string"),
])
def test_config_values_of_the_wrong_type_are_one_line(tmp_path, capsys, key, value, expected):
    line = _typed_config_error(tmp_path, capsys, {key: value})
    assert re.fullmatch(rf"tool: error: Option '{key}' in config file .*options\.json must be {expected}\. Fix the "
                        rf"value in the file \(numbers without quotes, true/false for flags\)\. "
                        rf"Received: {key}={re.escape(repr(value))}", line), line


def test_config_values_of_the_right_type_are_taken(tmp_path):
    config = tmp_path / "options.json"
    config.write_text(json.dumps({"batch-size": 4, "rate": 1, "pooling": "max", "sizes": [32, 64], "stream": True,
                                  "input-size": None, "split-map": {"fold_a": "train", "fold_b": "test"}}))
    args = parse_args_with_config(_typed_parser(), ["x", "--config", str(config)])
    assert (args.batch_size, args.rate, args.pooling, args.sizes, args.stream) == (4, 1.0, "max", [32, 64], True)
    assert isinstance(args.rate, float) and args.input_size is None
    assert args.split_map == ["fold_a=train", "fold_b=test"]  # a mapping as the FOLDER=SPLIT words the flag takes


def test_every_scripts_saved_defaults_load_back_as_config(tmp_path):
    # What save_options writes for options left at their default (null, [], false) passes the type checks.
    for script, parser in _script_parsers():
        defaults = {action.dest: action.default for action in parser._actions
                    if action.option_strings and action.dest not in ("help", "config")}
        config = save_options(defaults, tmp_path / f"{script.replace('/', '_')}.json")
        positionals = ["x" for action in parser._actions if not action.option_strings and action.nargs is None]
        args = parse_args_with_config(parser, ["--config", str(config)] + positionals)
        assert {key: getattr(args, key) for key in defaults} == json.loads(config.read_text()), script


@pytest.mark.parametrize("argv0, expected", [
    ("/venv/bin/fusionpipe-train", "fusionpipe-train"),  # the console script the user typed
    ("run_train.py", "run_train.py"),
    ("/usr/lib/python3/site-packages/pytest/__main__.py", "run_train.py"),  # called in-process
    ("", "run_train.py"),
])
def test_usage_and_errors_name_the_program_the_user_ran(monkeypatch, argv0, expected):
    monkeypatch.setattr(sys, "argv", [argv0])
    assert program_name("run_train.py") == expected
