"""Capture faults behind the source interface: a camera that fails to open, stops and comes back; full queues."""

import json
import threading

from edge.preprocess import open_rgb
from edge.records import EventSink, LineWriter
from edge.sources import Capture, Frame, SourceError


class ScriptedCamera:
    """A fake camera following a script: 'open_fails', 'frame', 'stops' (read raises), 'end'."""

    live = True

    def __init__(self, clock, image, script):
        self.clock = clock
        self.image = image
        self.script = list(script)
        self.number = 0
        self.ended = threading.Event()

    def open(self):
        if self.script and self.script[0] == "open_fails":
            self.script.pop(0)
            raise SourceError("camera 0 did not open")

    def read(self):
        step = self.script.pop(0) if self.script else "end"
        if step == "stops":
            raise SourceError("camera 0 stopped delivering frames")
        if step == "end":
            self.ended.set()
            return None
        self.clock.advance(1.0)
        self.number += 1
        return Frame(str(self.number), self.clock.now(), self.image)

    def close(self):
        pass


def test_camera_failure_and_recovery(tiny_export, write_config, make_runner, fake_clock, tmp_path):
    image = open_rgb(tiny_export["test_rows"][0]["file"])
    camera = ScriptedCamera(
        fake_clock, image, ["open_fails", "open_fails", "frame", "frame", "frame", "stops", "frame", "frame", "end"]
    )
    config = write_config(records={"stats_interval_s": 2.0})
    runner, events_path = make_runner(config, tiny_export["float32"], fake_clock)
    capture = Capture(camera, fake_clock, runner.events, queue_size=16, retry_initial_s=0.5, retry_max_s=8.0)
    summary = runner.run(capture)

    with open(events_path) as handle:
        events = [json.loads(line) for line in handle]
    faults = [(e["type"], e.get("stage"), e.get("retry_in_s")) for e in events if e["type"].startswith("source_")]
    assert faults == [
        ("source_error", "open", 0.5), ("source_error", "open", 1.0), ("source_recovered", None, None),
        ("source_error", "read", 0.5), ("source_recovered", None, None),
    ]
    assert [e["frame"] for e in events if e["type"] == "item"] == ["1", "2", "3", "4", "5"]
    assert summary["items"] == 5 and summary["source_errors"] == 3 and summary["frames_dropped"] == 0
    stats = [e for e in events if e["type"] == "stats"]
    assert stats and {"items_per_s", "latency_ms", "per_class"} <= set(stats[0])
    assert json.loads((tmp_path / "summary.json").read_text()) == summary


def test_live_queue_drops_the_oldest_frames(fake_clock, tmp_path, tiny_export):
    image = open_rgb(tiny_export["test_rows"][0]["file"])
    camera = ScriptedCamera(fake_clock, image, ["frame"] * 10 + ["end"])
    events = EventSink(LineWriter(str(tmp_path / "events.jsonl")), fake_clock)
    capture = Capture(camera, fake_clock, events, queue_size=2).start()
    assert camera.ended.wait(30)  # nobody consumed while the camera delivered all ten frames
    received = [capture.get(timeout=30), capture.get(timeout=30), capture.get(timeout=30)]
    assert [f.frame_id for f in received[:2]] == ["9", "10"] and received[2] is Capture.END
    assert capture.dropped == 8
    capture.stop()
