"""Start and stop without loss (issue 27 point 5): edge/runner.py as a subprocess, stopped by SIGTERM or SIGINT while
it starts (the config being read, the model loading), while the empty belt is learned, and by a burst of signals
through a run with review writes; every end is exit 0 with summary.json naming the signal, and no temporary file is
left (a SIGKILL's leftovers are removed at the next start)."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUNNER = os.path.join(REPO, "edge", "runner.py")


def _start(argv, cwd):
    return subprocess.Popen([sys.executable, RUNNER, *argv], cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def _wait_for_the_start_line(process):
    for line in process.stderr:
        if line.startswith("runner: config"):
            return
    raise AssertionError(f"the runner ended without starting (status {process.wait()})")


def _temporaries(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.tmp"))


def _feed_when_read(fifo, text, process, before=None):
    """Wait until `process` opens the FIFO to read it (in main(): its handlers are installed), call `before`, then
    write `text` and close it."""
    deadline = time.monotonic() + 60
    while True:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            break
        except OSError as error:  # ENXIO: no reader yet
            assert error.errno == errno.ENXIO and process.poll() is None and time.monotonic() < deadline, \
                process.stderr.read() if process.poll() is not None else "never read"
            time.sleep(0.01)
    before()
    time.sleep(0.1)  # the signal lands while the runner waits on the read
    os.set_blocking(fd, True)
    os.write(fd, text.encode())
    os.close(fd)


@pytest.mark.parametrize("step, during", [("config", "reading the config"), ("sidecar", "loading the model")])
def test_sigterm_during_start_up_writes_a_summary_and_exits_0(tmp_path, tiny_export, write_config, step, during):
    """The runner blocks on a FIFO standing for the config or the model's sidecar; SIGTERM arrives there. Before,
    it died with status -15 (143 from a shell) and wrote nothing."""
    config = write_config()
    sidecar = tiny_export["int8"][: -len(".tflite")] + ".json"
    fifo = str(tmp_path / f"{step}.fifo")
    os.mkfifo(fifo)
    argv = ["--model", tiny_export["int8"], "--source", f"folder:{tmp_path}", "--events", str(tmp_path / "e.jsonl"),
            "--config", fifo if step == "config" else config, "--sidecar", fifo if step == "sidecar" else sidecar]
    process = _start(argv, tmp_path)
    try:
        _feed_when_read(fifo, open(config if step == "config" else sidecar).read(), process,
                        lambda: process.send_signal(signal.SIGTERM))
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0, stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["exit"] == "SIGTERM" and summary["during"] == during and summary["items"] == 0
    assert summary["model_sha256"] == (None if step == "config" else json.load(open(sidecar))["sha256"])
    lines = [line for line in stderr.splitlines() if line.startswith("runner:")]  # LiteRT may add an INFO line
    assert lines == [f"runner: stopped by SIGTERM while {during}, before sorting; summary "
                     f"{str(tmp_path / 'summary.json')!r}."]
    assert _temporaries(tmp_path) == []


def test_sigint_while_the_belt_is_learned_writes_the_summary(tmp_path, tiny_export, write_config):
    import cv2

    folder = tmp_path / "belt"
    folder.mkdir()
    cv2.imwrite(str(folder / "empty.png"), np.full((240, 320, 3), 60, np.uint8))
    config = write_config(particles={"mm_per_px": 0.5, "background_frames": 1000},
                          valves={"count": 16, "lane_mm": 20.0, "bin": "bin_a"}, source={"loop": True, "fps": 20.0})
    events = tmp_path / "events.jsonl"
    process = _start(["--model", tiny_export["float32"], "--source", f"folder:{folder}", "--config", config,
                      "--events", str(events)], tmp_path)
    try:
        _wait_for_the_start_line(process)
        deadline = time.monotonic() + 30
        while not events.exists() or '"type":"start"' not in events.read_text():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(0.3)  # a few of the empty belt's frames learned
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0, stderr
    kinds = [json.loads(line)["type"] for line in open(events)]
    assert "belt_learned" not in kinds and kinds[-1] == "stop"
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["exit"] == "SIGINT" and summary["items"] == 0 and summary["particles"]["frames"] == 0
    assert _temporaries(tmp_path) == []


def test_a_burst_of_sigterms_through_a_run_leaves_no_temporary_file(tmp_path, tiny_export, write_config,
                                                                   uncertain_model):
    """Every item goes to the review queue (two atomic writes each); SIGTERM every millisecond from the start line
    to the exit, the summary write included. Temporary files a SIGKILL left are removed at start; others stay."""
    folder = tmp_path / "belt"
    folder.mkdir()
    for row in tiny_export["test_rows"][:8]:
        shutil.copy(row["file"], folder / os.path.basename(row["file"]))
    config = write_config(source={"loop": True, "fps": 50.0}, review={"max_items": 1000})
    review = tmp_path / "review"
    review.mkdir()
    killed = [tmp_path / ".summary.json.k1lled.tmp", tmp_path / ".write-check.k1lled.tmp",
              review / ".item.jpg.k1lled.tmp", tmp_path / ".events.jsonl.k1lled.tmp"]
    kept = [tmp_path / "notes.tmp", tmp_path / ".config.toml.other.tmp"]  # not the runner's: never touched
    for path in killed + kept:
        path.write_text("partial")
    process = _start(["--model", uncertain_model, "--source", f"folder:{folder}", "--config", config,
                      "--events", str(tmp_path / "events.jsonl")], tmp_path)
    signals = 0
    try:
        _wait_for_the_start_line(process)
        time.sleep(0.5)  # some items sorted and copied to review
        while process.poll() is None:
            process.send_signal(signal.SIGTERM)
            signals += 1
            time.sleep(0.001)
        stderr = process.stderr.read()
    finally:
        process.kill()
    assert process.returncode == 0, stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["exit"] == "SIGTERM" and summary["items"] > 0 and signals > 1
    assert len(list(review.glob("*.jpg"))) == summary["items"]  # every item reviewed, each write whole
    assert _temporaries(tmp_path) == sorted(str(p.relative_to(tmp_path)) for p in kept)
