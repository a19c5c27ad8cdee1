"""The blind alarm: frames arrive but the runner cannot see the belt in them.

A wrong ROI, a camera at another resolution or undecodable frames make every frame skipped; a camera pointing away
or a lens cap make a belt without particles. Sorting goes on (nothing is decided, everything rides on to recheck),
so without an alarm a line runs for hours unsorted. `BlindWatch` trips when no frame could be used for `[alarm]
blind_s`, or (with `no_particles_s` > 0, [particles] only) no particle was seen for that long: one `blind` event
naming the last skip's reason and fix, one line on stderr, the Modbus state 5, the page's banner and the Prometheus
gauge; the first usable frame (or particle) clears it (`blind_cleared`).
"""

import sys


class BlindWatch:
    def __init__(self, clock, events, blind_s, no_particles_s=0.0):
        self.clock, self.events = clock, events
        self.blind_s, self.no_particles_s = blind_s, no_particles_s
        self.problem = None  # what is wrong while tripped, else None
        self.alarms = 0
        now = clock.now()
        self._last_used = self._last_particle = now
        self._last_skip = None

    def frame(self, used, particles=None, skip=None):
        """One frame arrived: `used` when it was segmented, `particles` how many it held (belt mode), `skip` the
        message of why it was not used."""
        now = self.clock.now()
        if used:
            self._last_used = now
            if particles is None or particles > 0:
                self._last_particle = now
        else:
            self._last_skip = skip
        problem = None
        if now - self._last_used > self.blind_s:
            problem = (f"no usable frame for {now - self._last_used:.0f} s (last: {self._last_skip}); sorting "
                       "nothing")
        elif self.no_particles_s and particles is not None and now - self._last_particle > self.no_particles_s:
            problem = (f"no particle for {now - self._last_particle:.0f} s: check the camera's view, its lens and "
                       "the feed ([alarm] no_particles_s)")
        if problem is not None and self.problem is None:
            self.alarms += 1
            self.events.emit("blind", problem=problem)
            print(f"runner: blind: {problem}", file=sys.stderr, flush=True)
        elif problem is None and self.problem is not None:
            self.events.emit("blind_cleared")
        self.problem = problem
