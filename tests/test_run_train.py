"""run_train.py: every option reaches the run, final options are saved, user errors exit 2 with one line."""

import json
import re
import os
import subprocess
import sys
from pathlib import Path

import keras
import pytest

import run_train
from fusion.saved_run import load_run
from fusion.synthetic import write_synthetic_store

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def spatial_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "spatial.h5"
    return write_synthetic_store(path, kind="noisy_views", num_rows=80, backbones=("a", "b", "c"), feature_dims=4,
                                 spatial_size=2, num_views=1, num_classes=3)


def _fail(capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        run_train.main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err.strip()


def test_every_option_reaches_the_run_and_options_reload_with_config(spatial_store, tmp_path, capsys):
    out = tmp_path / "run"
    argv = [str(spatial_store), "--out", str(out), "--backbones", "c", "a", "--units", "8", "--dropout", "0.2",
            "--l2", "0", "--head-units", "6", "5", "--pooling", "max", "--learning-rate", "0.02", "--batch-size", "16",
            "--epochs", "2", "--patience", "1", "--class-weight", "balanced", "--seed", "3", "--stream",
            "--block-rows", "4", "--view-augment", "--tta", "--no-ablation", "--verbose", "--tensorboard",
            str(out / "tensorboard")]
    assert run_train.main(argv) == 0
    printed = capsys.readouterr().out
    assert "report: " in printed
    # --verbose: Keras's line per epoch (no terminal here) after each model's line; --tensorboard: a folder per model.
    assert printed.count("[1/3] fusion: training (up to 2 epochs)\nEpoch 1/2\n") == 1 and printed.count("Epoch 1/2") == 3
    assert all(any((out / "tensorboard" / name / part).glob("events.out.tfevents.*")) for name in ("fusion", "c", "a")
               for part in ("train", "validation"))
    run = load_run(out)
    arguments = run.config["arguments"]
    assert arguments["streamed"] is True and arguments["block_rows"] == 4 and arguments["class_weight"] == "balanced"
    assert run.backbones == ("c", "a") and sorted(run.models) == ["a", "c", "fusion"]
    model = run.fusion_model
    assert [tensor.name for tensor in model.inputs] == ["c", "a"]
    assert type(model.get_layer("c_max_pool")).__name__ == "GlobalMaxPooling2D"
    assert model.get_layer("a_dense").units == 8 and model.get_layer("a_dropout").rate == 0.2
    assert model.get_layer("a_dense").kernel_regularizer is None
    assert [model.get_layer(f"head_dense_{i}").units for i in (0, 1)] == [6, 5]
    assert all(training["epochs_run"] <= 2 for training in run.report["training"].values())
    assert {"fusion+tta", "average+tta"} <= set(run.report["test"])
    assert not any(name.startswith("fusion_without_") for name in run.report["test"])
    with open(out / "history" / "fusion.csv") as handle:
        assert float(handle.read().splitlines()[1].split(",")[2]) == pytest.approx(0.02)  # learning_rate column
    options = json.loads((out / "options.json").read_text())
    assert options["head_units"] == [6, 5] and options["seed"] == 3 and options["batch_size"] == 16
    # The saved options run again as a config file; the command line still wins.
    assert run_train.main(["--config", str(out / "options.json"), "--overwrite", "--epochs", "1"]) == 0
    rerun = load_run(out)
    assert rerun.config["arguments"]["epochs"] == 1 and rerun.backbones == ("c", "a")
    assert all(training["epochs_run"] == 1 for training in rerun.report["training"].values())


def test_user_errors_exit_2_with_one_line(spatial_store, tmp_path, capsys):
    missing = tmp_path / "missing.h5"
    assert _fail(capsys, [str(missing), "--out", str(tmp_path / "r")]) == (
        f"run_train.py: error: Feature store not found: {missing.resolve()}"
    )
    error = _fail(capsys, [str(spatial_store), "--out", str(tmp_path / "r"), "--backbones", "resnet5"])
    assert error.startswith("run_train.py: error: Unknown backbone 'resnet5'") and "Valid names: a, b, c" in error
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "file").write_text("x")
    assert "is not empty. Choose a new --out, or pass --overwrite" in _fail(capsys, [str(spatial_store), "--out", str(tmp_path / "full")])
    assert "--out" in _fail(capsys, [str(spatial_store)])
    assert "invalid choice: 'sum'" in _fail(capsys, [str(spatial_store), "--out", "x", "--pooling", "sum"])
    config = tmp_path / "bad.json"
    config.write_text(json.dumps({"head_unit": [8]}))
    assert "Unknown option 'head_unit' in config file" in _fail(capsys, ["--config", str(config), str(spatial_store), "--out", "x"])
    plain = write_synthetic_store(tmp_path / "plain.h5", kind="xor", num_rows=40)
    assert "--view-augment needs extra views" in _fail(capsys, [str(plain), "--out", str(tmp_path / "r"), "--view-augment"])
    assert not (tmp_path / "r").exists()
    (tmp_path / "logs" / "old_run").mkdir(parents=True)
    error = _fail(capsys, [str(spatial_store), "--out", str(tmp_path / "r"), "--tensorboard", str(tmp_path / "logs")])
    assert error.startswith("run_train.py: error: TensorBoard folder ") and "is not empty" in error
    assert not (tmp_path / "r").exists()


def test_script_exit_code_and_single_stderr_line(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "run_train.py"), str(tmp_path / "none.h5"), "--out", str(tmp_path / "r")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("run_train.py")]
    assert lines == [f"run_train.py: error: Feature store not found: {tmp_path / 'none.h5'}"]
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_normal_output_is_a_line_per_model_on_stdout_and_no_tensorflow_warning(spatial_store, tmp_path):
    # As a user runs it, TF_CPP_MIN_LOG_LEVEL unset. Three new models are enough for TensorFlow's retracing
    # warning ("5 out of the last 5 calls to <function ...> triggered tf.function retracing") to show.
    environment = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "run_train.py"), str(spatial_store), "--out", str(tmp_path / "run"),
         "--backbones", "a", "b", "--units", "8", "--epochs", "2", "--no-ablation"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=environment,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    noise = [line for line in result.stderr.splitlines()
             if "retracing" in line or "WARNING" in line or "tensorflow" in line.lower() or re.match(r"[IWE]\d{4} ", line)]
    assert noise == []
    printed = result.stdout.splitlines()
    for number, name in enumerate(("fusion", "a", "b"), start=1):
        assert f"[{number}/3] {name}: training (up to 2 epochs)" in printed
        assert any(line.startswith(f"{name}: 2 epochs, best val_loss ") for line in printed)
    assert printed[-1] == f"report: {tmp_path / 'run' / 'report.md'}"


def test_config_values_of_the_wrong_type_stop_before_the_run_folder(spatial_store, tmp_path, capsys):
    out = tmp_path / "run"
    for options, expected in (({"epochs": 2.5}, "Option 'epochs' in config file .* must be an integer"),
                              ({"batch_size": "16"}, "Option 'batch_size' in config file .* must be an integer"),
                              ({"dropout": "0.2"}, "Option 'dropout' .* must be a number"),
                              ({"head-units": 8}, "Option 'head-units' .* must be a list of integers"),
                              ({"epoch": 2}, "Unknown option 'epoch' in config file .* Valid options: .*epochs")):
        config = tmp_path / "bad.json"
        config.write_text(json.dumps(options))
        line = _fail(capsys, ["--config", str(config), str(spatial_store), "--out", str(out)]).splitlines()[-1]
        assert re.match(rf"run_train\.py: error: {expected}", line), line
        key, value = next(iter(options.items()))
        assert line.endswith(f"Received: {key}={value!r}")
    assert not out.exists()


@pytest.mark.slow
def test_cross_validation_heads_and_tuning_options_reach_the_run(spatial_store, tmp_path, capsys):
    out = tmp_path / "cv"
    argv = [str(spatial_store), "--out", str(out), "--backbones", "a", "b", "--units", "8", "--epochs", "1",
            "--patience", "1", "--folds", "2", "--repeats", "2", "--fusion", "concat", "gated", "--tune", "1"]
    assert run_train.main(argv) == 0
    printed = capsys.readouterr().out
    assert "fusion: 2 folds x 2 repeats, out-of-fold accuracy" in printed and "gated_fusion: tuned over 1 trials" in printed
    run = load_run(out)
    arguments = run.config["arguments"]
    assert (arguments["folds"], arguments["repeats"], arguments["fusion"], arguments["tune"]) == (2, 2, ["concat", "gated"], 1)
    assert run.report["cross_validation"]["repeats"] == 2 and len(run.report["cv"]["gated_fusion"]["accuracy"]["folds"]) == 4
    # Each head has its drop-one ablation (with two backbones, the other backbone's own model, reused).
    assert sorted(run.models) == ["a", "b", "fusion", "fusion_without_a", "fusion_without_b", "gated_fusion",
                                  "gated_fusion_without_a", "gated_fusion_without_b"]
    assert run.report["training"]["gated_fusion_without_a"]["same_as"] == "b"
    gates = run.report["gate_weights"]
    assert list(gates) == ["gated_fusion"] and set(gates["gated_fusion"]) == set(run.class_names)
    assert all(sum(weights.values()) == pytest.approx(1, abs=1e-4) for weights in gates["gated_fusion"].values())
    assert (out / "plots" / "gate_weights_gated_fusion.png").is_file()
    written = json.loads((out / "written_files.json").read_text())["files"]
    for head in ("fusion", "gated_fusion"):
        assert (out / "tuning" / head / "trials.csv").is_file() and f"tuning/{head}/trials.csv" in written
        assert run.report["training"][head]["tuning"]["trials_run"] == 1
    # Everything the run wrote is recorded (KerasTuner's files too), so --overwrite may replace it all.
    on_disk = {path.relative_to(out).as_posix() for path in out.rglob("*") if path.is_file()}
    assert on_disk - {"written_files.json", "options.json"} <= set(written)


def test_fold_and_head_errors_exit_2_with_one_line(spatial_store, tmp_path, capsys):
    base = [str(spatial_store), "--out", str(tmp_path / "r")]
    assert "folds must be 0 (the store's train/val split) or at least 2" in _fail(capsys, base + ["--folds", "1"])
    assert "give --folds 2 or more with it. Received: folds=0, repeats=3" in _fail(capsys, base + ["--repeats", "3"])
    assert "invalid choice: 'sum'" in _fail(capsys, base + ["--fusion", "sum"])
    assert "tune is the number of tuning trials" in _fail(capsys, base + ["--tune", "-2"])
    assert not (tmp_path / "r").exists()
