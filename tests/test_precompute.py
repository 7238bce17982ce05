import os

import h5py
import keras
import numpy as np
import pytest

import features
import features.images  # precompute decodes and resizes through features.images.prepare_views
from features import compute, create_backbone, extractors, load_image, load_store, precompute, resize_image
from features.views import apply_view
from _run_fixtures import logged_lines
from tests._features_fixtures import make_class_folders

FAST = dict(weights="none", input_size=32, batch_size=4, progress=False)


@pytest.fixture
def data(tmp_path):
    root = tmp_path / "data"
    make_class_folders(root, classes=("cat", "dog"), per_class=6)
    (root / "cat" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return root


def test_precompute_writes_the_documented_layout(data, tmp_path):
    out = tmp_path / "cache.h5"
    summary = precompute(data, out, ["resnet50", "vgg16"], val_fraction=0.25, test_fraction=0.25, **FAST)
    assert summary.computed == {"resnet50": 12, "vgg16": 12}
    assert summary.reused == {"resnet50": 0, "vgg16": 0}
    assert summary.skipped == (("cat/broken.jpg", "corrupt or truncated (cannot identify image file)"),) \
        or summary.skipped[0][0] == "cat/broken.jpg"
    assert any("cat/broken.jpg" in line for line in summary.lines())
    with h5py.File(out, "r") as store:
        assert store["images/path"].shape == (12,)
        assert store["images/label"].dtype == np.int64
        assert [c.decode() if isinstance(c, bytes) else c for c in store.attrs["class_names"]] == ["cat", "dog"]
        assert store["features/resnet50"].shape == (12, 2048)
        assert store["features/resnet50"].dtype == np.float16
        assert store["features/vgg16"].shape == (12, 512)
        attrs = store["features/resnet50"].attrs
        assert attrs["input_size"] == 32 and attrs["pooling"] == "avg" and attrs["weights"] == "none"
        assert attrs["preprocessing"] == "keras.applications.resnet.preprocess_input"
        assert attrs["keras_version"] and attrs["backend"] in ("tensorflow", "jax", "torch")
        assert store["features/resnet50"].chunks[1] == 2048
    loaded = load_store(out)
    assert loaded.class_names == ("cat", "dog")
    assert "cat/broken.jpg" not in loaded.paths.tolist()
    # The stored features are those of the backbone on the decoded, resized image.
    model = create_backbone("resnet50", input_size=32, weights="none", seed=0)
    row = 3
    image = resize_image(load_image(data / loaded.paths[row], min_size=32), 32)
    expected = model.predict_on_batch(image[None])[0]
    np.testing.assert_allclose(loaded.features["resnet50"][row], expected, rtol=2e-2, atol=2e-2)
    train = loaded.select("train")
    assert set(train.splits) == {"train"} and len(train.features["vgg16"]) == len(train)
    assert sorted(np.unique(loaded.splits)) == ["test", "train", "val"]
    with pytest.raises(ValueError, match="Unknown split 'dev'"):
        loaded.select("dev")
    with pytest.raises(ValueError, match=r"Backbone\(s\) xception not in store"):
        load_store(out, backbones=["xception"])


def test_a_store_records_the_fusionpipe_version_that_made_it(data, tmp_path):
    out = tmp_path / "cache.h5"
    precompute(data, out, ["vgg16"], **FAST)  # created, then rewritten without its unreadable row
    with h5py.File(out, "r") as store:
        assert store.attrs["fusionpipe_version"] == features.__version__
    precompute(data, out, ["vgg16", "mobilenet_v2"], **FAST)  # another rewrite: a new backbone
    with h5py.File(out, "r") as store:
        assert store.attrs["fusionpipe_version"] == features.__version__


def test_resume_reuses_and_a_new_backbone_computes_only_itself(data, tmp_path, monkeypatch):
    out = tmp_path / "cache.h5"
    precompute(data, out, ["vgg16"], **FAST)
    before = load_store(out).features["vgg16"]
    again = precompute(data, out, ["vgg16"], **FAST)
    assert again.computed == {"vgg16": 0} and again.reused == {"vgg16": 12}
    decoded = []
    original = features.images.load_image
    monkeypatch.setattr(features.images, "load_image", lambda path, min_size=None, **kwargs: decoded.append(path)
                        or original(path, min_size, **kwargs))
    more = precompute(data, out, ["vgg16", "resnet50"], **FAST)
    assert more.computed == {"vgg16": 0, "resnet50": 0 + 12}
    assert len(decoded) == 12  # the known-bad file is not decoded again
    loaded = load_store(out)
    np.testing.assert_array_equal(loaded.features["vgg16"], before)
    assert loaded.features["resnet50"].shape == (12, 2048)


def test_each_image_decoded_once_for_several_sizes(data, tmp_path, monkeypatch):
    decoded, resized = [], []
    original_load, original_resize = features.images.load_image, features.images.resize_image
    monkeypatch.setattr(features.images, "load_image", lambda path, min_size=None, **kwargs: decoded.append(min_size)
                        or original_load(path, min_size, **kwargs))
    monkeypatch.setattr(features.images, "resize_image", lambda image, size: resized.append(size) or original_resize(image, size))
    summary = precompute(data, tmp_path / "c.h5", ["mobilenet", "mobilenet_v2", "inception_v3"], weights="none",
                         input_size=None, batch_size=4, progress=False)
    assert len(decoded) == 13 and set(decoded) == {299}
    assert sorted(set(resized)) == [224, 299] and len(resized) == 24
    assert summary.computed == {"mobilenet": 12, "mobilenet_v2": 12, "inception_v3": 12}


def test_views_pooling_dtype_and_precision(data, tmp_path):
    out = tmp_path / "views.h5"
    precompute(data, out, ["vgg16"], views="dihedral", pooling="max", dtype="float32", **FAST)
    loaded = load_store(out, views=True)
    assert loaded.features["vgg16"].dtype == np.float32
    assert loaded.views["vgg16"].shape == (12, 7, 512)
    assert loaded.view_names["vgg16"][0] == "hflip"
    model = create_backbone("vgg16", input_size=32, weights="none", pooling="max", seed=0)
    image = load_image(data / loaded.paths[0], min_size=32)
    flipped = resize_image(apply_view(image, "rot90"), 32)
    np.testing.assert_allclose(loaded.views["vgg16"][0, 2], model.predict_on_batch(flipped[None])[0], rtol=1e-4, atol=1e-4)
    spatial = precompute(data, tmp_path / "spatial.h5", ["vgg16"], pooling="none", input_size=64,
                         weights="none", progress=False)
    assert load_store(spatial.store_path).features["vgg16"].shape == (12, 2, 2, 512)
    mixed = precompute(data, tmp_path / "mixed.h5", ["vgg16"], pooling="max", dtype="float32",
                       precision="mixed_bfloat16", **{k: v for k, v in FAST.items()})
    reference = loaded.features["vgg16"]
    approx = load_store(mixed.store_path).features["vgg16"]
    assert np.abs(approx - reference).mean() / np.abs(reference).mean() < 0.05
    assert keras.config.dtype_policy().name == "float32"


def test_changed_images_refuse_or_add(data, tmp_path):
    out = tmp_path / "cache.h5"
    precompute(data, out, ["vgg16"], **FAST)
    make_class_folders(data, classes=("dog", "eel"), per_class=1, seed=5, prefix="")
    os.rename(data / "dog" / "dog_000.jpg", data / "dog" / "dog_new.jpg")
    make_class_folders(data, classes=("dog",), per_class=1, seed=9)  # rewrites dog_000.jpg
    os.utime(data / "dog" / "dog_000.jpg", ns=(1, 1))
    with pytest.raises(ValueError, match=r"1 image\(s\) changed on disk since they were stored"):
        precompute(data, out, ["vgg16"], on_change="add", **FAST)
    (data / "dog" / "dog_000.jpg").unlink()
    with pytest.raises(ValueError, match=r"no longer match store .*: 2 new image\(s\).* and 1 stored image\(s\) missing on disk.*--on-change add"):
        precompute(data, out, ["vgg16"], **FAST)
    before = load_store(out)
    summary = precompute(data, out, ["vgg16"], on_change="add", **FAST)
    assert summary.added_images == 2 and summary.missing_on_disk == 1
    assert summary.computed == {"vgg16": 2}
    after = load_store(out)
    assert after.class_names == ("cat", "dog", "eel")
    assert len(after) == 14
    np.testing.assert_array_equal(after.features["vgg16"][:12], before.features["vgg16"])
    assert after.labels[after.paths.tolist().index("eel/eel_000.jpg")] == 2


def test_settings_that_differ_from_the_store_are_refused(data, tmp_path):
    out = tmp_path / "cache.h5"
    precompute(data, out, ["vgg16"], **FAST)
    make_class_folders(data, classes=("eel",), per_class=1, seed=3)  # a new image too
    with pytest.raises(ValueError, match="already holds 'vgg16' features made with input_size=32, but this run asks for input_size=48"):
        precompute(data, out, ["vgg16"], on_change="add", **{**FAST, "input_size": 48})
    with h5py.File(out, "r") as store:
        assert store["images/path"].shape == (12,)  # the refused run added nothing
    with pytest.raises(ValueError, match="made with pooling=avg"):
        precompute(data, out, ["vgg16"], pooling="max", **FAST)
    # Another compute precision gives other features: resuming with it would mix the two.
    with pytest.raises(ValueError, match="made with precision=float32, but this run asks for precision=mixed_bfloat16"):
        precompute(data, out, ["vgg16"], precision="mixed_bfloat16", **FAST)
    # Random weights depend on the backend's generator, so another backend is another network.
    with h5py.File(out, "r+") as store:
        store["features/vgg16"].attrs["backend"] = "torch"
    with pytest.raises(ValueError, match="made with backend=torch"):
        precompute(data, out, ["vgg16"], **FAST)


def test_an_out_that_is_not_a_store_is_refused_and_left_untouched(data, tmp_path):
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as handle:
        handle["weights"] = np.arange(3)
    text = tmp_path / "notes.h5"
    text.write_text("my notes")
    # A file beside it with the name of the store's temporary copy is not touched before --out is checked.
    (tmp_path / "other.h5.tmp").write_text("the user's")
    with pytest.raises(ValueError, match=r"other\.h5 is an HDF5 file but not a feature store written by run_precompute\.py"):
        precompute(data, other, ["vgg16"], **FAST)
    assert (tmp_path / "other.h5.tmp").read_text() == "the user's"
    with pytest.raises(ValueError, match=r"notes\.h5 exists but is not an HDF5 file \(.*\); it is left untouched"):
        precompute(data, text, ["vgg16"], **FAST)
    assert text.read_text() == "my notes"
    # No store yet, and a non-HDF5 file named like its temporary copy: someone else's, refused.
    (tmp_path / "new.h5.tmp").write_text("also the user's")
    with pytest.raises(ValueError, match=r"new\.h5\.tmp exists and is not a half-written copy of a feature store \(not "
                                         r"HDF5\); it is left untouched"):
        precompute(data, tmp_path / "new.h5", ["vgg16"], **FAST)
    assert (tmp_path / "new.h5.tmp").read_text() == "also the user's" and not (tmp_path / "new.h5").exists()
    # A copy a killed run left behind is HDF5: removed, and the run goes on.
    with h5py.File(tmp_path / "new.h5.tmp", "w") as handle:
        handle["half"] = np.arange(2)
    precompute(data, tmp_path / "new.h5", ["vgg16"], **FAST)
    assert not (tmp_path / "new.h5.tmp").exists() and load_store(tmp_path / "new.h5").features["vgg16"].shape == (12, 512)
    with h5py.File(other, "r") as handle:
        assert list(handle) == ["weights"]


def test_a_relabeled_image_is_refused_not_mixed(data, tmp_path):
    rows = ["path,label"] + [f"{kind}/{kind}_{i:03d}.jpg,{kind}" for kind in ("cat", "dog") for i in range(6)]
    listing = tmp_path / "labels.csv"
    listing.write_text("\n".join(rows) + "\n")
    out = tmp_path / "cache.h5"
    precompute(data, out, ["vgg16"], csv=listing, **FAST)
    listing.write_text("\n".join(rows).replace("cat/cat_002.jpg,cat", "cat/cat_002.jpg,dog") + "\n")
    with pytest.raises(ValueError, match=r"1 image\(s\) have another label than in store .*, e\.g\. cat/cat_002\.jpg: "
                                         r"stored cat, now dog\. .*write to a new --out"):
        precompute(data, out, ["vgg16"], csv=listing, on_change="add", **FAST)
    assert load_store(out).labels[2] == 0


def test_a_moved_data_folder_is_read_from_where_it_is_now(data, tmp_path):
    out = tmp_path / "cache.h5"
    precompute(data, out, ["vgg16"], **FAST)
    moved = tmp_path / "moved"
    os.rename(data, moved)  # keeps sizes and modification times: the same images
    summary = precompute(moved, out, ["vgg16", "resnet50"], **FAST)
    assert summary.computed == {"vgg16": 0, "resnet50": 12}
    assert summary.skipped == (("cat/broken.jpg", summary.skipped[0][1]),)
    assert load_store(out).features["resnet50"].shape == (12, 2048)


def test_no_readable_image_is_a_clear_error_and_leaves_no_store(tmp_path):
    data = tmp_path / "bad"
    for name in ("cat", "dog"):
        (data / name).mkdir(parents=True)
        (data / name / "a.jpg").write_bytes(b"not an image")
    out = tmp_path / "cache.h5"
    with pytest.raises(ValueError, match=r"None of the 2 image\(s\) could be read, so no store was written .*"
                                         r"E\.g\. cat/a\.jpg: not an image file PIL can identify"):
        precompute(data, out, ["vgg16"], **FAST)
    assert not out.exists()
    make_class_folders(data, classes=("cat", "dog"), per_class=3)  # the user fixes the data
    summary = precompute(data, out, ["vgg16"], **FAST)
    assert summary.images == 6 and summary.computed == {"vgg16": 6} and len(summary.skipped) == 2


def test_option_errors(data, tmp_path):
    out = tmp_path / "c.h5"
    cases = [
        (dict(dtype="int8"), "Unknown dtype 'int8'. Valid values: float16, float32"),
        (dict(precision="half"), "Unknown precision 'half'"),
        (dict(on_change="merge"), "Unknown on_change 'merge'. Valid values: refuse, add"),
        (dict(views="all"), "Unknown views 'all'"),
        (dict(batch_size=0), "batch_size must be a positive integer"),
        (dict(decode_workers=0), r"decode_workers must be a positive integer, or None for the default. Received: decode_workers=0"),
    ]
    for options, message in cases:
        with pytest.raises(ValueError, match=message):
            precompute(data, out, ["vgg16"], **{**FAST, **options})
    with pytest.raises(ValueError, match=r"Unknown backbone 'vgg1'"):
        precompute(data, out, ["vgg1"], **FAST)
    assert not out.exists()


def test_second_run_in_a_process_reuses_built_backbones(data, tmp_path):
    first = precompute(data, tmp_path / "one.h5", ["vgg16"], seed=5, **FAST)
    second = precompute(data, tmp_path / "two.h5", ["vgg16"], seed=5, **FAST)
    other_seed = precompute(data, tmp_path / "three.h5", ["vgg16"], seed=6, **FAST)
    assert first.timings["build"] > 0 and second.timings["build"] == 0.0 and other_seed.timings["build"] > 0
    assert set(second.timings) == {"build", "compute", "decode_wait", "write_wait", "prepare"}
    assert second.timings["compute"] > 0 and second.timings["prepare"] > 0
    features = [load_store(tmp_path / f"{name}.h5").features["vgg16"] for name in ("one", "two", "three")]
    np.testing.assert_array_equal(features[0], features[1])
    assert not np.allclose(features[0], features[2])  # a new seed is a new model, not the cached one


@pytest.mark.skipif(os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow", reason="TensorFlow fast path")
def test_short_last_batch_runs_unpadded_without_tracing_again():
    model, _ = extractors.feature_extractor("mobilenet_v2", 32, None, "avg", 0, "float32")
    traces = extractors._fast_predict(model).experimental_get_tracing_count()
    images = np.random.default_rng(3).uniform(0, 255, (11, 32, 32, 3)).astype("float32")
    batched = extractors.predict_in_batches(model, images, batch_size=4)  # 4 + 4 + 3
    assert extractors._fast_predict(model).experimental_get_tracing_count() == traces
    one_by_one = np.concatenate([model.predict_on_batch(image[None]) for image in images])
    np.testing.assert_allclose(batched, one_by_one, rtol=1e-4, atol=1e-4)
    assert extractors._fast_predict(model).experimental_get_tracing_count() == traces


def test_a_labels_file_for_the_full_set_beside_a_sample(tmp_path):
    # The CSV names 6 readable images (cat, dog), 8 broken ones (all of class eel) and 266 files that were
    # never downloaded, of 40 other classes: 20 rows per file present.
    data = tmp_path / "data"
    make_class_folders(data, classes=("images",), per_class=6)
    rows = [f"images/images_{index:03d}.jpg,{'cat' if index < 3 else 'dog'}" for index in range(6)]
    for index in range(8):
        (data / "images" / f"broken_{index}.jpg").write_bytes(b"not an image")
        rows.append(f"images/broken_{index}.jpg,eel")
    rows += [f"images/missing_{index:03d}.jpg,class_{index % 40:02d}" for index in range(266)]
    (data / "labels.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    out = tmp_path / "cache.h5"
    with logged_lines("features.pipeline", lambda line: (line, out.exists())) as logged:
        summary = precompute(data, out, ["vgg16"], csv=data / "labels.csv", **FAST)
    # The data summary came before any compute: the store did not exist yet.
    assert logged and not any(existed for _, existed in logged)
    printed = [line for line, _ in logged]
    assert "  266 of the 280 rows of labels.csv name no file under DATA (e.g. images/missing_000.jpg, " \
           "images/missing_001.jpg, images/missing_002.jpg); they are left out" in printed
    assert any(line.startswith("  WARNING: most listed rows (95%) have no file") for line in printed)
    assert f"  left out 266 image(s): 266 no file; all listed in {out}.skipped.csv" in printed
    assert len(printed) < 20
    # Classes are the classes that have readable images.
    stored = load_store(out)
    assert stored.class_names == ("cat", "dog") and summary.class_names == ("cat", "dog")
    assert sorted(stored.labels.tolist()) == [0, 0, 0, 1, 1, 1]
    assert summary.dropped_classes == ("eel",)
    lines = summary.lines()
    assert lines[0] == f"Store: {out} (6 images, 2 classes)"
    assert "  skipped 8 unreadable image(s) (8 found in this run): 8 not an image file PIL can identify" in lines
    assert "    ... and 3 more" in lines and sum(line.startswith("    images/broken_") for line in lines) == 5
    assert "  1 class(es) left out, none of their images could be read: eel" in lines
    assert f"  every skipped and left-out image, with its reason: {out}.skipped.csv" in lines
    import csv

    with open(f"{out}.skipped.csv", newline="") as handle:
        listed = list(csv.DictReader(handle))
    assert len(listed) == 8 + 266
    assert {row["reason"] for row in listed[:8]} == {"not an image file PIL can identify"}
    assert listed[8] == {"path": "images/missing_000.jpg", "reason": "no file (listed in labels.csv line 16)"}


def test_non_finite_features_are_refused_before_their_rows_are_marked_done(data, tmp_path, monkeypatch):
    out = tmp_path / "cache.h5"
    real = compute.predict_in_batches

    def overflowing(model, images, batch_size):
        features = real(model, images, batch_size)
        features[1] = np.inf  # as mixed_float16 can overflow
        return features

    monkeypatch.setattr(compute, "predict_in_batches", overflowing)
    with pytest.raises(ValueError, match=r"Backbone vgg16 gave NaN or infinite features for 1 image\(s\), e\.g\. "
                                         r"cat/cat_001\.jpg; nothing of this batch was stored"):
        precompute(data, out, ["vgg16"], **FAST)
    with h5py.File(out, "r") as store:
        assert not store["progress/vgg16"][()].any()
    monkeypatch.setattr(compute, "predict_in_batches", real)
    summary = precompute(data, out, ["vgg16"], **FAST)
    assert summary.computed == {"vgg16": 12} and np.isfinite(load_store(out).features["vgg16"]).all()


def _png_of_size(width, height):
    """A valid PNG file of a few dozen bytes whose header says width x height."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b""))


def test_hostile_labels_and_images_stay_in_their_box(tmp_path):
    import csv
    import json

    from PIL import Image

    root = tmp_path / "data"
    make_class_folders(root, classes=("cat", "dog"), per_class=3)
    (tmp_path / "secret.jpg").write_bytes((root / "cat" / "cat_000.jpg").read_bytes())
    (root / "cat" / "link_out.jpg").symlink_to(tmp_path / "secret.jpg")
    (root / "dog" / "gone.jpg").symlink_to(tmp_path / "deleted.jpg")
    (root / "dog" / "bomb.png").write_bytes(_png_of_size(7000, 7000))
    Image.new("RGB", (4000, 3000), (30, 160, 90)).save(root / "dog" / "large.jpg", quality=90)
    rows = [f"cat/cat_{i:03d}.jpg,cat" for i in range(3)] + [f"dog/dog_{i:03d}.jpg,dog" for i in range(3)]
    rows += ["../secret.jpg,cat", "cat/link_out.jpg,cat", "dog/gone.jpg,dog", "dog/bomb.png,dog", "dog/large.jpg,dog"]
    (tmp_path / "labels.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    out = tmp_path / "cache.h5"
    with logged_lines("features.pipeline") as printed:
        summary = precompute(root, out, ["vgg16"], csv=tmp_path / "labels.csv", val_fraction=0, test_fraction=0,
                             **FAST)
    assert summary.skipped == (("dog/bomb.png", "too large: 7000 x 7000 pixels > 40000000"),)
    assert [path for path, _ in summary.left_out] == ["../secret.jpg", "cat/link_out.jpg", "dog/gone.jpg"]
    assert "  left out 3 image(s): 2 outside DATA, 1 broken symlink; all listed in " \
           f"{out}.skipped.csv" in printed
    with open(f"{out}.skipped.csv", newline="") as handle:
        listed = {row["path"]: row["reason"] for row in csv.DictReader(handle)}
    assert set(listed) == {"dog/bomb.png", "../secret.jpg", "cat/link_out.jpg", "dog/gone.jpg"}
    assert listed["../secret.jpg"].startswith("outside DATA (resolves to ")
    assert listed["dog/gone.jpg"].startswith("broken symlink (points to ")
    # The 4000 x 3000 JPEG is decoded at 1/8 scale (375 x 500, still >= 32) and its features are those of that image.
    loaded = load_store(out)
    row = loaded.paths.tolist().index("dog/large.jpg")
    drafted = load_image(root / "dog" / "large.jpg", min_size=32)
    assert drafted.shape == (375, 500, 3)
    model = create_backbone("vgg16", input_size=32, weights="none", seed=0)
    expected = model.predict_on_batch(resize_image(drafted, 32)[None])[0]
    np.testing.assert_allclose(loaded.features["vgg16"][row], expected, rtol=2e-2, atol=2e-2)
    with h5py.File(out, "r") as store:
        created_with = json.loads(store.attrs["created_with"])
        assert store["features/vgg16"].attrs["weights_sha256"] == "none"
    assert created_with["max_pixels"] == 40_000_000 and created_with["allow_outside_data"] is False
    # Asked for: rows outside DATA are read, and a higher limit decodes the large header's image (here: corrupt).
    allowed = precompute(root, tmp_path / "allowed.h5", ["vgg16"], csv=tmp_path / "labels.csv", val_fraction=0,
                         test_fraction=0, allow_outside_data=True, max_pixels=50_000_000, **FAST)
    assert {"../secret.jpg", "cat/link_out.jpg"} <= set(load_store(tmp_path / "allowed.h5").paths.tolist())
    assert [path for path, _ in allowed.left_out] == ["dog/gone.jpg"]
    assert allowed.skipped[0][0] == "dog/bomb.png" and allowed.skipped[0][1].startswith("corrupt or truncated")


def test_max_pixels_must_be_a_positive_integer(data, tmp_path):
    for value in (0, -5, 1.5e7, True, "40000000"):
        with pytest.raises(ValueError, match=r"max_pixels must be a positive integer \(width x height\), or None for "
                                             rf"no limit of this project's own\. Received: max_pixels={value!r}"):
            precompute(data, tmp_path / "c.h5", ["vgg16"], max_pixels=value, **FAST)
    assert not (tmp_path / "c.h5").exists()


def test_weight_files_record_their_sha256_and_stores_without_it_still_resume(data, tmp_path):
    import hashlib

    from keras.src.legacy.saving import legacy_h5_format

    from features import get_backbone_spec

    folder = tmp_path / "weights"
    folder.mkdir()
    weights_file = folder / get_backbone_spec("vgg16").weights_file
    with h5py.File(weights_file, "w") as handle:
        legacy_h5_format.save_weights_to_hdf5_group(handle, create_backbone("vgg16", input_size=32, weights="none",
                                                                            seed=3).get_layer("vgg16"))
    out = tmp_path / "cache.h5"
    options = {**FAST, "weights": str(folder)}
    precompute(data, out, ["vgg16"], **options)
    with h5py.File(out, "r") as store:
        assert store["features/vgg16"].attrs["weights_sha256"] == hashlib.sha256(weights_file.read_bytes()).hexdigest()
    # A store made before the attribute existed resumes and reuses its rows.
    with h5py.File(out, "r+") as store:
        del store["features/vgg16"].attrs["weights_sha256"]
        store["progress/vgg16"][0] = 0  # one row left to compute
    summary = precompute(data, out, ["vgg16"], **options)
    assert summary.computed == {"vgg16": 1} and summary.reused == {"vgg16": 11}
    # A weights file replaced under the same name is refused on resume: its features would differ.
    other = tmp_path / "other.h5"
    precompute(data, other, ["vgg16"], **options)
    with h5py.File(weights_file, "w") as handle:
        legacy_h5_format.save_weights_to_hdf5_group(handle, create_backbone("vgg16", input_size=32, weights="none",
                                                                            seed=4).get_layer("vgg16"))
    replaced = hashlib.sha256(weights_file.read_bytes()).hexdigest()
    with pytest.raises(ValueError, match=rf"the file was replaced, and its features would differ\. Restore the file, "
                                         rf"or use another --out\. Received: weights_sha256='{replaced}'"):
        precompute(data, other, ["vgg16"], **options)


def test_a_repaired_skipped_image_is_tried_again(data, tmp_path):
    out = tmp_path / "cache.h5"
    first = precompute(data, out, ["vgg16"], **FAST)
    assert [path for path, _ in first.skipped] == ["cat/broken.jpg"]
    # Repaired under the same name: its fingerprint changed, so it is tried again, without --on-change add.
    make_class_folders(tmp_path / "fixed", classes=("cat",), per_class=1, seed=4)
    os.replace(tmp_path / "fixed" / "cat" / "cat_000.jpg", data / "cat" / "broken.jpg")
    summary = precompute(data, out, ["vgg16"], **FAST)
    assert summary.retried == 1 and summary.added_images == 0 and summary.computed == {"vgg16": 1}
    assert summary.skipped == () and summary.images == 13
    assert "  tried 1 skipped image(s) again (changed on disk, or --retry-skipped)" in summary.lines()
    loaded = load_store(out)
    assert loaded.labels[loaded.paths.tolist().index("cat/broken.jpg")] == 0
    # Now stored: a change to it is refused like any stored image's (its features would no longer match).
    (data / "cat" / "broken.jpg").write_bytes(b"broken again, longer this time")
    with pytest.raises(ValueError, match=r"1 image\(s\) changed on disk since they were stored"):
        precompute(data, out, ["vgg16"], **FAST)


def test_a_skipped_image_that_changed_and_is_still_broken_stays_skipped(data, tmp_path):
    out = tmp_path / "cache.h5"
    precompute(data, out, ["vgg16"], **FAST)
    (data / "cat" / "broken.jpg").write_bytes(b"still not a jpeg, but another file")
    summary = precompute(data, out, ["vgg16"], **FAST)
    assert summary.retried == 1 and summary.computed == {"vgg16": 0} and summary.skipped_now == 1
    assert [path for path, _ in summary.skipped] == ["cat/broken.jpg"] and summary.images == 12
    again = precompute(data, out, ["vgg16"], **FAST)  # its new fingerprint is recorded: not tried a third time
    assert again.retried == 0 and again.skipped_now == 0 and len(again.skipped) == 1


def test_a_class_whose_images_all_stay_skipped_stays_out_when_images_are_added(tmp_path):
    data = tmp_path / "data"
    make_class_folders(data, classes=("cat", "dog"), per_class=3)
    (data / "eel").mkdir()
    (data / "eel" / "bad.jpg").write_bytes(b"nope")
    out = tmp_path / "cache.h5"
    assert precompute(data, out, ["vgg16"], **FAST).dropped_classes == ("eel",)
    (data / "dog" / "dog_new.jpg").write_bytes((data / "cat" / "cat_000.jpg").read_bytes())  # one new dog image
    summary = precompute(data, out, ["vgg16"], on_change="add", **FAST)
    assert summary.added_images == 1 and summary.class_names == ("cat", "dog")


def test_a_symlinked_out_is_locked_and_replaced_through_its_target(data, tmp_path):
    from features.store import StoreBusyError, store_lock

    real = tmp_path / "stores" / "real.h5"
    real.parent.mkdir()
    precompute(data, real, ["vgg16"], **FAST)
    link = tmp_path / "link.h5"
    link.symlink_to(real)
    with store_lock(real):  # a run writing the real file excludes one writing through the link
        with pytest.raises(StoreBusyError, match=r"real\.h5\.lock is held"):
            precompute(data, link, ["vgg16", "resnet50"], **FAST)
    summary = precompute(data, link, ["vgg16", "resnet50"], **FAST)
    assert summary.computed == {"vgg16": 0, "resnet50": 12}
    assert link.is_symlink() and link.resolve() == real.resolve()
    assert sorted(load_store(real).features) == ["resnet50", "vgg16"]
    assert (real.parent / "real.h5.lock").exists() and not (tmp_path / "link.h5.lock").exists()
    assert not (tmp_path / "link.h5.tmp").exists() and not (real.parent / "real.h5.tmp").exists()


def test_the_options_in_effect_are_the_stores_own(data, tmp_path):
    out = tmp_path / "cache.h5"
    first = precompute(data, out, ["vgg16"], val_fraction=0.2, **FAST)
    assert first.options["val_fraction"] == 0.2 and first.options_differing == {}
    again = precompute(data, out, ["vgg16"], val_fraction=0.3, test_fraction=0.2, **FAST)
    assert again.options["val_fraction"] == 0.2 and again.options["test_fraction"] == 0.1
    assert again.options_differing == {"val_fraction": (0.3, 0.2), "test_fraction": (0.2, 0.1)}
    assert ("  val_fraction=0.3 given, but the store was made with val_fraction=0.2: its rows keep the splits they "
            "were made with, and val_fraction=0.2 is recorded as the option in effect") in again.lines()
    np.testing.assert_array_equal(load_store(out).splits, load_store(first.store_path).splits)


def _costs(out):
    index = features.read_index(out)
    return index.compute_costs, index.decode_cost


def test_each_backbones_cost_is_recorded_and_every_run_that_computes_adds_to_it(data, tmp_path):
    out = tmp_path / "cache.h5"
    first = precompute(data, out, ["vgg16"], **FAST)
    costs, decode = _costs(out)
    seconds, images = costs["vgg16"]
    assert images == 12 and 0 < seconds < np.inf
    assert seconds == pytest.approx(first.compute_seconds["vgg16"])
    assert decode[1] == 13 and 0 < decode[0] < np.inf  # the unreadable file was decoded (tried) too
    assert first.seconds_per_image["vgg16"] == pytest.approx(seconds / 12)
    assert f"  vgg16: computed 12, reused 0, {seconds / 12:.3g} s/image" in first.lines()
    assert any(line.startswith("  decode and resize: ") and line.endswith(" s/image (one decode serves every backbone)")
               for line in first.lines())
    with h5py.File(out, "r") as store:
        recipe = dict(store["features/vgg16"].attrs)
    # Reused rows add nothing.
    reused = precompute(data, out, ["vgg16"], **FAST)
    assert _costs(out) == (costs, decode) and reused.seconds_per_image == {"vgg16": None}
    assert "  vgg16: computed 0, reused 12" in reused.lines()
    # A resumed run adds the rows it computes; a run that adds images and a backbone adds those.
    with h5py.File(out, "r+") as store:
        store["progress/vgg16"][:3] = 0
    resumed = precompute(data, out, ["vgg16"], **FAST)
    assert resumed.computed == {"vgg16": 3} and _costs(out)[0]["vgg16"] == pytest.approx(
        (seconds + resumed.compute_seconds["vgg16"], 15))
    make_class_folders(data, classes=("eel",), per_class=2, seed=5)
    extended = precompute(data, out, ["vgg16", "resnet50"], on_change="add", **FAST)
    assert extended.computed == {"vgg16": 2, "resnet50": 14}
    costs, decode = _costs(out)
    assert costs["vgg16"][1] == 17 and costs["resnet50"][1] == 14 and decode[1] == 13 + 3 + 14
    # Measurements are not recipe facts: the recipe of the rows stays as it was.
    with h5py.File(out, "r") as store:
        assert dict(store["features/vgg16"].attrs) == recipe
    table = load_store(out).summary()
    assert table["backbone"].tolist() == ["resnet50", "vgg16"] and table["images"].tolist() == [14, 14]
    assert table["precompute_seconds_per_image"].tolist() == pytest.approx(
        [costs["resnet50"][0] / 14, costs["vgg16"][0] / 17])


def test_a_store_written_before_costs_reads_none_and_still_resumes(data, tmp_path):
    from fusion.store import read_store_info

    out = tmp_path / "cache.h5"
    precompute(data, out, ["vgg16"], val_fraction=0.25, test_fraction=0.25, **FAST)
    with h5py.File(out, "r+") as store:
        del store["cost"]
        store["progress/vgg16"][0] = 0
    summary = precompute(data, out, ["vgg16"], val_fraction=0.25, test_fraction=0.25, **FAST)
    assert summary.computed == {"vgg16": 1} and summary.seconds_per_image["vgg16"] > 0  # the run measured it
    info = read_store_info(out)  # but a store without /cost records nothing: None, never 0
    assert info.precompute_seconds_per_image == {"vgg16": None} and info.decode_seconds_per_image is None
    loaded = load_store(out)
    assert loaded.precompute_seconds_per_image == {"vgg16": None} and loaded.decode_seconds_per_image is None
    assert np.isnan(loaded.summary()["precompute_seconds_per_image"][0])
