"""`[actuator] type = "serial"`: one ASCII line per command to a microcontroller (pyserial).

Single items: `EJECT <bin> <due_in_ms>\\n`, the delay from receiving the line to opening the valve (the controller
shares no clock with the host, only "now"). The valve bar: `VALVES <first lane> <lane count> <due_in_ms>
<pulse_ms>\\n` on a clock-timed belt, `VALVES <first lane> <lane count> @<open count> @<close count>\\n` on an
encoder-timed one (counts modulo the encoder's counter, for a controller that reads the encoder too).
"""

from edge.drivers.jsonl import due_in_ms
from edge.valves import lane_span

LIBRARY = ("serial", "pyserial")


class SerialActuator:
    def __init__(self, port, baudrate, clock, write_timeout_s=0.2):
        self.port = port
        self.baudrate = baudrate
        self.clock = clock
        self.write_timeout_s = write_timeout_s  # a stuck controller must fail the command, not freeze sorting
        self._serial = None

    def open(self):
        import serial

        self._serial = serial.serial_for_url(self.port, baudrate=self.baudrate, write_timeout=self.write_timeout_s)

    def send(self, bin_name, due, frame_id):
        self._serial.write(f"EJECT {bin_name} {due_in_ms(due, self.clock.now())}\n".encode("ascii"))

    def close(self):
        if self._serial is not None:
            self._serial.close()


class ValveSerialActuator(SerialActuator):
    def __init__(self, port, baudrate, clock, encoder=False):
        super().__init__(port, baudrate, clock)
        self.encoder = encoder

    def send(self, command, due, frame_id):
        first, count = lane_span(command.lanes)
        if self.encoder:
            timing = f"@{int(round(command.open_at))} @{int(round(command.close_at))}"
        else:
            timing = (f"{due_in_ms(command.open_at, self.clock.now())} "
                      f"{round((command.close_at - command.open_at) * 1000.0)}")
        self._serial.write(f"VALVES {first} {count} {timing}\n".encode("ascii"))


def check(config):
    port = config.actuator.port
    if not port or not isinstance(port, str):
        raise config.error("actuator.port", "is missing or not a device path in quotes (type is \"serial\")")


def bin_driver(config, clock, labels):
    return SerialActuator(config.actuator.port, config.actuator.baudrate, clock)


def valve_driver(config, clock, labels):
    return ValveSerialActuator(config.actuator.port, config.actuator.baudrate, clock,
                               encoder=config.belt.position == "modbus")
