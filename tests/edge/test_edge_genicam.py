"""The genicam: source (edge/genicam.py) against Aravis's own simulated GigE Vision camera on 127.0.0.1.

`arv-fake-gv-camera-0.8` (Debian aravis-tools) serves a real GVCP/GVSP camera whose Mono8 picture is a diagonal
ramp: pixel (x, y) of frame f is (x + y + f) % 255. Only one can listen on 127.0.0.1's GigE Vision port (3956),
so the fixture holds a file lock while its camera runs. Without the Debian packages (gir1.2-aravis-0.8,
aravis-tools) and PyGObject these tests skip, naming them; .ci/run installs them when it runs as root.
"""

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import pytest

from edge import genicam
from edge.config import SourceConfig
from edge.deps import MissingLibrary, require_gi
from edge.records import EventSink, LineWriter
from edge.sources import Capture, SourceSpecError, parse_source
from edge.timing import Clock

from helpers import REPO
from test_edge_encoder import _belt, plc  # noqa: F401  (plc: the encoder PLC fixture, a pymodbus server)

FAKE = "arv-fake-gv-camera-0.8"
RUNNER = os.path.join(REPO, "edge", "runner.py")


def _aravis_or_skip():
    if shutil.which(FAKE) is None:
        pytest.skip(f"{FAKE} is not installed: apt-get install aravis-tools {genicam.APT_PACKAGE}")
    try:
        return genicam.aravis("tests/edge/test_edge_genicam.py")
    except MissingLibrary as error:
        pytest.skip(str(error))


class FakeCamera:
    """Aravis's simulated camera on 127.0.0.1 with a serial of our own, (re)started with `arv-fake-gv-camera-0.8`
    options (e.g. `-r 900`: lose 900 of 1000 stream packets)."""

    address = "127.0.0.1"

    def __init__(self, aravis):
        self.aravis = aravis
        self.serial = f"MN{os.getpid() % 10**8}"
        self.process = None

    def start(self, *options):
        self.stop()
        self.process = subprocess.Popen([FAKE, "-i", self.address, "-s", self.serial, *options],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 20
        while True:
            assert self.process.poll() is None, f"{FAKE} did not start (another one on 127.0.0.1?): " + \
                self.process.stderr.read()
            try:
                camera = self.aravis.Camera.new(self.address)
                found = camera.get_device_serial_number()
                del camera  # gives up control of the camera
                break
            except Exception:  # not listening yet
                assert time.monotonic() < deadline, f"{FAKE} does not answer on {self.address}"
                time.sleep(0.05)
        assert found == self.serial, f"{self.address} answers as camera {found}, not ours: stop that {FAKE}"

    def stop(self):
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


@pytest.fixture(scope="module")
def fake_camera():
    """Our simulated camera, for this module's tests; the lock keeps other test runs' cameras off its port."""
    aravis = _aravis_or_skip()
    with open(os.path.join(tempfile.gettempdir(), "mineralnet-arv-fake-gv-camera.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        camera = FakeCamera(aravis)
        try:
            camera.start()
            yield camera
        finally:
            camera.stop()


def _ramp_offset(grey):
    """The frame number (mod 255) of the fake camera's ramp in `grey`, after checking every pixel follows it."""
    height, width = grey.shape
    offset = int(grey[0, 0])
    expected = (offset + np.arange(width)[None, :] + np.arange(height)[:, None]) % 255
    np.testing.assert_array_equal(grey, expected)
    return offset


def test_area_scan_frames_are_the_cameras_pictures(fake_camera):
    source = parse_source(f"genicam:{fake_camera.address}?Width=64&Height=48&AcquisitionFrameRate=100", SourceConfig(),
                          Clock())
    assert source.live
    offsets, numbers = [], []
    for _ in range(2):  # closing gives the camera back: it opens again at once
        source.open()
        try:
            frames = []
            while len([frame for frame in frames if frame.error is None]) < 3 and len(frames) < 12:
                frames.append(source.read())
        finally:
            source.close()
        for frame in frames:
            numbers.append(int(frame.frame_id))
            if frame.error is not None:  # packets lost on a loaded machine: the frame is marked, never half-drawn
                assert frame.image is None and frame.error.startswith("Aravis buffer "), frame.error
                continue
            rgb = np.asarray(frame.image)
            assert frame.image.size == (64, 48)
            assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()  # Mono8 as grey RGB
            offsets.append(_ramp_offset(rgb[..., 0]))
        times = [frame.capture_time for frame in frames]
        assert times == sorted(times)
    assert len(offsets) == 6 and numbers == list(range(1, len(numbers) + 1))  # numbering goes on across reopenings
    assert all((later - earlier) % 255 >= 1 for earlier, later in zip(offsets, offsets[1:]))  # newer frames

    wrong = parse_source(f"genicam:{fake_camera.address}?Widht=64", SourceConfig(), Clock())
    with pytest.raises(genicam.GenICamError, match="feature Widht=64 cannot be set"):
        wrong.open()
    wrong.close()


def test_line_scan_lines_are_stitched_newest_first_and_stamped_at_the_middle_line(fake_camera, tmp_path):
    # 2 lines a buffer (the fake camera's Height), 8 lines a frame, each frame repeating the last 2 of the one before
    spec = f"genicam:{fake_camera.address}?Width=16&Height=2&AcquisitionFrameRate=200&lines_per_frame=8&overlap_lines=2"
    clock = Clock()
    source = parse_source(spec, SourceConfig(), clock)
    reads = []

    def encoder():  # the encoder's count: 10 counts more at each read
        reads.append(len(reads))
        return 10 * len(reads)

    events = EventSink(LineWriter(str(tmp_path / "events.jsonl")), clock)
    capture = Capture(source, clock, events, queue_size=64, position=encoder).start()  # live, but none dropped
    try:
        frames = [capture.get(timeout=30) for _ in range(3)]
    finally:
        capture.stop()
    assert capture.source_errors == 0
    assert capture.dropped == 0
    for frame in frames:
        if frame.error is not None:  # packets lost on a loaded machine: the frame is marked, never half-drawn
            assert frame.image is None and frame.error.endswith("lines lost (Aravis buffers failed)"), frame.error
            continue
        grey = np.asarray(frame.image)[..., 0]
        assert frame.image.size == (16, 8)
        # a buffer's two lines are two rows of its ramp, turned over: the newest on top, older buffers below
        buffers = [_ramp_offset(grey[[2 * pair + 1, 2 * pair]]) for pair in range(4)][::-1]
        assert all((later - earlier) % 255 >= 1 for earlier, later in zip(buffers, buffers[1:]))
    for before, after in zip(frames, frames[1:]):  # the overlap: the newest 2 lines come again, at the bottom
        if before.error is None and after.error is None:
            np.testing.assert_array_equal(np.asarray(after.image)[-2:], np.asarray(before.image)[:2])
    assert sum(frame.error is None for frame in frames) >= 1
    # frame k holds lines 6k .. 6k+7: the encoder is read once a frame, as its middle line 6k+4 comes
    assert [frame.position for frame in frames] == [10, 20, 30]
    assert [frame.frame_id for frame in frames] == ["1", "2", "3"]


def test_frames_with_lost_packets_are_marked_not_half_drawn(fake_camera):
    fake_camera.start("-r", "900")  # 900 of 1000 stream packets lost, each frame ~12 packets: none arrives whole
    try:
        source = parse_source(f"genicam:{fake_camera.address}?Width=256&Height=64&AcquisitionFrameRate=50",
                              SourceConfig(stall_timeout_s=5), Clock())
        source.open()
        try:
            frames = [source.read() for _ in range(3)]
        finally:
            source.close()
    finally:
        fake_camera.start()
    assert [(frame.frame_id, frame.image) for frame in frames] == [("1", None), ("2", None), ("3", None)]
    assert all(frame.error.startswith("Aravis buffer missing-packets") for frame in frames), frames
    assert source.failed_buffers == 3


def test_stitcher_counts_lost_lines_and_carries_the_middle_stamp():
    stitcher = genicam.LineStitcher(lines_per_frame=5, overlap=1)
    numbered = lambda first: np.arange(first, first + 3)[:, None] * np.ones((1, 2), int)  # noqa: E731 3 lines
    # the encoder is wanted only for buffers holding a frame's middle line: lines 2 (0..4), 6 (4..8), 10 (8..12)...
    assert stitcher.wants_stamp(3)
    assert stitcher.add(numbered(0), 0.0, 100) == []
    assert not stitcher.wants_stamp(3)
    done = stitcher.add(numbered(3), 1.0, 130, ok=False)
    assert len(done) == 1
    frame, time_, count, lost = done[0]
    assert frame[:, 0].tolist() == [4, 3, 2, 1, 0] and (time_, count, lost) == (0.0, 100, 2)  # middle: line 2
    assert stitcher.wants_stamp(3) and not stitcher.wants_stamp(0)
    frame, time_, count, lost = stitcher.add(numbered(6), 2.0, 160)[0]
    assert frame[:, 0].tolist() == [8, 7, 6, 5, 4] and (time_, count, lost) == (2.0, 160, 2)


def test_bayer_pictures_keep_their_colour():
    width, height = 8, 6
    for pattern, (row, column) in {"BayerRG8": (0, 0), "BayerBG8": (1, 1), "BayerGR8": (0, 1),
                                   "BayerGB8": (1, 0)}.items():
        raw = np.zeros((height, width), np.uint8)
        raw[row::2, column::2] = 200  # only the red sites lit: a red scene
        rgb = genicam.to_array(raw.tobytes(), width, height, pattern)
        assert rgb.shape == (height, width, 3)
        np.testing.assert_array_equal(rgb[2:4, 2:6], np.broadcast_to([200, 0, 0], (2, 4, 3)), err_msg=pattern)
    deep = np.array([[0, 4095], [2048, 16]], "<u2")
    assert genicam.to_array(deep.tobytes(), 2, 2, "Mono12").tolist() == [[0, 255], [128, 1]]


def test_genicam_urls_are_checked():
    for spec, fault in [
        ("genicam:cam?lines_per_frame=0", "lines_per_frame=0: must be a whole number >= 1"),
        ("genicam:cam?overlap_lines=2", "overlap_lines must be less than lines_per_frame"),
        ("genicam:cam?lines_per_frame=4&overlap_lines=4", "overlap_lines must be less than lines_per_frame"),
        ("genicam:cam?width=64", "'width' is neither an option"),
        ("genicam:cam?Width", "'Width' is not KEY=VALUE"),
    ]:
        with pytest.raises(SourceSpecError, match="^--source " + spec.replace("?", r"\?") + ": " + fault):
            parse_source(spec, SourceConfig(), Clock())


def _count_items(path):
    return sum(json.loads(line)["type"] == "item" for line in path.read_text().splitlines() if line.endswith("}"))


def test_the_runner_sorts_the_fake_cameras_frames(fake_camera, tmp_path, tiny_export, write_config):
    events_path = tmp_path / "events.jsonl"
    spec = f"genicam:{fake_camera.address}?Width=96&Height=96&AcquisitionFrameRate=20"
    process = subprocess.Popen(
        [sys.executable, RUNNER, "--model", tiny_export["float32"], "--source", spec, "--config", write_config(),
         "--events", str(events_path), "--threads", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (events_path.exists() and _count_items(events_path) >= 5):
            if process.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0, stderr
    assert f"source {spec}" in stderr
    events = [json.loads(line) for line in events_path.read_text().splitlines()]
    items = [e for e in events if e["type"] == "item"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["exit"] == "SIGINT" and summary["items"] == len(items) >= 5
    assert summary["source_errors"] == 0
    skipped = [e for e in events if e["type"] == "skipped"]  # only frames whose packets a loaded machine lost
    assert len(skipped) == summary["frames_skipped"] and all(e["error"].startswith("Aravis buffer ") for e in skipped)
    numbers = [int(e["frame"]) for e in items]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)  # live: dropped frames may skip ids
    assert {e["class"] for e in items} <= set(tiny_export["labels"])


def test_missing_aravis_is_one_line_and_exit_2(tmp_path, tiny_export, write_config):
    """Where PyGObject is absent (simulated by blocking `import gi`): one line naming what to install, exit 2;
    the runner itself imports no gi."""
    code = ("import sys, edge.runner; assert 'gi' not in sys.modules, 'the runner imported gi'; "
            "sys.modules['gi'] = None; sys.exit(edge.runner.main(sys.argv[1:]))")
    result = subprocess.run(
        [sys.executable, "-c", code, "--model", tiny_export["float32"], "--source", "genicam:cam",
         "--config", write_config()],
        capture_output=True, text=True, timeout=120, cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO),
    )
    assert result.returncode == 2, result.stderr
    said = [line for line in result.stderr.splitlines() if not line.startswith("INFO: ")]  # LiteRT's own INFO
    assert len(said) == 1 and said[0].startswith("runner: --source genicam:cam needs"), result.stderr
    assert "needs PyGObject (gi)" in result.stderr and "apt-get install gir1.2-aravis-0.8" in result.stderr
    assert "pip install 'PyGObject<3.51'" in result.stderr


def test_a_missing_typelib_names_its_debian_package():
    pytest.importorskip("gi", reason="PyGObject is not installed: pip install 'PyGObject<3.51'")
    with pytest.raises(MissingLibrary, match=r"^a test needs NoSuchLibrary 9.9 .*: apt-get install gir1.2-nosuch "):
        require_gi("NoSuchLibrary", "9.9", "gir1.2-nosuch", "a test")


def test_an_encoder_belt_sorts_line_scan_frames_by_the_counts_they_carry(
    fake_camera, tmp_path, tiny_export, write_config, make_runner, plc
):
    """The whole loop with the PLC's encoder (a real pymodbus server, one count more at each read): the runner gives
    the line-scan source its encoder, each frame carries a count read as its lines came, the valves fire by it."""
    encoder = plc()
    encoder.step = 1
    config = write_config(decision={"confidence_threshold": 0.3}, **_belt(port=encoder.port, counts_per_mm=0.05,
                                                                          fire_window_mm=1000.0, poll_ms=0.5))
    runner, events_path = make_runner(config, tiny_export["float32"])
    spec = f"genicam:{fake_camera.address}?Width=64&Height=8&AcquisitionFrameRate=100&lines_per_frame=64"
    source = parse_source(spec, runner.config.source, runner.clock)
    capture = Capture(source, runner.clock, runner.events, queue_size=64)
    result = {}
    sorting = threading.Thread(target=lambda: result.update(summary=runner.run(capture)))
    sorting.start()
    deadline = time.monotonic() + 60
    while runner.tally.items < 4 and sorting.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    runner.stop("test over")
    sorting.join(60)
    summary = result["summary"]
    events = [json.loads(line) for line in open(events_path)]
    items = [e for e in events if e["type"] == "item"]
    assert summary["items"] == len(items) >= 4 and summary["source_errors"] == 0
    positions = [e["position"] for e in items]
    assert all(isinstance(p, int) for p in positions) and positions == sorted(set(positions)), positions
    assert summary["encoder"]["read_errors"] == 0
