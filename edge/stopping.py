"""SIGINT and SIGTERM from the first moment of edge/runner.py main(): a stop is never a kill.

Python's defaults end the process wherever it stands: SIGTERM (systemd's stop) with status 143 and no summary, SIGINT
with a KeyboardInterrupt raised inside whatever runs, a file write included. Here both only set a flag, from before
the runner script's heavy imports (about 1 s of numpy, OpenCV, LiteRT). During start-up the flag is read between
the steps (importing, reading the config, loading the model, opening the source and outputs, connecting to the
encoder): the runner then writes a short summary.json naming the step and exits 0. Once
the sorter exists the flag is its stop(): it finishes the current frame and writes the full summary, exit 0 too.
Since no handler raises, no write is ever cut short and no temporary file is left behind (a SIGKILL's, which nothing
can catch, are removed at the next start: edge/records.py remove_leftovers).
"""

import signal
import time

from edge.records import iso_time, write_summary

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(Exception):
    """A signal came during a start-up step (raised between steps by StopSignals.step, never by the handler)."""


class StopSignals:
    """Installed first thing in main(); `step(name)` between start-up steps, `attach(sorter)` once there is one."""

    def __init__(self):
        self.reason = None  # "SIGINT" or "SIGTERM" once received
        self.during = "importing"  # the start-up step under way
        self.started_wall, self.started = time.time(), time.monotonic()
        self._sorter = None
        self._previous = {}

    def install(self):
        for number in SIGNALS:
            self._previous[number] = signal.signal(number, self._handle)
        return self

    def restore(self):
        """Put back the handlers found at install() (main() called in-process, as by the tests)."""
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous = {}

    def hold(self):
        """Ignore both signals until the process exits (the script, after main()): Python puts the default
        handlers back while it shuts down, and a signal then would turn exit 0 into 143 after the summary."""
        for number in SIGNALS:
            signal.signal(number, signal.SIG_IGN)

    def _handle(self, signum, _frame):
        self.reason = signal.Signals(signum).name
        if self._sorter is not None:
            self._sorter.stop(self.reason)

    def step(self, name):
        """Begin start-up step `name`; raises Stopped if a signal came during the step before."""
        if self.reason is not None:
            raise Stopped(self.during)
        self.during = name

    def attach(self, sorter):
        """From now on a signal is `sorter.stop()` (edge/sorter.py): one received before is passed on at once."""
        self._sorter = sorter
        if self.reason is not None:
            sorter.stop(self.reason)

    def summary(self, config, model=None):
        """The start-up summary: how the runner ended before sorting anything; written where the full one goes."""
        summary = {
            "exit": self.reason, "during": self.during, "started": iso_time(self.started_wall),
            "uptime_s": round(time.monotonic() - self.started, 3), "items": 0, "config": config.path,
            "model": model.path if model is not None else None,
            "model_sha256": model.sha256 if model is not None else None,
        }
        return summary, write_summary(config.records.summary, summary)
