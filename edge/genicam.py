"""GenICam cameras (GigE Vision, USB3 Vision) through Aravis 0.8: area-scan frames, and line-scan lines stitched.

Sorters use industrial cameras that OpenCV cannot open; Aravis speaks their protocols and GenICam feature trees.
`--source genicam:[DEVICE][?KEY=VALUE&...]` (chosen in edge/sources.py parse_source):

- DEVICE: an Aravis device id (`Basler-21234567`, `Aravis-Fake-GV01`) or the camera's IP address; empty: the first
  camera found.
- `lines_per_frame=N`: a line-scan camera. Each buffer holds a few lines (the camera's Height, one trigger's worth,
  e.g. per encoder pulse); N lines make one frame. `overlap_lines=K` repeats the last K lines in the next frame,
  because the belt tracker needs frames that overlap by a particle's length (edge/track.py).
- `buffers=N`: how many buffers Aravis fills ahead (default 8, more for line-scan).
- any other KEY (a capitalised GenICam name): a feature set, in the order given, before acquisition starts, e.g.
  `PixelFormat=Mono8&Height=1&TriggerSelector=LineStart&TriggerMode=On&TriggerSource=Line1`.

This file imports no `gi` until a camera is checked or opened, so the runner starts without Aravis when no
genicam: source is used. It is a leaf: the caller (parse_source) passes the Frame class it returns, so the
source interface stays in edge/sources.py without an import circle.
"""

import re
from collections import deque

import numpy as np
from PIL import Image

from edge.deps import require, require_gi

APT_PACKAGE = "gir1.2-aravis-0.8"  # the typelib; the library libaravis-0.8-0 comes with it
OPTIONS = {"lines_per_frame": 1, "overlap_lines": 0, "buffers": 1}  # option -> its least value
_FEATURE = re.compile(r"^[A-Z][A-Za-z0-9_]*$")
_MONO_BITS = {"Mono8": 8, "Mono10": 10, "Mono12": 12, "Mono14": 14, "Mono16": 16}
_COLOUR = {"RGB8": "RGB", "RGB8Packed": "RGB", "BGR8": "BGR", "BGR8Packed": "BGR"}
_BAYER = ("BayerRG8", "BayerBG8", "BayerGR8", "BayerGB8")
SUPPORTED = ", ".join([*_MONO_BITS, "RGB8", "BGR8", *_BAYER])


class GenICamError(Exception):
    """The camera failed to open or stopped delivering; Capture (edge/sources.py) reports it and reopens it."""


def parse_url(target):
    """(device, {option: int}, [(feature, value)]) from what follows `genicam:`; ValueError saying what is wrong."""
    device, _, query = target.partition("?")
    options, features = {}, []
    for item in filter(None, query.split("&")):
        key, equals, value = item.partition("=")
        if not equals or not value:
            raise ValueError(f"'{item}' is not KEY=VALUE")
        if key in OPTIONS:
            if not value.isdigit() or int(value) < OPTIONS[key]:
                raise ValueError(f"{key}={value}: must be a whole number >= {OPTIONS[key]}")
            options[key] = int(value)
        elif _FEATURE.match(key):
            features.append((key, value))
        else:
            raise ValueError(f"'{key}' is neither an option ({', '.join(OPTIONS)}) nor a GenICam feature name "
                             "(they start with a capital letter)")
    if "overlap_lines" in options and options["overlap_lines"] >= options.get("lines_per_frame", 0):
        raise ValueError("overlap_lines must be less than lines_per_frame (and needs it)")
    return device, options, features


def aravis(needed_for):
    """The Aravis module, or MissingLibrary (one line naming the Debian package and PyGObject)."""
    return require_gi("Aravis", "0.8", APT_PACKAGE, needed_for)


def to_array(data, width, height, pixel_format):
    """One buffer's bytes as a grey (H, W) or RGB (H, W, 3) uint8 array; deeper greys keep their top 8 bits."""
    if pixel_format in _MONO_BITS:
        bits = _MONO_BITS[pixel_format]
        if bits == 8:
            return np.frombuffer(data, np.uint8, width * height).reshape(height, width)
        deep = np.frombuffer(data, "<u2", width * height).reshape(height, width)  # unpacked: 16-bit containers
        return (deep >> (bits - 8)).astype(np.uint8)
    if pixel_format in _BAYER:
        cv2 = require("cv2", "opencv-python-headless", f"PixelFormat {pixel_format}")
        raw = np.frombuffer(data, np.uint8, width * height).reshape(height, width)
        # OpenCV names a Bayer pattern by its second row and column: GenICam's RG is OpenCV's BG, and so on
        code = {"BayerRG8": cv2.COLOR_BayerBG2RGB, "BayerBG8": cv2.COLOR_BayerRG2RGB,
                "BayerGR8": cv2.COLOR_BayerGB2RGB, "BayerGB8": cv2.COLOR_BayerGR2RGB}[pixel_format]
        return cv2.cvtColor(raw, code)
    colour = np.frombuffer(data, np.uint8, width * height * 3).reshape(height, width, 3)
    return colour if _COLOUR[pixel_format] == "RGB" else colour[..., ::-1]


def to_image(array):
    """A Pillow RGB image of a grey or RGB array (a Frame's image; OpenCV cameras hand RGB arrays instead)."""
    return Image.fromarray(np.ascontiguousarray(array)).convert("RGB")


class LineStitcher:
    """Lines in capture order -> frames of `lines_per_frame` lines, each starting `lines_per_frame - overlap` lines
    after the one before.

    The newest line is row 0: the runner's rows run with the belt (row 0 is the upstream edge, edge/valves.py), and
    the line just scanned is the most upstream material. A frame carries the stamp (clock time, encoder count) of
    its middle line, so `[belt] camera_to_ejector_mm` is measured from the scan line as for an area camera's
    centre row. A frame any of whose lines came in a failed buffer is delivered with `lost` > 0.
    """

    def __init__(self, lines_per_frame, overlap=0):
        self.lines_per_frame = lines_per_frame
        self.step = lines_per_frame - overlap
        self._lines = []  # arrays of lines, oldest first
        self._stamps = []  # per line: (time, count, ok)
        self._held = 0

    def wants_stamp(self, count):
        """Whether the next `count` lines hold a frame's middle line: only then is the encoder read (one Modbus read
        a frame, as for an area camera, not one a buffer, which at thousands of lines a second would throttle)."""
        middle = self.lines_per_frame // 2
        first = max(0, -(-(self._held - middle) // self.step))  # the first frame whose middle is not yet in
        return first * self.step + middle < self._held + count

    def add(self, lines, time, count, ok=True):
        """Add a buffer's lines (oldest first); returns [(frame array, time, count, lines lost)] now complete."""
        self._lines.append(lines)
        self._stamps += [(time, count, ok)] * len(lines)
        self._held += len(lines)
        done = []
        while self._held >= self.lines_per_frame:
            window = np.concatenate(self._lines) if len(self._lines) > 1 else self._lines[0]
            frame = window[: self.lines_per_frame][::-1]
            stamps = self._stamps[: self.lines_per_frame]
            middle_time, middle_count, _ = stamps[self.lines_per_frame // 2]
            done.append((frame, middle_time, middle_count, sum(1 for *_, good in stamps if not good)))
            self._lines, self._stamps = [window[self.step:]], self._stamps[self.step:]
            self._held -= self.step
        return done


class GenICamSource:
    """An area-scan GenICam camera: one buffer, one frame; frame ids count frames from 1 (across reopenings)."""

    live = True

    def __init__(self, device, features, clock, frame, timeout_s=10.0, buffers=8):
        self.device = device
        self.features = features
        self.clock = clock
        self.frame = frame  # edge/sources.py Frame
        self.timeout_us = int(timeout_s * 1e6)
        self.timeout_s = timeout_s
        self.buffers = buffers
        self.name = device or "(first found)"
        self.failed_buffers = 0
        self._camera = self._stream = None
        self._number = 0

    def open(self):
        Aravis = aravis(f"--source genicam:{self.device}")
        try:
            camera = Aravis.Camera.new(self.device or None)
        except Exception as error:  # GLib.GError: not found, unreachable, owned by another application
            raise GenICamError(f"camera {self.name} did not open: {getattr(error, 'message', error)}") from None
        try:
            if camera.is_gv_device() and camera.get_device().get_device_address().get_address().get_is_loopback():
                # a simulated camera on 127.0.0.1: Aravis's packet socket (root) does not see loopback traffic
                camera.gv_set_stream_options(Aravis.GvStreamOption.PACKET_SOCKET_DISABLED)
            device = camera.get_device()
            for key, value in self.features:
                try:
                    device.set_features_from_string(f"{key}={value}")
                except Exception as error:
                    raise GenICamError(f"camera {self.name}: feature {key}={value} cannot be set "
                                       f"({getattr(error, 'message', error)}): check it with arv-tool-0.8 features")
            self.pixel_format = camera.get_pixel_format_as_string()
            if self.pixel_format not in (*_MONO_BITS, *_COLOUR, *_BAYER):
                raise GenICamError(f"camera {self.name}: PixelFormat {self.pixel_format} is not read here: add "
                                   f"PixelFormat=Mono8 (or one of {SUPPORTED}) to the genicam: URL")
            self.width, self.height = camera.get_region()[2:]
            payload = camera.get_payload()
            stream = camera.create_stream(None, None)
            for _ in range(self.buffers):
                stream.push_buffer(Aravis.Buffer.new_allocate(payload))
            camera.start_acquisition()
        except GenICamError:
            raise
        except Exception as error:
            raise GenICamError(f"camera {self.name} cannot start: {getattr(error, 'message', error)}") from None
        self._camera, self._stream = camera, stream

    def _pop(self):
        """(array or None when the buffer failed, Aravis status nick) of the next buffer, or GenICamError."""
        buffer = self._stream.timeout_pop_buffer(self.timeout_us)
        if buffer is None:
            raise GenICamError(f"camera {self.name} delivered nothing for {self.timeout_s:g} s")
        try:
            status = buffer.get_status()
            if status.value_nick != "success":
                self.failed_buffers += 1
                return None, status.value_nick
            width, height = buffer.get_image_width(), buffer.get_image_height()
            return to_array(buffer.get_image_data(), width, height, self.pixel_format), "success"  # bytes: a copy
        finally:
            self._stream.push_buffer(buffer)

    def read(self):
        array, status = self._pop()
        self._number += 1
        if array is None:
            return self.frame(str(self._number), self.clock.now(), error=f"Aravis buffer {status}")
        return self.frame(str(self._number), self.clock.now(), to_image(array))

    def close(self):
        if self._camera is not None:
            try:
                self._camera.stop_acquisition()
            except Exception:  # a camera that went away cannot be stopped; dropping it releases it anyway
                pass
        self._camera = self._stream = None  # unreferenced: Aravis gives up control of the camera


class LineScanSource(GenICamSource):
    """A line-scan GenICam camera: buffers of a few lines stitched (LineStitcher) into frames.

    Capture (edge/sources.py) gives it `stamp`, the encoder's read, when the belt is encoder-tracked: the buffer that
    holds a frame's middle line is stamped as it arrives, and the frame carries that count, not the count before
    the read.
    """

    def __init__(self, device, features, clock, frame, lines_per_frame, overlap=0, timeout_s=10.0, buffers=None):
        super().__init__(device, features, clock, frame, timeout_s, buffers or 64)
        self.lines_per_frame, self.overlap = lines_per_frame, overlap
        self.stamp = None
        self._done = deque()

    def open(self):
        super().open()
        self._stitcher = LineStitcher(self.lines_per_frame, self.overlap)  # a reopened camera starts a new frame
        self._done.clear()

    def read(self):
        while not self._done:
            array, _ = self._pop()
            stamped = self.stamp is not None and self._stitcher.wants_stamp(self.height)
            time, count = self.clock.now(), self.stamp() if stamped else None
            ok = array is not None
            if not ok:  # the lines keep their place, so the frame's geometry holds; the frame is marked lost
                array = np.zeros((self.height, self.width) + ((3,) if self.pixel_format not in _MONO_BITS else ()),
                                 np.uint8)
            self._done.extend(self._stitcher.add(array, time, count, ok))
        array, time, count, lost = self._done.popleft()
        self._number += 1
        if lost:
            return self.frame(str(self._number), time, error=f"{lost} of {self.lines_per_frame} lines lost "
                              "(Aravis buffers failed)", position=count)
        return self.frame(str(self._number), time, to_image(array), position=count)


def make_source(target, clock, frame, timeout_s):
    """The source for `genicam:TARGET` (ValueError naming what is wrong); checks that Aravis can be imported."""
    device, options, features = parse_url(target)
    aravis(f"--source genicam:{target}")
    if "lines_per_frame" in options:
        return LineScanSource(device, features, clock, frame, options["lines_per_frame"],
                              options.get("overlap_lines", 0), timeout_s, options.get("buffers"))
    return GenICamSource(device, features, clock, frame, timeout_s, options.get("buffers", 8))
