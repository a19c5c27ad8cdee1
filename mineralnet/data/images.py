"""Decoding and resizing of photographs: the one preprocessing contract shared by training, evaluation, export
calibration and the edge runner (edge/preprocess.py implements the same steps without importing mineralnet).

Contract: decode with Pillow, first frame of animations, turn it upright by its EXIF Orientation (phone photos
are stored sideways), convert an embedded ICC profile to sRGB (relative colorimetric; colour is what separates
malachite from chrysocolla, and a Display P3 or Adobe RGB photo read as sRGB has the wrong colours), convert to
8-bit RGB (alpha composited on white, 16-bit scaled to 8-bit), resize the whole image (no crop, aspect ratio not
kept) to size x size with Pillow's BILINEAR filter, keep raw 0-255 values. Normalisation lives inside the model.
A picture without a profile is taken as sRGB and left as it is; a grey picture with an RGB profile is the grey of
that RGB space. A profile that cannot be read or applied (corrupt, or for another colour space than the pixels)
makes the file unusable, like a truncated one: scanning skips and reports it, the edge runner skips it; its true
colours are unknown, and guessing them could sort a rock wrongly.
"""

import io

import numpy as np
from PIL import Image, ImageCms, ImageFile, ImageOps

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
RESIZE_METHOD = "pillow-bilinear"
DECODE_METHOD = "pillow-exif-orientation-icc-srgb-relative"  # in the sidecar: a runner decoding otherwise refuses it

# Relative colorimetric keeps every in-gamut colour exactly (mapped to sRGB's white) and clips only what sRGB cannot
# show; perceptual would compress all colours by a table that differs per camera vendor, so the same stone would
# reach the model with different values from different phones. (Matrix profiles, the usual camera ones, have no
# perceptual table, where both give the same numbers.)
RENDERING_INTENT = ImageCms.Intent.RELATIVE_COLORIMETRIC
SRGB = ImageCms.createProfile("sRGB")
_PROFILE_MODES = {  # ICC colour space -> the 8-bit Pillow mode lcms reads it in, and the picture modes it fits
    "RGB": ("RGB", ("RGB", "RGBA", "RGBX", "P", "PA")),
    "GRAY": ("L", ("L", "LA", "1", "I;16", "I;16B", "I;16L", "I", "F")),
    "CMYK": ("CMYK", ("CMYK",)),
}
_DEEP_MODES = ("I;16", "I;16B", "I;16L", "I", "F")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")

# A truncated file must fail loudly at scan time, never decode to a half-grey picture.
ImageFile.LOAD_TRUNCATED_IMAGES = False


def deep_to_l(image):
    """A 16-bit or 32-bit grey image (I;16, I, F) as 8-bit L: 16-bit range scaled, 0-255 values kept."""
    array = np.asarray(image, dtype=np.float64)
    peak = 65535.0 if image.mode.startswith("I;16") or array.max(initial=0) > 255 else 255.0
    array = np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(array, mode="L")


def to_srgb(image, profile_bytes):
    """`image` converted from its embedded ICC profile to sRGB (RGB, or RGBA keeping its alpha); without one, as is.

    Raises OSError naming the problem when the profile cannot be read or does not fit the pixels.
    """
    if not profile_bytes:
        return image
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(profile_bytes))
    except (OSError, ImageCms.PyCMSError) as error:
        raise OSError(f"unreadable embedded ICC colour profile ({error}): re-save the picture as sRGB") from None
    space = profile.profile.xcolor_space.strip()
    lcms_mode, fitting = _PROFILE_MODES.get(space, (None, ()))
    grey_in_rgb_space = space == "RGB" and image.mode in _PROFILE_MODES["GRAY"][1]  # ImageMagick writes these
    if image.mode not in fitting and not grey_in_rgb_space:
        raise OSError(f"embedded ICC colour profile is for {space or 'unknown'} pictures but the pixels are "
                      f"{image.mode}: re-save the picture as sRGB")
    alpha = None
    if image.mode in _ALPHA_MODES or (image.mode == "P" and "transparency" in image.info):
        alpha = image.convert("RGBA").getchannel("A")
    pixels = (deep_to_l(image) if image.mode in _DEEP_MODES else image).convert(lcms_mode)
    try:
        converted = ImageCms.profileToProfile(pixels, profile, SRGB, renderingIntent=RENDERING_INTENT,
                                              outputMode="RGB")
    except ImageCms.PyCMSError as error:
        raise OSError(f"embedded ICC colour profile cannot be applied ({error}): re-save the picture as sRGB") from None
    if alpha is not None:
        converted.putalpha(alpha)
    return converted


def to_rgb(image):
    """Any Pillow image (RGBA, LA, P, L, I;16, I, F, CMYK...) as 8-bit RGB."""
    if image.mode == "RGB":
        return image
    if image.mode in _DEEP_MODES:
        return deep_to_l(image).convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in _ALPHA_MODES:
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")


def open_rgb(path):
    """The first frame of an image file, upright, in sRGB, as RGB (raises on truncated or non-image files and on
    colour profiles that cannot be applied)."""
    with Image.open(path) as image:
        image.seek(0)
        image.load()
        profile_bytes = image.info.get("icc_profile")
        ImageOps.exif_transpose(image, in_place=True)
        return to_rgb(to_srgb(image, profile_bytes))


def resize_rgb(image, size):
    """Resize a Pillow RGB image to (size, size) uint8 array, the contract's way."""
    if image.size != (size, size):
        image = image.resize((size, size), Image.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def load_image(path, size):
    """The model input for one file: (size, size, 3) uint8 RGB."""
    return resize_rgb(open_rgb(path), size)
