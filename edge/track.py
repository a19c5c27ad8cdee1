"""The track stage: which particles of a frame are new material, to be decided, and what became of the others.

A particle is decided once. Frames overlap along the belt (by at least max_mm), so a particle is seen in several
frames. Each decided particle is remembered with its mask and its belt position (edge/valves.py Plan: the position
at which its centre reaches the valve bar, a time on a clock-timed belt or an encoder count), so where it will be in
any later frame is known. A particle of a later frame is that particle, or a fragment of it cut apart differently
this time, when its centre lies on the remembered mask moved to the new frame's position, within `[particles]
track_mm` (`tracked`). Only particles of *earlier* frames are compared: two particles of one frame are two particles.
The mask, not the bounding box, is compared, so a diagonal neighbour a few mm away is not taken for the particle.

A particle touching the frame's upstream edge (row 0), or a piece of a blob that does (edge/particles.py
Particle.cut), is not decided: it is entering and will be seen whole in the next frame (`entering`); one touching
the downstream edge (the last row), or a piece of a blob that does, was seen whole in the previous frame
(`leaving`; a particle cut by the downstream edge of the very first frame is never decided and rides on to the
recheck bin). Frames must therefore overlap along the belt by at least max_mm.

Single items (one particle per frame): every frame holds the next item, except on an encoder-timed belt that has
not moved: a frame captured less than `[belt] still_mm` of travel from the last decided item shows that item again
and is not decided (counted `frames_unmoved`; `belt_stopped` and `belt_moving` events mark the stop). A clock-timed
belt cannot tell: there a stopped belt must stop the camera too.
"""

from collections import Counter
from dataclasses import dataclass

import cv2
import numpy as np


class ItemTracker:
    """Single items. `belt`: the encoder (None on a clock-timed belt); `still_counts`: the travel, in counts, below
    which the belt has not moved."""

    def __init__(self, events, belt=None, still_counts=0):
        self.events, self.belt, self.still_counts = events, belt, still_counts
        self.unmoved = 0  # frames not decided because the belt had not moved
        self._stopped = 0  # frames of the current stop
        self._last = None  # count of the last decided item

    def fresh(self, particles, position):
        if self.belt is not None and position is not None and self._last is not None:
            if abs(self.belt.delta(position, self._last)) < self.still_counts:
                self.unmoved += 1
                self._stopped += 1
                if self._stopped == 1:
                    self.events.emit("belt_stopped", position=position)
                return [], {}, Counter()
            if self._stopped:
                self.events.emit("belt_moving", position=position, frames=self._stopped)
                self._stopped = 0
        if position is not None:
            self._last = position
        return list(particles), {}, Counter()


@dataclass(frozen=True)
class _Seen:
    plan: object  # its Plan
    centroid: tuple  # px in the frame it was decided in
    bbox: tuple
    mask: np.ndarray  # bool, over its box; None (a hand-made Particle): its box stands for it
    edge: tuple  # (xs, ys) in that frame of its mask's border pixels, the nearest to any point outside it

    @classmethod
    def of(cls, plan, particle):
        mask, (x, y, _, _) = particle.mask, particle.bbox
        if mask is None:
            return cls(plan, particle.centroid, particle.bbox, None, None)
        inner = cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8), borderType=cv2.BORDER_CONSTANT,
                          borderValue=0)
        rows, cols = np.nonzero(mask & ~inner.astype(bool))
        return cls(plan, particle.centroid, particle.bbox, mask, (cols + x + 0.5, rows + y + 0.5))

    def within(self, x, y, reach):
        """Whether the point (x, y) of its frame lies on its mask or within `reach` px of it."""
        if self.mask is None:
            return True
        x0, y0, w, h = self.bbox
        if 0 <= x - x0 < w and 0 <= y - y0 < h and self.mask[int(y - y0), int(x - x0)]:
            return True
        return bool(np.min((self.edge[0] - x) ** 2 + (self.edge[1] - y) ** 2) <= reach * reach)


class BeltTracker:
    """Particles on the belt: `bar` (edge/valves.py ValveBar) places them.

    The remembered particles are also kept as arrays (their centres' positions at the bar, rows and boxes), so a
    frame's particles are checked against a few hundred of them at once: only those whose box is near get the mask
    test."""

    def __init__(self, bar, frame_height, track_mm):
        self.bar = bar
        self.frame_height = frame_height
        self.track_mm = track_mm
        self._track_px = track_mm / bar.mm_per_px
        self._decided = []  # _Seen of particles decided in earlier frames, pruned once passed the bar
        self._index()

    def _index(self):
        seen = self._decided
        self._centre_at = np.array([s.plan.centre_at for s in seen], np.float64)
        self._close_at = np.array([s.plan.close_at for s in seen], np.float64)
        self._rows = np.array([s.centroid[1] for s in seen], np.float64)
        self._boxes = np.array([s.bbox for s in seen], np.float64).reshape(-1, 4)

    def fresh(self, particles, position):
        """(particles to decide, {index: Plan} of those with a belt position `position`: the frame's capture time
        or encoder count, None when unknown; {outcome: particles} of the others: entering, leaving, tracked)."""
        fresh, plans, outcomes = [], {}, Counter()
        if position is not None and self._decided:
            keep = self.bar.delta(self._close_at, position) > -self.track_mm * self.bar.per_mm
            if not keep.all():
                self._decided = [s for s, k in zip(self._decided, keep) if k]
                self._index()
        for particle in particles:
            if particle.cut == "upstream" or particle.bbox[1] == 0:
                outcomes["entering"] += 1
                continue
            if particle.cut == "downstream" or particle.bbox[1] + particle.bbox[3] == self.frame_height:
                outcomes["leaving"] += 1
                continue
            if particle.known:  # on decided material by `decided`, which holds only where the test below does
                outcomes["tracked"] += 1
                continue
            if position is not None:
                plan = self.bar.plan(particle, position)
                if self._tracked(particle.centroid[0], self._then(plan.centre_at)):
                    outcomes["tracked"] += 1
                    continue
                plans[particle.index] = plan
            fresh.append(particle)
        added = [_Seen.of(plans[p.index], p) for p in fresh if p.index in plans]
        if added:  # remembered after the frame: its own particles are never compared with each other
            self._decided += added
            self._index()
        return fresh, plans, outcomes

    def decided(self, position):
        """A test of a blob of a frame captured at belt position `position`, its centre (x, y) and box (x, y, w, h)
        px: whether it is all material decided in earlier frames. Its centre lies on a decided particle's mask moved
        to this frame, as a `tracked` particle's does, and its box within the box of the decided particles it meets,
        within track_mm: a new particle merged into its side would widen it (one inside that box would not be seen;
        particles touching in a later view touched in their first whole one, unless one rolled). Never true where the
        position is unknown. The segmenter asks it before it pays for splitting a blob (edge/particles.py
        Segmenter.segment)."""
        def test(centre, box):
            then = self._then(self.bar.centre_at(centre[1], position))
            if not self._tracked(centre[0], then):
                return False
            x, y, w, h = box
            x0, y0, bw, bh = self._boxes.T
            y0 = y0 - (then - centre[1])  # their boxes moved to this frame
            reach = self._track_px
            near = (x0 < x + w + reach) & (x - reach < x0 + bw) & (y0 < y + h + reach) & (y - reach < y0 + bh)
            return bool(near.any() and x0[near].min() - reach <= x and x + w <= (x0 + bw)[near].max() + reach
                        and y0[near].min() - reach <= y and y + h <= (y0 + bh)[near].max() + reach)

        return (lambda centre, box: False) if position is None else test

    def _then(self, centre_at):
        """Per remembered particle, the row of its own frame on which a point of this frame that reaches the bar at
        `centre_at` lay: as far behind that particle's centre as it reaches the bar later."""
        bar = self.bar
        return self._rows - bar.delta(centre_at, self._centre_at) / bar.per_mm / bar.mm_per_px

    def _tracked(self, x, ys):
        """Whether a point at column `x` of this frame, on rows `ys` of the remembered particles' own frames
        (`_then`), lies on one of their masks, within track_mm."""
        if not self._decided:
            return False
        reach = self._track_px
        x0, y0, w, h = self._boxes.T
        near = (x0 - reach <= x) & (x <= x0 + w + reach) & (y0 - reach <= ys) & (ys <= y0 + h + reach)
        return any(self._decided[number].within(x, ys[number], reach) for number in np.flatnonzero(near))
