"""Sort items on a conveyor: camera -> TFLite model -> bin decision -> ejector, without TensorFlow.

    python edge/runner.py --model model_int8.tflite --source camera:0 --config belt.toml [--events events.jsonl]
                          [--sidecar model_int8.json] [--threads 4] [--benchmark 1000]
    python edge/runner.py --init-config belt.toml --model model_int8.tflite   # a config for this model's labels

Each frame is classified, given a bin (or the recheck bin when the model is unsure, the decision is late or the
ejector fails) and recorded as one JSON line; a summary.json is written when the source ends or on SIGINT/SIGTERM.
See edge/README.md.
"""

import argparse
import dataclasses
import json
import os
import re
import signal
import sys
import time
import types
from collections import deque

import numpy as np
from PIL import Image

if not __package__:  # run as a script (python edge/runner.py): make the `edge` package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from edge.actuators import SupervisedActuator, make_actuator, require_library  # noqa: E402
from edge.config import ConfigError, load_config, parse_config  # noqa: E402
from edge.decision import Decider  # noqa: E402
from edge.deps import MissingLibrary, require  # noqa: E402
from edge.drift import DriftMonitor  # noqa: E402
from edge.encoder import EncoderBelt, EncoderError  # noqa: E402
from edge.model import Model, ModelError  # noqa: E402
from edge.modbus import RUNNING, SOURCE_FAILING  # noqa: E402
from edge.particles import BackgroundModel, CropClassifier, ParticleTally, Segmenter  # noqa: E402
from edge.preprocess import crop_roi, quantize  # noqa: E402
from edge.records import (  # noqa: E402
    EventSink, LineWriter, RecheckAlarm, Tally, atomic_write_bytes, atomic_write_json, check_writable, iso_time,
    percentile,
)
from edge.review import ReviewQueue  # noqa: E402
from edge.sources import Capture, SourceSpecError, parse_source, redact  # noqa: E402
from edge.telemetry import Telemetry  # noqa: E402
from edge.timing import Clock, EjectTiming  # noqa: E402
from edge.valves import ValveBar, make_valve_actuator  # noqa: E402


_NOT_STARTED = types.SimpleNamespace(dropped=0, source_errors=0, depth=0)  # snapshot() before run(): nothing read


def _ms(seconds):
    return round(seconds * 1000.0, 3)


class Runner:
    """The sorting loop. Every collaborator (model, actuator, event sink, clock, review queue) is passed in, so
    tests run the real loop with a driven clock, a fake camera or a pseudo-terminal for a serial port."""

    def __init__(self, config, model, actuator, events, clock, review=None, telemetry=None, belt=None, truth=None):
        self.config = config
        self.model = model
        self.actuator = actuator
        self.events = events
        self.clock = clock
        self.review = review
        self.telemetry = telemetry  # edge.telemetry.Telemetry (--metrics-port) or None
        self.decider = Decider(model.labels, config.bins, model.reject, config.decision.confidence_threshold)
        self.timing = EjectTiming.from_belt(config.belt)
        if belt is None and config.belt.position == "modbus":
            belt = EncoderBelt(config.encoder, config.belt, clock, events)
        self.belt = belt  # edge.encoder.EncoderBelt when ejections follow the PLC's encoder count, else None
        self.tally = Tally()
        self.alarm = RecheckAlarm(config.alarm.window, config.alarm.max_recheck_share)
        self.alarms = 0
        # edge/drift.py: None without a calibrated sidecar "reference" or with [drift] enabled = false.
        self.drift = None
        if config.drift.enabled and model.reference is not None:
            self.drift = DriftMonitor(model.labels, model.reference, config.drift.window, config.drift.threshold)
        self.drift_alarms = 0
        self.invoke_s = deque(maxlen=100_000)  # interpreter time alone, for --benchmark
        self.busy = [None, None]  # first item start, last item finish: the span --benchmark divides by
        self.started_wall = clock.wall()
        self.started = clock.now()
        self._stop_reason = None
        self._sequence = 0
        self.review_lost = 0
        self.model_ok = True  # False after an inference error, until the next success (Modbus "model ok")
        self.listening = []  # "modbus 127.0.0.1:5020", "metrics ...": logged at start
        # [particles]: many particles per frame (edge/particles.py, edge/valves.py); None: one item per frame.
        self.particles = ParticleTally(config.bins, model.labels) if config.particles is not None else None
        self.segmenter = self.valve_bar = None  # made once the empty belt is learned
        self._empty_frames = []
        self.classifier = CropClassifier(model) if config.particles is not None else None
        self.truth = truth  # optional (frame_id, particle) -> true label: recovery and purity in summary.json
        self.capture, self.source_up, self.finished = None, True, False  # for snapshot() (the --ui-port page)

    def stop(self, reason):
        """Finish after the current item (signal-safe: only sets a flag)."""
        self._stop_reason = reason

    def _skip(self, frame, error):
        self.tally.skipped += 1
        self.events.emit("skipped", frame=frame.frame_id, error=error)

    def process(self, frame):
        """Classify one frame, decide its bin, command the ejector and record the item."""
        if frame.image is None:
            return self._skip(frame, frame.error)
        if self.particles is not None:
            return self._process_particles(frame)
        start = self.clock.now()
        try:
            region = crop_roi(frame.image, self.config.source.roi)
        except ValueError as error:
            return self._skip(frame, str(error))
        self._sequence += 1
        recheck = self.config.bins.recheck
        model = self.model
        try:
            tensor = model.input_tensor(region)
            prepared = self.clock.now()
            probabilities = model.classify(tensor)
            inferred = self.clock.now()
        except Exception as error:  # an interpreter fault must not stop the belt: this item goes to recheck
            self.model_ok = False
            self.events.emit("inference_error", frame=frame.frame_id, error=f"{type(error).__name__}: {error}")
            return self._record(frame, start, None, recheck, "error", {"capture": start - frame.capture_time})
        self.model_ok = True
        self.invoke_s.append(model.last_invoke_s)
        decision = self.decider.decide(probabilities)
        self._watch_drift(probabilities)
        if self.belt is not None:
            bin_name, reason = self._eject_by_position(frame, decision)
        else:
            due = self.timing.due(frame.capture_time)
            bin_name, reason = decision.bin, decision.reason
            if self.clock.now() > due:
                bin_name, reason = recheck, "late"  # too late to fire: the item rides on to the recheck bin
            elif bin_name != recheck and not self.actuator.send(bin_name, due, frame.frame_id):
                bin_name, reason = recheck, "error"  # recheck gets no command: it is where items land when none fires
        latency = {
            "capture": start - frame.capture_time, "preprocess": prepared - start, "inference": inferred - prepared,
        }
        record = self._record(frame, start, decision, bin_name, reason, latency)
        if decision.reason == "uncertain" and self.review is not None:
            self._save_for_review(frame, region, record)

    def _eject_by_position(self, frame, decision):
        """Encoder-timed belt: the valve opens when the count reaches the capture count plus the distance in counts.

        Without a count at capture, or now, the item cannot be placed on the belt: recheck (`no_position`). A count
        already past the valve's is `late`, as on a clock-timed belt. Bench ejectors (jsonl, serial, gpio) are
        fired by the encoder's poll thread when the count is reached; with Modbus the PLC fires from the ring.
        """
        recheck, belt = self.config.bins.recheck, self.belt
        if frame.position is None:
            return recheck, "no_position"
        target = belt.target(frame.position)
        position = belt.read()
        if position is None:
            return recheck, "no_position"
        if belt.delta(position, target) >= 0:
            return recheck, "late"
        bin_name, frame_id = decision.bin, frame.frame_id
        if bin_name == recheck:
            return bin_name, decision.reason
        if self.config.actuator.type == "modbus":
            ready = self.actuator.send(bin_name, self.clock.now(), frame_id)
        else:
            ready = self.actuator.open()
            if ready:
                belt.schedule(
                    target, lambda: self.actuator.send(bin_name, self.clock.now(), frame_id),
                    seq=self._sequence, frame=frame_id, bin=bin_name,
                )
        return (bin_name, decision.reason) if ready else (recheck, "error")

    def _learn_belt(self, frame, pixels):
        """Collect `background_frames` empty-belt frames, then build the segmenter and the valve bar from them."""
        particles = self.config.particles
        self._empty_frames.append(pixels)
        if len(self._empty_frames) < particles.background_frames:
            return
        try:
            background = BackgroundModel(self._empty_frames, particles.background_rate)
        except ValueError as error:
            self._empty_frames = []
            return self._skip(frame, f"{error}: the belt is learned again")
        self._empty_frames = []
        self.segmenter = Segmenter(particles, background, self.config.valves)
        if self.belt is None:
            per_mm, modulus = 1.0 / self.config.belt.speed_mm_s, None
        else:
            per_mm, modulus = self.config.encoder.counts_per_mm, 1 << (16 * self.config.encoder.registers)
        self.valve_bar = ValveBar(self.config.belt, particles, self.config.valves, pixels.shape[0], per_mm, modulus)
        self.events.emit("belt_learned", frames=particles.background_frames, frame=frame.frame_id,
                         size=[pixels.shape[1], pixels.shape[0]])

    def _belt_now(self):
        """Where the belt is now: clock seconds, or the encoder count (None when it cannot be read)."""
        return self.clock.now() if self.belt is None else self.belt.read()

    def _process_particles(self, frame):
        """Segment the frame, classify every new particle in one call, fire the valve bar, record each particle.

        The first `background_frames` frames only teach the empty belt. A particle cut by the frame's upstream edge
        waits for the next frame, one cut by the downstream edge was seen whole in the previous one (frames overlap
        by at least max_mm), and one already decided in an earlier frame (tracking) is not decided again.
        Only particles of `[valves] bin` are ejected; every other one rides on to the end of the belt, which is
        the recheck bin (as for single items: where everything lands when no valve fires).
        """
        start = self.clock.now()
        try:
            pixels = np.asarray(crop_roi(frame.image, self.config.source.roi))
        except ValueError as error:
            return self._skip(frame, str(error))
        if self.segmenter is None:
            return self._learn_belt(frame, pixels)
        try:
            segmentation = self.segmenter.segment(pixels)
        except ValueError as error:  # a frame of another size than the learned belt
            return self._skip(frame, str(error))
        segmented = self.clock.now()
        bar, tally = self.valve_bar, self.particles
        position = frame.capture_time if self.belt is None else frame.position
        fresh, plans = [], {}
        for particle in segmentation.particles:
            if particle.bbox[1] == 0:  # cut by the upstream edge: decided whole in the next frame
                tally.counts["entering"] += 1
                continue
            if particle.bbox[1] + particle.bbox[3] == pixels.shape[0]:  # cut by the downstream edge: seen before
                tally.counts["leaving"] += 1
                continue
            if position is not None:
                plan = bar.plan(particle, position)
                if bar.seen_before(plan, position):
                    tally.counts["tracked"] += 1
                    continue
                plans[particle.index] = plan
            fresh.append(particle)
        tally.frame(segmentation, len(fresh))
        ids = {}
        for particle in fresh:
            self._sequence += 1
            ids[particle.index] = self._sequence
        latency = {"capture": start - frame.capture_time, "segment": segmented - start}
        recheck = self.config.bins.recheck
        try:
            probabilities = self.classifier.classify([p.crop for p in fresh])
        except Exception as error:  # an interpreter fault must not stop the belt: these particles ride on
            self.model_ok = False
            self.events.emit("inference_error", frame=frame.frame_id, error=f"{type(error).__name__}: {error}")
            for particle in fresh:
                self._record_particle(frame, ids[particle.index], particle, None, recheck, "error", latency)
            return
        self.model_ok = True
        latency["inference"] = self.clock.now() - segmented
        if fresh:
            self.invoke_s.append(self.model.last_invoke_s)
        decisions = {p.index: self.decider.decide(row) for p, row in zip(fresh, probabilities)}
        for row in probabilities:
            self._watch_drift(row)
        now = self._belt_now()
        outcome, eject, keep = {}, {}, {}
        for particle in fresh:
            decision, plan = decisions[particle.index], plans.get(particle.index)
            if plan is None or now is None:
                outcome[particle.index] = (recheck, "no_position")
            elif decision.bin != self.config.valves.bin:
                outcome[particle.index] = (recheck, decision.reason)
            elif bar.delta(now, plan.open_at) >= 0:
                outcome[particle.index] = (recheck, "late")
            else:
                eject[particle.index] = plan
                continue
            if plan is not None:
                keep[particle.index] = plan
        commands, conflicts, hits = bar.arbitrate(eject, keep)
        tally.counts["conflict"] += len(conflicts)
        tally.counts["hit"] += len(hits)
        for index in conflicts:
            outcome[index] = (recheck, "conflict")
        for command in commands:
            numbered = dataclasses.replace(command, particles=tuple(ids[i] for i in command.particles))
            sent = self.actuator.send(numbered, command.open_at, frame.frame_id)
            for index in command.particles:
                outcome[index] = (self.config.valves.bin, decisions[index].reason) if sent else (recheck, "error")
        for particle in fresh:
            bin_name, reason = outcome[particle.index]
            self._record_particle(frame, ids[particle.index], particle, decisions[particle.index], bin_name, reason,
                                  latency)

    def _record_particle(self, frame, seq, particle, decision, bin_name, reason, latency):
        latency = {**latency, "total": self.clock.now() - frame.capture_time}
        label = decision.label if decision else None
        self.tally.add(label, bin_name, reason, latency["total"])
        if self.telemetry is not None:
            self.telemetry.observe(label, bin_name, reason, latency)
        truth = self.truth(frame.frame_id, particle) if self.truth is not None else None
        self.particles.particle(bin_name, particle.area_mm2, truth)
        record = {
            "seq": seq, "frame": frame.frame_id, "lanes": list(particle.lanes), "bbox": list(particle.bbox),
            "area_mm2": particle.area_mm2, "class": label,
            "prediction_set": list(decision.prediction_set) if decision else [],
            "top3": [{"label": lb, "p": round(p, 6)} for lb, p in decision.top3] if decision else [],
            "decided": decision.bin if decision else None, "bin": bin_name, "reason": reason,
            "latency_ms": {key: _ms(value) for key, value in latency.items()},
        }
        if self.belt is not None:
            record["position"] = frame.position
        self.events.emit("particle", **record)
        if decision is not None and decision.reason == "uncertain" and self.review is not None:
            self._save_for_review(frame, Image.fromarray(particle.crop), record)  # the crop the model saw
        share = self.alarm.update(decision is None or decision.bin == self.config.bins.recheck)  # uncertain share
        if share is not None:
            self.alarms += 1
            self.events.emit(
                "alarm", problem="uncertain share too high: check the lens, the light and the material on the belt",
                recheck_share=round(share, 4), window=self.config.alarm.window,
                limit=self.config.alarm.max_recheck_share,
            )

    def _record(self, frame, start, decision, bin_name, reason, latency):
        finish = self.clock.now()
        latency["total"] = finish - frame.capture_time
        if self.busy[0] is None:
            self.busy[0] = start
        self.busy[1] = finish
        self.tally.add(decision.label if decision else None, bin_name, reason, latency["total"])
        if self.telemetry is not None:
            self.telemetry.observe(decision.label if decision else None, bin_name, reason, latency)
        record = {
            "seq": self._sequence,
            "frame": frame.frame_id,
            "class": decision.label if decision else None,
            "top3": [{"label": label, "p": round(p, 6)} for label, p in decision.top3] if decision else [],
            "prediction_set": list(decision.prediction_set) if decision else [],
            "bin": bin_name,
            "reason": reason,
            "latency_ms": {key: _ms(value) for key, value in latency.items()},
        }
        if self.belt is not None:
            record["position"] = frame.position
        self.events.emit("item", **record)
        position = None  # clock-timed: the board publishes the capture time in ms
        if self.belt is not None:  # encoder-timed: the count at capture; 0 (with the recheck bin) when unreadable
            position = 0 if frame.position is None else frame.position
        self.actuator.record(record, frame.capture_time, position)  # every item, recheck too: a PLC sees every sequence number
        share = self.alarm.update(bin_name == self.config.bins.recheck)
        if share is not None:
            self.alarms += 1
            self.events.emit(
                "alarm",
                problem="recheck share too high: check the lens, the light and the material on the belt",
                recheck_share=round(share, 4),
                window=self.config.alarm.window,
                limit=self.config.alarm.max_recheck_share,
            )
        return record

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

    def _save_for_review(self, frame, region, record):
        stem = f"{int(self.clock.wall() * 1000):013d}_{record['seq']:08d}"
        try:
            self.review.add(stem, region, {**record, "model_sha256": self.model.sha256, "labels": self.model.labels})
        except OSError as error:  # a full or read-only disk loses review copies, never sorting
            self.review_lost += 1
            self.events.emit("review_error", frame=frame.frame_id, error=str(error))

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
            "per_reason": {r: tally.per_reason[r] for r in ("confident", "uncertain", "late", "error", "no_position")
                           + (("conflict",) if self.particles is not None else ())},
            "recheck": tally.per_bin[self.config.bins.recheck],
            "late": tally.per_reason["late"],
            "failed": tally.per_reason["error"],
            "frames_skipped": tally.skipped,
            "frames_dropped": capture.dropped,
            "source_errors": capture.source_errors,
            "actuator_errors": self.actuator.errors,
            "alarms": self.alarms,
            "drift_alarms": self.drift_alarms,
            "drift": self.drift.status() if self.drift is not None else None,
            "events_lost": self.events.lost,
            "review_lost": self.review_lost,
            "latency_ms": {"p50": percentile(tally.latencies, 50), "p95": percentile(tally.latencies, 95)},
            **({"encoder": self.belt.counts()} if self.belt is not None else {}),
            **({"particles": self.particles.summary()} if self.particles is not None else {}),
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
        }

    def run(self, capture, max_items=None):
        """Sort until the source ends, stop() is called or `max_items` items are done; write and return the summary."""
        exit_reason = "end of source"
        interval = self.config.records.stats_interval_s
        last_stats = last_frame = self.clock.now()
        stalled = False
        self.actuator.open()  # now, not at the first item: a PLC polls a Modbus server before anything is sorted
        self.events.emit(
            "start", config=self.config.path, model=self.model.path, model_sha256=self.model.sha256,
            labels=self.model.labels, reject=self.decider.describe(), listening=self.listening,
            bin_codes=self.config.bin_codes(),
        )
        if self.belt is not None:
            capture.stamp = capture.stamp or self.belt.stamp  # the count is read as each frame arrives
            self.belt.start()
        self.capture = capture
        capture.start()
        try:
            while self._stop_reason is None and (max_items is None or self.tally.items < max_items):
                self.actuator.heartbeat(SOURCE_FAILING if stalled else RUNNING, self.model_ok)
                if self.telemetry is not None:
                    self.telemetry.update(capture.depth, self.alarm.share, not stalled, self.actuator.up)
                frame = capture.get(timeout=0.25)
                now = self.clock.now()
                if frame is Capture.END:
                    break
                if frame is None:
                    if not stalled and now - last_frame > self.config.source.stall_timeout_s:
                        stalled = True
                        self.source_up = False
                        self.events.emit("source_stalled", seconds_without_frames=round(now - last_frame, 3))
                else:
                    if stalled:
                        stalled = False
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
            capture.stop()
            if self.belt is not None:
                self.belt.close()  # ejections still waiting are counted as missed: those items go to recheck
            self.actuator.close()
            summary = self.summary(capture, exit_reason)
            written = self._write_summary(summary)
            self.finished = True
            self.events.emit("stop", exit=exit_reason, summary=self.config.records.summary if written else None)
        return summary

    def _write_summary(self, summary):
        """Write summary.json; if that fails (disk full, folder gone) the summary goes to stderr as one JSON line."""
        path = self.config.records.summary
        try:
            atomic_write_json(path, summary)
            return True
        except OSError as error:
            print(
                f"runner: summary '{path}' could not be written ({error.strerror or error}); it follows as JSON.",
                file=sys.stderr,
            )
            print(json.dumps(summary), file=sys.stderr, flush=True)
            return False


def benchmark_figures(runner, summary):
    """End-to-end latency, throughput and the runner's cost on top of the interpreter's own invoke() time.

    Overhead = (busy time per item / mean invoke time) - 1, busy time running from the first item's start to the
    last item's end: everything the runner adds (decode, resize, decision, records) beyond invoke() itself.
    """
    items = summary["items"]
    span = (runner.busy[1] - runner.busy[0]) if items else 0.0
    invoke = list(runner.invoke_s)
    mean_invoke = sum(invoke) / len(invoke) if invoke else 0.0
    return {
        "items": items,
        "items_per_s": items / span if span else None,
        "latency_p50_ms": summary["latency_ms"]["p50"],
        "latency_p95_ms": summary["latency_ms"]["p95"],
        "invoke_p50_ms": percentile(invoke, 50),
        "invoke_p95_ms": percentile(invoke, 95),
        "invoke_mean_ms": mean_invoke * 1000.0,
        "overhead_pct": (span / items / mean_invoke - 1) * 100 if items and mean_invoke else None,
    }


def benchmark_table(figures):
    rows = [
        ("items", f"{figures['items']}"),
        ("items/s", _fixed(figures["items_per_s"], 1)),
        ("latency p50 (ms)", _fixed(figures["latency_p50_ms"], 2)),
        ("latency p95 (ms)", _fixed(figures["latency_p95_ms"], 2)),
        ("invoke p50 (ms)", _fixed(figures["invoke_p50_ms"], 2)),
        ("invoke p95 (ms)", _fixed(figures["invoke_p95_ms"], 2)),
        ("overhead over invoke() (%)", _fixed(figures["overhead_pct"], 1)),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value:>10}" for name, value in rows)


def _fixed(value, digits):
    return "-" if value is None else f"{value:.{digits}f}"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="exported .tflite model")
    parser.add_argument("--sidecar", help="its sidecar JSON (default: the model path with .json)")
    parser.add_argument("--source", help="folder:DIR, video:FILE, camera:INDEX, camera:/dev/videoN or stream:URL")
    parser.add_argument("--config", help="TOML config (see edge/example_config.toml)")
    parser.add_argument("--events", help="JSON-lines event file (default: stdout)")
    parser.add_argument("--threads", type=int, help="interpreter threads (default: the interpreter's choice)")
    parser.add_argument("--benchmark", type=int, metavar="N", help="sort N items, print a latency table and stop")
    parser.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port (0: any free one)")
    parser.add_argument("--metrics-host", default="127.0.0.1", help="address for --metrics-port (default 127.0.0.1)")
    parser.add_argument("--ui-port", type=int, help="serve the operator's line page on this port (0: any free one)")
    parser.add_argument("--ui-host", default="127.0.0.1", help="address for --ui-port (default 127.0.0.1)")
    parser.add_argument("--ui-token", default=os.environ.get("MINERALNET_UI_TOKEN") or None,
                        help="token that allows labelling review items on the page (default: $MINERALNET_UI_TOKEN; "
                             "none: read-only)")
    parser.add_argument(
        "--init-config", metavar="FILE.toml", help="write a commented config listing --model's labels, then stop"
    )
    args = parser.parse_args(argv)
    if not args.init_config:
        missing = [f"--{name}" for name in ("source", "config") if getattr(args, name) is None]
        if missing:
            parser.error(f"{' and '.join(missing)} required (or --init-config FILE.toml to write a config).")
    for name in ("threads", "benchmark"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1.")
    for name in ("metrics_port", "ui_port"):
        if getattr(args, name) is not None and not 0 <= getattr(args, name) < 65536:
            parser.error(f"--{name.replace('_', '-')} must be a TCP port number 0-65535.")
    return args


EXAMPLE_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "example_config.toml")
_CLASSES_TABLE = re.compile(r"^\[bins\.classes\]\n(?:#.*\n|\".*\n)*", re.MULTILINE)


def init_config(path, model):
    """Write the example config with [bins.classes] listing `model`'s own labels (each to a bin of its name).

    A config naming classes the model does not have is refused at start, so a config made from the model's
    sidecar is the only kind that runs at once. An existing file is never overwritten.
    """
    if os.path.exists(path):
        raise ConfigError(f"--init-config '{path}' already exists: pass a new file name (it is never overwritten).")
    with open(EXAMPLE_CONFIG) as handle:
        template = handle.read()
    lines = [
        "[bins.classes]",
        f"# class = \"bin\" for every class of {os.path.basename(model.path)} (sha256 {model.sha256[:12]}..., labels",
        "# from its sidecar). Rename the bins to your ejectors; several classes may share one; an unlisted class goes",
        "# to bins.default.",
    ]
    lines += [f"{json.dumps(label)} = \"{re.sub(r'[^A-Za-z0-9_.-]+', '_', label)}\"" for label in model.labels]
    text = _CLASSES_TABLE.sub(lambda _: "\n".join(lines) + "\n", template, count=1)
    parse_config(text, path).check_labels(model.labels)  # what is written must be what the runner accepts
    try:
        atomic_write_bytes(path, text.encode())
    except OSError as error:
        raise ConfigError(f"--init-config '{path}' cannot be written ({error.strerror}): pass a writable path.") from None


def check_outputs(args, config):
    """Every file the runner will write, tried now: a bad path stops it with one line instead of a later loss."""
    outputs = [("records.summary", config.records.summary, False)]
    if config.review.dir:
        outputs.append(("review.dir", config.review.dir, True))
    if config.actuator.type == "jsonl" and config.actuator.path != "-":
        outputs.append(("actuator.path", config.actuator.path, False))
    for key, path, directory in outputs:
        try:
            check_writable(path, directory)
        except OSError as error:
            raise config.error(key, f"'{path}' cannot be written ({error.strerror})") from None
    if args.events and args.events != "-":
        try:
            check_writable(args.events)
        except OSError as error:
            raise ConfigError(
                f"--events '{args.events}' cannot be written ({error.strerror}): pass a writable file path."
            ) from None


def main(argv=None):
    args = parse_args(argv)
    clock = Clock()
    try:
        if args.init_config:
            init_config(args.init_config, Model(args.model, args.sidecar, args.threads))
            print(f"runner: wrote '{args.init_config}' for the labels of '{args.model}'.", file=sys.stderr)
            return 0
        config = load_config(args.config)
        if args.benchmark:  # folders loop to reach N items; stdout is kept for the table
            config = dataclasses.replace(
                config,
                source=dataclasses.replace(config.source, loop=True),
                actuator=dataclasses.replace(
                    config.actuator, path=os.devnull if config.actuator.path == "-" else config.actuator.path
                ),
            )
        require_library(config.actuator)
        if args.metrics_port is not None:
            require("prometheus_client", "prometheus-client", "--metrics-port")
        if args.ui_port is not None:
            for module in ("starlette", "uvicorn"):
                require(module, module, "--ui-port")
        model = Model(args.model, args.sidecar, args.threads)
        config.check_labels(model.labels)
        source = parse_source(args.source, config.source, clock)
        if config.belt.position == "modbus":
            require("pymodbus", "pymodbus", '[belt] position = "modbus"')
        check_outputs(args, config)
        review = None
        if config.review.dir:
            try:
                review = ReviewQueue(
                    config.review.dir, config.review.max_items, config.review.max_mb, config.review.jpeg_quality
                )
            except OSError as error:
                raise config.error("review.dir", f"cannot be used ({error.strerror})") from None
        events = EventSink(LineWriter(args.events or (os.devnull if args.benchmark else "-")), clock)
        belt = None
        if config.belt.position == "modbus":  # an unreachable encoder stops the runner before anything is sorted
            belt = EncoderBelt(config.encoder, config.belt, clock, events)
            belt.open()
    except (ConfigError, ModelError, SourceSpecError, MissingLibrary, EncoderError) as error:
        print(f"runner: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # the events file went away between the check and the open
        print(f"runner: --events '{args.events}' cannot be opened ({error.strerror}).", file=sys.stderr)
        return 2
    if config.particles is not None:  # the valve bar's commands: lanes and pulse per particle (edge/valves.py)
        def factory():
            return make_valve_actuator(config, clock, model.labels)
    else:
        def factory():
            return make_actuator(config.actuator, clock, config=config, labels=model.labels)
    actuator = SupervisedActuator(
        factory, clock, events,
        config.actuator.retry_initial_s, config.actuator.retry_max_s,
    )
    capture = Capture(
        source, clock, events, config.source.queue_size, config.source.fps,
        config.source.retry_initial_s, config.source.retry_max_s,
    )
    telemetry = None
    if args.metrics_port is not None:
        telemetry = Telemetry(model)
        try:
            runner_listening = [telemetry.serve(args.metrics_host, args.metrics_port)]
        except OSError as error:
            print(f"runner: --metrics-port {args.metrics_port} cannot be served on {args.metrics_host} "
                  f"({error.strerror}): pass a free port.", file=sys.stderr)
            return 2
    runner = Runner(config, model, actuator, events, clock, review, telemetry, belt)
    if telemetry is not None:
        runner.listening += runner_listening
    ui = None
    if args.ui_port is not None:  # the operator's page (edge/ui.py), in its own thread
        from edge.ui import LineUI

        ui = LineUI(runner, args.ui_token)
        try:
            runner.listening.append(ui.serve(args.ui_host, args.ui_port))
        except OSError as error:
            print(f"runner: --ui-port {args.ui_port} cannot be served on {args.ui_host} "
                  f"({error.strerror or error}): pass a free port.", file=sys.stderr)
            return 2
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, lambda signum, _frame: runner.stop(signal.Signals(signum).name))
    if args.benchmark:  # the first invoke() sets up kernels; keep it out of the figures
        blank = np.zeros((model.input_size, model.input_size, 3), np.uint8)
        model.classify(quantize(blank, model.input_dtype, model.input_scale, model.input_zero_point))
    actuator.open()
    runner.listening += actuator.listening
    print(
        f"runner: config '{config.path}', model '{model.path}' sha256 {model.sha256}, source {redact(args.source)}, "
        f"actuator {config.actuator.type}, belt position {belt.endpoint if belt else 'clock'}, "
        f"listening: {', '.join(runner.listening) or 'none'}",
        file=sys.stderr, flush=True,
    )
    started = time.perf_counter()
    try:
        summary = runner.run(capture, max_items=args.benchmark)
    finally:
        if telemetry is not None:
            telemetry.close()
        if ui is not None:
            ui.close()
    if args.benchmark:
        print(f"benchmark: {args.model}, {summary['items']} items in {time.perf_counter() - started:.1f} s")
        print(benchmark_table(benchmark_figures(runner, summary)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
