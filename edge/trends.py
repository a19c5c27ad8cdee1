"""The last hour of the line minute by minute, and the particle size distribution, as belt analysers report them.

Per minute: items/s and the recheck share (the operator's trend: a slow drift of either is a worn belt, a dirty
lens, another ore), and on a belt of many particles P20/P50/P80 of the decided particles' size (mm, the diameter of
the circle of the same area), the size distribution a crusher or screen operator watches. A publisher of the
stream of decisions (edge/publish.py); the sorting loop calls `roll()` every turn so idle minutes close too, and the
page thread only copies the closed minutes (no lock: the sorting thread never waits on the page).
"""

import time
from collections import deque

import numpy as np

MINUTE_S = 60.0


class MinuteTrends:
    def __init__(self, clock, recheck, minutes=60, sizes_per_minute=20_000):
        self.clock, self.recheck = clock, recheck
        self.sizes_per_minute = sizes_per_minute  # a bound on memory; a minute beyond it keeps its first sizes
        self.minutes = deque(maxlen=minutes)  # closed minutes, oldest first (dicts, see _close)
        self._start = clock.now()
        self._items = self._rechecked = 0
        self._sizes = []

    def publish(self, item):
        self.roll()
        self._items += 1
        self._rechecked += item.bin == self.recheck
        size = getattr(item.particle, "size_mm", None)
        if size is not None and len(self._sizes) < self.sizes_per_minute:
            self._sizes.append(size)

    def roll(self):
        """Close every minute that has ended (an idle one with zero items)."""
        now = self.clock.now()
        while now - self._start >= MINUTE_S:
            self._close()
            self._start += MINUTE_S

    def _close(self):
        sizes = np.asarray(self._sizes, np.float32)
        ended = time.time() - (self.clock.now() - self._start - MINUTE_S)
        self.minutes.append({
            "ended": time.strftime("%H:%M", time.localtime(ended)),
            "items_per_s": round(self._items / MINUTE_S, 3),
            "recheck_share": round(self._rechecked / self._items, 4) if self._items else None,
            "size_mm": ({f"p{q}": round(float(np.percentile(sizes, q)), 2) for q in (20, 50, 80)}
                        if len(sizes) else None),
        })
        self._items = self._rechecked = 0
        self._sizes = []

    def last_hour(self):
        """The closed minutes, oldest first (a copy: safe from another thread)."""
        return list(self.minutes)

    def size_distribution(self):
        """P20/P50/P80 (mm) of the last closed minute that had particles, or None."""
        for minute in reversed(self.minutes.copy()):
            if minute["size_mm"] is not None:
                return minute["size_mm"]
        return None
