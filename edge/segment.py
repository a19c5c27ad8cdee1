"""The segment stage: a frame's region of interest -> the particles to classify.

Single items: the whole region of interest is one particle (`WholeFrame`), so one item per frame runs the same
path as a belt of many. Many particles ([particles]): the first `background_frames` frames teach the empty belt,
then each frame is segmented against it (`BeltSegments`, edge/particles.py Segmenter).

An ROI and a learned belt are set for one frame size: `[source] frame_size`, else the first frame they fit. A frame
of another size (a camera reconnecting at another resolution, a folder of mixed sizes) is skipped (`frame_size`),
never cropped with the old ROI, unless `[source] rescale = true` resizes it to that size. Single items without an
ROI take pictures of any size (each is resized to the model's input anyway).
"""

import numpy as np
from PIL import Image

from edge.particles import BackgroundModel, Particle, Segmentation, Segmenter
from edge.preprocess import crop_roi, frame_size


class SkipFrame(Exception):
    """This frame cannot be segmented: `reason` (frame_size, roi, belt) is counted, the message says why and the fix;
    sorting goes on."""

    def __init__(self, reason, message):
        super().__init__(message)
        self.reason = reason


class FrameSize:
    """The one frame size an ROI or a learned belt holds for (see the module)."""

    def __init__(self, size=None, rescale=False):
        self.size = tuple(size) if size else None
        self.rescale = rescale

    def check(self, image, roi):
        """`image` (a Pillow image or an RGB array) if it has the size (the first that fits `roi` sets it when none
        is configured), resized to it with `rescale` (Pillow's BILINEAR either way); else SkipFrame."""
        width, height = frame_size(image)
        if self.size is None:
            if roi is None or (roi[0] + roi[2] <= width and roi[1] + roi[3] <= height):
                self.size = (width, height)
            return image
        if (width, height) == self.size:
            return image
        if self.rescale:
            if isinstance(image, Image.Image):
                return image.resize(self.size, Image.BILINEAR)
            return np.asarray(Image.fromarray(image).resize(self.size, Image.BILINEAR))
        raise SkipFrame("frame_size", f"frame of {width}x{height} is not the {self.size[0]}x"
                        f"{self.size[1]} the roi and belt were set for: check the camera's resolution, or set "
                        "[source] rescale = true")


def _region(image, roi):
    try:
        return crop_roi(image, roi)
    except ValueError as error:
        raise SkipFrame("roi", str(error)) from None


class WholeFrame:
    """Single items: the region of interest, as the frame gives it (a Pillow picture or an RGB array), is the one
    particle of the frame."""

    learning = False

    def __init__(self, roi, size):
        self.roi, self.size = roi, size  # size: FrameSize
        self.image = None  # the last frame as segmented (resized with [source] rescale): what the page shows

    def segment(self, frame, decided=None):
        """The frame's one particle (`decided`: unused, a single item is never split)."""
        image = frame.image
        if self.roi is not None or self.size.size is not None:
            image = self.size.check(image, self.roi)
        self.image = image
        region = _region(image, self.roi)
        width, height = frame_size(region)
        box = (0, 0, width, height)
        return Segmentation([Particle(0, (width / 2, height / 2), box, width * height, None, None, (), False, region)])


class BeltSegments:
    """Many particles: learns the empty belt, then segments. `on_learned(frame, shape)` is called once the belt is
    learned, with the frame that completed it and the region's (height, width, 3)."""

    def __init__(self, particles, valves, roi, size, on_learned, contact=None):
        self.particles, self.valves, self.roi, self.size = particles, valves, roi, size
        self.on_learned = on_learned
        self.contact = contact  # the loaded [particles] contact_model (edge/contact.py), kept for every belt learned
        self.segmenter = None
        self.image = None  # the last frame as segmented (resized with [source] rescale): what the page shows
        self._empty_frames = []

    @property
    def learning(self):
        return self.segmenter is None

    def segment(self, frame, decided=None):
        """The frame's Segmentation, or None while it is one of the empty-belt frames being learned. `decided`: see
        edge/particles.py Segmenter.segment."""
        self.image = self.size.check(frame.image, self.roi)
        pixels = np.asarray(_region(self.image, self.roi))
        if self.segmenter is not None:
            return self.segmenter.segment(pixels, decided=decided)
        self._empty_frames.append(pixels)
        if len(self._empty_frames) < self.particles.background_frames:
            return None
        frames, self._empty_frames = self._empty_frames, []
        try:
            background = BackgroundModel(frames, self.particles.background_rate)
        except ValueError as error:
            raise SkipFrame("belt", f"{error}: the belt is learned again") from None
        self.segmenter = Segmenter(self.particles, background, self.valves, self.contact)
        self.on_learned(frame, pixels.shape)
        return None
