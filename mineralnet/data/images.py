"""Decoding and resizing of photographs for training, evaluation and export calibration: the device contract of
edge/preprocess.py, imported rather than written again, so that the model learns from exactly the pixels the edge
runner gives it (the contract and its reasons are in edge/preprocess.py's docstring).

edge/ is a package of this distribution that imports nothing of mineralnet (the device has neither mineralnet nor
TensorFlow); the dependency runs this way only.
"""

from edge.preprocess import (  # noqa: F401  (the contract's names, re-exported for mineralnet.data)
    DECODE_METHOD, IMAGE_EXTENSIONS, RESIZE_METHOD, deep_to_l, open_rgb, resize_rgb, to_rgb, to_srgb,
)


def load_image(path, size):
    """The model input for one file: (size, size, 3) uint8 RGB."""
    return resize_rgb(open_rgb(path), size)
