"""What the runner tells the operator: one JSON line per event, periodic stats, the recheck alarm and summary.json.

Events are JSON lines with a "type" (item, skipped, stats, alarm, source_error, actuator_error, ...) so that one
stream can be tailed, grepped or shipped. Memory stays flat over weeks of running: latencies are kept in a
bounded window and counters are plain integers.
"""

import datetime
import json
import os
import sys
import tempfile
import threading
from collections import deque

_STDOUT_LOCK = threading.Lock()  # events and the jsonl actuator may both write to stdout, from two threads


TEMP_SUFFIX = ".tmp"  # every temporary file the runner makes ends so, beside its target (remove_leftovers)
PROBE = ".write-check"  # check_writable's probe files: PROBE + ".<random>" + TEMP_SUFFIX


def _temp_prefix(path):
    return f".{os.path.basename(path)}."


def atomic_write_bytes(path, data, sync=True):
    """Write `data` to `path` via a temporary file and os.replace: a kill mid-write leaves the old file or none.

    SIGINT and SIGTERM cannot interrupt it (edge/stopping.py only sets a flag); after a SIGKILL or a power cut
    between the steps, the temporary `.NAME.<random>.tmp` is removed at the next start (remove_leftovers).
    `sync=False` skips the fsync, for the review queue: its writes sit in the sorting loop and would otherwise wait
    on a slow SD card, and a review copy lost to a power cut costs nothing.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=TEMP_SUFFIX, dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            if sync:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def remove_leftovers(path, directory=False):
    """Remove the temporary files a SIGKILL left beside `path` (atomic_write_bytes's for that file name and
    check_writable's probes), or with `directory=True` every `.*.tmp` in that folder (the review queue's own
    folder); run at start, before anything is written. Returns the names removed."""
    folder = path if directory else (os.path.dirname(os.path.abspath(path)) or ".")
    prefixes = (".",) if directory else (_temp_prefix(path), PROBE + ".")
    try:
        names = [n for n in os.listdir(folder) if n.endswith(TEMP_SUFFIX) and n.startswith(prefixes)]
    except OSError:  # no folder yet: nothing left over
        return []
    for name in names:
        try:
            os.remove(os.path.join(folder, name))
        except FileNotFoundError:
            pass
    return names


def check_writable(path, directory=False):
    """Raise OSError now if `path` (a file, or with `directory=True` a folder) could not be written later.

    Run at start for every output, so that a read-only or mistyped path stops the runner with one line instead of
    a traceback, or a summary lost after hours of sorting. A probe file is created and removed beside the target;
    then the temporary files a SIGKILL left for this output are removed (remove_leftovers): every output passes
    here at start, so none is forgotten.
    """
    folder = path if directory else (os.path.dirname(os.path.abspath(path)) or ".")
    if not directory and os.path.isdir(path):
        raise IsADirectoryError(21, "Is a directory", path)
    if not directory and os.path.exists(path) and not os.path.isfile(path):  # /dev/null, a FIFO: written in place
        if not os.access(path, os.W_OK):
            raise PermissionError(13, "Permission denied", path)
        return
    os.makedirs(folder, exist_ok=True)
    fd, probe = tempfile.mkstemp(prefix=PROBE + ".", suffix=TEMP_SUFFIX, dir=folder)
    os.close(fd)
    os.remove(probe)
    remove_leftovers(path, directory)


def atomic_write_json(path, data):
    atomic_write_bytes(path, (json.dumps(data, indent=2) + "\n").encode())


def write_summary(path, summary):
    """Write summary.json; if that fails (disk full, folder gone) the summary goes to stderr as one JSON line.
    Returns True when written."""
    try:
        atomic_write_json(path, summary)
        return True
    except OSError as error:
        print(f"runner: summary '{path}' could not be written ({error.strerror or error}); it follows as JSON.",
              file=sys.stderr)
        print(json.dumps(summary), file=sys.stderr, flush=True)
        return False


def iso_time(epoch_seconds):
    return datetime.datetime.fromtimestamp(epoch_seconds, datetime.timezone.utc).isoformat(timespec="milliseconds")


class LineWriter:
    """Thread-safe JSON lines to a file (appended) or, for "-", stdout; each line flushed as written."""

    def __init__(self, path):
        self.path = path
        if path == "-":
            self._handle, self._lock = sys.stdout, _STDOUT_LOCK
        else:
            if os.path.dirname(path):
                os.makedirs(os.path.dirname(path), exist_ok=True)
            self._handle, self._lock = open(path, "a", buffering=1), threading.Lock()

    def write(self, record):
        line = json.dumps(record, separators=(",", ":")) + "\n"
        with self._lock:
            self._handle.write(line)
            self._handle.flush()

    def close(self):
        if self._handle is not sys.stdout:
            self._handle.close()


class EventSink:
    """Timestamped events on a LineWriter.

    Sorting matters more than its log: when the events cannot be written (disk full, reader of stdout gone) the
    runner keeps sorting, says so once on stderr and counts the lost lines for summary.json.
    """

    def __init__(self, writer, clock):
        self.writer = writer
        self.clock = clock
        self.lost = 0

    def emit(self, kind, **fields):
        try:
            self.writer.write({"type": kind, "time": iso_time(self.clock.wall()), **fields})
        except (OSError, ValueError) as error:  # ValueError: write to a closed stream
            self.lost += 1
            if self.lost == 1:
                message = f"runner: events to '{self.writer.path}' are being lost ({error}); sorting goes on."
                print(message, file=sys.stderr)


def percentile(values, q):
    """The q-th percentile (0-100) in milliseconds of a sequence of seconds, or None if there are none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return round((ordered[low] + (ordered[high] - ordered[low]) * (rank - low)) * 1000.0, 3)


class RecheckAlarm:
    """Trips when the recheck share of the last `window` items exceeds `limit` (drift, dirty lens, bad light).

    It fires once when the share crosses the limit and re-arms when the share falls back to it or below, so a
    lasting problem gives one alarm, not one per item.
    """

    def __init__(self, window, limit):
        self.limit = limit
        self._recent = deque(maxlen=window)
        self._tripped = False

    @property
    def share(self):
        """The recheck share of the items in the window so far (0 before the first)."""
        return sum(self._recent) / len(self._recent) if self._recent else 0.0

    @property
    def tripped(self):
        """True from the alarm until the share falls back to the limit (the operator page's alarm state)."""
        return self._tripped

    def update(self, is_recheck):
        """Record one item; returns the share when the alarm trips, else None."""
        self._recent.append(bool(is_recheck))
        if len(self._recent) < self._recent.maxlen:
            return None
        share = sum(self._recent) / len(self._recent)
        if share > self.limit and not self._tripped:
            self._tripped = True
            return share
        if share <= self.limit:
            self._tripped = False
        return None
