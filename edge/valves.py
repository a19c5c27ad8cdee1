"""Valve-bar timing for many particles per frame: when, which lanes, how long, and who wins a shared lane.

Geometry (documented in edge/README.md): the belt moves towards increasing y in the frame (down the picture);
`[belt] camera_to_ejector_mm` is measured from the frame's centre row to the valve bar. A particle whose bounding box
spans rows [y, y + h) has its leading edge (row y + h) (y + h - H/2) x mm_per_px past the centre row, so the valves
of its lanes open when the belt has moved camera_to_ejector_mm - that distance - the valve lead, and stay open for
its length along the belt (h x mm_per_px, plus `[valves] pulse_margin_mm` before and after). On a clock-timed belt
positions are times (capture time + distance / speed_mm_s); with `[belt] position = "modbus"` they are encoder
counts (capture count + distance x counts_per_mm; compared modulo the counter), so a belt that slows holds the
valves back.

Arbitration (`[valves] conflict`): the bar ejects the particles of `[valves] bin`; every other particle must ride
on to the end of the belt. A pulse that would also hit a particle that must not be ejected (a shared lane at an
overlapping time) is, with "trim" (the default), narrowed until it hits none: first by leaving out the shared lanes
(kept when the lanes left span at least `[valves] cover` of the particle's width), else by shortening the pulse to
miss the other particle's passage (kept when the pulse still spans the central `cover` of the particle's length);
when neither holds the pulse is not fired, as with "skip" (purity first): the particle to eject rides on with reason
`conflict` - unless the particles it would hit are at most `[valves] hit_share` of the area it throws into the bin
(0 by default: never), when it is fired and they are counted `hit` (the grade a touching pair may cost). With "fire"
(recovery first) the whole pulse is fired and the other particle is counted `hit`. Each ejected particle gets its
own command; two commands may share a lane at overlapping times (a valve driver keeps the valve open until
the last pulse ends). Arbitration spans frames (edge/schedule.py ValveSchedule): a pulse is checked against the
particles kept in earlier frames too, and a particle kept now under a pulse an earlier frame already sent (air
cannot be recalled) is counted `hit`.
"""

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Plan:
    """Where one particle meets the valve bar: positions in seconds (clock) or counts (encoder)."""

    lanes: tuple
    open_at: float  # position at which its lanes' valves open
    close_at: float  # position at which they close
    centre_at: float  # position of its centre at the bar
    x_mm: float  # its centre across the belt
    x0_mm: float  # its extent across the belt
    x1_mm: float
    area_mm2: float = 0.0  # what a pulse that hits it carries into the bin (conflict's `hit_share`)


@dataclass(frozen=True)
class Command:
    lanes: tuple
    open_at: float
    close_at: float
    particles: tuple  # ids of the particles it ejects


class ValveBar:
    """Plans and arbitrates the particles of each frame.

    `start` is the frame's capture time (clock belt) or its capture count (encoder belt); `per_mm` converts belt mm to
    position units (1 / speed_mm_s, or counts_per_mm); `modulus` is the encoder counter's range (None on a clock).
    """

    def __init__(self, belt, particles, valves, frame_height, per_mm, modulus=None):
        self.mm_per_px = particles.mm_per_px
        self.half_height = frame_height / 2.0
        self.distance_mm = belt.camera_to_ejector_mm - belt.valve_lead_ms / 1000.0 * belt.speed_mm_s
        self.per_mm = per_mm
        self.modulus = modulus
        self.valves = valves

    def delta(self, a, b):
        """a - b in position units (signed, modulo the counter on an encoder belt); numbers or numpy arrays."""
        if self.modulus is None:
            return a - b
        half = self.modulus >> 1
        return (a - b + half) % self.modulus - half

    def _at(self, start, mm):
        return self._shift(start, mm * self.per_mm)

    def centre_at(self, row, start):
        """The position at which a point on frame row `row` (px) of a frame captured at `start` reaches the bar."""
        return self._at(start, self.distance_mm - (row - self.half_height) * self.mm_per_px)

    def plan(self, particle, start):
        x, y, w, h = particle.bbox
        margin = self.valves.pulse_margin_mm
        lead_mm = (y + h - self.half_height) * self.mm_per_px  # leading edge past the centre row
        open_mm = self.distance_mm - lead_mm - margin
        return Plan(
            particle.lanes, self._at(start, open_mm), self._at(start, open_mm + h * self.mm_per_px + 2 * margin),
            self.centre_at(particle.centroid[1], start), particle.centroid[0] * self.mm_per_px, x * self.mm_per_px,
            (x + w) * self.mm_per_px, particle.area_mm2 or 0.0,
        )

    def overlap(self, a, b):
        """Whether two Plans or Commands share a lane at overlapping times."""
        return set(a.lanes) & set(b.lanes) and self.delta(a.open_at, b.close_at) < 0 and self.delta(b.open_at,
                                                                                                     a.close_at) < 0

    def arbitrate(self, eject, keep):
        """Commands for `eject` ({id: Plan}) given `keep` ({id: Plan} of particles that must ride on).

        Returns (commands, conflicts: ids not fired, hits: ids of kept particles a fired pulse reaches).
        """
        conflicts, hits, fired = [], set(), []
        for pid, plan in eject.items():
            if not plan.lanes:
                conflicts.append(pid)  # off the valve bar: cannot be ejected
                continue
            struck = {k: other for k, other in keep.items() if self.overlap(plan, other)}
            trimmed = None
            if struck and self.valves.conflict == "trim":
                trimmed = self.trim(plan, struck.values())
            if struck and trimmed is None and not self.worth_hitting(plan, struck.values()):
                conflicts.append(pid)
                continue
            if struck and trimmed is None:
                hits.update(struck)
            fired.append((pid, trimmed or plan))
        commands = [Command(plan.lanes, plan.open_at, plan.close_at, (pid,))
                    for pid, plan in sorted(fired, key=lambda item: self.delta(item[1].open_at, fired[0][1].open_at))]
        return commands, conflicts, sorted(hits)

    def worth_hitting(self, plan, struck):
        """Whether to fire an untrimmable pulse anyway: always with "fire"; otherwise when the particles to keep that
        it hits are at most `hit_share` of all the area it throws into the bin (the grade a touching pair may cost)."""
        if self.valves.conflict == "fire":
            return True
        hit = sum(other.area_mm2 for other in struck)
        return self.valves.hit_share > 0 and hit <= self.valves.hit_share * (hit + plan.area_mm2)

    def trim(self, plan, struck):
        """`plan` narrowed to miss every Plan in `struck`, or None when what is left would not eject the particle.

        Lanes first: the longest run of its lanes that no struck particle shares, if it spans `cover` of the particle's
        width (a pulse beside a neighbour keeps its timing). Else time: the pulse shortened to open after (or close
        before) each struck particle's passage on the shared lanes, if it still spans the central `cover` of the
        particle's length (margins included) - a neighbour ahead or behind on the same lanes."""
        cover, valves = self.valves.cover, self.valves
        shared = set().union(*(other.lanes for other in struck))
        runs, run = [], []
        for lane in plan.lanes:
            if lane in shared:
                runs, run = runs + [run], []
            else:
                run.append(lane)
        lanes = max(runs + [run], key=len)
        if lanes:
            x0 = max(plan.x0_mm, valves.first_lane_mm + lanes[0] * valves.lane_mm)
            x1 = min(plan.x1_mm, valves.first_lane_mm + (lanes[-1] + 1) * valves.lane_mm)
            if x1 - x0 >= cover * (plan.x1_mm - plan.x0_mm):
                return replace(plan, lanes=tuple(lanes))
        length = self.delta(plan.close_at, plan.open_at)  # offsets below are from plan.open_at
        centre = self.delta(plan.centre_at, plan.open_at)
        core = (centre - cover * length / 2, centre + cover * length / 2)
        start, end = 0.0, length
        for other in struck:
            opens, closes = self.delta(other.open_at, plan.open_at), self.delta(other.close_at, plan.open_at)
            if closes <= core[0]:
                start = max(start, closes)
            elif opens >= core[1]:
                end = min(end, opens)
            else:
                return None
        return replace(plan, open_at=self._shift(plan.open_at, start), close_at=self._shift(plan.open_at, end))

    def _shift(self, position, offset):
        position = position + offset
        return position % self.modulus if self.modulus is not None else position


def lane_span(lanes):
    """(first lane, number of lanes) of a command's lanes, which are consecutive (edge/particles.py lanes_of)."""
    first = lanes[0]
    if list(lanes) != list(range(first, first + len(lanes))):
        raise ValueError(f"valve lanes {list(lanes)} are not consecutive")
    return first, len(lanes)
