"""Capture faults behind the source interface: a camera that fails to open, stops and comes back; full queues."""

import io
import json
import threading
import time

import pytest

from edge.preprocess import open_rgb, quantize, resize_rgb
from edge.records import EventSink, LineWriter
from edge.sources import Capture, Frame, SourceError, SourceSpecError, StreamSource, parse_source


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


class MjpegServer:
    """An HTTP MJPEG camera on 127.0.0.1 (multipart/x-mixed-replace of JPEGs, as IP cameras serve it) in a thread:
    each connection gets `frames`, then the response is held open until `hang_up` is set."""

    def __init__(self, frames, port=0):
        import http.server

        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                for jpeg in server.frames:
                    self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpeg))
                    self.wfile.write(jpeg + b"\r\n")
                self.wfile.flush()
                server.hang_up.wait(60)

            def log_message(self, *args):
                pass

        self.frames = frames
        self.hang_up = threading.Event()
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        """Stop listening, then end the open stream (the runner's next read fails, reconnects are refused)."""
        self.httpd.shutdown()
        self.httpd.server_close()
        self.hang_up.set()


def _wait_for(predicate, seconds=60):
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_an_http_mjpeg_stream_is_sorted_frame_by_frame_and_survives_a_server_restart(
    tmp_path, tiny_export, write_config, make_runner
):
    rows = tiny_export["test_rows"][:10]
    jpegs = []
    for row in rows:
        buffer = io.BytesIO()
        open_rgb(row["file"]).save(buffer, "JPEG", quality=95)
        jpegs.append(buffer.getvalue())
    config = write_config(source={"queue_size": 32, "retry_initial_s": 0.05, "retry_max_s": 0.2})
    runner, events_path = make_runner(config, tiny_export["float32"])
    first = MjpegServer(jpegs[:5])
    source = parse_source(f"stream:http://127.0.0.1:{first.port}/video.mjpg", runner.config.source, runner.clock)
    capture = Capture(source, runner.clock, runner.events, queue_size=32, retry_initial_s=0.05, retry_max_s=0.2)
    result = {}
    sorting = threading.Thread(target=lambda: result.update(summary=runner.run(capture)))
    sorting.start()
    second = None
    try:
        events = lambda kind: [e for e in map(json.loads, open(events_path)) if e["type"] == kind]  # noqa: E731
        _wait_for(lambda: len(events("item")) == 5)
        first.stop()  # the camera goes away: the stream ends, reconnections are refused...
        _wait_for(lambda: [e["stage"] for e in events("source_error")][:2] == ["read", "open"])
        second = MjpegServer(jpegs[5:], port=first.port)  # ...and comes back on the same address
        _wait_for(lambda: len(events("item")) == 10)
    finally:
        runner.stop("test over")
        for server in (first, second):
            if server is not None:
                server.stop()
        sorting.join(30)
    summary = result["summary"]
    items = events("item")
    assert [e["frame"] for e in items] == [str(n) for n in range(1, 11)] and summary["items"] == 10
    assert summary["frames_dropped"] == 0 and summary["source_errors"] >= 2 and len(events("source_recovered")) == 1
    for item, jpeg in zip(items, jpegs):  # each item is its own frame: the model says the same of the JPEG itself
        image = open_rgb(io.BytesIO(jpeg))
        model = runner.model
        tensor = quantize(resize_rgb(image, model.input_size), model.input_dtype, model.input_scale,
                          model.input_zero_point)
        reference = dict(zip(runner.model.labels, runner.model.classify(tensor)))
        assert abs(reference[item["class"]] - max(reference.values())) < 0.05


def test_stream_sources_are_checked(fake_clock, tmp_path):
    from edge.config import SourceConfig

    with pytest.raises(SourceSpecError, match="stream:rtsp://HOST/PATH"):
        parse_source("stream:ftp://user:secret@camera/x", SourceConfig(), fake_clock)
    try:
        parse_source("stream:ftp://user:secret@camera/x", SourceConfig(), fake_clock)
    except SourceSpecError as error:
        assert "secret" not in str(error)  # credentials never reach a log
    assert isinstance(parse_source("stream:rtsp://cam/1", SourceConfig(), fake_clock), StreamSource)
