"""Extra views of an image (flips, rotations) for test-time augmentation."""

import numpy as np

# The 7 non-identity symmetries of the square.
DIHEDRAL_VIEWS = ("hflip", "vflip", "rot90", "rot180", "rot270", "transpose", "transverse")

_VIEW_SETS = {"none": (), "hflip": ("hflip",), "dihedral": DIHEDRAL_VIEWS}

_VIEWS = {
    "identity": lambda image: image,
    "hflip": lambda image: image[:, ::-1],
    "vflip": lambda image: image[::-1, :],
    "rot90": lambda image: np.rot90(image, 1, axes=(0, 1)),
    "rot180": lambda image: image[::-1, ::-1],
    "rot270": lambda image: np.rot90(image, 3, axes=(0, 1)),
    "transpose": lambda image: np.swapaxes(image, 0, 1),
    "transverse": lambda image: np.swapaxes(image[::-1, ::-1], 0, 1),
}


def view_names(views="none"):
    """The names of the extra views of a `--views` setting: "none", "hflip" or "dihedral".

    Example:
        >>> view_names("hflip")
        ('hflip',)
    """
    if views not in _VIEW_SETS:
        raise ValueError(f"Unknown views '{views}'. Valid values: {', '.join(_VIEW_SETS)}. "
                         f"Received: views={views!r}")
    return _VIEW_SETS[views]


def apply_view(image, name):
    """Return view `name` of an image array (H, W, C): flipped, rotated or transposed.

    Apply it to the decoded image before resizing, as precompute does. `rot90` turns
    counter-clockwise; `transpose` mirrors over the main diagonal, `transverse` over the other.

    Args:
        image: array of shape (H, W, C).
        name: "identity" or one of `DIHEDRAL_VIEWS`.

    Example:
        >>> apply_view(np.arange(6).reshape(2, 3, 1), "hflip")[0, :, 0]
        array([2, 1, 0])
    """
    if name not in _VIEWS:
        raise ValueError(f"Unknown view '{name}'. Valid names: {', '.join(_VIEWS)}. Received: name={name!r}")
    return np.ascontiguousarray(_VIEWS[name](np.asarray(image)))
