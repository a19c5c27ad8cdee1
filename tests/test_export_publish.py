"""Atomic publish of an export (mineralnet.export.publish): a process killed before each step of the publish, in
turn, leaves the output folder holding exactly the previous export or the new one, and the next export cleans up.
Fast: plain files, no TensorFlow (tests/export/test_export.py checks the exporter publishes through it)."""

import os
import subprocess
import sys

import pytest

from mineralnet.export import publish

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OLD = {"model_float32.tflite": b"old float32", "model_float32.json": b"old sidecar",
       "model_int8.tflite": b"old int8", "model_int8.json": b"old int8 sidecar", "report.json": b"old report"}
NEW = {"model_float32.tflite": b"new float32", "model_float32.json": b"new sidecar", "report.json": b"new report"}

# Runs publish() on a staging folder holding NEW, counting the filesystem steps (renames, the swap, removals);
# os._exit(9) just before step KILL_AT: no `finally`, no cleanup, as SIGKILL or a power cut. Prints the count.
CHILD = r"""
import os, shutil, sys
from mineralnet.export import publish
out, kill_at, no_swap = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
new = eval(sys.argv[4])
steps = [0]
def step(function):
    def run(*args, **kwargs):
        if steps[0] == kill_at:
            os._exit(9)
        steps[0] += 1
        return function(*args, **kwargs)
    return run
def no_exchange(a, b):
    raise OSError(22, "Invalid argument")
staging = publish.staging_dir(out)
for name, data in new.items():
    with open(os.path.join(staging, name), "wb") as handle:
        handle.write(data)
publish._exchange = step(no_exchange if no_swap else publish._exchange)
os.rename, shutil.rmtree = step(os.rename), step(shutil.rmtree)
publish.publish(staging, out)
print(steps[0])
"""


def _write(folder, files):
    os.makedirs(folder)
    for name, data in files.items():
        with open(os.path.join(folder, name), "wb") as handle:
            handle.write(data)


def _read(folder):
    if not os.path.isdir(folder):
        return None
    contents = {}
    for name in os.listdir(folder):
        with open(os.path.join(folder, name), "rb") as handle:
            contents[name] = handle.read()
    return contents


def _child(out, kill_at, no_swap):
    return subprocess.run([sys.executable, "-c", CHILD, str(out), str(kill_at), "1" if no_swap else "0", repr(NEW)],
                          cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("no_swap", [False, True], ids=["renameat2-exchange", "two-renames"])
@pytest.mark.parametrize("previous", [True, False], ids=["over-an-export", "first-export"])
def test_a_kill_before_any_step_of_the_publish_leaves_the_old_export_or_the_new_one(tmp_path, no_swap, previous):
    reference = tmp_path / "reference" / "export"
    if previous:
        _write(reference, OLD)
    done = _child(reference, -1, no_swap)  # never killed: counts the steps
    assert done.returncode == 0, done.stderr
    assert _read(reference) == NEW and os.listdir(reference.parent) == ["export"]
    steps = int(done.stdout)
    # first export: rename | swap, remove | (swap refused), rename aside, rename in, remove
    assert steps == (1 if not previous else 4 if no_swap else 2)
    for kill_at in range(steps + 1):
        out = tmp_path / f"kill{kill_at}" / "export"
        if previous:
            _write(out, OLD)
        else:
            out.parent.mkdir()
        done = _child(out, kill_at, no_swap)
        assert done.returncode == (9 if kill_at < steps else 0), done.stderr
        seen = _read(out)
        if seen is None and previous:  # two renames, killed between them: the previous export aside, whole
            assert no_swap and kill_at == 2
            assert _read(out.parent / (publish.PREVIOUS_PREFIX + "export")) == OLD
        else:
            assert seen in ((OLD, NEW) if previous else (None, NEW)), (kill_at, seen)
        publish.recover(str(out))  # what the next export to the same folder does first
        assert _read(out) == (seen or (OLD if previous else None))
        assert sorted(os.listdir(out.parent)) == (["export"] if _read(out) is not None else [])


def test_publish_replaces_the_whole_folder_no_stale_file_of_the_previous_export_stays(tmp_path):
    out = tmp_path / "export"
    _write(out, OLD)
    staging = publish.staging_dir(str(out))
    for name, data in NEW.items():
        (tmp_path / staging / name).write_bytes(data)
    publish.publish(staging, str(out))
    assert _read(out) == NEW  # model_int8.* of the previous export are gone with it
    assert os.listdir(tmp_path) == ["export"]


@pytest.mark.parametrize("content", ["notes.txt", "subfolder"])
def test_an_output_folder_with_other_files_is_refused(tmp_path, content):
    out = tmp_path / "Desktop"
    _write(out, {"model_float32.tflite": b"x"})
    (out / content).mkdir() if content == "subfolder" else (out / content).write_text("mine")
    with pytest.raises(publish.ExportError, match=f"holds {content}, which no export wrote"):
        publish.check_output(str(out))
