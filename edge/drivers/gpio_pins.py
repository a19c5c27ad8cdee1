"""`[actuator] type = "gpio"`: one output pin per bin (gpiozero), pulsed for `pulse_ms` at the due time; bins
without a pin are never pulsed (typically the recheck bin at the end of the belt, where every item not ejected
lands). A pin per bin and a fixed pulse cannot drive a valve bar's lanes: no valve driver."""

import heapq
import itertools
import threading

LIBRARY = ("gpiozero", "gpiozero")


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


def check(config):
    actuator = config.actuator
    if not actuator.pins:
        raise config.error("actuator.pins", "is missing (type is \"gpio\": one pin per ejected bin)")
    for bin_name in actuator.pins:
        if bin_name == config.bins.recheck:
            raise config.error(
                f"actuator.pins.{bin_name}",
                "is the recheck bin, which never gets a valve: it is where items land when no valve fires; "
                "remove that pin",
            )
        if bin_name not in config.bin_names():
            raise config.error(
                f"actuator.pins.{bin_name}", f"names no bin of [bins] (bins: {', '.join(sorted(config.bin_names()))})"
            )


def bin_driver(config, clock, labels, pin_factory=None):
    return GpioActuator(config.actuator.pins, config.actuator.pulse_ms / 1000.0, clock, pin_factory)


valve_driver = None
