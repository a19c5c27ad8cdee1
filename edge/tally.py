"""The counters of summary.json (and of the line page, which reads them live): items, and on a belt of many the
particles' outcomes, per frame and the mass proxy per bin. Memory stays flat over weeks: latencies in bounded
windows, everything else running sums."""

from collections import Counter, deque

from edge.records import percentile

OUTCOMES = ("decided", "entering", "leaving", "tracked", "too_small", "too_large")  # one per segmented particle


class Tally:
    """Counters for the summary and the latency windows for stats lines."""

    def __init__(self, window=10000):
        self.items = 0
        self.per_class = Counter()
        self.per_bin = Counter()
        self.per_reason = Counter()
        self.skipped = 0
        self.skipped_by = Counter()  # reason -> frames: undecodable, frame_size, roi, belt, paused
        self.latencies = deque(maxlen=window)  # total latency, seconds, for the summary
        self._interval = []  # total latencies since the last stats line
        self._interval_items = 0

    def skip(self, reason):
        self.skipped += 1
        self.skipped_by[reason] += 1

    def add(self, label, bin_name, reason, total_s):
        self.items += 1
        if label is not None:
            self.per_class[label] += 1
        self.per_bin[bin_name] += 1
        self.per_reason[reason] += 1
        self.latencies.append(total_s)
        self._interval.append(total_s)
        self._interval_items += 1

    def stats(self, seconds):
        """The stats-line fields for the last `seconds`, and a fresh interval."""
        fields = {
            "items_per_s": round(self._interval_items / seconds, 3) if seconds > 0 else None,
            "latency_ms": {"p50": percentile(self._interval, 50), "p95": percentile(self._interval, 95)},
            "items": self.items,
            "per_class": dict(sorted(self.per_class.items())),
        }
        self._interval, self._interval_items = [], 0
        return fields


class ParticleTally:
    """Every segmented particle's outcome, per-frame counts and the mass proxy (area, mm^2) per bin.

    Each particle of a frame ends in exactly one of OUTCOMES: `decided` (then it has its `particle` event and
    lands in a bin), `entering` / `leaving` (cut by the frame's upstream / downstream edge: decided in another
    frame), `tracked` (the same as one decided in an earlier frame), `too_small` / `too_large` (outside the size
    range; never classified). Where the true class of a particle is known (`truth`), recovery and purity per
    product bin are estimated by area, as ore-sorting engineers report them: recovery of bin b = area of b's classes
    that landed in b / area of b's classes seen; purity of b = area of b's classes in b / all area in b. A bin's
    classes are those the config maps to it ([bins.classes]; bins.default takes the unlisted ones).
    """

    def __init__(self, bins, labels):
        self.target = {label: bins.classes.get(label, bins.default) for label in labels}
        self.frames = 0
        self.decided_max = None  # the most particles decided in one frame
        self.counts = dict.fromkeys(OUTCOMES[1:] + ("conflict", "hit"), 0)
        self.counts["decided"] = 0
        self.area = {}  # bin -> mm^2
        self._truth = Counter()  # (target bin of the true class, landed bin) -> mm^2
        self._truth_particles = 0

    def frame(self, outcomes):
        """One segmented frame's outcomes ({outcome: particles})."""
        self.frames += 1
        for outcome, number in outcomes.items():
            self.counts[outcome] += number
        decided = outcomes.get("decided", 0)
        self.decided_max = decided if self.decided_max is None else max(self.decided_max, decided)

    def particle(self, bin_name, area_mm2, truth=None):
        self.area[bin_name] = self.area.get(bin_name, 0.0) + area_mm2
        if truth is not None:
            self._truth[self.target.get(truth), bin_name] += area_mm2
            self._truth_particles += 1

    def summary(self):
        described = {
            "frames": self.frames,
            "per_frame": {"mean": round(self.counts["decided"] / self.frames, 3) if self.frames else None,
                          "max": self.decided_max},
            **self.counts,
            "area_mm2_per_bin": {b: round(a, 1) for b, a in sorted(self.area.items())},
        }
        if self._truth_particles:
            measures = {}
            for bin_name in sorted(set(self.target.values())):
                wanted = sum(a for (t, _), a in self._truth.items() if t == bin_name)
                landed = sum(a for (_, b), a in self._truth.items() if b == bin_name)
                right = self._truth[bin_name, bin_name]
                measures[bin_name] = {
                    "recovery": round(right / wanted, 4) if wanted else None,
                    "purity": round(right / landed, 4) if landed else None,
                }
            described["truth"] = {"particles": self._truth_particles, "per_bin": measures}
        return described
