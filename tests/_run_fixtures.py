"""A finished run on tiny images, shared by the export and predict tests; the lines a package logs."""

import contextlib
import logging

# Two backbones with different preprocessing: mobilenet_v2 ("tf" mode: scaled to -1..1; its
# BatchNormalization layers are what the export's training=False is tested on) and vgg16 ("caffe"
# mode: BGR, mean subtracted), the cheapest Keras backbone of a second mode to build, save, load
# and trace at 32 px (about 1.6 CPU s, against about 12 for densenet121 of "torch" mode).
BACKBONES = ["mobilenet_v2", "vgg16"]
INPUT_SIZE = 32


def write_two_class_images(root, per_class=8, seed=0):
    """Squares of two colours on noise in `root/class_0` and `root/class_1`.

    One size for all (not square, and not the input size, so the resize matters): the exported
    model, called on whole images, is then traced once.
    """
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for class_index, colour in enumerate(((220, 40, 40), (40, 40, 220))):
        folder = root / f"class_{class_index}"
        folder.mkdir(parents=True)
        for index in range(per_class):
            height, width = 44, 52
            pixels = rng.integers(0, 80, size=(height, width, 3), dtype=np.uint8)
            pixels[height // 4: 3 * height // 4, width // 4: 3 * width // 4] = colour
            Image.fromarray(pixels).save(folder / f"image_{index}.png")
    return root


def trained_run(tmp_path_factory, dtype):
    import features
    from fusion import train_run
    from fusion.export import export_model

    base = tmp_path_factory.mktemp(f"run_{dtype}")
    data = write_two_class_images(base / "images")
    store = base / "cache.h5"
    features.precompute(data, store, BACKBONES, weights="none", input_size=INPUT_SIZE, dtype=dtype,
                        views="hflip", val_fraction=0.25, test_fraction=0.25, progress=False)
    run_dir = base / "run"
    train_run(store, run_dir, units=8, epochs=2, patience=2, batch_size=8, ablation=False, verbose=0)
    export_model(run_dir)
    return data, store, run_dir


def old_style_export(model):
    """`model` rewired as exports were before FusionClassifier: a functional model whose parts are found by name."""
    import keras

    from fusion.export import _LegacyClassNames

    image = keras.Input(shape=(None, None, 3), name="image", dtype="float32")
    extracted = {name: model.backbones[name](keras.layers.Resizing(size, size, interpolation="bilinear",
                                                                   antialias=True, name=f"{name}_resize")(image))
                 for name, size in model.input_sizes.items()}
    probabilities = _LegacyClassNames(model.class_names, name="class_names")(model.head(extracted))
    return keras.Model(image, probabilities, name="fusionpipe_classifier")


class _ListHandler(logging.Handler):
    def __init__(self, lines, record):
        super().__init__(logging.INFO)
        self.lines, self.record = lines, record

    def emit(self, record):
        self.lines.append(self.record(record.getMessage()))


@contextlib.contextmanager
def logged_lines(logger_name, record=lambda line: line):
    """The lines `logger_name` logs at INFO or above during the block, in a list filled as they come.

    `record` turns each line into what is kept, e.g. `lambda line: (line, out.exists())`.
    """
    lines = []
    handler = _ListHandler(lines, record)
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@contextlib.contextmanager
def unconfigured_logging():
    """Logging as a notebook or a plain script has it: no handler anywhere (pytest's own taken off the root)."""
    root = logging.getLogger()
    saved = list(root.handlers)
    for handler in saved:
        root.removeHandler(handler)
    try:
        yield root
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved:
            root.addHandler(handler)
