"""The model input for one picture: the one copy of the preprocessing contract, shared by training, evaluation,
export calibration and the edge runner.

It lives here, not in mineralnet, because the device runs it without mineralnet or TensorFlow (numpy and Pillow
only); mineralnet/data/images.py imports it, so the model is trained on exactly the pixels the belt will give it.

Contract: decode with Pillow, first frame of animations, turn it upright by its EXIF Orientation (phone photos are
stored sideways), convert an embedded ICC profile to sRGB (relative colorimetric; colour is what separates
malachite from chrysocolla, and a Display P3 or Adobe RGB photo read as sRGB has the wrong colours), convert to
8-bit RGB (alpha composited on white, 16-bit scaled to 8-bit), resize the whole picture (no crop, aspect ratio not
kept) to size x size with Pillow's BILINEAR filter, keep raw 0-255 values; the model normalises internally. A
picture without a profile is taken as sRGB and left as it is; a grey picture with an RGB profile is the grey of
that RGB space. A profile that cannot be read or applied (corrupt, or for another colour space than the pixels)
makes the file unusable, like a truncated one: training's scan skips and reports it, the runner skips it; its true
colours are unknown, and guessing them could sort a rock wrongly. Edge-only steps: OpenCV's BGR frames (no EXIF,
no profile: sRGB) become RGB first, the region of interest is cropped before the resize, and int8 models get their
input quantised with the sidecar's scale and zero point.
"""

import io
import math

import numpy as np
from PIL import Image, ImageCms, ImageFile, ImageOps

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")  # the extensions training reads
RESIZE_METHOD = "pillow-bilinear"  # in the sidecar, with DECODE_METHOD: edge/model.py refuses any other
DECODE_METHOD = "pillow-exif-orientation-icc-srgb-relative"

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

# A truncated file must fail loudly (skipped and counted by training's scan and by the runner), never decode to a
# half-grey picture that is trained on or sorted.
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


def from_bgr(frame):
    """An OpenCV frame (BGR, BGRA or grey uint8 array) as the RGB uint8 pixels (height, width, 3) a Pillow RGB image
    of it holds, without making one: a belt of many segments the array, a single item's crop becomes a Pillow image
    only for its resize (the same resize). BGR goes through cv2.cvtColor: 0.4 ms a 1280 x 720 frame where numpy's
    reversed copy and a Pillow image took 5.2 (benchmarks/camera_frames.py)."""
    import cv2  # only cameras call this, and they need OpenCV anyway (training does not)

    frame = np.asarray(frame)
    if frame.ndim == 3 and frame.shape[2] == 3:
        return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    if frame.ndim == 3 and frame.shape[2] == 4:
        return np.asarray(to_rgb(Image.fromarray(np.ascontiguousarray(frame[..., [2, 1, 0, 3]]))))
    if frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] == 1):
        return np.asarray(to_rgb(Image.fromarray(frame.reshape(frame.shape[:2]))))
    raise ValueError(f"camera frame of shape {frame.shape} is not a grey, BGR or BGRA picture")


def frame_size(image):
    """(width, height) of a frame: a Pillow image or an RGB array (edge/sources.py Frame.image)."""
    return image.size if isinstance(image, Image.Image) else (image.shape[1], image.shape[0])


def crop_roi(image, roi):
    """The region of interest (x, y, width, height) of a frame (a Pillow image or an RGB array, the same kind back);
    None means the whole frame."""
    if roi is None:
        return image
    x, y, width, height = roi
    frame_width, frame_height = frame_size(image)
    if x + width > frame_width or y + height > frame_height:
        raise ValueError(
            f"region of interest {list(roi)} reaches outside the {frame_width}x{frame_height} frame "
            "(fix source.roi in the config)"
        )
    if isinstance(image, Image.Image):
        return image.crop((x, y, x + width, y + height))
    return image[y:y + height, x:x + width]


def crop_square(bbox, pad):
    """(x0, y0, side) of a particle's crop on a belt: a square centred on its bounding box (x, y, w, h), side = the
    longer side x (1 + 2 x pad), so the specimen is centred with a margin of belt all round (edge/particles.py
    cuts every particle so; mineralnet.data.belt cuts training photos the same way)."""
    x, y, w, h = bbox
    side = int(math.ceil(max(w, h) * (1 + 2 * pad)))
    return int(round(x + w / 2 - side / 2)), int(round(y + h / 2 - side / 2)), side


def resize_rgb(image, size):
    """Resize a Pillow RGB image to a (size, size, 3) uint8 array, the contract's way."""
    if image.size != (size, size):
        image = image.resize((size, size), Image.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def quantize(pixels, dtype, scale, zero_point):
    """The (1, S, S, 3) input tensor of `dtype` for (S, S, 3) uint8 pixels.

    float32 models take the raw values; uint8/int8 models take round(x / scale + zero_point), which is the
    identity for a uint8 input quantised with scale 1 and zero point 0.
    """
    dtype = np.dtype(dtype)
    if dtype == np.float32:
        return pixels.astype(np.float32)[None]
    if dtype == np.uint8 and scale == 1.0 and zero_point == 0:
        return pixels[None]
    info = np.iinfo(dtype)
    values = np.round(pixels.astype(np.float32) / np.float32(scale) + zero_point)
    return np.clip(values, info.min, info.max).astype(dtype)[None]


def dequantize(values, scale, zero_point):
    """Float probabilities from a model output; scale 0 means the output is not quantised."""
    if scale == 0.0:
        return values.astype(np.float32)
    return (values.astype(np.float32) - np.float32(zero_point)) * np.float32(scale)


def prepare(image, roi, size, dtype, scale, zero_point):
    """Crop, resize and quantise one Pillow RGB picture: the model input tensor."""
    return quantize(resize_rgb(crop_roi(image, roi), size), dtype, scale, zero_point)
