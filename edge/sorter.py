"""The sorting pipeline: source -> segment -> track -> classify -> decide -> schedule -> actuate, and one stream of
decisions to the publishers.

    frame (edge/sources.py Capture)
      -> segment  (edge/segment.py: the whole ROI is one particle, or the particles of a learned belt)
      -> track    (edge/track.py: which particles are new material)
      -> classify (edge/classify.py: all crops of the frame in one interpreter call where the model allows)
      -> decide   (edge/decision.py: the bin, or recheck when unsure)
      -> schedule (edge/schedule.py: when and where the valve opens; clock or encoder) -> actuate (edge/actuate.py)
      -> publish  (edge/publish.py: events, Modbus ring, metrics, review queue, alarm; the counters of summary.json)

Single items are particles of a frame that holds one: one path for both. Every collaborator (model, actuator,
event sink, clock, review queue, encoder) is passed in, so tests run the real pipeline with a driven clock, a fake
camera or a pseudo-terminal for a serial port; edge/runner.py build_runner assembles it from a config.
"""

import os
import types
from collections import deque

from edge.classify import CropClassifier
from edge.contact import ContactLine
from edge.decision import Decider
from edge.drift import DriftMonitor
from edge.promotion import ModelSwitch
from edge.actuate import Heartbeat
from edge.blind import BlindWatch
from edge.drivers.modbus_server import (
    BLIND, BLIND_ALARM, DRIFT_ALARM, LEARNING, MODEL_ALARM, PAUSED, RECHECK_ALARM, RUNNING, SOURCE_ALARM,
    SOURCE_FAILING,
)
from edge.publish import DecisionRing, EventLog, RecheckWatch, ReviewCopies, Sorted, make_record
from edge.records import RecheckAlarm, iso_time, percentile, write_summary
from edge.schedule import BinSchedule, ValveSchedule
from edge.segment import BeltSegments, FrameSize, SkipFrame, WholeFrame
from edge.sources import Capture
from edge.tally import OUTCOMES, ParticleTally, Tally
from edge.track import BeltTracker, ItemTracker
from edge.trends import MinuteTrends
from edge.valves import ValveBar
from edge.view import BeltView

_NOT_STARTED = types.SimpleNamespace(dropped=0, source_errors=0, depth=0)  # snapshot() before run(): nothing read
_REASONS = ("confident", "uncertain", "late", "error", "no_position")


class Sorter:
    """The pipeline's stages, chosen by the config (single items or a belt of particles), and the loop that feeds
    it frames: `process(frame)` runs one frame through, `run(capture)` sorts until the source ends or `stop()`,
    `summary()` and `snapshot()` are what summary.json and the line page show."""

    def __init__(self, config, model, actuator, events, clock, review=None, belt=None, plc_fires=False, truth=None,
                 contact=None):
        self.config, self.model, self.actuator, self.events, self.clock = config, model, actuator, events, clock
        self.review = review
        self.belt = belt  # edge/encoder.py EncoderBelt when ejections follow the PLC's encoder count, else None
        self.truth = truth  # optional (frame_id, particle) -> true label: recovery and purity in summary.json
        self.telemetry = None  # edge/telemetry.py Telemetry once attached (--metrics-port)
        self.tally = Tally()
        self.alarm = RecheckAlarm(config.alarm.window, config.alarm.max_recheck_share)
        self.review_copies = None
        self.switch = ModelSwitch(self)  # promote() and rollback(): holds the lock each frame is sorted under
        self.shadow = None  # edge/shadow.py Shadow with --shadow: a candidate on the same crops, never deciding
        self._requested = None  # "promote" or "rollback" asked by a signal, done by the sorting loop
        self._use_model(model)  # the decider, classifier and drift monitor of the live model
        self.drift_alarms = 0
        self.blind = BlindWatch(clock, events, config.alarm.blind_s, config.alarm.no_particles_s)
        self.belt_frame = config.particles is not None
        size = FrameSize(config.source.frame_size, config.source.rescale)
        if self.belt_frame:
            self.particles = ParticleTally(config.bins, model.labels)
            if contact is None and config.particles.contact_model:  # with the classifier's threads: never both at once
                contact = ContactLine(config.particles.contact_model, model.threads)
            self.segmenter = BeltSegments(config.particles, config.valves, config.source.roi, size, self._belt_learned,
                                          contact)
            self.tracker = self.scheduler = None  # once the belt is learned: they need the frame's height
        else:
            self.particles = None
            self.segmenter = WholeFrame(config.source.roi, size)
            still = 0 if belt is None else config.belt.still_mm * config.encoder.counts_per_mm
            self.tracker = ItemTracker(events, belt, still)
            self.scheduler = BinSchedule(config, actuator, clock, belt, plc_fires)
        self.review_copies = ReviewCopies(review, model, clock, events) if review is not None else None
        self.recheck_watch = RecheckWatch(self.alarm, events, config.alarm.window, config.bins.recheck,
                                          self.belt_frame)
        self.publishers = [EventLog(events, "particle" if self.belt_frame else "item")]
        if not self.belt_frame:
            self.publishers.append(DecisionRing(actuator, belt is not None))
        self.trends = MinuteTrends(clock, config.bins.recheck)  # the page's last hour and size distribution
        self.publishers += [p for p in (self.review_copies, self.recheck_watch, self.trends) if p is not None]
        self.view = BeltView(config.source.roi, config.bins.recheck, config.valves.bin if self.belt_frame else None)
        self.invoke_s = deque(maxlen=100_000)  # interpreter time alone, for --benchmark
        self.busy = [None, None]  # first item start, last item finish: the span --benchmark divides by
        self.started_wall, self.started = clock.wall(), clock.now()
        self._stop_reason = None
        self.paused = None  # why sorting is paused (pause(): OPC UA Stop), None while it decides
        self.single = False  # while paused: decide the next frame that has particles, then paused again
        self._paused_at, self._paused_frames = None, 0
        self._sequence = 0
        self.model_ok = True  # False after an inference error, until the next success (Modbus "model ok")
        self.listening = []  # "modbus 127.0.0.1:5020", "metrics ...": logged at start
        self.capture, self.source_up, self.finished = None, True, False  # for snapshot() (the --ui-port page)

    def _use_model(self, model):
        """Make `model` the one that decides: its Decider (its own reject block), classifier and drift monitor
        (edge/drift.py: None without a calibrated sidecar "reference" or with [drift] enabled = false)."""
        config = self.config
        self.model = model
        self.decider = Decider(model.labels, config.bins, model.reject, config.decision.confidence_threshold)
        self.classifier = CropClassifier(model)
        self.drift = None
        if config.drift.enabled and model.reference is not None:
            self.drift = DriftMonitor(model.labels, model.reference, config.drift.window, config.drift.threshold)
        if self.review_copies is not None:
            self.review_copies.model = model
        if self.telemetry is not None:
            self.telemetry.set_model(model)

    def promote(self, path=None, sidecar=None):
        """Make the model at `path` (default: the --shadow candidate) the live one between two frames, without a
        restart, after the checks of edge/promotion.py; returns it, or raises ModelError (one line: the live model
        sorts on). From any thread but a signal handler (see request()); logged as events and on stderr."""
        return self.switch.promote(path, sidecar)

    def rollback(self):
        """Return to the model the last promotion replaced, between two frames; ModelError when there is none."""
        return self.switch.rollback()

    def request(self, action):
        """"promote" (the shadow's candidate) or "rollback" from a signal handler: only sets a flag; the sorting
        loop starts it in a thread of its own, so no frame waits on a model being loaded."""
        self._requested = action

    def state(self):
        """(Modbus state code, model ok, alarm bits) now: what the heartbeat publishes, read from its own thread."""
        alarms = ((RECHECK_ALARM if self.alarm.tripped else 0)
                  | (DRIFT_ALARM if self.drift is not None and self.drift.tripped else 0)
                  | (BLIND_ALARM if self.blind.problem is not None else 0)
                  | (SOURCE_ALARM if not self.source_up else 0) | (MODEL_ALARM if not self.model_ok else 0))
        if self.blind.problem is not None:
            return BLIND, self.model_ok, alarms
        if self.paused is not None and not self.single and self.source_up:
            return PAUSED, self.model_ok, alarms
        if self.segmenter.learning:
            return LEARNING, self.model_ok, alarms
        return (RUNNING if self.source_up else SOURCE_FAILING), self.model_ok, alarms

    def attach_telemetry(self, telemetry):
        """Publish to Prometheus (edge/telemetry.py) too."""
        self.telemetry = telemetry
        self.publishers.insert(0, telemetry)
        telemetry.watch(self.snapshot)

    def attach_shadow(self, shadow):
        """Run a candidate beside the live model (edge/shadow.py): it is offered every frame's crops and decisions."""
        self.shadow = shadow
        shadow.live_model = lambda: self.model

    def stop(self, reason):
        """Finish after the current frame (signal-safe: only sets a flag)."""
        self._stop_reason = reason

    def pause(self, reason):
        """Decide nothing until resume(), the run going on (OPC UA Stop, edge/opcua.py): the source is still read, so
        a camera never backs up, and each frame is counted skipped `paused`; no particle is decided and no new valve
        fires, so the material rides to the belt's default end. From any thread; the frame being sorted finishes."""
        self.single = False
        if self.paused is None:
            self._paused_at, self._paused_frames = self.clock.now(), 0
            self.events.emit("paused", reason=reason)
        self.paused = reason

    def resume(self, reason):
        """Decide again from the next frame (OPC UA StartContinuous); a `resumed` event counts the paused frames."""
        self.single = False
        if self.paused is not None:
            self.paused = None
            self.events.emit("resumed", reason=reason, frames_paused=self._paused_frames,
                             paused_s=round(self.clock.now() - self._paused_at, 3))

    def single_job(self):
        """While paused: decide the next frame that has particles (single items: the next picture), then stay paused
        (OPC UA StartSingleJob). False when not paused."""
        if self.paused is None:
            return False
        self.single = True
        return True

    def _skip_paused(self):
        """A frame read while paused: counted, never looked at; a pause is not blindness, so the blind alarm's clock
        stands still (an alarm already raised stays)."""
        self._paused_frames += 1
        self.tally.skip("paused")
        if self.telemetry is not None:
            self.telemetry.skipped("paused")
        if self.blind.problem is None:
            self.blind.frame(True)

    def _skip(self, frame, reason, error):
        self.tally.skip(reason)
        self.events.emit("skipped", frame=frame.frame_id, reason=reason, error=error)
        if self.telemetry is not None:
            self.telemetry.skipped(reason)
        self.blind.frame(False, skip=f"{reason}: {error}")

    def _belt_learned(self, frame, shape):
        """The segmenter learned the empty belt: the valve bar, tracking and scheduling get the frame's geometry."""
        config, particles = self.config, self.config.particles
        if self.belt is None:
            per_mm, modulus = 1.0 / config.belt.speed_mm_s, None
        else:
            per_mm, modulus = config.encoder.counts_per_mm, 1 << (16 * config.encoder.registers)
        bar = ValveBar(config.belt, particles, config.valves, shape[0], per_mm, modulus)
        self.tracker = BeltTracker(bar, shape[0], particles.track_mm)
        self.scheduler = ValveSchedule(config, self.actuator, self.clock, bar, self.particles.counts, self.belt)
        segmenter = self.segmenter.segmenter
        self.events.emit("belt_learned", frames=particles.background_frames, frame=frame.frame_id,
                         size=[shape[1], shape[0]], threshold=segmenter.threshold,
                         noise=None if segmenter.background.noise is None else round(segmenter.background.noise, 2))

    def process(self, frame):
        """One frame through the pipeline: every new particle in it decided, its ejection commanded and published."""
        with self.switch.lock:  # a promotion waits for the frame, never the frame for a promotion's loading
            if self.paused is not None and not self.single:
                return self._skip_paused()
            decided = self._sequence
            self._process(frame)
            if self.single and self._sequence > decided:  # the single job's frame: paused again
                self.single = False
                self.events.emit("single_job", frame=frame.frame_id, items=self._sequence - decided)

    def _process(self, frame):
        start = self.clock.now()
        if frame.image is None:
            return self._skip(frame, "undecodable", frame.error)
        position = frame.capture_time if self.belt is None else frame.position
        # a blob tracking knows is earlier frames' particles is not split again (edge/particles.py Segmenter.segment)
        decided = self.tracker.decided(position) if self.belt_frame and self.tracker is not None else None
        try:
            segmentation = self.segmenter.segment(frame, decided)
        except SkipFrame as problem:
            return self._skip(frame, problem.reason, str(problem))
        self.blind.frame(True, len(segmentation.particles) if segmentation and self.belt_frame else None)
        if segmentation is None:  # an empty-belt frame being learned
            return
        segmented = self.clock.now()
        fresh, plans, outcomes = self.tracker.fresh(segmentation.particles, position)
        if self.particles is not None:  # every segmented particle's outcome, this frame's in one event
            outcomes.update(decided=len(fresh), too_small=segmentation.too_small, too_large=segmentation.too_large)
            self.particles.frame(outcomes)
            self.events.emit("frame", frame=frame.frame_id, **{k: outcomes[k] for k in OUTCOMES})
            if self.telemetry is not None:
                self.telemetry.particles(outcomes)
        seqs = {}
        for particle in fresh:
            self._sequence += 1
            seqs[particle.index] = self._sequence
        latency = {"capture": start - frame.capture_time, "segment": segmented - start}
        recheck = self.config.bins.recheck
        try:
            probabilities = self.classifier.classify([p.crop for p in fresh])
        except Exception as error:  # an interpreter fault must not stop the belt: these particles ride on
            self.model_ok = False
            self.events.emit("inference_error", frame=frame.frame_id, error=f"{type(error).__name__}: {error}")
            for particle in fresh:
                self._publish(start, frame, seqs[particle.index], particle, None, recheck, "error", latency)
            self.view.show(self.segmenter.image, segmentation.particles, {p.index: (recheck, "error") for p in fresh})
            return
        self.model_ok = True
        latency["preprocess"] = self.classifier.last_preprocess_s
        latency["inference"] = self.model.last_invoke_s
        if fresh:
            self.invoke_s.append(self.model.last_invoke_s)
        decisions = {p.index: self.decider.decide(row) for p, row in zip(fresh, probabilities)}
        for row in probabilities:
            self._watch_drift(row)
        outcome = self.scheduler.schedule(frame, fresh, decisions, seqs, plans)
        self.view.show(self.segmenter.image, segmentation.particles, outcome)
        for particle in fresh:
            bin_name, reason = outcome[particle.index]
            self._publish(start, frame, seqs[particle.index], particle, decisions[particle.index], bin_name, reason,
                          latency)
        if self.shadow is not None:  # after the live decisions: a put into a bounded queue that never waits
            self.shadow.offer(frame.frame_id, [(seqs[p.index], p.crop, decisions[p.index]) for p in fresh])

    def _publish(self, start, frame, seq, particle, decision, bin_name, reason, latency):
        """Count one decision and hand it to every publisher."""
        finish = self.clock.now()
        item = Sorted(seq, frame, particle, decision, bin_name, reason,
                      {**latency, "total": finish - frame.capture_time})
        item.record = make_record(item, self.belt_frame, self.belt is not None)
        if self.busy[0] is None:
            self.busy[0] = start
        self.busy[1] = finish
        self.tally.add(item.label, bin_name, reason, item.latency["total"])
        if self.particles is not None:
            truth = self.truth(frame.frame_id, particle) if self.truth is not None else None
            self.particles.particle(bin_name, particle.area_mm2, truth)
        for publisher in self.publishers:
            publisher.publish(item)

    def _watch_drift(self, probabilities):
        """Feed one item's probabilities to the drift monitor; a `drift` event when it trips (once per episode)."""
        if self.drift is None:
            return
        tripped = self.drift.update(probabilities)
        if self.telemetry is not None:
            self.telemetry.drift(self.drift.statistic, self.drift.tripped)
        if tripped is not None:
            self.drift_alarms += 1
            self.events.emit("drift", **tripped)

    def summary(self, capture, exit_reason):
        tally = self.tally
        return {
            "model": self.model.path,
            "model_sha256": self.model.sha256,
            "reject": self.decider.describe(),
            "started": iso_time(self.started_wall),
            "uptime_s": round(self.clock.now() - self.started, 3),
            "exit": exit_reason,
            "items": tally.items,
            "per_class": dict(sorted(tally.per_class.items())),
            "per_bin": dict(sorted(tally.per_bin.items())),
            "per_reason": {r: tally.per_reason[r] for r in _REASONS + (("conflict",) if self.belt_frame else ())},
            "recheck": tally.per_bin[self.config.bins.recheck],
            "late": tally.per_reason["late"],
            "failed": tally.per_reason["error"],
            "frames_skipped": tally.skipped,
            "frames_skipped_by_reason": dict(sorted(tally.skipped_by.items())),
            **({"frames_unmoved": self.tracker.unmoved} if not self.belt_frame and self.belt is not None else {}),
            "frames_dropped": capture.dropped,
            "source_errors": capture.source_errors,
            "actuator_errors": self.actuator.errors,
            "alarms": self.recheck_watch.alarms,
            "drift_alarms": self.drift_alarms,
            "blind_alarms": self.blind.alarms,
            "drift": self.drift.status() if self.drift is not None else None,
            "promotions": self.switch.promotions,
            "rollbacks": self.switch.rollbacks,
            "events_lost": self.events.lost,
            "review_lost": self.review_copies.lost if self.review_copies is not None else 0,
            "latency_ms": {"p50": percentile(tally.latencies, 50), "p95": percentile(tally.latencies, 95)},
            **({"encoder": self.belt.counts()} if self.belt is not None else {}),
            **({"particles": self.particles.summary()} if self.particles is not None else {}),
            **({"shadow": self.shadow.report()} if self.shadow is not None else {}),
        }

    def snapshot(self):
        """The summary's figures now plus live state, for the operator page (edge/ui.py) in its own thread.

        No lock: every copy (a Counter, the latency window) is one C-level operation under the GIL, so the sorting
        thread never waits on the page; a copy that still meets a mutation (RuntimeError) is simply taken again.
        Counts may lag each other by the item being recorded; after run() returns they equal summary.json.
        """
        capture = self.capture or _NOT_STARTED
        exit_reason = self._stop_reason or ("stopped" if self.finished else "running")
        for attempt in range(20):
            try:
                summary = self.summary(capture, exit_reason)
                break
            except RuntimeError:  # a Counter grew during the copy; the last attempt lets the error through
                if attempt == 19:
                    raise
        model = self.model
        return {
            **summary, "running": not self.finished, "model_name": os.path.basename(model.path),
            "labels": list(model.labels), "bins": self.config.bin_codes(), "recheck_bin": self.config.bins.recheck,
            "recheck_share": self.alarm.share, "alarm_active": self.alarm.tripped,
            "alarm_limit": self.config.alarm.max_recheck_share, "source_up": self.source_up,
            "queue_depth": capture.depth, "actuator_up": self.actuator.up, "model_ok": self.model_ok,
            "blind": self.blind.problem, "trends": self.trends.last_hour(),
            "size_mm": self.trends.size_distribution(), "mode": self.mode(),
        }

    def mode(self):
        """What the sorter is doing besides running, for the line page: learning the belt, paused (and why), a
        single job; None while it sorts."""
        if self.single:
            return "single job"
        if self.paused is not None:
            return f"paused: {self.paused}"
        return "learning the belt" if self.segmenter.learning else None

    def run(self, capture, max_items=None):
        """Sort until the source ends, stop() is called or `max_items` items are done; write and return the summary."""
        exit_reason = "end of source"
        interval = self.config.records.stats_interval_s
        last_stats = last_frame = self.clock.now()
        self.actuator.open()  # now, not at the first item: a PLC polls a Modbus server before anything is sorted
        heartbeat = Heartbeat(self.actuator, self.state)
        self.events.emit(
            "start", config=self.config.path, model=self.model.path, model_sha256=self.model.sha256,
            labels=self.model.labels, reject=self.decider.describe(), listening=self.listening,
            shadow=self.shadow.model.path if self.shadow is not None else None,
            bin_codes=self.config.bin_codes(),
        )
        if self.belt is not None:
            capture.position = capture.position or self.belt.read  # the count is read as each frame is grabbed
            self.belt.start()
        self.capture = capture
        capture.start()
        heartbeat.start()
        if self.shadow is not None:
            self.shadow.start()
        try:
            while self._stop_reason is None and (max_items is None or self.tally.items < max_items):
                self.trends.roll()
                if self.telemetry is not None:
                    self.telemetry.update(capture.depth, self.alarm.share, self.source_up, self.actuator.up,
                                          self.blind.problem is not None, self.trends.size_distribution())
                if self._requested is not None:
                    action, self._requested = self._requested, None
                    self.switch.start(action)
                frame = capture.get(timeout=0.25)
                now = self.clock.now()
                if frame is Capture.END:
                    break
                if frame is None:
                    if self.source_up and now - last_frame > self.config.source.stall_timeout_s:
                        self.source_up = False
                        self.events.emit("source_stalled", seconds_without_frames=round(now - last_frame, 3))
                else:
                    if not self.source_up:
                        self.source_up = True
                        self.events.emit("source_resumed")
                    last_frame = now
                    self.process(frame)
                if now - last_stats >= interval:
                    self.events.emit("stats", **self.tally.stats(now - last_stats), reject=self.decider.describe())
                    last_stats = now
            else:  # the loop condition ended it, not the source
                exit_reason = self._stop_reason or "item limit reached"
        finally:
            heartbeat.stop()
            capture.stop()
            if self.belt is not None:
                self.belt.close()  # ejections still waiting are counted as missed: those items go to recheck
            if self.shadow is not None:
                self.shadow.close()  # what it was offered is compared first: the summary carries its report
            summary = self.summary(capture, exit_reason)
            written = write_summary(self.config.records.summary, summary)
            self.finished = True
            self.events.emit("stop", exit=exit_reason, summary=self.config.records.summary if written else None)
            self.actuator.close()  # last: a Modbus server shows "stopped" for [actuator] stop_grace_s first
        return summary
