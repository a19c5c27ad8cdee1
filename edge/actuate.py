"""The actuate stage: the configured driver (edge/drivers/) behind a supervisor that keeps sorting when it fails."""

import threading

HEARTBEAT_S = 0.1  # the PLC's watchdog is documented at 250 ms (edge/drivers/modbus_server.py register 0)


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

    def heartbeat(self, state, model_ok, alarms=0):
        self._forward("heartbeat", state, model_ok, alarms)

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
        """At the end of the run: a driver's `finish()` where it has one (the Modbus server shows "stopped" for a
        grace period first), else its close()."""
        with self._lock:
            if self._actuator is not None:
                getattr(self._actuator, "finish", self._actuator.close)()
                self._actuator = None


class Heartbeat:
    """Beats the driver's heartbeat (the Modbus register a PLC's watchdog reads) every `period_s` from its own
    thread with the state `state()` returns ((state code, model ok, alarm bits)), so frame work never stalls it: a slow frame,
    the empty belt being learned or a long inference used to hold the beat for a second."""

    def __init__(self, actuator, state, period_s=HEARTBEAT_S):
        self.actuator, self.state, self.period_s = actuator, state, period_s
        self._stop = threading.Event()
        self._thread = None

    def start(self):
        self.actuator.heartbeat(*self.state())
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(self.period_s):
            self.actuator.heartbeat(*self.state())

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
