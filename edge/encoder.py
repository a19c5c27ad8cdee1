"""Encoder-tracked ejection (`[belt] position = "modbus"`): the runner reads the belt's encoder count from the PLC.

A clock-timed belt assumes a constant speed; a belt that slows or stops then gets its valves fired at the wrong
place. Here the runner is a Modbus TCP client of the PLC that owns the encoder: each frame is stamped with the count
read just before it was grabbed (edge/sources.py Capture), and a bench ejector (serial, gpio, jsonl) fires when the
count reaches that stamp plus the camera-to-ejector distance in counts (less the valve lead, turned into counts at
the nominal `speed_mm_s`). A stopped belt therefore holds the valve back instead of firing at an empty belt.

Counters wrap (16 or 32 bits). Positions are compared modulo 2**bits, as the signed difference in
(-2**(bits-1), 2**(bits-1)]: this assumes the belt moves less than half the counter range between two reads and
that the camera-to-ejector distance is under half the range (checked in the config). The count must increase as
the belt moves forward.
"""

import threading


class EncoderError(Exception):
    """The encoder could not be read at start; the runner stops with one line (exit 2)."""


class EncoderBelt:
    """Where the belt is (the PLC's encoder count) and the ejections waiting for their position.

    `read()` may be called from any thread (capture stamps, decision checks, the poll thread): one pymodbus client
    under a lock. A read that fails returns None, is counted and reported once per outage (`encoder_error`, then
    `encoder_recovered`); the client is closed so the next read reconnects. `poll()` reads once and fires every
    waiting ejection whose position is reached. With `background=False` nothing polls on its own and the caller
    drives `poll()`, which is how tests step the belt.

    An ejection found passed after reads failed (the count jumped during an outage), or passed by more than
    `fire_window_mm`, is not fired: it could hit another item. It is counted in `missed` with an `eject_missed`
    event, and the item rides on to the recheck bin at the end of the belt.
    """

    def __init__(self, encoder, belt, clock, events, background=True):
        self.host, self.port, self.unit_id = encoder.host, encoder.port, encoder.unit_id
        self.address, self.registers, self.word_order = encoder.address, encoder.registers, encoder.word_order
        self.modulus = 1 << (16 * encoder.registers)
        travel_mm = belt.camera_to_ejector_mm - belt.valve_lead_ms / 1000.0 * belt.speed_mm_s
        self.offset = round(travel_mm * encoder.counts_per_mm)  # capture count -> the count at which the valve opens
        self.window = round(encoder.fire_window_mm * encoder.counts_per_mm)
        self.poll_s = encoder.poll_ms / 1000.0
        self.timeout_s = encoder.timeout_s
        self.clock = clock
        self.events = events
        self.background = background
        self.read_errors = 0
        self.missed = 0
        self.fired = 0
        self._client = None
        self._client_lock = threading.Lock()
        self._failing = False
        self._pending = []  # (target count, fire, details) in the order scheduled
        self._cond = threading.Condition()
        self._closed = threading.Event()
        self._thread = None

    @property
    def endpoint(self):
        return f"encoder {self.host}:{self.port} unit {self.unit_id} register {self.address}"

    def delta(self, position, target):
        """Signed counts from `target` to `position` over the wrapping counter: >= 0 once the target is reached."""
        half = self.modulus >> 1
        return (position - target + half) % self.modulus - half

    def target(self, capture_position):
        """The count at which the valve for an item captured at `capture_position` opens."""
        return (capture_position + self.offset) % self.modulus

    def _read_raw(self):
        from pymodbus.client import ModbusTcpClient

        if self._client is None:
            self._client = ModbusTcpClient(self.host, port=self.port, timeout=self.timeout_s, retries=0)
        response = self._client.read_holding_registers(self.address, count=self.registers, device_id=self.unit_id)
        if response.isError():
            raise OSError(f"the PLC answered {response}")
        words = list(response.registers)
        if self.word_order == "low_first":
            words.reverse()
        value = 0
        for word in words:
            value = value << 16 | word
        return value

    def read(self):
        """The current count, or None when it cannot be read (counted, reported once per outage)."""
        return self._read_counted()[0]

    def _read_counted(self):
        """(count or None, failed reads so far), taken together under the client lock."""
        with self._client_lock:
            try:
                value = self._read_raw()
            except Exception as error:  # connection refused, timeout, exception response: all mean "unknown"
                self.read_errors += 1
                if self._client is not None:
                    self._client.close()
                    self._client = None
                if not self._failing:
                    self._failing = True
                    self.events.emit("encoder_error", endpoint=self.endpoint, error=f"{type(error).__name__}: {error}")
                return None, self.read_errors
            if self._failing:
                self._failing = False
                self.events.emit("encoder_recovered", endpoint=self.endpoint, errors=self.read_errors)
            return value, self.read_errors

    def open(self):
        """Connect and read once; EncoderError (one line) when the PLC cannot be read."""
        with self._client_lock:
            try:
                self._read_raw()
            except Exception as error:
                if self._client is not None:
                    self._client.close()
                    self._client = None
                raise EncoderError(
                    f"{self.endpoint} cannot be read ({type(error).__name__}: {error}): check [encoder] host, port, "
                    "unit_id and address, and that the PLC is reachable"
                ) from None

    def schedule(self, target, fire, **details):
        """Call `fire()` (True when the command went out) when the count reaches `target`."""
        with self._cond:  # the last entry: read errors seen when it was last known unreached
            self._pending.append([target, fire, details, self.read_errors])
            self._cond.notify()

    @property
    def waiting(self):
        return len(self._pending)

    def counts(self):
        """For summary.json: failed reads, ejections fired at their count and ejections not fired (missed)."""
        return {"read_errors": self.read_errors, "fired": self.fired, "missed": self.missed}

    def poll(self):
        """Read the count once and fire (or count as missed) every ejection it reached; returns the count or None."""
        position, errors = self._read_counted()
        if position is None:
            return None
        with self._cond:  # a few items ride between camera and ejector: a scan in capture order is enough
            due = [entry for entry in self._pending if self.delta(position, entry[0]) >= 0]
            self._pending = [entry for entry in self._pending if self.delta(position, entry[0]) < 0]
            for entry in self._pending:
                entry[3] = errors
        for target, fire, details, seen in due:
            blind = seen != errors  # a read failed since it was last seen unreached: the count may have jumped
            overshoot = self.delta(position, target)
            if blind or overshoot > self.window:
                self.missed += 1
                self.events.emit(
                    "eject_missed", target=target, position=position,
                    why="encoder unreadable when it fell due" if blind else "found passed by more than fire_window_mm",
                    **details,
                )
            elif fire():
                self.fired += 1
            else:
                self.missed += 1
                self.events.emit("eject_missed", target=target, position=position, why="actuator failed", **details)
        return position

    def start(self):
        if self.background and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="encoder", daemon=True)
            self._thread.start()

    def _run(self):
        while not self._closed.is_set():
            with self._cond:
                if not self._pending:  # nothing waits: do not load the PLC
                    self._cond.wait(0.25)
                    continue
            self.poll()
            self._closed.wait(self.poll_s)

    def close(self):
        """Stop polling; ejections still waiting will not fire (the items ride on to recheck): counted as missed."""
        self._closed.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(2.0)
            self._thread = None
        with self._cond:
            left, self._pending = self._pending, []
        for target, _, details, _ in left:
            self.missed += 1
            self.events.emit("eject_missed", target=target, why="runner stopped before it fell due", **details)
        with self._client_lock:
            if self._client is not None:
                self._client.close()
                self._client = None
