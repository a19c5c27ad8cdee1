"""The track stage: which particles of a frame are new material, to be decided, and what became of the others.

A particle is decided once. Frames overlap along the belt (by at least max_mm), so a particle is seen in several
frames; where it is whole in two of them, both sightings reach the valve bar at the same belt position (edge/valves.py
Plan), so each decided particle's footprint is remembered in belt positions (along: its valve opening and closing
positions; across: its x-extent). A particle whose centre lies on a remembered footprint (widened by `[particles]
track_mm`) is that particle, or a fragment of it cut apart differently this time, and is not decided again
(`tracked`). A particle touching the frame's upstream edge (row 0) is not decided: it is entering and will be seen
whole in the next frame (`entering`); one touching the downstream edge (the last row) was seen whole in the previous
frame (`leaving`; a particle cut by the downstream edge of the very first frame is never decided and rides on to the
recheck bin).

Single items (one particle per frame) are all new: every frame holds the next item.
"""


class EveryItemNew:
    """Single items: each frame's particle is decided."""

    def fresh(self, particles, position):
        return list(particles), {}


class BeltTracker:
    """Particles on the belt: `bar` (edge/valves.py ValveBar) places them; `counts` (ParticleTally.counts) takes
    the outcome of each one not decided."""

    def __init__(self, bar, frame_height, track_mm, counts):
        self.bar = bar
        self.frame_height = frame_height
        self.track_mm = track_mm
        self.counts = counts
        self._decided = []  # Plans of particles already decided, pruned once passed

    def fresh(self, particles, position):
        """(particles to decide, {index: Plan} of those with a belt position `position`: the frame's capture time
        or encoder count)."""
        fresh, plans = [], {}
        for particle in particles:
            if particle.bbox[1] == 0:
                self.counts["entering"] += 1
                continue
            if particle.bbox[1] + particle.bbox[3] == self.frame_height:
                self.counts["leaving"] += 1
                continue
            if position is not None:
                plan = self.bar.plan(particle, position)
                if self.seen_before(plan, position):
                    self.counts["tracked"] += 1
                    continue
                plans[particle.index] = plan
            fresh.append(particle)
        return fresh, plans

    def seen_before(self, plan, now):
        """True when `plan`'s centre lies on the predicted footprint of a particle already decided; remembers it
        otherwise. Footprints are widened by track_mm and forgotten once they have passed the valve bar by more
        than track_mm."""
        bar = self.bar
        tolerance = self.track_mm * bar.per_mm
        self._decided = [d for d in self._decided if bar.delta(d.close_at, now) > -tolerance]
        for seen in self._decided:
            if (bar.delta(plan.centre_at, seen.open_at) >= -tolerance and bar.delta(plan.centre_at, seen.close_at)
                    <= tolerance and seen.x0_mm - self.track_mm <= plan.x_mm <= seen.x1_mm + self.track_mm):
                return True
        self._decided.append(plan)
        return False
