"""Many particles on a wide belt: find each one in a camera frame, without TensorFlow (OpenCV and numpy only).

The belt is a known, roughly uniform background. A background model (per-pixel median of empty-belt frames) is
subtracted from each frame; a pixel whose colour differs from the belt's by more than `threshold` (largest
difference of the three channels, 0-255) is a particle pixel; `threshold = "auto"` sets it from the belt's noise
measured between the empty-belt frames (5 sigma, at least 6), as low as the camera allows, for dark ore on a
dark belt. Morphology removes sensor noise and closes small gaps; each outer contour, filled, is one blob (holes,
e.g. a specimen's dark spots that match the belt, belong to it). A blob that is not convex enough (touching
particles leave a neck) is split by distance transform + watershed. Blobs whose size (diameter of the circle of the
same area, in mm: `mm_per_px`) is below `min_mm` or above `max_mm` are dropped and counted, never classified.

The belt changes slowly (dust, wear, light): where no particle is (the particle mask dilated by a margin), the
background moves towards the frame by `background_rate` per frame (an exponential mean; 0.02 forgets half of an
old belt in about 35 frames), so a particle lying still for a while is not learned as belt.

Preprocessing contract for a particle's crop (what the classifier sees; training's photos must look like it): a
square centred on the particle's bounding box, side = the box's longer side x (1 + 2 x `pad`), so the specimen is
centred with a margin of belt on every side; pixels of *other* particles and pixels beyond the frame are replaced
by the background model's belt, so each crop shows one specimen on belt. Crops keep the frame's channel order (the
runner passes RGB frames, so crops are RGB uint8), at camera resolution: the runner resizes each to the model's
size with Pillow BILINEAR like any picture (edge/preprocess.py). Train on photos of single specimens on the same
belt (or a belt-coloured background) with the same margin.
"""

import math
from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from edge.contact import ContactLine
from edge.cut import concavity_cut, deepest_notch, solidity
from edge.preprocess import crop_square

SOLID_PIECE = 0.9  # a blob's seeds come from its piece before the closing when that piece is this much of it
AUTO_SIGMAS, AUTO_FLOOR = 5.0, 6  # threshold = "auto": 5 sigma of the belt's noise leaves ~1 pixel a frame to opening


@dataclass(frozen=True)
class Particle:
    """One particle in a frame. Pixel coordinates are the frame's: x across the belt, y along it."""

    index: int  # 0.. in the frame, ordered by y then x
    centroid: tuple  # (x, y) px
    bbox: tuple  # (x, y, width, height) px
    area_px: int
    area_mm2: float
    size_mm: float  # diameter of the circle of the same area
    lanes: tuple  # valve lanes its x-extent covers (empty without [valves] or when off the valve bar)
    split: bool  # True when it was cut out of a blob of touching particles
    crop: np.ndarray = field(repr=False)  # square RGB uint8 crop (see the module's contract); None when `known`
    mask: np.ndarray = field(default=None, repr=False)  # bool, the bbox's pixels that are this particle's
    cut: str = None  # "upstream" / "downstream": the frame's first / last row cuts the blob it is (a piece of)
    known: bool = False  # a blob of material decided in an earlier frame (Segmenter.segment): tracked, so no crop


@dataclass
class Segmentation:
    particles: list
    too_small: int = 0  # blobs below min_mm (noise, fines)
    too_large: int = 0  # blobs above max_mm (a clump that could not be split, a foreign object)
    mask: np.ndarray = field(default=None, repr=False)  # uint8 particle mask of the frame (255 = particle)


class BackgroundModel:
    """The empty belt: per-pixel median of a few empty frames, then a slow running mean where no particle is."""

    def __init__(self, frames, rate=0.02):
        frames = [np.asarray(f) for f in frames]
        if not frames:
            raise ValueError("the background model needs at least one empty-belt frame")
        shapes = {f.shape for f in frames}
        if len(shapes) != 1 or frames[0].ndim != 3 or frames[0].shape[2] != 3:
            raise ValueError(
                f"empty-belt frames must all be 3-channel pictures of one size, got shapes {sorted(shapes)}"
            )
        self.mean = np.median(np.stack(frames), axis=0).astype(np.float32)
        self.rate = float(rate)
        self.noise = self._noise(frames)
        self._refresh()

    @staticmethod
    def _noise(frames):
        """The belt's noise, grey levels (a robust standard deviation): from the differences between consecutive
        empty frames (sensor noise, flicker, a textured belt that moves), which no median of them hides. None from a
        single frame."""
        if len(frames) < 2:
            return None
        diffs = np.stack([cv2.absdiff(a, b)[::2, ::2] for a, b in zip(frames, frames[1:])]).ravel()
        diffs = diffs[diffs <= np.percentile(diffs, 99.0)]  # a stray particle or hot pixel is not noise
        # Gaussian noise of sigma s: a difference of two frames has mean |d| = 2 s / sqrt(pi); the 1 % cut lowers it
        # by 2.7 % (the mean, not the median: integer grey levels make a median too coarse).
        return float(diffs.mean() * math.sqrt(math.pi) / 2.0 / 0.973)

    def auto_threshold(self):
        """`[particles] threshold = "auto"`: AUTO_SIGMAS x the noise, at least AUTO_FLOOR (None from one frame)."""
        if self.noise is None:
            return None
        return int(min(254, max(AUTO_FLOOR, round(AUTO_SIGMAS * self.noise))))

    def _refresh(self):
        self.image = cv2.convertScaleAbs(self.mean)
        self._colour = None

    @property
    def colour(self):
        """The belt's median colour, for the part of a crop beyond the frame (computed when first needed)."""
        if self._colour is None:
            self._colour = np.median(self.image[::8, ::8].reshape(-1, 3), axis=0).astype(np.uint8)
        return self._colour

    def difference(self, frame):
        """Largest per-channel absolute difference from the belt, uint8 (one channel)."""
        first, second, third = cv2.split(cv2.absdiff(frame, self.image))  # contiguous planes: twice as fast
        return cv2.max(cv2.max(first, second), third)

    def update(self, frame, particle_mask, margin_px):
        """Learn the frame where no particle is (the mask dilated by `margin_px`), at `rate`."""
        if self.rate <= 0:
            return
        if margin_px > 0:
            side = 2 * margin_px + 1
            kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (side, side))  # separable: fast
            particle_mask = cv2.dilate(particle_mask, kernel)
        cv2.accumulateWeighted(frame, self.mean, self.rate, mask=cv2.bitwise_not(particle_mask))
        self._refresh()


def lanes_of(x0_mm, x1_mm, valves):
    """Valve lanes covered by the belt span [x0_mm, x1_mm): lane i is [first + i*lane, first + (i+1)*lane)."""
    if valves is None or x1_mm <= x0_mm:
        return ()
    first = math.floor((x0_mm - valves.first_lane_mm) / valves.lane_mm)
    last = math.ceil((x1_mm - valves.first_lane_mm) / valves.lane_mm) - 1
    return tuple(range(max(first, 0), min(last, valves.count - 1) + 1))


class Segmenter:
    """Frame -> particles. `particles`: the config's ParticlesConfig; `valves`: ValvesConfig or None.

    Frames are 3-channel uint8 arrays of the empty-belt frames' size, in any channel order (the crops keep it).
    """

    def __init__(self, particles, background, valves=None, contact=None):
        self.cfg = particles
        # contact: the [particles] contact_model's ContactLine, loaded by the caller before the belt runs, or here
        self.contact = contact or (ContactLine(particles.contact_model) if particles.contact_model else None)
        self.valves = valves
        self.background = background
        self.threshold = background.auto_threshold() if particles.threshold == "auto" else particles.threshold
        self.mm_per_px = particles.mm_per_px
        px = 1.0 / particles.mm_per_px
        self.min_area_px = math.pi / 4 * (particles.min_mm * px) ** 2
        self.max_area_px = math.pi / 4 * (particles.max_mm * px) ** 2
        # Opening removes specks well under the smallest particle.
        open_px = max(1, min(5, int(particles.min_mm * px / 4)) | 1)
        self._open = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (open_px, open_px))
        # Closing bridges gaps up to half the smallest particle (a dark specimen's parts that match the belt): 5 px
        # at 0.5 mm/px left dark specimens in pieces, each decided (benchmarks/RESULTS.md, belt simulator).
        close_px = max(5, int(round(particles.min_mm * px / 2)) | 1)
        self._close = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (close_px, close_px))
        self._margin_px = max(2, int(round(particles.min_mm * px / 2)))
        self._seed_px = particles.min_mm * px / 2  # a seed lower than the smallest particle's radius is a bump

    def segment(self, frame, learn=True, decided=None):
        """The particles of one frame (uint8, the background's size); learns the belt where none is.

        `decided`: a test of a blob, its centre (x, y) and box (x, y, w, h) px, whether it is all material decided in
        an earlier frame (edge/track.py BeltTracker.decided), or None. Such a blob is one particle, neither split nor
        too large: whatever its parts, tracking will call them `tracked`, so splitting it again in each later view
        (most of the splitting's cost on a moving belt) buys nothing. A blob the frame's edge cuts is split by its
        outline (its pieces are counted) but never shown to the contact network: none is decided from this frame."""
        frame = np.asarray(frame)
        if frame.shape != self.background.image.shape:
            raise ValueError(
                f"frame of shape {frame.shape} does not match the empty-belt frames ({self.background.image.shape})"
            )
        _, mask = cv2.threshold(self.background.difference(frame), self.threshold, 255, cv2.THRESH_BINARY)
        opened = cv2.morphologyEx(mask, cv2.MORPH_OPEN, self._open)
        mask = cv2.morphologyEx(opened, cv2.MORPH_CLOSE, self._close)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        labels = np.zeros(mask.shape, np.int32)
        blobs, too_small = [], 0
        for contour in contours:
            if cv2.contourArea(contour) < self.min_area_px * 0.5:  # noise: cheaper to drop before filling
                too_small += 1
                continue
            blobs.append(contour)
        filled = np.zeros_like(mask)
        for contour in blobs:
            cv2.drawContours(filled, [contour], -1, 255, cv2.FILLED)
        regions = []  # (part mask, x, y, split, cut, known) per candidate particle
        for contour in blobs:
            x, y, w, h = cv2.boundingRect(contour)
            blob = np.zeros((h, w), np.uint8)
            cv2.drawContours(blob, [contour], -1, 255, cv2.FILLED, offset=(-x, -y))
            # Every piece of a blob the frame's edge cuts is cut too: a piece whole in itself may be a fragment of a
            # particle the edge cuts, or its neighbour, seen whole only in the next (or previous) frame.
            cut = "upstream" if y == 0 else "downstream" if y + h == mask.shape[0] else None
            known = cut is None and decided is not None and decided(_centre(blob, x, y), (x, y, w, h))
            parts = self._split(blob, contour, opened[y:y + h, x:x + w], frame[y:y + h, x:x + w], cut is None) \
                if self.cfg.split and not known else [blob]
            for part in parts:
                regions.append((part, x, y, len(parts) > 1, cut, known))
        too_large, kept = 0, []
        for part, x, y, was_split, cut, known in regions:
            area = int(cv2.countNonZero(part))
            if area < self.min_area_px:
                too_small += 1
                continue
            if area > self.max_area_px and not known:
                too_large += 1
                continue
            kept.append((part, x, y, was_split, area, cut, known))
        for number, (part, x, y, *_) in enumerate(kept, start=1):
            view = labels[y:y + part.shape[0], x:x + part.shape[1]]
            view[part > 0] = number
        boxes = np.array([_box(part, x, y) for part, x, y, *_ in kept], np.int64).reshape(-1, 4)
        particles = [self._particle(frame, labels, boxes, number, *item) for number, item in enumerate(kept, start=1)]
        particles.sort(key=lambda p: (p.centroid[1], p.centroid[0]))
        particles = [replace(p, index=i) for i, p in enumerate(particles)]
        if learn:
            self.background.update(frame, filled, self._margin_px)
        return Segmentation(particles, too_small, too_large, filled)

    def _split(self, blob, contour, opened, pixels, whole):
        """The blob's particles: by its outline and colours, else, when a contact network is set, the blob is
        `whole` in the frame, holds at least two smallest particles and its outline has a notch where a contact would
        meet it (`contact_notch`), by the contact line (edge/contact.py)."""
        parts = self._outline_split(blob, contour, opened, pixels)
        area = cv2.countNonZero(blob)
        if len(parts) > 1 or self.contact is None or not whole or area < 2 * self.min_area_px or \
                deepest_notch(contour) < self.cfg.contact_notch * math.sqrt(area):
            return parts
        return self.contact.split(blob, pixels, self.min_area_px / 4) or parts

    def _outline_split(self, blob, contour, opened, pixels):
        """Touching particles leave a concave neck: a blob of low solidity is cut by distance transform + watershed.

        The closing that bridges the gaps of a dark specimen in pieces also fills the neck between two touching
        particles; so the seeds of a blob that is one solid piece before the closing (`opened`: the mask before it; a
        piece of at least SOLID_PIECE of the blob) come from that piece, its neck intact. A blob of several pieces
        (one specimen's parts, bridged) or of a piece full of belt-coloured gaps (a dark specimen, whose notches are
        not necks) is read as closed, and whether to try at all is the closed blob's solidity: the piece's own
        notches would cut single specimens.

        The seeds are the maxima of the distance map that stand out: a maximum at least min_mm / 2 high is its own
        particle when it rises above the saddle joining it to a higher one by at least (1 - split_level) of its own
        height, so a small partner beside a large one gets its seed (the old global threshold, split_level x the
        blob's peak, gave it none), while a bump of one irregular particle, whose saddle is nearly as high as the
        bump, does not. The watershed then gives every blob pixel to the nearest seed across the distance map's
        ridges.

        Two particles pressed together along a flat face leave no neck: one seed, or a blob too convex to be tried
        (split_solidity: a face nearly as long as the smaller partner). Any such blob is cut between two concavities
        of its outline when the image shows two specimens there (edge/cut.py), whose own colour and edge tests keep
        single specimens whole.
        """
        if solidity(contour) >= self.cfg.split_solidity:
            return self._cut(blob, pixels)  # no neck: only a cut between concavities can split it
        _, pieces, stats, _ = cv2.connectedComponentsWithStats(cv2.bitwise_and(opened, blob), connectivity=8)
        sizes = stats[1:, cv2.CC_STAT_AREA]
        large = np.flatnonzero(sizes >= self.min_area_px / 2) + 1  # specks do not count as pieces
        shape = blob
        if len(large) == 1 and sizes[large[0] - 1] >= SOLID_PIECE * cv2.countNonZero(blob):
            piece = (pieces == large[0]).astype(np.uint8) * 255
            outline = max(cv2.findContours(piece, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[0], key=cv2.contourArea)
            shape = cv2.drawContours(np.zeros_like(blob), [outline], -1, 255, cv2.FILLED)
        dist = cv2.distanceTransform(shape, cv2.DIST_L2, 5)
        seeds = _prominent_seeds(dist, 1.0 - self.cfg.split_level, self._seed_px)
        if len(seeds) < 2:
            return self._cut(blob, pixels)
        markers = np.ones(blob.shape, np.int32)  # 1 = surely belt, 2.. = particles, 0 = to decide
        markers[blob > 0] = 0
        for number, seed in enumerate(seeds, start=2):
            markers[seed] = number
        padded = cv2.copyMakeBorder(markers, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=1)
        shade = cv2.copyMakeBorder(
            cv2.cvtColor(cv2.normalize(dist, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8), cv2.COLOR_GRAY2BGR),
            1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0,
        )
        cv2.watershed(255 - shade, padded)
        padded = padded[1:-1, 1:-1]
        return [((padded == k) & (blob > 0)).astype(np.uint8) * 255 for k in range(2, len(seeds) + 2)]

    def _cut(self, blob, pixels):
        """The blob cut between two concavities (edge/cut.py), or whole."""
        if not self.cfg.split_colour:
            return [blob]
        return concavity_cut(blob, pixels, self.min_area_px, self._seed_px / 2, self.cfg.split_colour) or [blob]

    def _particle(self, frame, labels, boxes, number, part, x, y, was_split, area, cut, known):
        cx, cy = _centre(part, x, y)
        x0, y0, x1, y1 = (int(v) for v in boxes[number - 1])
        bbox = (x0, y0, x1 - x0, y1 - y0)
        w = bbox[2]
        mm = self.mm_per_px
        area_mm2 = area * mm * mm
        return Particle(
            index=0, centroid=(round(cx, 2), round(cy, 2)), bbox=bbox, area_px=area, area_mm2=round(area_mm2, 2),
            size_mm=round(math.sqrt(4 * area_mm2 / math.pi), 2),
            lanes=self._lanes(bbox[0] * mm, (bbox[0] + w) * mm), split=was_split,
            crop=None if known else self._crop(frame, labels, boxes, number, bbox), mask=labels[y0:y1, x0:x1] == number,
            cut=cut, known=known,
        )

    def _lanes(self, x0_mm, x1_mm):
        """The lanes under [x0_mm, x1_mm) widened by the valves' lane margin on each side."""
        margin = self.valves.lane_margin_mm if self.valves is not None else 0.0
        return lanes_of(x0_mm - margin, x1_mm + margin, self.valves)

    def _crop(self, frame, labels, boxes, number, bbox):
        """The padded square crop of one particle, others and off-frame pixels replaced by the belt.

        Fast paths (most crops): a square inside the frame is one copy; the neighbours' pixels are looked for only
        when another particle's box reaches into the square."""
        x0, y0, side = crop_square(bbox, self.cfg.pad)
        height, width = labels.shape
        fx0, fy0, fx1, fy1 = max(x0, 0), max(y0, 0), min(x0 + side, width), min(y0 + side, height)
        if (fx0, fy0, fx1, fy1) == (x0, y0, x0 + side, y0 + side):
            crop = frame[y0:y0 + side, x0:x0 + side].copy()
            inside = crop
        else:
            crop = np.empty((side, side, 3), np.uint8)
            crop[:] = self.background.colour
            inside = crop[fy0 - y0:fy1 - y0, fx0 - x0:fx1 - x0]
            inside[:] = frame[fy0:fy1, fx0:fx1]
        near = (boxes[:, 0] < fx1) & (boxes[:, 2] > fx0) & (boxes[:, 1] < fy1) & (boxes[:, 3] > fy0)
        near[number - 1] = False
        if near.any():
            own = labels[fy0:fy1, fx0:fx1]
            others = (own != 0) & (own != number)
            inside[others] = self.background.image[fy0:fy1, fx0:fx1][others]
        return crop


def _prominent_seeds(dist, share, least, levels=24):
    """Boolean masks, one per maximum of `dist` at least `least` high whose prominence (its height above the highest
    saddle joining it to a higher maximum) is at least `share` of its own height: each the region above that saddle.

    The map is cut at `levels` heights from its peak down; a region of one cut holds the regions of the cut above
    it. Where regions meet, those that already rose `share` of their height above this cut stand on their own: when
    two or more stand, each is a seed (a region that already gave seeds stands too); the others are bumps of their
    neighbour and join it. Fewer than two seeds: one particle. A region is kept as one pixel of it and its cut's
    labels (its mask is drawn only if it becomes a seed): the cuts nest, so that pixel names it in the next cut.
    """
    peak = float(dist.max())
    regions = []  # (a pixel (row, col), own peak, already gave seeds, labels of its cut, its label there)
    seeds = []
    for level in np.linspace(peak, 0.0, levels + 1)[1:]:
        count, labels = cv2.connectedComponents((dist > level).astype(np.uint8))
        inside = {}
        for region in regions:
            inside.setdefault(int(labels[region[0]]), []).append(region)
        found = []
        for label in range(1, count):
            parts = inside.get(label)
            if parts is None:  # a maximum that rises above this cut only
                _, top, _, (col, row) = cv2.minMaxLoc(dist, (labels == label).astype(np.uint8))
                found.append(((row, col), top, False, labels, label))
                continue
            standing = [r for r in parts if r[2] or (r[1] >= least and r[1] - level >= share * r[1])]
            if len(standing) > 1:
                seeds += [r[3] == r[4] for r in standing if not r[2]]
            found.append((parts[0][0], max(r[1] for r in parts), len(standing) > 1 or any(r[2] for r in parts),
                          labels, label))
        regions = found
        if level < least and sum(r[2] or r[1] >= least for r in regions) < 2:
            break  # a maximum first cut lower is under `least`: no two regions can stand any more
    return seeds


def _centre(mask, x, y):
    """(x, y) px in the frame of the centre of `mask` (uint8, nonzero inside) placed at (x, y)."""
    moments = cv2.moments(mask, binaryImage=True)
    return x + moments["m10"] / moments["m00"], y + moments["m01"] / moments["m00"]


def _box(part, x, y):
    """(x0, y0, x1, y1) in the frame of a part mask placed at (x, y)."""
    px, py, w, h = cv2.boundingRect(part)
    return x + px, y + py, x + px + w, y + py + h
