"""Where pictures come from (a folder, a video file, a camera) and the capture thread that reads them.

Every source has the same small interface, so the runner and the tests treat a fake camera like a real one:
`open()` (raises SourceError if it cannot), `read()` -> Frame, or None at the end, or raises SourceError when the
device stops delivering, `close()`, and `live` (frames keep coming whether or not we keep up).
"""

import os
import re
import threading
from collections import deque
from dataclasses import dataclass

from edge import genicam
from edge.deps import MissingLibrary, require
from edge.preprocess import IMAGE_EXTENSIONS, from_bgr, open_rgb


@dataclass
class Frame:
    frame_id: str
    capture_time: float  # clock seconds when the picture was taken (or read)
    image: object = None  # Pillow RGB image (files) or RGB uint8 array (cameras); None when it could not be decoded
    error: str = None  # why it could not be decoded
    position: int = None  # the belt encoder's count at capture ([belt] position = "modbus"); None if unreadable


class SourceError(Exception):
    """The source failed to open or stopped delivering; the capture thread retries it with backoff."""


class SourceSpecError(ValueError):
    """A --source argument that names nothing usable; one line naming the argument and the fix."""


class FolderSource:
    """Image files under a directory (recursively), in sorted path order; frame ids are the relative paths."""

    live = False

    def __init__(self, directory, clock, loop=False):
        self.directory = directory
        self.clock = clock
        self.loop = loop
        self._paths = deque()

    def _list(self):
        paths = []
        for root, dirs, names in os.walk(self.directory):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            paths += [
                os.path.join(root, n) for n in names if not n.startswith(".") and n.lower().endswith(IMAGE_EXTENSIONS)
            ]
        return deque(sorted(paths, key=lambda p: os.path.relpath(p, self.directory)))

    def open(self):
        if not os.path.isdir(self.directory):
            raise SourceError(f"folder '{self.directory}' is not there")
        self._paths = self._list()

    def read(self):
        if not self._paths and self.loop:
            self._paths = self._list()  # new files dropped into the folder join the next round
        if not self._paths:
            return None
        path = self._paths.popleft()
        frame_id = os.path.relpath(path, self.directory).replace(os.sep, "/")
        try:
            return Frame(frame_id, self.clock.now(), open_rgb(path))
        except Exception as error:  # any decoder failure means the same thing: this file is unusable
            return Frame(frame_id, self.clock.now(), error=f"{type(error).__name__}: {error}")

    def close(self):
        self._paths = deque()


class VideoSource:
    """Frames of a video file through OpenCV; frame ids are frame numbers."""

    live = False

    def __init__(self, path, clock, loop=False):
        self.path = path
        self.clock = clock
        self.loop = loop
        self._capture = None
        self._number = 0

    def open(self):
        import cv2

        self._capture = cv2.VideoCapture(self.path)
        if not self._capture.isOpened():
            self._capture.release()
            raise SourceError(f"video '{self.path}' cannot be opened by OpenCV")

    def read(self):
        import cv2

        ok, frame = self._capture.read()
        if not ok and self.loop and self._number:
            self._capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, frame = self._capture.read()
        if not ok:
            return None
        self._number += 1
        return Frame(str(self._number), self.clock.now(), from_bgr(frame))

    def close(self):
        if self._capture is not None:
            self._capture.release()


class CameraSource:
    """A camera through OpenCV (index or /dev/videoN); a failed read means the camera stopped delivering."""

    live = True

    def __init__(self, device, clock, fps=0.0):
        self.device = device
        self.clock = clock
        self.fps = fps
        self._capture = None
        self._number = 0

    def open(self):
        import cv2

        self._capture = cv2.VideoCapture(self.device)
        if not self._capture.isOpened():
            self._capture.release()
            raise SourceError(f"camera {self.device} did not open")
        if self.fps:
            self._capture.set(cv2.CAP_PROP_FPS, self.fps)

    def read(self):
        ok, frame = self._capture.read()
        if not ok or frame is None:
            raise SourceError(f"camera {self.device} stopped delivering frames")
        self._number += 1
        return Frame(str(self._number), self.clock.now(), from_bgr(frame))

    def close(self):
        if self._capture is not None:
            self._capture.release()


class StreamSource(CameraSource):
    """A network camera: an RTSP or HTTP MJPEG URL opened by OpenCV's FFmpeg backend.

    It is a camera as far as the runner is concerned (live: frames dropped when the model falls behind; a stream
    that fails to open, ends or times out is reported and reconnected with the camera backoff; frame numbers go on
    across reconnections). Opening and each read give up after `timeout_s` (the source's stall timeout), so a
    stream that stops sending is reconnected instead of blocking the capture thread for ever.
    """

    def __init__(self, url, clock, timeout_s=10.0):
        super().__init__(url, clock)
        self.timeout_ms = int(timeout_s * 1000)

    def open(self):
        import cv2

        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, self.timeout_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, self.timeout_ms]
        self._capture = cv2.VideoCapture(self.device, cv2.CAP_FFMPEG, params)
        if not self._capture.isOpened():
            self._capture.release()
            raise SourceError(f"stream {redact(self.device)} did not open")

    def read(self):
        ok, frame = self._capture.read()
        if not ok or frame is None:
            raise SourceError(f"stream {redact(self.device)} stopped delivering frames")
        self._number += 1
        return Frame(str(self._number), self.clock.now(), from_bgr(frame))


_CREDENTIALS = re.compile(r"(?<=://)[^/@]*@")
STREAM_SCHEMES = ("rtsp", "rtsps", "http", "https")


def redact(text):
    """A URL or --source argument with any user:password@ replaced by ***@, for logs and events."""
    return _CREDENTIALS.sub("***@", text)


def parse_source(spec, source_config, clock):
    """A source from a --source argument: folder:DIR, video:FILE, camera:INDEX, camera:/dev/videoN, stream:URL or
    genicam:[DEVICE][?KEY=VALUE&...] (edge/genicam.py)."""
    kind, _, target = spec.partition(":")
    if kind == "genicam":
        try:
            return genicam.make_source(target, clock, Frame, source_config.stall_timeout_s)
        except MissingLibrary:  # a ValueError too, already one line naming the argument and the packages
            raise
        except ValueError as error:
            raise SourceSpecError(f"--source {spec}: {error}: use genicam:[DEVICE][?lines_per_frame=N&Feature=value"
                                  "&...] (edge/README.md).") from None
    if kind == "folder" and target:
        if not os.path.isdir(target):
            raise SourceSpecError(f"--source {spec}: folder '{target}' does not exist: pass an existing directory.")
        return FolderSource(target, clock, loop=source_config.loop)
    if kind == "stream" and target:
        scheme = target.partition("://")[0].lower()
        if "://" not in target or scheme not in STREAM_SCHEMES:
            raise SourceSpecError(
                f"--source {redact(spec)}: not a stream URL: use stream:rtsp://HOST/PATH or stream:http://HOST/PATH "
                "(MJPEG)."
            )
        require("cv2", "opencv-python-headless", f"--source {redact(spec)}")
        return StreamSource(target, clock, source_config.stall_timeout_s)
    if kind in ("video", "camera") and target:
        # checked here so a missing package fails at start, not in the capture thread
        require("cv2", "opencv-python-headless", f"--source {spec}")
        if kind == "video":
            if not os.path.isfile(target):
                raise SourceSpecError(f"--source {spec}: video file '{target}' does not exist.")
            return VideoSource(target, clock, loop=source_config.loop)
        return CameraSource(int(target) if target.isdigit() else target, clock, fps=source_config.fps)
    raise SourceSpecError(
        f"--source {redact(spec)!r} is not understood: use folder:DIR, video:FILE, camera:INDEX, camera:/dev/videoN, "
        "stream:URL (rtsp:// or http:// MJPEG) or genicam:[DEVICE]."
    )


class Capture:
    """Reads a source in its own thread into a bounded queue.

    Live sources (cameras, or any source paced at a fixed fps) drop the oldest queued frame when the runner falls
    behind, counted in `dropped`, so memory never grows and decisions stay on fresh frames. Offline sources
    (a folder or video read as fast as possible) wait instead, so every file is classified. A source that fails
    to open or stops delivering is reported and retried with doubling backoff for as long as the runner runs.
    Each frame gets the encoder's count read just before it is grabbed, except from a source with a `stamp`
    attribute (a line-scan camera, edge/genicam.py): that one is given `position` and stamps its frames itself.
    """

    END = object()

    def __init__(
        self, source, clock, events, queue_size=4, fps=0.0, retry_initial_s=0.5, retry_max_s=30.0, position=None
    ):
        self.source = source
        # `position()`: the belt's encoder count, read in this thread just before each frame is grabbed, so the
        # frame carries the count of its capture, not of the end of its decode (8 mm later at 1 m/s when loaded).
        self.position = position
        self.clock = clock
        self.events = events
        self.queue_size = queue_size
        self.fps = fps
        self.live = source.live or fps > 0
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.dropped = 0
        self.source_errors = 0
        self._queue = deque()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="capture", daemon=True)

    def start(self):
        self._thread.start()
        return self

    def stop(self, timeout=2.0):
        """Ask the thread to finish; a camera stuck inside a driver call is abandoned after `timeout` (daemon)."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._thread.join(timeout)

    @property
    def depth(self):
        """Frames waiting for the model (telemetry)."""
        return len(self._queue)

    def get(self, timeout):
        """The next Frame, Capture.END after the last one, or None if nothing came within `timeout` seconds."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._queue, timeout):
                return None
            item = self._queue.popleft()
            self._cond.notify_all()
            return item

    def _put(self, item):
        with self._cond:
            if item is not self.END:
                if self.live:
                    if len(self._queue) >= self.queue_size:
                        self._queue.popleft()
                        self.dropped += 1
                else:
                    self._cond.wait_for(lambda: len(self._queue) < self.queue_size or self._stop.is_set())
            self._queue.append(item)
            self._cond.notify_all()

    def _failed(self, stage, error, backoff):
        """Report a source failure and wait out the backoff; returns the next backoff."""
        self.source_errors += 1
        self.events.emit(
            "source_error", stage=stage, error=f"{type(error).__name__}: {error}", retry_in_s=round(backoff, 3)
        )
        self.clock.wait(self._stop, backoff)
        return min(backoff * 2.0, self.retry_max_s)

    def _run(self):
        backoff, opened, failing = self.retry_initial_s, False, False
        stamping = hasattr(self.source, "stamp")  # a line-scan camera stamps each frame at its middle line itself
        if stamping:
            self.source.stamp = self.position
        next_read = self.clock.now()
        try:
            while not self._stop.is_set():
                if not opened:
                    try:
                        self.source.open()
                        opened = True
                    except Exception as error:  # a camera driver can raise anything; all mean "not now"
                        failing = True
                        backoff = self._failed("open", error, backoff)
                        continue
                if self.fps > 0:
                    if self.clock.wait(self._stop, next_read - self.clock.now()):
                        break
                    next_read = max(next_read + 1.0 / self.fps, self.clock.now())
                count = self.position() if self.position is not None and not stamping else None
                try:
                    frame = self.source.read()
                except Exception as error:
                    self.source.close()
                    opened, failing = False, True
                    backoff = self._failed("read", error, backoff)
                    continue
                if frame is None:
                    break
                if self.position is not None and not stamping:
                    frame.position = count
                if failing:
                    self.events.emit("source_recovered", errors=self.source_errors)
                    failing, backoff = False, self.retry_initial_s
                self._put(frame)
        finally:
            if opened:
                self.source.close()
            self._put(self.END)
