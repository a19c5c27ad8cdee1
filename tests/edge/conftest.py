"""Fixtures for the edge runner tests: a driven clock. The tiny exported model (`tiny_export`), `write_config` and
`make_runner` are in tests/conftest.py, shared with the calibration tests (tests/test_conformal.py)."""

import json
import threading

import pytest


class FakeClock:
    """A clock the test drives: `advance` moves time; `wait` returns at once, having moved time by the wait."""

    def __init__(self, start=1000.0):
        self.t = start
        self._lock = threading.Lock()

    def now(self):
        return self.t

    def wall(self):
        return 1_700_000_000.0 + self.t

    def advance(self, seconds):
        with self._lock:
            self.t += seconds

    def wait(self, event, seconds):
        if not event.is_set():
            self.advance(max(0.0, seconds))
        return event.is_set()


@pytest.fixture
def fake_clock():
    return FakeClock()


def read_events(path):
    with open(path) as handle:
        return [json.loads(line) for line in handle]


