"""The pipeline speaks Keras 3 only, so it runs under any backend: checked under JAX."""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

JAX_SCRIPT = """
import json
from pathlib import Path
import keras, numpy as np, features, fusion
from _run_fixtures import write_two_class_images
base = Path({base!r})
data = write_two_class_images(base / "images", per_class=6)
# A KerasHub transformer beside a Keras Applications CNN (VGG16: the CNN quickest to compile under JAX);
# 42 px: a multiple of DINOv2's patch size 14.
summary = features.precompute(data, base / "cache.h5", ["vgg16", "dinov2_small"], weights="none",
                              input_size=42, views="hflip", val_fraction=0.25, test_fraction=0.25, progress=False)
store = features.load_store(base / "cache.h5")
run = fusion.train_run(base / "cache.h5", base / "run", units=8, epochs=2, batch_size=4, ablation=False,
                       verbose=0)
reloaded = fusion.load_run(base / "run")
features_now = {{name: store.features[name].astype("float32") for name in run.backbones}}
from fusion.export import export_model
from fusion.saved_run import load_keras_file
export_model(base / "run")
exported = load_keras_file(base / "run" / "exported.keras", "export again")
pixels = [features.load_image(data / path, min_size=42).astype("float32") for path in store.paths]
from_pixels = np.concatenate([np.asarray(exported.predict_on_batch(image[None])) for image in pixels])
print(json.dumps({{
    "backend": keras.backend.backend(),
    "computed": summary.computed,
    "shapes": {{name: list(array.shape) for name, array in store.features.items()}},
    "finite": bool(all(np.isfinite(array).all() for array in store.features.values())),
    "models": sorted(run.models),
    "reload_difference": float(np.abs(run.fusion_model.predict(features_now, verbose=0)
                                      - reloaded.fusion_model.predict(features_now, verbose=0)).max()),
    "export_difference": float(np.abs(from_pixels - reloaded.predict_proba(features_now,
                                                                           model=exported.model_name)).max()),
}}))
"""


def _imported_modules(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module


@pytest.mark.parametrize("package", ["features", "fusion"])
def test_packages_import_keras_not_tensorflow(package):
    offenders = {
        str(path.relative_to(REPO_ROOT)): module
        for path in sorted((REPO_ROOT / package).glob("*.py"))
        for module in _imported_modules(path)
        if module.split(".")[0] in ("tensorflow", "tf_keras")
    }
    assert offenders == {}


@pytest.mark.slow
def test_precompute_and_training_run_under_jax(tmp_path):
    pytest.importorskip("jax")
    script = JAX_SCRIPT.format(base=str(tmp_path))
    # This checkout's packages and the test helpers, ahead of any installed copy.
    environment = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3", "JAX_PLATFORMS": "cpu",
                   "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "tests")])}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                            env=environment)
    assert result.returncode == 0, result.stderr[-3000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["backend"] == "jax"
    assert outcome["computed"] == {"vgg16": 12, "dinov2_small": 12}
    assert outcome["shapes"] == {"vgg16": [12, 512], "dinov2_small": [12, 768]}
    assert outcome["finite"]
    assert outcome["models"] == ["dinov2_small", "fusion", "vgg16"]
    assert outcome["reload_difference"] < 1e-5
    # The exported pixels-to-classes model against the store path (features stored as float16).
    assert outcome["export_difference"] < 5e-3
