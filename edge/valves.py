"""Valve-bar timing for many particles per frame: when, which lanes, how long, and who wins a shared lane.

Geometry (documented in edge/README.md): the belt moves towards increasing y in the frame (down the picture);
`[belt] camera_to_ejector_mm` is measured from the frame's centre row to the valve bar. A particle whose bounding box
spans rows [y, y + h) has its leading edge (row y + h) (y + h - H/2) x mm_per_px past the centre row, so the valves
of its lanes open when the belt has moved camera_to_ejector_mm - that distance - the valve lead, and stay open for
its length along the belt (h x mm_per_px, plus `[valves] pulse_margin_mm` before and after). On a clock-timed belt
positions are times (capture time + distance / speed_mm_s); with `[belt] position = "modbus"` they are encoder
counts (capture count + distance x counts_per_mm; compared modulo the counter), so a belt that slows holds the
valves back.

Tracking: where one particle is seen in two overlapping frames both sightings reach the valve bar at the same belt
position, so each decided particle's footprint is remembered in belt positions (along: its valve opening and
closing positions; across: its x-extent). A particle whose centre lies on a remembered footprint (widened by
`[particles] track_mm`) is that particle, or a fragment of it cut apart differently this time, and is not decided
again (`tracked`). A particle touching the
frame's upstream edge (row 0) is not decided: it is entering and will be seen whole in the next frame; one touching
the downstream edge (the last row) was seen whole in the previous frame. Frames must therefore overlap along the belt
by at least max_mm (counted `entering` and `leaving`; a particle cut by the downstream edge of the very first frame
is never decided and rides on to the recheck bin).

Arbitration (`[valves] conflict`): the bar ejects the particles of `[valves] bin`; every other particle must ride
on to the end of the belt. A pulse that would also hit a particle that must not be ejected (a shared lane at an
overlapping time) is, with "skip" (the default: purity first), not fired: the particle to eject rides on with reason
`conflict`; with "fire" (recovery first) it is fired and the other particle is counted `hit`. Each ejected particle
gets its own command; two commands may share a lane at overlapping times (a valve driver keeps the valve open until
the last pulse ends). Arbitration sees the particles decided in one frame only: a particle decided in an earlier
frame whose pulse reaches one decided now is not checked (rare when frames overlap by more than max_mm).
"""

from dataclasses import dataclass

from edge.actuators import SerialActuator
from edge.records import LineWriter


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


@dataclass(frozen=True)
class Command:
    lanes: tuple
    open_at: float
    close_at: float
    particles: tuple  # ids of the particles it ejects


class ValveBar:
    """Plans, tracks and arbitrates the particles of each frame.

    `start` is the frame's capture time (clock belt) or its capture count (encoder belt); `per_mm` converts belt mm to
    position units (1 / speed_mm_s, or counts_per_mm); `modulus` is the encoder counter's range (None on a clock).
    """

    def __init__(self, belt, particles, valves, frame_height, per_mm, modulus=None):
        self.mm_per_px = particles.mm_per_px
        self.half_height = frame_height / 2.0
        self.distance_mm = belt.camera_to_ejector_mm - belt.valve_lead_ms / 1000.0 * belt.speed_mm_s
        self.per_mm = per_mm
        self.modulus = modulus
        self.track_mm = particles.track_mm
        self.valves = valves
        self._decided = []  # (centre_at, x_mm) of particles already decided, pruned once passed

    def delta(self, a, b):
        """a - b in position units (signed, modulo the counter on an encoder belt)."""
        if self.modulus is None:
            return a - b
        half = self.modulus >> 1
        return (a - b + half) % self.modulus - half

    def _at(self, start, mm):
        position = start + mm * self.per_mm
        return position % self.modulus if self.modulus is not None else position

    def plan(self, particle, start):
        x, y, w, h = particle.bbox
        margin = self.valves.pulse_margin_mm
        lead_mm = (y + h - self.half_height) * self.mm_per_px  # leading edge past the centre row
        open_mm = self.distance_mm - lead_mm - margin
        centre_mm = self.distance_mm - (particle.centroid[1] - self.half_height) * self.mm_per_px
        return Plan(
            particle.lanes, self._at(start, open_mm), self._at(start, open_mm + h * self.mm_per_px + 2 * margin),
            self._at(start, centre_mm), particle.centroid[0] * self.mm_per_px, x * self.mm_per_px,
            (x + w) * self.mm_per_px,
        )

    def seen_before(self, plan, now):
        """True when `plan`'s centre lies on the predicted footprint of a particle already decided (then it is that
        particle, or a fragment of it cut apart differently in this frame); remembers it otherwise. Footprints are
        widened by track_mm and forgotten once they have passed the valve bar by more than track_mm."""
        tolerance = self.track_mm * self.per_mm
        self._decided = [d for d in self._decided if self.delta(d.close_at, now) > -tolerance]
        for seen in self._decided:
            if (self.delta(plan.centre_at, seen.open_at) >= -tolerance and self.delta(plan.centre_at, seen.close_at)
                    <= tolerance and seen.x0_mm - self.track_mm <= plan.x_mm <= seen.x1_mm + self.track_mm):
                return True
        self._decided.append(plan)
        return False

    def _overlap(self, a, b):
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
            struck = [k for k, other in keep.items() if self._overlap(plan, other)]
            if struck and self.valves.conflict == "skip":
                conflicts.append(pid)
                continue
            hits.update(struck)
            fired.append((pid, plan))
        commands = [Command(plan.lanes, plan.open_at, plan.close_at, (pid,))
                    for pid, plan in sorted(fired, key=lambda item: self.delta(item[1].open_at, fired[0][1].open_at))]
        return commands, conflicts, sorted(hits)


class ValveJsonlActuator:
    """The valve bar's commands as JSON lines (`[actuator] type = "jsonl"`), one per ejected particle.

    Clock belt: `{"type": "valves", "lanes": [...], "due_in_ms": ..., "pulse_ms": ..., "frame": ..., "particles":
    [...]}`, due_in_ms counted from writing the line. Encoder belt: `"open_count"` and `"close_count"` (the encoder
    counts at which the lanes' valves open and close, modulo the counter) instead of due_in_ms and pulse_ms. It has
    the interface of edge/actuators.py's drivers, the command taking the place of the bin, so the runner's
    SupervisedActuator reports and retries it like any other.
    """

    def __init__(self, path, clock, encoder=False):
        self.path, self.clock, self.encoder = path, clock, encoder
        self._writer = None

    def open(self):
        self._writer = LineWriter(self.path)

    def send(self, command, due, frame_id):
        line = {"type": "valves", "lanes": list(command.lanes), "frame": frame_id, "particles": list(command.particles)}
        if self.encoder:
            line.update(open_count=int(round(command.open_at)), close_count=int(round(command.close_at)))
        else:
            line.update(due_in_ms=max(0, round((command.open_at - self.clock.now()) * 1000.0)),
                        pulse_ms=round((command.close_at - command.open_at) * 1000.0, 3))
        self._writer.write(line)

    def close(self):
        if self._writer is not None:
            self._writer.close()


def lane_span(lanes):
    """(first lane, number of lanes) of a command's lanes, which are consecutive (edge/particles.py lanes_of)."""
    first = lanes[0]
    if list(lanes) != list(range(first, first + len(lanes))):
        raise ValueError(f"valve lanes {list(lanes)} are not consecutive")
    return first, len(lanes)


class ValveSerialActuator(SerialActuator):
    """The valve bar's commands as one ASCII line each (`[actuator] type = "serial"`), for a microcontroller driving
    the valves: `VALVES <first lane> <lane count> <due_in_ms> <pulse_ms>\n` on a clock-timed belt (delays from
    receiving the line, as the single-item EJECT line), `VALVES <first lane> <lane count> @<open count> @<close
    count>\n` on an encoder-timed belt (counts modulo the encoder's counter, for a controller that reads the
    encoder too)."""

    def __init__(self, port, baudrate, clock, encoder=False):
        super().__init__(port, baudrate, clock)
        self.encoder = encoder

    def send(self, command, due, frame_id):
        first, count = lane_span(command.lanes)
        if self.encoder:
            timing = f"@{int(round(command.open_at))} @{int(round(command.close_at))}"
        else:
            timing = (f"{max(0, round((command.open_at - self.clock.now()) * 1000.0))} "
                      f"{round((command.close_at - command.open_at) * 1000.0)}")
        self._serial.write(f"VALVES {first} {count} {timing}\n".encode("ascii"))


VALVE_ACTUATORS = ("jsonl", "modbus", "serial")  # gpio (one pin per bin, fixed pulse) does not drive a valve bar


def make_valve_actuator(config, clock, labels=()):
    """A fresh, unopened driver of the valve bar's commands from the config's [actuator] section."""
    encoder = config.belt.position == "modbus"
    actuator = config.actuator
    if actuator.type == "modbus":
        from edge.modbus import ModbusBoard

        modulus = 1 << (16 * config.encoder.registers) if encoder else None
        return ModbusBoard(actuator.host, config.modbus_port, actuator.unit_id, actuator.ring_size, config.bin_codes(),
                           labels, clock, valves=config.valves, modulus=modulus)
    if actuator.type == "serial":
        return ValveSerialActuator(actuator.port, actuator.baudrate, clock, encoder=encoder)
    return ValveJsonlActuator(actuator.path, clock, encoder=encoder)
