"""File-system faults as one line (issue 24 point 5): an --out that cannot be written is refused before any work
(exit 2, one line, nothing made), and a full disk while a checkpoint is written ends the run in one line with the
last good checkpoint intact, from which --resume continues once there is space.

The full disk is made without root: the process's file-size limit (RLIMIT_FSIZE, with SIGXFSZ ignored) makes every
write past it fail with EFBIG, as ENOSPC does on a full disk; the run's files are far below the limit except the
model and checkpoint files. The read-only file system is a read-only tmpfs where this process may mount one (root
in a container that allows it), else skipped; a path below a regular file is refused everywhere.
"""

import contextlib
import json
import os
import resource
import signal
import subprocess
import sys

import keras
import pytest

from helpers import REPO
from mineralnet.errors import EXIT_BAD_INPUT
from mineralnet.models import register_all
from mineralnet.training import run_from_args
from mineralnet.training.filesystem import FileSystemError, check_writable

BASE = {"weights": "none", "model": "simple_cnn", "image_size": 32, "batch_size": 16, "evaluate": False}
LIMIT = 256 * 1024  # bytes: config, split, history and state files fit, the 0.7 MB model.keras does not


def _train_cli(*args):
    return subprocess.run([sys.executable, "train.py", *args], cwd=REPO, capture_output=True, text=True, timeout=300)


@contextlib.contextmanager
def file_size_limit(limit):
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a signal that kills the process
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


@contextlib.contextmanager
def read_only_mount(folder):
    os.makedirs(folder)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_an_out_below_a_file_is_refused_before_any_work(tmp_path, demo_data):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    done = _train_cli("--weights", "none", "--data", demo_data, "--out", str(blocker / "run"), "--epochs", "1")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == EXIT_BAD_INPUT and len(lines) == 1, done.stderr
    assert lines[0].startswith("error: --out") and "is a file" in lines[0] and "nothing was done" in lines[0]
    assert done.stdout == "" and sorted(os.listdir(tmp_path)) == ["a_file"]


@pytest.mark.parametrize("module, argv", [
    ("mineralnet.evaluate", ["--run", "RUN"]), ("mineralnet.export.cli", ["--run", "RUN"]),
    ("mineralnet.ensemble", ["RUN", "RUN"]),
])
def test_the_other_tools_refuse_an_unwritable_out_before_any_work(tmp_path, capsys, module, argv):
    import importlib

    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert importlib.import_module(module).main([*argv, "--out", str(blocker / "out")]) == EXIT_BAD_INPUT
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --out") and "is a file" in lines[0]


def test_an_out_on_a_read_only_file_system_is_refused_in_one_line(tmp_path):
    with read_only_mount(tmp_path / "ro") as folder:
        with pytest.raises(FileSystemError, match=r"--out '.*/ro/run' cannot be written \(Read-only file system"):
            check_writable(str(folder / "run"))
        assert os.listdir(folder) == []
    check_writable(str(tmp_path / "new" / "run"))  # a writable place: nothing said, nothing made
    assert not (tmp_path / "new").exists()


def test_a_full_disk_at_a_checkpoint_keeps_the_last_one_and_resume_continues(tmp_path, demo_data, capsys):
    run = run_from_args({**BASE, "data": demo_data, "out": str(tmp_path / "run"), "epochs": 1})
    # (The run's split-time warning, in passing: 64 demo images at 6:1:1:2 leave 8 calib rows of the 19 needed.)
    assert "warning: the split has 8 calib rows" in capsys.readouterr().err
    state_file = os.path.join(run, "checkpoint", "state.json")
    before = open(state_file).read()
    with file_size_limit(LIMIT):
        with pytest.raises(FileSystemError) as raised:
            run_from_args({"out": run, "epochs": 2}, resume=True)
    message = str(raised.value)
    assert "\n" not in message and "intact at epoch 1" in message and f"--out {run} --resume" in message
    assert open(state_file).read() == before
    assert sorted(os.listdir(os.path.dirname(state_file))) == ["epoch-1.keras", "state.json"]  # no partial file
    assert not [name for name in os.listdir(run) if ".tmp" in name]
    register_all()
    keras.models.load_model(os.path.join(run, "checkpoint", "epoch-1.keras"))  # the last good checkpoint loads

    run_from_args({"out": run, "epochs": 2}, resume=True)  # space again: it continues from epoch 1
    state = json.load(open(state_file))
    assert state["epoch"] == 2 and [row["epoch"] for row in state["history"]] == [1, 2]
