"""The one stream of decisions and the publishers that listen to it.

Every decided particle (a single item is the one particle of its frame) becomes one `Sorted` and is handed, in
order, to each publisher's `publish(sorted)`: the counters of summary.json, the events log, the Modbus ring, the
Prometheus metrics (edge/telemetry.py), the review queue and the recheck alarm. The line page (edge/ui.py) reads the
counters. To add a publisher: a class with `publish(sorted)` (in its own file when it needs a library), subscribed
in edge/runner.py build_runner, and a test beside tests/edge/test_edge_metrics.py.
"""

from dataclasses import dataclass, field

from PIL import Image


def _ms(seconds):
    return round(seconds * 1000.0, 3)


@dataclass
class Sorted:
    """One decision: its frame, particle, the Decision (None after an inference error), where it landed and why."""

    seq: int
    frame: object  # edge/sources.py Frame
    particle: object  # edge/particles.py Particle
    decision: object  # edge/decision.py Decision or None
    bin: str
    reason: str
    latency: dict  # seconds by stage: capture, segment, preprocess, inference, total
    record: dict = field(default=None)  # the JSON record: events, Modbus, review

    @property
    def label(self):
        return self.decision.label if self.decision is not None else None


def make_record(item, belt_frame, encoder):
    """The JSON record of one decision (the events log's "item" or "particle" line)."""
    decision, particle = item.decision, item.particle
    record = {"seq": item.seq, "frame": item.frame.frame_id}
    if belt_frame:
        record.update(lanes=list(particle.lanes), bbox=list(particle.bbox), area_mm2=particle.area_mm2)
    record.update({
        "class": item.label,
        "top3": [{"label": label, "p": round(p, 6)} for label, p in decision.top3] if decision else [],
        "prediction_set": list(decision.prediction_set) if decision else [],
    })
    if belt_frame:
        record["decided"] = decision.bin if decision else None
    record.update(bin=item.bin, reason=item.reason, latency_ms={key: _ms(v) for key, v in item.latency.items()})
    if encoder:
        record["position"] = item.frame.position
    return record


class EventLog:
    """Each decision as one events line: "item" for single items, "particle" on a belt of many."""

    def __init__(self, events, kind):
        self.events, self.kind = events, kind

    def publish(self, item):
        self.events.emit(self.kind, **item.record)


class DecisionRing:
    """Single items' decisions to a driver that publishes them (the Modbus ring): every item, recheck too, so a PLC
    sees every sequence number. Encoder-timed, the position is the count at capture (0, with the recheck bin, when
    unreadable); clock-timed, the capture time."""

    def __init__(self, actuator, encoder):
        self.actuator, self.encoder = actuator, encoder

    def publish(self, item):
        position = None
        if self.encoder:
            position = 0 if item.frame.position is None else item.frame.position
        self.actuator.record(item.record, item.frame.capture_time, position)


class ReviewCopies:
    """Uncertain decisions' crops (what the model looked at, before the resize) into the review queue; a full or
    read-only disk loses review copies, never sorting (counted in `lost`)."""

    def __init__(self, review, model, clock, events):
        self.review, self.model, self.clock, self.events = review, model, clock, events
        self.lost = 0

    def publish(self, item):
        if item.decision is None or item.decision.reason != "uncertain":
            return
        crop = item.particle.crop
        image = crop if isinstance(crop, Image.Image) else Image.fromarray(crop)
        stem = f"{int(self.clock.wall() * 1000):013d}_{item.seq:08d}"
        try:
            self.review.add(stem, image, {**item.record, "model_sha256": self.model.sha256,
                                          "labels": self.model.labels})
        except OSError as error:
            self.lost += 1
            self.events.emit("review_error", frame=item.frame.frame_id, error=str(error))


class RecheckWatch:
    """The recheck alarm (edge/records.py RecheckAlarm) fed by the stream. Single items count every item sent to
    recheck; on a belt of many most particles ride on to recheck by design, so there it counts the uncertain ones."""

    def __init__(self, alarm, events, window, recheck, belt_frame):
        self.alarm, self.events, self.window, self.belt_frame = alarm, events, window, belt_frame
        self.recheck = recheck
        self.alarms = 0

    def publish(self, item):
        recheck = self.recheck
        if self.belt_frame:
            share = self.alarm.update(item.decision is None or item.decision.bin == recheck)
            problem = "uncertain share too high: check the lens, the light and the material on the belt"
        else:
            share = self.alarm.update(item.bin == recheck)
            problem = "recheck share too high: check the lens, the light and the material on the belt"
        if share is not None:
            self.alarms += 1
            self.events.emit("alarm", problem=problem, recheck_share=round(share, 4), window=self.window,
                             limit=self.alarm.limit)
