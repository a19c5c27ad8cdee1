"""Decoding and resizing of photographs: the one preprocessing contract shared by training, evaluation, export
calibration and the edge runner (edge/preprocess.py implements the same steps without importing mineralnet).

Contract: decode with Pillow, first frame of animations, convert to 8-bit RGB (alpha composited on white,
16-bit scaled to 8-bit), resize the whole image (no crop, aspect ratio not kept) to size x size with Pillow's
BILINEAR filter, keep raw 0-255 values. Normalisation lives inside the model.
"""

import numpy as np
from PIL import Image, ImageFile

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
RESIZE_METHOD = "pillow-bilinear"

# A truncated file must fail loudly at scan time, never decode to a half-grey picture.
ImageFile.LOAD_TRUNCATED_IMAGES = False


def to_rgb(image):
    """Any Pillow image (RGBA, LA, P, L, I;16, I, F, CMYK...) as 8-bit RGB."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max(initial=0) > 255 else 255.0
        array = np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(array, mode="L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")


def open_rgb(path):
    """Decode the first frame of an image file fully (raises on truncated or non-image files) as RGB."""
    with Image.open(path) as image:
        image.seek(0)
        image.load()
        return to_rgb(image)


def resize_rgb(image, size):
    """Resize a Pillow RGB image to (size, size) uint8 array, the contract's way."""
    if image.size != (size, size):
        image = image.resize((size, size), Image.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def load_image(path, size):
    """The model input for one file: (size, size, 3) uint8 RGB."""
    return resize_rgb(open_rgb(path), size)
