"""The segment stage: a frame's region of interest -> the particles to classify.

Single items: the whole region of interest is one particle (`WholeFrame`), so one item per frame runs the same
path as a belt of many. Many particles ([particles]): the first `background_frames` frames teach the empty belt,
then each frame is segmented against it (`BeltSegments`, edge/particles.py Segmenter).
"""

import numpy as np

from edge.particles import BackgroundModel, Particle, Segmentation, Segmenter
from edge.preprocess import crop_roi


class SkipFrame(Exception):
    """This frame cannot be segmented (the message says why); it is counted and skipped, sorting goes on."""


def _region(frame, roi):
    try:
        return crop_roi(frame.image, roi)
    except ValueError as error:
        raise SkipFrame(str(error)) from None


class WholeFrame:
    """Single items: the region of interest, as a Pillow picture, is the one particle of the frame."""

    learning = False

    def __init__(self, roi):
        self.roi = roi

    def segment(self, frame):
        region = _region(frame, self.roi)
        width, height = region.size
        box = (0, 0, width, height)
        return Segmentation([Particle(0, (width / 2, height / 2), box, width * height, None, None, (), False, region)])


class BeltSegments:
    """Many particles: learns the empty belt, then segments. `on_learned(frame, shape)` is called once the belt is
    learned, with the frame that completed it and the region's (height, width, 3)."""

    def __init__(self, particles, valves, roi, on_learned):
        self.particles, self.valves, self.roi = particles, valves, roi
        self.on_learned = on_learned
        self.segmenter = None
        self._empty_frames = []

    @property
    def learning(self):
        return self.segmenter is None

    def segment(self, frame):
        """The frame's Segmentation, or None while it is one of the empty-belt frames being learned."""
        pixels = np.asarray(_region(frame, self.roi))
        if self.segmenter is not None:
            try:
                return self.segmenter.segment(pixels)
            except ValueError as error:  # a frame of another size than the learned belt
                raise SkipFrame(str(error)) from None
        self._empty_frames.append(pixels)
        if len(self._empty_frames) < self.particles.background_frames:
            return None
        frames, self._empty_frames = self._empty_frames, []
        try:
            background = BackgroundModel(frames, self.particles.background_rate)
        except ValueError as error:
            raise SkipFrame(f"{error}: the belt is learned again") from None
        self.segmenter = Segmenter(self.particles, background, self.valves)
        self.on_learned(frame, pixels.shape)
        return None
