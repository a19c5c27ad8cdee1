"""Ejector drivers behind one small interface, and the supervisor that keeps sorting when one fails.

An actuator has `open()`, `send(bin, due, frame_id)` and `close()`; `due` is the clock time at which the valve
for `bin` must open. Drivers:
  jsonl  - one JSON line per command, to stdout or a file (dry runs, or a PLC that reads a pipe);
  serial - one ASCII line per command, `EJECT <bin> <due_in_ms>\\n`, where due_in_ms is the delay from sending the
           line to opening the valve (a microcontroller has no shared clock with the host, only "now");
  gpio   - one output pin per bin, pulsed for pulse_ms at the due time; bins without a pin are never pulsed
           (typically the recheck bin at the end of the belt, where every item not ejected lands).
"""

import heapq
import itertools
import threading

from edge.deps import require
from edge.records import LineWriter


def _due_in_ms(due, now):
    return max(0, round((due - now) * 1000.0))


class JsonlActuator:
    def __init__(self, path, clock):
        self.path = path
        self.clock = clock
        self._writer = None

    def open(self):
        self._writer = LineWriter(self.path)

    def send(self, bin_name, due, frame_id):
        self._writer.write(
            {"type": "eject", "bin": bin_name, "due_in_ms": _due_in_ms(due, self.clock.now()), "frame": frame_id}
        )

    def close(self):
        if self._writer is not None:
            self._writer.close()


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
        self._serial.write(f"EJECT {bin_name} {_due_in_ms(due, self.clock.now())}\n".encode("ascii"))

    def close(self):
        if self._serial is not None:
            self._serial.close()


class GpioActuator:
    """Pulses one gpiozero output per bin at the due time.

    Pin changes are scheduled, not slept on: a background thread fires them as they fall due. With
    `background=False` nothing fires on its own and the caller drives `fire_due()`, which is how tests step time.
    Overlapping pulses on one bin keep the valve open until the last one ends.
    """

    def __init__(self, pins, pulse_s, clock, pin_factory=None, background=True):
        self.pins = dict(pins)
        self.pulse_s = pulse_s
        self.clock = clock
        self.pin_factory = pin_factory
        self.background = background
        self.devices = {}
        self._schedule = []  # heap of (time, sequence, bin, +1 open / -1 close)
        self._open_pulses = {}
        self._sequence = itertools.count()
        self._cond = threading.Condition()
        self._closed = threading.Event()
        self._error = None
        self._thread = None

    def open(self):
        from gpiozero import DigitalOutputDevice

        for bin_name, pin in self.pins.items():
            self.devices[bin_name] = DigitalOutputDevice(pin, pin_factory=self.pin_factory)
            self._open_pulses[bin_name] = 0
        if self.background:
            self._thread = threading.Thread(target=self._run, name="gpio", daemon=True)
            self._thread.start()

    def send(self, bin_name, due, frame_id):
        if self._error is not None:
            error, self._error = self._error, None
            raise error  # a pin failed while pulsing: let the supervisor re-open the pins
        if bin_name not in self.devices:
            return
        with self._cond:
            heapq.heappush(self._schedule, (due, next(self._sequence), bin_name, +1))
            heapq.heappush(self._schedule, (due + self.pulse_s, next(self._sequence), bin_name, -1))
            self._cond.notify()

    def fire_due(self):
        """Apply every scheduled pin change whose time has come; returns the time of the next one, or None."""
        with self._cond:
            now = self.clock.now()
            while self._schedule and self._schedule[0][0] <= now:
                _, _, bin_name, step = heapq.heappop(self._schedule)
                self._open_pulses[bin_name] += step
                if self._open_pulses[bin_name] > 0:
                    self.devices[bin_name].on()
                else:
                    self.devices[bin_name].off()
            return self._schedule[0][0] if self._schedule else None

    def _run(self):
        while not self._closed.is_set():
            try:
                next_time = self.fire_due()
            except Exception as error:  # pin driver failure: surfaced by the next send()
                self._error = error
                self._closed.wait(0.1)
                continue
            with self._cond:
                timeout = None if next_time is None else max(0.0, next_time - self.clock.now())
                if not self._closed.is_set():
                    self._cond.wait(timeout)

    def close(self):
        self._closed.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(1.0)
        for device in self.devices.values():
            try:
                device.off()
            finally:
                device.close()
        self.devices = {}


_LIBRARIES = {"serial": ("serial", "pyserial"), "gpio": ("gpiozero", "gpiozero"), "modbus": ("pymodbus", "pymodbus")}


def require_library(actuator_config):
    """At start: the configured driver's library must import (else MissingLibrary with the pip command)."""
    if actuator_config.type in _LIBRARIES:
        module, package = _LIBRARIES[actuator_config.type]
        require(module, package, f'[actuator] type = "{actuator_config.type}"')


def make_actuator(actuator_config, clock, pin_factory=None, config=None, labels=()):
    """A fresh, unopened actuator from the config's [actuator] section (modbus also needs the whole config, for the
    bin codes, and the model's labels, for the class codes)."""
    if actuator_config.type == "modbus":
        from edge.modbus import ModbusBoard

        return ModbusBoard(
            actuator_config.host, config.modbus_port, actuator_config.unit_id, actuator_config.ring_size,
            config.bin_codes(), labels, clock,
        )
    if actuator_config.type == "serial":
        return SerialActuator(actuator_config.port, actuator_config.baudrate, clock)
    if actuator_config.type == "gpio":
        return GpioActuator(actuator_config.pins, actuator_config.pulse_ms / 1000.0, clock, pin_factory)
    return JsonlActuator(actuator_config.path, clock)


class SupervisedActuator:
    """Keeps the runner sorting through actuator faults.

    A failed open or send is reported as an `actuator_error` event and makes `send` return False (the runner
    counts the item as failed; with nothing fired it rides on to the recheck bin). The actuator is then closed
    and re-opened on a later send once a doubling backoff has passed, never blocking the sorting loop.
    """

    def __init__(self, factory, clock, events, retry_initial_s=0.5, retry_max_s=30.0):
        self.factory = factory
        self.clock = clock
        self.events = events
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.errors = 0
        self._actuator = None
        self._lock = threading.RLock()  # an encoder-timed belt fires from its poll thread while the loop sorts
        self._backoff = retry_initial_s
        self._retry_at = clock.now()

    def _fail(self, stage, error):
        self.errors += 1
        self.events.emit(
            "actuator_error", stage=stage, error=f"{type(error).__name__}: {error}", retry_in_s=round(self._backoff, 3)
        )
        if self._actuator is not None:
            try:
                self._actuator.close()
            except Exception:  # closing a broken device may fail too; it is being replaced either way
                pass
            self._actuator = None
        self._retry_at = self.clock.now() + self._backoff
        self._backoff = min(self._backoff * 2.0, self.retry_max_s)

    def open(self):
        """Open now if the backoff allows; True when an actuator is ready."""
        with self._lock:
            return self._open()

    def _open(self):
        if self._actuator is None and self.clock.now() >= self._retry_at:
            actuator = self.factory()
            try:
                actuator.open()
            except Exception as error:  # missing device, permission, busy port...
                self._actuator = actuator
                self._fail("open", error)
                return False
            self._actuator = actuator
        return self._actuator is not None

    def send(self, bin_name, due, frame_id):
        """Command one ejection; False if it could not be delivered (reported, retried later)."""
        with self._lock:
            if not self._open():
                return False
            try:
                self._actuator.send(bin_name, due, frame_id)
            except Exception as error:
                self._fail("send", error)
                return False
            self._backoff = self.retry_initial_s
            return True

    def record(self, item, capture_time, position=None):
        """Publish a decided item to a driver that publishes decisions (Modbus); a failure is reported and retried."""
        self._forward("record", item, capture_time, position)

    def heartbeat(self, state, model_ok):
        self._forward("heartbeat", state, model_ok)

    def _forward(self, name, *args):
        with self._lock:
            if self._actuator is None or not hasattr(self._actuator, name):
                return
            try:
                getattr(self._actuator, name)(*args)
            except Exception as error:
                self._fail(name, error)

    @property
    def up(self):
        """True while a driver is open (telemetry)."""
        return self._actuator is not None

    @property
    def listening(self):
        """The addresses the open driver listens on (a Modbus server), for the start log line."""
        return list(getattr(self._actuator, "listening", []))

    def close(self):
        with self._lock:
            if self._actuator is not None:
                self._actuator.close()
                self._actuator = None
