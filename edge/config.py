"""The runner's TOML configuration, checked in full before anything starts.

Every problem is reported as one line naming the file, the key and the fix (a valid example line), because the
person reading it is standing next to a conveyor, not at a debugger. Unknown keys are errors too: a misspelt
`valve_lead_ms` silently falling back to its default would mistime every ejection.
"""

import math
import re
import tomllib
from dataclasses import MISSING, dataclass, field, fields

from edge import drivers

BIN_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")  # bin names travel in serial lines: no spaces or quotes


class ConfigError(ValueError):
    """A configuration problem; the message is one line naming the file, the key and the fix."""


class _Invalid(ValueError):
    """Raised by a check with what the value must be; turned into a ConfigError naming the key."""


def _number(low=None, above=None, high=None):
    def check(value):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _Invalid("must be a number")
        if low is not None and value < low:
            raise _Invalid(f"must be >= {low}")
        if above is not None and value <= above:
            raise _Invalid(f"must be > {above}")
        if high is not None and value > high:
            raise _Invalid(f"must be <= {high}")
        return float(value)

    return check


def _integer(low, high=None):
    def check(value):
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid("must be a whole number")
        if value < low or (high is not None and value > high):
            raise _Invalid(f"must be between {low} and {high}" if high is not None else f"must be >= {low}")
        return value

    return check


def _boolean(value):
    if not isinstance(value, bool):
        raise _Invalid("must be true or false")
    return value


def _text(value):
    if not isinstance(value, str):
        raise _Invalid("must be a quoted string")
    return value


def _port(value):
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise _Invalid("must be a device path in quotes (serial) or a TCP port number (modbus)")
    return value


def _bin(value):
    if not isinstance(value, str) or not BIN_NAME.match(value):
        raise _Invalid("must be a bin name of letters, digits, '_', '-' or '.'")
    return value


def _choice(*options):
    def check(value):
        if value not in options:
            raise _Invalid(f"must be one of {', '.join(repr(o) for o in options)}")
        return value

    return check


def _threshold(value):
    return value if value == "auto" else _integer(1, 254)(value)  # the key's example names "auto"


def _driver(value):
    """One of edge/drivers' DRIVERS, read when checked: a driver added to the table is a valid type at once."""
    return _choice(*drivers.DRIVERS)(value)


def _roi(value):
    if (not isinstance(value, list) or len(value) != 4
            or any(isinstance(v, bool) or not isinstance(v, int) for v in value)
            or min(value[:2]) < 0 or min(value[2:]) < 1):
        raise _Invalid("must be [x, y, width, height] in whole pixels of the camera frame (x, y >= 0, size >= 1)")
    return tuple(value)


def _size(value):
    if (not isinstance(value, list) or len(value) != 2
            or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value)):
        raise _Invalid("must be [width, height] in whole pixels of the camera frame")
    return tuple(value)


def _class_bins(value):
    if not isinstance(value, dict):
        raise _Invalid("must be a table of class = \"bin\" lines")
    for label, bin_name in value.items():
        if not isinstance(bin_name, str) or not BIN_NAME.match(bin_name):
            raise _Invalid(f"maps class '{label}' to {bin_name!r}, not a bin name of letters, digits, '_', '-' or '.'")
    return dict(value)


def _pins(value):
    if not isinstance(value, dict) or any(isinstance(p, bool) or not isinstance(p, (int, str)) for p in value.values()):
        raise _Invalid("must be a table of bin = GPIO pin lines (BCM number or gpiozero pin name)")
    return dict(value)


def _key(example, check, default=MISSING):
    """A config key: `example` is the valid TOML line shown in error messages, `check` validates and converts."""
    meta = {"example": example, "check": check}
    if isinstance(default, dict):
        return field(default_factory=dict, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class DecisionConfig:
    confidence_threshold: float = _key("confidence_threshold = 0.8", _number(above=0.0, high=1.0), 0.8)


@dataclass(frozen=True)
class SourceConfig:
    loop: bool = _key("loop = false", _boolean, False)
    fps: float = _key("fps = 0  # 0 = as fast as frames come", _number(low=0.0), 0.0)
    queue_size: int = _key("queue_size = 4", _integer(1), 4)
    roi: tuple = _key("roi = [0, 0, 640, 480]  # x, y, width, height", _roi, None)
    retry_initial_s: float = _key("retry_initial_s = 0.5", _number(above=0.0), 0.5)
    retry_max_s: float = _key("retry_max_s = 30", _number(above=0.0), 30.0)
    stall_timeout_s: float = _key("stall_timeout_s = 10", _number(above=0.0), 10.0)
    frame_size: tuple = _key("frame_size = [1280, 720]  # the size roi and belt are set for (default: the first frame)",
                             _size, None)
    rescale: bool = _key("rescale = false  # resize a frame of another size to frame_size instead of skipping it",
                         _boolean, False)


@dataclass(frozen=True)
class BinsConfig:
    default: str = _key('default = "mixed"', _bin)
    recheck: str = _key('recheck = "recheck"', _bin)
    classes: dict = _key('classes = { quartz = "light", galena = "heavy" }', _class_bins, {})


@dataclass(frozen=True)
class BeltConfig:
    speed_mm_s: float = _key("speed_mm_s = 500", _number(above=0.0))
    camera_to_ejector_mm: float = _key("camera_to_ejector_mm = 600", _number(above=0.0))
    valve_lead_ms: float = _key("valve_lead_ms = 20", _number(low=0.0), 0.0)
    still_mm: float = _key("still_mm = 1  # position = \"modbus\", single items: less travel than this since the "
                           "last item is the same item", _number(above=0.0), 1.0)
    position: str = _key(
        'position = "clock"  # or "modbus": track the PLC\'s encoder count ([encoder])', _choice("clock", "modbus"),
        "clock",
    )


@dataclass(frozen=True)
class EncoderConfig:
    """The PLC register holding the belt's encoder count (`[belt] position = "modbus"`); the runner is its client."""

    host: str = _key('host = "127.0.0.1"  # the PLC', _text, "127.0.0.1")
    port: int = _key("port = 502", _integer(1, 65535), 502)
    unit_id: int = _key("unit_id = 1", _integer(0, 247), 1)
    address: int = _key("address = 0  # holding register of the count (0-based)", _integer(0, 65535), None)
    registers: int = _key("registers = 2  # 1: 16-bit counter, 2: 32-bit counter", _integer(1, 2), 2)
    word_order: str = _key(
        'word_order = "high_first"  # 32-bit counters: or "low_first"', _choice("high_first", "low_first"),
        "high_first",
    )
    counts_per_mm: float = _key("counts_per_mm = 4.0  # encoder counts per mm of belt travel", _number(above=0.0),
                                None)
    poll_ms: float = _key("poll_ms = 2  # how often the count is read while ejections wait", _number(above=0.0), 2.0)
    timeout_s: float = _key("timeout_s = 0.1  # one read", _number(above=0.0), 0.1)
    fire_window_mm: float = _key(
        "fire_window_mm = 10  # an ejection found passed by more than this is not fired", _number(above=0.0), 10.0
    )


@dataclass(frozen=True)
class ActuatorConfig:
    type: str = _key('type = "jsonl"  # edge/drivers/', _driver, "jsonl")
    path: str = _key('path = "-"  # jsonl: a file, or "-" for stdout', _text, "-")
    port: object = _key('port = "/dev/ttyUSB0"  # serial; modbus: port = 5020', _port, "")
    host: str = _key('host = "127.0.0.1"  # modbus: the address the server listens on', _text, "127.0.0.1")
    unit_id: int = _key("unit_id = 1  # modbus", _integer(0, 247), 1)
    ring_size: int = _key("ring_size = 64  # modbus: decisions kept for the PLC", _integer(1, 1000), 64)
    stop_grace_s: float = _key("stop_grace_s = 2  # modbus: state 3 (stopped) is served this long before the server "
                               "closes", _number(low=0.0, high=60.0), 2.0)
    baudrate: int = _key("baudrate = 115200", _integer(1), 115200)
    pins: dict = _key("pins = { light = 17, heavy = 27 }", _pins, {})
    pulse_ms: float = _key("pulse_ms = 30", _number(above=0.0), 30.0)
    retry_initial_s: float = _key("retry_initial_s = 0.5", _number(above=0.0), 0.5)
    retry_max_s: float = _key("retry_max_s = 30", _number(above=0.0), 30.0)


@dataclass(frozen=True)
class ReviewConfig:
    dir: str = _key('dir = "review"  # empty = no review queue', _text, "")
    max_items: int = _key("max_items = 1000", _integer(1), 1000)
    max_mb: float = _key("max_mb = 500", _number(above=0.0), 500.0)
    jpeg_quality: int = _key("jpeg_quality = 90", _integer(1, 95), 90)


@dataclass(frozen=True)
class AlarmConfig:
    window: int = _key("window = 200", _integer(1), 200)
    max_recheck_share: float = _key("max_recheck_share = 0.3", _number(above=0.0, high=1.0), 0.3)
    blind_s: float = _key("blind_s = 10  # frames arrive but none can be used for this long: the blind alarm",
                          _number(above=0.0), 10.0)
    no_particles_s: float = _key("no_particles_s = 0  # [particles]: no particle for this long raises the blind "
                                 "alarm (0: never; an empty belt is normal off-feed)", _number(low=0.0), 0.0)


@dataclass(frozen=True)
class DriftConfig:
    """The drift alarm (edge/drift.py); it runs only when the sidecar has a calibration "reference"."""

    enabled: bool = _key("enabled = true", _boolean, True)
    window: int = _key("window = 500  # items compared with the calibration images", _integer(50), 500)
    threshold: float = _key("threshold = 0.25  # population stability index of a significant shift",
                            _number(above=0.0), 0.25)


@dataclass(frozen=True)
class ParticlesConfig:
    """Many particles per frame (edge/particles.py); absent = one item per frame, as before."""

    mm_per_px: float = _key("mm_per_px = 0.5  # belt millimetres per camera pixel", _number(above=0.0))
    min_mm: float = _key("min_mm = 8  # smaller blobs (equal-area diameter) are dropped", _number(above=0.0), 8.0)
    max_mm: float = _key("max_mm = 80  # larger blobs are dropped", _number(above=0.0), 80.0)
    threshold: object = _key('threshold = 30  # colour difference from the belt (0-255) of a particle pixel, or '
                             '"auto": 5 x the belt\'s noise measured at start', _threshold, 30)
    background_frames: int = _key("background_frames = 10  # empty-belt frames learned at start", _integer(1), 10)
    background_rate: float = _key("background_rate = 0.02  # belt learning rate per frame where no particle is",
                                  _number(low=0.0, high=1.0), 0.02)
    pad: float = _key("pad = 0.15  # crop margin, share of the particle's long side", _number(low=0.0, high=2.0), 0.15)
    split: bool = _key("split = true  # cut touching particles apart (watershed, edge/cut.py)", _boolean, True)
    split_solidity: float = _key("split_solidity = 0.9  # blobs less convex than this are tried for a watershed",
                                 _number(above=0.0, high=1.0), 0.9)
    split_level: float = _key("split_level = 0.7  # watershed markers: distance map above this share of its peak",
                              _number(above=0.0, high=1.0), 0.7)
    split_colour: float = _key("split_colour = 50  # a cut of a blob without a neck needs this colour step (0-255) "
                               "across it; 0: no such cut", _number(low=0.0, high=442.0), 50.0)
    contact_model: str = _key('contact_model = ""  # network splitting touching particles: edge/contact.py', _text, "")
    contact_notch: float = _key("contact_notch = 0.08  # blobs shown to it: an outline notch this deep, share of "
                                "the blob's equal-area side (0: every blob)", _number(low=0.0), 0.08)
    track_mm: float = _key("track_mm = 5  # tracking tolerance: edge/track.py", _number(above=0.0), 5.0)


@dataclass(frozen=True)
class ValvesConfig:
    """The valve bar across the belt: lane i spans [first_lane_mm + i * lane_mm, first_lane_mm + (i+1) * lane_mm)."""

    count: int = _key("count = 64  # valves across the belt", _integer(1, 4096))
    lane_mm: float = _key("lane_mm = 12.5  # width of one valve's lane", _number(above=0.0))
    bin: str = _key('bin = "product"  # the bin the valve bar ejects into; every other particle rides on', _bin)
    first_lane_mm: float = _key("first_lane_mm = 0  # x of lane 0's left edge, from the frame's (roi's) left edge",
                                _number(), 0.0)
    pulse_margin_mm: float = _key("pulse_margin_mm = 2  # valves open this much before and after a particle",
                                  _number(low=0.0), 2.0)
    lane_margin_mm: float = _key("lane_margin_mm = 2  # lanes this close beside a particle open too",
                                 _number(low=0.0), 2.0)
    conflict: str = _key('conflict = "trim"  # a pulse that would hit a particle to keep: "trim" it to miss that one '
                         '(else skip), "skip" it, or "fire" anyway', _choice("trim", "skip", "fire"), "trim")
    cover: float = _key("cover = 0.5  # a trimmed pulse must still span this share of its particle's width (lanes) "
                        "or central length (time)", _number(above=0.0, high=1.0), 0.5)
    hit_share: float = _key("hit_share = 0  # fire an untrimmable pulse anyway when what it hits to keep is at most "
                            "this share of the area it ejects (0: never)", _number(low=0.0, high=1.0), 0.0)


@dataclass(frozen=True)
class RecordsConfig:
    summary: str = _key('summary = "summary.json"', _text, "summary.json")
    stats_interval_s: float = _key("stats_interval_s = 60", _number(above=0.0), 60.0)


_SECTIONS = {
    "decision": DecisionConfig, "source": SourceConfig, "bins": BinsConfig, "belt": BeltConfig, "encoder": EncoderConfig,
    "actuator": ActuatorConfig, "review": ReviewConfig, "alarm": AlarmConfig, "drift": DriftConfig,
    "records": RecordsConfig, "particles": ParticlesConfig, "valves": ValvesConfig,
}
_OPTIONAL = ("particles", "valves")  # None when absent: their required keys are required only when they are set


@dataclass(frozen=True)
class Config:
    path: str
    decision: DecisionConfig
    source: SourceConfig
    bins: BinsConfig
    belt: BeltConfig
    encoder: EncoderConfig
    actuator: ActuatorConfig
    review: ReviewConfig
    alarm: AlarmConfig
    drift: DriftConfig
    records: RecordsConfig
    particles: ParticlesConfig = None  # None: one item per frame
    valves: ValvesConfig = None

    def error(self, key, problem):
        return _error(self.path, key, problem)

    def check_labels(self, labels):
        """The class -> bin table may only name classes the model knows; a typo would send that class to default."""
        for label in self.bins.classes:
            if label not in labels:
                raise self.error(
                    f"bins.classes.{label}", f"names no class of the model (its classes: {', '.join(labels)})"
                )

    def bin_names(self):
        return {self.bins.default, self.bins.recheck, *self.bins.classes.values()}

    def bin_codes(self):
        """Bin names by code, for the Modbus register map: 0 is the recheck bin, then the others by name."""
        return [self.bins.recheck, *sorted(self.bin_names() - {self.bins.recheck})]


def _error(path, key, problem):
    section, _, name = key.partition(".")
    cls = _SECTIONS.get(section)
    spec = {f.name: f for f in fields(cls)}.get(name.split(".")[0]) if cls else None
    fix = f"set it like `{spec.metadata['example']}` under [{section}]" if spec else "fix or remove it"
    return ConfigError(f"config '{path}': key '{key}' {problem}: {fix}.")


def _section(path, name, cls, raw):
    if not isinstance(raw, dict):
        raise ConfigError(f"config '{path}': '{name}' must be a table: write it as a [{name}] section.")
    known = {f.name: f for f in fields(cls)}
    for key in raw:
        if key not in known:
            raise ConfigError(
                f"config '{path}': unknown key '{name}.{key}': check the spelling (known keys of [{name}]: "
                f"{', '.join(known)})."
            )
    values = {}
    for key, spec in known.items():
        if key not in raw:
            if spec.default is MISSING and spec.default_factory is MISSING:
                raise _error(path, f"{name}.{key}", "is missing")
            continue
        try:
            values[key] = spec.metadata["check"](raw[key])
        except _Invalid as problem:
            raise _error(path, f"{name}.{key}", f"{problem}, got {raw[key]!r}") from None
    return cls(**values)


def parse_config(text, path="<config>"):
    """A Config from TOML text; raises ConfigError (one line) on any problem."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config '{path}' is not valid TOML ({error}): fix the syntax on that line.") from None
    for name in raw:
        if name not in _SECTIONS:
            raise ConfigError(
                f"config '{path}': unknown section [{name}]: check the spelling (sections: {', '.join(_SECTIONS)})."
            )
    sections = {
        name: _section(path, name, cls, raw.get(name, {}))
        for name, cls in _SECTIONS.items() if name not in _OPTIONAL or name in raw
    }
    config = Config(path=path, **sections)
    if "encoder" in raw and config.belt.position != "modbus":
        raise config.error("belt.position", 'is "clock" but an [encoder] section is set: set position = "modbus" to '
                           "time ejections by the encoder, or remove [encoder]")
    _check_together(config)
    return config


def load_config(path):
    try:
        with open(path, "rb") as handle:
            text = handle.read().decode("utf-8")
    except OSError as error:
        raise ConfigError(
            f"config '{path}' cannot be read ({error.strerror}): pass --config with the path of a TOML file "
            "(start from edge/example_config.toml)."
        ) from None
    return parse_config(text, path)


def _check_encoder(config):
    """An encoder-timed belt needs the count's register and scale, and a distance the counter can span."""
    encoder = config.encoder
    for key in ("address", "counts_per_mm"):
        if getattr(encoder, key) is None:
            raise config.error(f"encoder.{key}", 'is missing (belt.position is "modbus")')
    half = 1 << (16 * encoder.registers - 1)
    counts = config.belt.camera_to_ejector_mm * encoder.counts_per_mm
    if counts >= half:
        raise config.error(
            "encoder.counts_per_mm",
            f"makes camera_to_ejector_mm {counts:g} counts, not under half the {16 * encoder.registers}-bit counter "
            f"({half}), so a wrapped count could not be told from a passed one; use registers = 2 or check the scale",
        )


def _check_together(config):
    """Rules that involve several keys."""
    belt = config.belt
    travel_ms = belt.camera_to_ejector_mm / belt.speed_mm_s * 1000.0
    if belt.valve_lead_ms >= travel_ms:
        raise config.error(
            "belt.valve_lead_ms",
            f"is {belt.valve_lead_ms:g} ms but an item needs only {travel_ms:g} ms from camera to ejector, so no "
            "command could ever be on time; lower it or check speed_mm_s and camera_to_ejector_mm",
        )
    if belt.position == "modbus":
        _check_encoder(config)
    if config.particles is not None and config.particles.max_mm <= config.particles.min_mm:
        raise config.error("particles.max_mm", f"is not above particles.min_mm ({config.particles.min_mm:g})")
    if config.particles is not None and config.particles.threshold == "auto" and config.particles.background_frames < 2:
        raise config.error("particles.threshold", 'is "auto", which measures the belt\'s noise between empty-belt '
                           "frames: set particles.background_frames to 2 or more, or give a number")
    if config.valves is not None and config.valves.bin not in config.bin_names() - {config.bins.recheck}:
        raise config.error("valves.bin", f"names no bin of [bins] the bar can eject into (bins: "
                           f"{', '.join(sorted(config.bin_names() - {config.bins.recheck}))})")
    if config.particles is not None and config.valves is None:
        raise config.error("particles.mm_per_px", "is set but there is no [valves] section: add [valves] with the "
                           "valve bar's count, lane_mm and bin (particles are ejected by lane)")
    if config.valves is not None and config.particles is None:
        raise config.error("valves.count", "is set but there is no [particles] section: add [particles] (valve "
                           "lanes come from each particle's position) or remove [valves]")
    for section in (config.source, config.actuator):
        if section.retry_max_s < section.retry_initial_s:
            name = "source" if section is config.source else "actuator"
            raise config.error(f"{name}.retry_max_s", f"is below {name}.retry_initial_s ({section.retry_initial_s:g})")
    drivers.check(config)
