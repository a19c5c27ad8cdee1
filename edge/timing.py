"""Time on the belt: the clock every part of the runner reads, and when an item's ejector command is due.

The clock is passed in rather than read from `time` directly so that tests can drive it (late decisions,
retry backoff) without sleeping.
"""

import time
from dataclasses import dataclass


class Clock:
    """Monotonic seconds for deadlines and latencies, wall time for records, and an interruptible wait."""

    def now(self):
        return time.monotonic()

    def wall(self):
        return time.time()

    def wait(self, event, seconds):
        """Wait up to `seconds` or until `event` is set; True if it was set (so stopping never waits a backoff)."""
        return event.wait(max(0.0, seconds))


@dataclass(frozen=True)
class EjectTiming:
    """An item seen at capture time t reaches the ejector at t + distance / speed; the valve opens `lead` earlier."""

    travel_s: float
    lead_s: float

    @classmethod
    def from_belt(cls, belt):
        return cls(belt.camera_to_ejector_mm / belt.speed_mm_s, belt.valve_lead_ms / 1000.0)

    def due(self, capture_time):
        return capture_time + self.travel_s - self.lead_s
