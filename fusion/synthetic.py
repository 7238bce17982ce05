"""Synthetic feature stores with a known answer, for tests, demos and benchmarks."""

from pathlib import Path

import numpy as np

from features.store import write_plain_store

_KINDS = ("xor", "noisy_views", "random", "switch")


def write_synthetic_store(
    path,
    kind="xor",
    *,
    num_rows=600,
    backbones=None,
    feature_dims=16,
    num_classes=None,
    spatial_size=None,
    num_views=0,
    noise=1.0,
    split_fractions=(0.6, 0.2, 0.2),
    dtype="float16",
    string_format="utf8",
    with_extras=False,
    seed=0,
):
    """Write a feature store in the README layout whose labels follow a known rule.

    Kinds:
        `xor`: two classes; backbone 0 sees one bit, backbone 1 another, the label is their XOR,
            so only a model that combines the two backbones non-additively beats chance.
        `noisy_views`: every backbone sees the class through its own independent noise, so
            averaging the backbones beats each one alone.
        `random`: random labels and features, for shape and I/O checks.
        `switch`: backbone 2 (the selector) says, per image, which of backbones 0 and 1 shows the
            class; the other shows the code of a random class, a decoy that looks just as clear.
            Each backbone alone, their average, and any model that adds up the backbones'
            evidence stay near (1 + 1/C) / 2 for C classes (0.75 with the default two), since
            nothing but the selector tells the class from the decoy; a model that trusts a
            different backbone per image (e.g. `fusion="gated"`) gets almost every image right.
            The class code is +-2 on a quarter of the dims (its binary digits repeated), the
            selector's bit +-2 on a quarter of its dims. Backbones beyond the third are noise.
    Rows are written sorted by label, as a folder walk would, to exercise block shuffling.

    Args:
        path: the `.h5` file to write.
        kind: `xor`, `noisy_views`, `random` or `switch` (default: "xor").
        num_rows: number of images (default: 600).
        backbones: backbone names (default: None, ("alpha", "beta"), and ("alpha", "beta", "selector")
            for `switch`).
        feature_dims: feature size D of every backbone, or a list with one size per backbone
            (default: 16).
        num_classes: classes (default: None, 2 for `xor` and `switch`, 4 otherwise).
        spatial_size: write (N, S, S, D) maps instead of (N, D) vectors (default: None).
        num_views: extra views in `/views/<backbone>`: same signal, fresh noise (default: 0).
        noise: standard deviation of the noise (default: 1.0).
        split_fractions: train, val and test shares (default: (0.6, 0.2, 0.2)).
        dtype: feature dtype (default: "float16").
        string_format: `utf8` (variable-length) or `bytes` (fixed-length) strings (default: "utf8").
        with_extras: also write a `/skipped` group and an unknown dataset and attribute,
            which readers must ignore (default: False).
        seed: random seed (default: 0).

    Example:
        >>> write_synthetic_store(tmp_path / "xor.h5", kind="xor", num_rows=400)
        >>> write_synthetic_store(tmp_path / "switch.h5", kind="switch", backbones=("a", "b", "selector"))
    """
    if kind not in _KINDS:
        raise ValueError(f"Unknown kind {kind!r}. Valid kinds: {', '.join(_KINDS)}. Received: kind={kind!r}")
    if backbones is None:
        backbones = ("alpha", "beta", "selector") if kind == "switch" else ("alpha", "beta")
    if kind == "xor" and len(backbones) < 2:
        raise ValueError(f"kind='xor' needs at least two backbones. Received: backbones={list(backbones)}")
    if kind == "switch" and len(backbones) < 3:
        raise ValueError(
            "kind='switch' needs at least three backbones: two that may show the class and a selector. "
            f"Received: backbones={list(backbones)}"
        )
    rng = np.random.default_rng(seed)
    num_classes = num_classes or (2 if kind in ("xor", "switch") else 4)
    dims = [feature_dims] * len(backbones) if np.isscalar(feature_dims) else list(feature_dims)
    if kind == "xor":
        bits = rng.integers(0, 2, size=(num_rows, 2))
        labels = bits[:, 0] ^ bits[:, 1]
    else:
        labels = rng.integers(0, num_classes, size=num_rows)
    if kind == "switch":
        # Drawn after the labels, so the other kinds keep their draws; sorted with the labels below.
        states = rng.integers(0, 2, size=num_rows)
        decoys = rng.integers(0, num_classes, size=num_rows)
    order = np.argsort(labels, kind="stable")
    labels = labels[order]
    if kind == "xor":
        bits = bits[order]
    if kind == "switch":
        states, decoys = states[order], decoys[order]
    fractions = np.asarray(split_fractions, dtype=float) / np.sum(split_fractions)
    splits = rng.choice(np.array(["train", "val", "test"]), size=num_rows, p=fractions)

    def signal(index, dim):
        values = np.zeros((num_rows, dim))
        if kind == "xor" and index < 2:
            # The bit is plain to see in its own backbone: +-2 on a quarter of the dims.
            informative = max(1, dim // 4)
            values[:, :informative] = (2.0 * bits[:, index : index + 1] - 1.0) * 2.0
        elif kind == "switch" and index < 3:
            num_bits = max(1, int(np.ceil(np.log2(num_classes))))
            informative = max(num_bits, dim // 4)
            if index == 2:
                values[:, :informative] = (2.0 * states[:, None] - 1.0) * 2.0
            else:
                # Backbone `index` shows the class where the selector's state names it, a decoy elsewhere.
                shown = np.where(states == index, labels, decoys)
                digits = (shown[:, None] >> (np.arange(informative) % num_bits)) & 1
                values[:, :informative] = (2.0 * digits - 1.0) * 2.0
        elif kind == "noisy_views":
            prototypes = rng.normal(size=(num_classes, dim))
            values = prototypes[labels]
        return values

    def with_noise(values):
        if spatial_size:
            # The same vector at every position of an S x S map, with its own noise there.
            values = np.broadcast_to(values[..., None, None, :], values.shape[:-1] + (spatial_size, spatial_size, values.shape[-1]))
        return (values + noise * rng.normal(size=values.shape)).astype(dtype)

    class_names = [f"class_{index}" for index in range(num_classes)]
    paths = [f"{class_names[label]}/image_{row:05d}.png" for row, label in enumerate(labels)]
    features, views = {}, {}
    for index, (backbone, dim) in enumerate(zip(backbones, dims)):
        clean = signal(index, dim)
        features[backbone] = with_noise(clean)
        if num_views:
            views[backbone] = (with_noise(np.repeat(clean[:, None, :], num_views, axis=1)),
                               [f"view{v + 1}" for v in range(num_views)])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_plain_store(
        path, class_names, paths, labels, list(splits), features, views, string_format=string_format,
        skipped=[("broken/not_an_image.png", "cannot identify image file")] if with_extras else (),
        extra_attrs={"written_by": "write_synthetic_store"} if with_extras else None,
        extra_image_columns={"width": np.full(num_rows, 32, dtype=np.int32)} if with_extras else None,
    )
    return path
