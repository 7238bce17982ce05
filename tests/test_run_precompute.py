import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from features import load_store, precompute
from features.store import store_lock
from run_precompute import main
from tests._features_fixtures import make_class_folders

REPO_ROOT = Path(__file__).resolve().parent.parent


def _run_main(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code, capsys.readouterr()


def test_cli_writes_store_options_and_summary(tmp_path, capsys):
    make_class_folders(tmp_path / "data", per_class=3)
    (tmp_path / "data" / "dog" / "bad.png").write_bytes(b"nope")
    out = tmp_path / "cache.h5"
    (tmp_path / "opts.json").write_text(json.dumps({"input-size": 32, "weights": "none"}))
    code = main([str(tmp_path / "data"), "--out", str(out), "--backbones", "vgg16", "--config",
                 str(tmp_path / "opts.json"), "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "vgg16: computed 6, reused 0" in printed
    assert re.search(r"vgg16: computed 6, reused 0, [0-9.e-]+ s/image\n  decode and resize: [0-9.e-]+ s/image", printed)
    assert "skipped 1 unreadable image(s)" in printed and "dog/bad.png" in printed
    options = json.loads((tmp_path / "cache.h5.options.json").read_text())
    assert options["input_size"] == 32 and options["backbones"] == ["vgg16"]
    assert load_store(out).features["vgg16"].shape == (6, 512)


def test_cli_offline_imagenet_stops_before_any_work(tmp_path, capsys, monkeypatch):
    make_class_folders(tmp_path / "data", per_class=2)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty_home"))
    code, output = _run_main([str(tmp_path / "data"), "--out", str(tmp_path / "c.h5"), "--backbones",
                              "xception", "--input-size", "71"], capsys)
    assert code == 2
    assert output.err.count("\n") == 1
    assert "xception_weights_tf_dim_ordering_tf_kernels_notop.h5" in output.err
    assert str(tmp_path / "empty_home" / "models") in output.err
    assert "Traceback" not in output.err
    assert not (tmp_path / "c.h5").exists()


def test_cli_offline_foundation_preset_stops_before_any_work(tmp_path, capsys, monkeypatch):
    pytest.importorskip("keras_hub")
    make_class_folders(tmp_path / "data", per_class=2)
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "empty_cache"))
    code, output = _run_main([str(tmp_path / "data"), "--out", str(tmp_path / "c.h5"), "--backbones",
                              "dinov2_base", "--weights", "imagenet"], capsys)
    assert code == 2 and output.err.count("\n") == 1 and "Traceback" not in output.err
    assert "KerasHub preset dinov2_base" in output.err and str(tmp_path / "empty_cache") in output.err
    assert not (tmp_path / "c.h5").exists()


def test_cli_pooling_per_backbone(tmp_path, capsys):
    make_class_folders(tmp_path / "data", per_class=2)
    out = tmp_path / "cache.h5"
    code = main([str(tmp_path / "data"), "--out", str(out), "--backbones", "vgg16", "dinov2_small", "--weights",
                 "none", "--input-size", "42", "--pooling", "cls", "vgg16=max", "--no-progress"])
    assert code == 0
    store = load_store(out)
    assert store.features["vgg16"].shape == (4, 512) and store.features["dinov2_small"].shape == (4, 384)
    assert store.backbone_info["dinov2_small"]["pooling"] == "cls" and store.backbone_info["vgg16"]["pooling"] == "max"
    capsys.readouterr()
    code, output = _run_main([str(tmp_path / "data"), "--out", str(tmp_path / "other.h5"), "--backbones", "vgg16",
                              "--weights", "none", "--input-size", "42", "--pooling", "cls"], capsys)
    assert code == 2 and "Pooling 'cls' does not apply to backbone 'vgg16'" in output.err


def test_cli_user_errors_are_one_line(tmp_path, capsys):
    make_class_folders(tmp_path / "data", per_class=2)
    code, output = _run_main([str(tmp_path / "data"), "--backbones", "resnet5", "--weights", "none"], capsys)
    assert code == 2 and "Unknown backbone 'resnet5'. Valid names:" in output.err
    code, output = _run_main([str(tmp_path / "nowhere"), "--weights", "none", "--input-size", "32"], capsys)
    assert code == 2 and "Data folder not found:" in output.err
    with store_lock(tmp_path / "busy.h5"):
        code, output = _run_main([str(tmp_path / "data"), "--out", str(tmp_path / "busy.h5"), "--weights",
                                  "none", "--input-size", "32"], capsys)
    assert code == 2 and "Another run is writing" in output.err


def test_list_backbones(capsys):
    assert main(["--list-backbones"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert rows[0] == ["name", "family", "input", "pooling", "features", "params", "source"]
    assert ["densenet201", "DenseNet", "224", "avg", "1920", "-", "keras.applications"] in rows
    assert ["mobilenet_v3_small_minimalistic", "MobileNetV3", "224", "avg", "576", "-", "keras.applications"] in rows
    assert ["siglip2_so400m_patch14_224", "SigLIP", "2", "224", "cls", "1152", "1135M", "keras_hub",
            "siglip2_so400m_patch14_224"] in rows


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_features(tmp_path):
    data = tmp_path / "data"
    make_class_folders(data, classes=("a", "b"), per_class=30, size=(64, 48))
    (data / "a" / "bad.jpg").write_bytes(b"broken")
    out = tmp_path / "killed.h5"
    command = [sys.executable, str(REPO_ROOT / "run_precompute.py"), str(data), "--out", str(out),
               "--backbones", "resnet50", "--weights", "none", "--input-size", "32", "--batch-size", "2",
               "--no-progress"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    done_rows = 0
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        time.sleep(0.2)
        try:
            with h5py.File(out, "r", locking=False) as store:
                done_rows = int(store["progress/resnet50"][()].sum())
        except (OSError, KeyError):
            continue
        if done_rows >= 6:
            process.send_signal(signal.SIGKILL)
            break
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    with h5py.File(out, "r") as store:  # readable after kill -9
        partial = int(store["progress/resnet50"][()].sum())
    assert 6 <= partial < 60
    resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resnet50: computed {60 - partial}, reused {partial}" in resumed.stdout
    reference = precompute(data, tmp_path / "reference.h5", ["resnet50"], weights="none", input_size=32,
                           batch_size=8, progress=False)
    resumed_store, reference_store = load_store(out), load_store(reference.store_path)
    assert resumed_store.paths.tolist() == reference_store.paths.tolist()
    assert resumed_store.skipped == reference_store.skipped and len(resumed_store.skipped) == 1
    np.testing.assert_array_equal(resumed_store.splits, reference_store.splits)
    np.testing.assert_allclose(resumed_store.features["resnet50"].astype(np.float32),
                               reference_store.features["resnet50"].astype(np.float32), rtol=1e-2, atol=1e-3)
    assert np.abs(reference_store.features["resnet50"]).max() > 0.01


def test_cli_split_folders_named_by_nothing_are_mapped_with_split_map(tmp_path, capsys):
    for index, name in enumerate(("fold_a", "fold_b")):
        make_class_folders(tmp_path / "data", classes=("cat", "dog"), per_class=3, prefix=name, seed=index)
    out = tmp_path / "cache.h5"
    base = [str(tmp_path / "data"), "--out", str(out), "--backbones", "vgg16", "--weights", "none", "--input-size",
            "32", "--no-progress"]
    code, output = _run_main(base, capsys)
    assert code == 2 and output.err.count("\n") == 1 and "--split-map fold_a=train|val|test|skip" in output.err
    assert not out.exists()
    code, output = _run_main(base + ["--split-map", "fold_a"], capsys)
    assert code == 2 and "--split-map takes FOLDER=SPLIT pairs, e.g. --split-map Training=train" in output.err
    assert main(base + ["--split-map", "fold_a=train", "fold_b=test", "--val-fraction", "0.3"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert "  layout: split folders in DATA (mapped by --split-map): fold_a/ -> train, fold_b/ -> test" in printed
    assert "  12 images, 2 classes; per split: train 4, val 2, test 6" in printed
    assert [line.split() for line in printed[3:6]] == [["class", "train", "val", "test"], ["cat", "2", "1", "3"],
                                                       ["dog", "2", "1", "3"]]
    options = json.loads((tmp_path / "cache.h5.options.json").read_text())
    assert options["split_map"] == ["fold_a=train", "fold_b=test"] and options["min_images_per_class"] == 1


def test_cli_max_pixels_and_allow_outside_data_reach_the_run(tmp_path, capsys):
    make_class_folders(tmp_path / "data", classes=("cat", "dog"), per_class=3, size=(48, 40))
    (tmp_path / "secret.jpg").write_bytes((tmp_path / "data" / "cat" / "cat_000.jpg").read_bytes())
    rows = [f"{name}/{name}_{i:03d}.jpg,{name}" for name in ("cat", "dog") for i in range(3)] + ["../secret.jpg,dog"]
    (tmp_path / "labels.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    base = [str(tmp_path / "data"), "--csv", str(tmp_path / "labels.csv"), "--backbones", "vgg16", "--weights", "none",
            "--input-size", "32", "--no-progress", "--val-fraction", "0", "--test-fraction", "0"]
    assert main(base + ["--out", str(tmp_path / "a.h5"), "--max-pixels", "1920"]) == 0  # 48 x 40 = 1920: all read
    printed = capsys.readouterr().out
    assert "left out 1 image(s): 1 outside DATA" in printed and "--allow-outside-data reads them" in printed
    assert load_store(tmp_path / "a.h5").paths.tolist() == [f"{name}/{name}_{i:03d}.jpg" for name in ("cat", "dog")
                                                            for i in range(3)]
    options = json.loads((tmp_path / "a.h5.options.json").read_text())
    assert options["max_pixels"] == 1920 and options["allow_outside_data"] is False
    # Every image is too large by one pixel: nothing computed, one line.
    code, output = _run_main(base + ["--out", str(tmp_path / "b.h5"), "--max-pixels", "1919", "--allow-outside-data"],
                             capsys)
    assert code == 2 and "None of the 7 image(s) could be read" in output.err
    assert "too large: 48 x 40 pixels > 1919" in output.err
    assert main(base + ["--out", str(tmp_path / "c.h5"), "--allow-outside-data"]) == 0
    assert "../secret.jpg" in load_store(tmp_path / "c.h5").paths.tolist()


def test_cli_config_values_of_the_wrong_type_stop_before_any_work(tmp_path, capsys):
    make_class_folders(tmp_path / "data", per_class=2)
    out = tmp_path / "out" / "cache.h5"
    for options, expected in (({"batch-size": "32"}, "must be an integer. Fix the value in the file"),
                              ({"input_size": 32.0}, "must be an integer"),
                              ({"max-pixels": 4e7}, "must be an integer"),
                              ({"allow-outside-data": "yes"}, "must be true or false"),
                              ({"dtype": "float64"}, "must be one of 'float16', 'float32'")):
        (tmp_path / "opts.json").write_text(json.dumps(options))
        code, output = _run_main([str(tmp_path / "data"), "--out", str(out), "--config", str(tmp_path / "opts.json")],
                                 capsys)
        assert code == 2 and expected in output.err and "Traceback" not in output.err
        assert output.err.strip().splitlines()[-1].startswith("run_precompute.py: error: Option ")
    assert not (tmp_path / "out").exists()


def test_cli_retry_skipped_tries_unchanged_skipped_files_again(tmp_path, capsys, monkeypatch):
    from features.images import UnreadableImageError

    images = sys.modules["features.images"]  # precompute decodes through its prepare_views
    make_class_folders(tmp_path / "data", per_class=3)
    out = tmp_path / "cache.h5"
    argv = [str(tmp_path / "data"), "--out", str(out), "--backbones", "vgg16", "--weights", "none", "--input-size",
            "32", "--no-progress"]
    real = images.load_image

    def flaky(path, min_size=None, **options):  # a read error that goes away (a network drive), file unchanged
        if str(path).endswith("cat_001.jpg"):
            raise UnreadableImageError(path, "read error")
        return real(path, min_size, **options)

    monkeypatch.setattr(images, "load_image", flaky)
    assert main(argv) == 0
    assert "cat/cat_001.jpg: read error" in capsys.readouterr().out
    monkeypatch.setattr(images, "load_image", real)
    assert main(argv) == 0  # unchanged on disk: stays skipped
    assert "vgg16: computed 0, reused 5" in capsys.readouterr().out
    assert main(argv + ["--retry-skipped"]) == 0
    printed = capsys.readouterr().out
    assert "vgg16: computed 1, reused 5" in printed and "tried 1 skipped image(s) again" in printed
    assert "skipped 0 unreadable image(s)" in printed and len(load_store(out)) == 6


def test_cli_options_json_records_the_options_in_effect(tmp_path, capsys):
    make_class_folders(tmp_path / "data", per_class=5)
    out = tmp_path / "cache.h5"
    argv = [str(tmp_path / "data"), "--out", str(out), "--backbones", "vgg16", "--weights", "none", "--input-size",
            "32", "--no-progress"]
    assert main(argv + ["--val-fraction", "0.2"]) == 0
    assert main(argv + ["--val-fraction", "0.3", "--batch-size", "4"]) == 0
    assert "val_fraction=0.3 given, but the store was made with val_fraction=0.2" in capsys.readouterr().out
    options = json.loads((tmp_path / "cache.h5.options.json").read_text())
    # The store's split options, this run's batch size: the file reruns the same store with --config.
    assert options["val_fraction"] == 0.2 and options["test_fraction"] == 0.1 and options["batch_size"] == 4
    assert main(["--config", str(tmp_path / "cache.h5.options.json")]) == 0
    assert "given, but the store was made with" not in capsys.readouterr().out
