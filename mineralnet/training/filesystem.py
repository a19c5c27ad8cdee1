"""File-system faults of a training run as one line each, the run kept resumable.

- An `--out` that cannot be written (a read-only file system, a path under a file, no permission) is refused
  before any work: check_writable probes the folder, or the nearest existing folder above it, with a temporary file
  it removes at once, so a refused run leaves nothing behind.
- A full disk (ENOSPC, a quota: EDQUOT, a file-size limit: EFBIG) while a checkpoint or the model is written ends
  the run with one line naming the last good checkpoint. Nothing more is needed for safety: every file is written
  to a temporary file and renamed (mineralnet.utils.atomic_path), and state.json names a checkpoint only after it
  is complete (mineralnet.training.checkpoint), so the last good epoch is intact and `--resume` continues from it
  once there is space again.
"""

import contextlib
import errno
import os
import tempfile

from mineralnet.errors import MineralnetError

FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # no space, over quota, over the process's file-size limit


class FileSystemError(MineralnetError):
    """A run directory that cannot be written; the message names the folder, what was kept, and the fix."""


def check_writable(folder, flag="--out"):
    """FileSystemError unless a file can be created in `folder`, or, while it does not exist yet, in the nearest
    existing folder above it (where it would be made). Writes nothing that stays."""
    probe = os.path.abspath(folder)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise FileSystemError(f"{flag} '{folder}' cannot be made: '{probe}' is a file. Pass an {flag} folder on a "
                              "writable disk; nothing was done.")
    try:
        fd, path = tempfile.mkstemp(prefix=".mineralnet-write-check.", dir=probe)
    except OSError as error:
        raise FileSystemError(f"{flag} '{folder}' cannot be written ({os.strerror(error.errno)} at '{probe}'): pass "
                              f"an {flag} folder on a writable disk; nothing was done.") from None
    os.close(fd)
    os.remove(path)


@contextlib.contextmanager
def disk_full_as_one_line(run):
    """Turn a full disk inside the block into FileSystemError naming the last good checkpoint of `run` (a
    rundir.Run) and `--resume`; other OSErrors pass unchanged."""
    try:
        yield
    except OSError as error:
        if error.errno not in FULL:
            raise
        from mineralnet.training.checkpoint import read_state

        try:
            state = read_state(run)
        except (OSError, ValueError):
            state = None
        kept = (f"the run is intact at epoch {state['epoch']} ({os.path.join(run.checkpoint_dir, state['checkpoint'])})"
                if state else "no epoch had finished, so the run starts afresh with --resume")
        where = f" while writing '{error.filename}'" if error.filename else ""
        raise FileSystemError(f"{os.strerror(error.errno)}{where} in run '{run.path}': {kept}. Free space on that "
                              f"disk, then continue with train.py --out {run.path} --resume.") from None
