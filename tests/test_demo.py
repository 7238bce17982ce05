"""examples/demo.py, what `make demo` runs, on a slice of the digits with one tiny backbone."""

import importlib.util
import json
from pathlib import Path

import pytest

# Whole runs of a script or notebook: in `make test`, not in `make test-fast`.
pytestmark = pytest.mark.slow

DEMO = Path(__file__).resolve().parent.parent / "examples" / "demo.py"


def _demo_module():
    spec = importlib.util.spec_from_file_location("fusionpipe_demo", DEMO)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_offline_demo_says_weights_are_random_and_writes_the_report(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "no_weights_here"))
    out = tmp_path / "demo"
    code = _demo_module().main(["--out", str(out), "--limit", "100", "--backbones", "mobilenet_v2", "resnet50",
                                "--input-size", "32", "--epochs", "2"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "ImageNet weights are not on this machine (mobilenet_v2_weights_tf" in printed
    assert "RANDOMLY INITIALISED" in printed.split("[1/3]")[0]  # said at the start
    assert "[1/3] data: 100 digit images" in printed
    # Never silent while it trains: a line when each model starts and when it ends, under the demo's own steps.
    assert "\n  [1/5] fusion: training (up to 2 epochs)\n  fusion: " in printed and "\n  [5/5] fusion_without_resnet50: " in printed
    assert "Test accuracy:" in printed and "fusion_without_resnet50" in printed
    assert f"Report: {(out / 'run' / 'report.md').resolve()}" in printed
    report = (out / "run" / "report.md").read_text()
    assert "randomly initialised" in report.split("## Verdict")[0]  # and in the report, before the verdict
    assert json.loads((out / "run" / "report.json").read_text())["warnings"]
    assert json.loads((out / "run" / "config.json").read_text())["feature_recipes"]["resnet50"]["weights"] == "none"
    assert (out / "digits_first100_32px_none.h5").is_file()


def test_demo_runs_again_with_other_settings_and_its_saved_options(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "no_weights_here"))
    out = tmp_path / "demo"
    demo = _demo_module()
    common = ["--out", str(out), "--backbones", "mobilenet_v2", "--epochs", "1"]
    assert demo.main(common + ["--limit", "60", "--input-size", "32"]) == 0
    # Another slice of the digits and another input size: new stores, not a refused mismatch.
    assert demo.main(common + ["--limit", "80", "--input-size", "40"]) == 0
    assert sorted(path.name for path in out.glob("*.h5")) == ["digits_first60_32px_none.h5", "digits_first80_40px_none.h5"]
    capsys.readouterr()
    # The saved options are a valid --config: the same run again reuses every stored feature.
    assert demo.main(["--config", str(out / "demo_options.json")]) == 0
    assert "(0 backbone-image pairs computed, 80 reused)" in capsys.readouterr().out


def test_demo_asked_for_imagenet_offline_stops_naming_the_file(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "no_weights_here"))
    with pytest.raises(SystemExit) as raised:
        _demo_module().main(["--out", str(tmp_path / "demo"), "--weights", "imagenet", "--backbones", "vgg16"])
    assert raised.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("demo.py: error: ImageNet weights for 'vgg16' are not on this machine: Keras wants "
                          "the file vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5")
    assert not list((tmp_path / "demo").glob("*.h5"))
