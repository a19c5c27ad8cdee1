"""`[actuator] type = "jsonl"`: one JSON line per command, to stdout or a file (dry runs, or a PLC that reads a
pipe). Single items: `{"type": "eject", "bin": ..., "due_in_ms": ..., "frame": ...}`. The valve bar's commands:
`{"type": "valves", "lanes": [...], "frame": ..., "particles": [...]}` with `due_in_ms` and `pulse_ms` on a
clock-timed belt (counted from writing the line), `open_count` and `close_count` on an encoder-timed one (the
counts at which the lanes open and close, modulo the counter)."""

from edge.records import LineWriter


def due_in_ms(due, now):
    """Milliseconds from now to `due`, never negative: what a device without our clock can act on."""
    return max(0, round((due - now) * 1000.0))


class _Lines:
    def __init__(self, path, clock):
        self.path = path
        self.clock = clock
        self._writer = None

    def open(self):
        self._writer = LineWriter(self.path)

    def close(self):
        if self._writer is not None:
            self._writer.close()


class JsonlActuator(_Lines):
    def send(self, bin_name, due, frame_id):
        self._writer.write({"type": "eject", "bin": bin_name, "due_in_ms": due_in_ms(due, self.clock.now()),
                            "frame": frame_id})


class ValveJsonlActuator(_Lines):
    def __init__(self, path, clock, encoder=False):
        super().__init__(path, clock)
        self.encoder = encoder

    def send(self, command, due, frame_id):
        line = {"type": "valves", "lanes": list(command.lanes), "frame": frame_id, "particles": list(command.particles)}
        if self.encoder:
            line.update(open_count=int(round(command.open_at)), close_count=int(round(command.close_at)))
        else:
            line.update(due_in_ms=due_in_ms(command.open_at, self.clock.now()),
                        pulse_ms=round((command.close_at - command.open_at) * 1000.0, 3))
        self._writer.write(line)


def check(config):
    """Nothing beyond the [actuator] keys' own checks: any path may be written (check_outputs tries it)."""


def outputs(config):
    path = config.actuator.path
    return [] if path == "-" else [("actuator.path", path, False)]


def bin_driver(config, clock, labels):
    return JsonlActuator(config.actuator.path, clock)


def valve_driver(config, clock, labels):
    return ValveJsonlActuator(config.actuator.path, clock, encoder=config.belt.position == "modbus")
