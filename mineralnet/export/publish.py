"""Publish an export as a whole: every file is written into a staging folder beside the output folder, then the
staging folder becomes the output folder in one step, so a reader (or a kill at any moment) sees the previous
export or the new one, never a mix of the two (nor a file of an older export left beside the new ones).

- No output folder yet: one rename(2) of the staging folder.
- An output folder from an earlier export: renameat2(2) with RENAME_EXCHANGE swaps the two folders atomically
  (Linux >= 3.15 on ext4, xfs, btrfs, tmpfs, overlayfs...); the staging folder, which now holds the previous
  export, is then removed.
- A filesystem or system without that swap (vfat, NFS, macOS): the output folder is renamed to
  `.export-previous-NAME`, the staging folder renamed to the output, the previous one removed. A kill between
  those two renames leaves no output folder and the previous export whole under that name; the next export to
  the same output (or recover(out_dir)) puts it back first. Still never a mix.

No TensorFlow here: tests/export/test_publish.py kills a process between every step.
"""

import ctypes
import errno
import logging
import os
import shutil
import sys
import tempfile

from mineralnet import rundir
from mineralnet.export.errors import ExportError
from mineralnet.rundir import sidecar_name, tflite_name
from mineralnet.utils import fsync_dir

STAGING_PREFIX = ".export-staging-"  # + the output's name + "-": a directory so named beside it is an export's staging
PREVIOUS_PREFIX = ".export-previous-"  # + the output's name: the previous export during a two-rename publish
RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100

log = logging.getLogger("mineralnet.export")


def _is_export_file(name):
    """The names an export writes (mineralnet.rundir: tflite_name and sidecar_name of any format, EXPORT_LABELS, the
    report files)."""
    model = tflite_name("*").split("*")
    sidecar = sidecar_name("*").split("*")
    return any(name.startswith(head) and name.endswith(tail) for head, tail in (model, sidecar)) or name in (
        rundir.EXPORT_LABELS, rundir.REPORT, rundir.REPORT_MARKDOWN)


def check_output(out_dir):
    """ExportError unless `out_dir` is absent or a folder holding only an export's files: publishing replaces the
    whole folder, so a folder with anything else in it (`--out ~/Desktop`) is refused before the slow work."""
    if not os.path.lexists(out_dir):
        return
    if os.path.islink(out_dir) or not os.path.isdir(out_dir):
        raise ExportError(f"output '{out_dir}' is not a folder (a file or a symbolic link): the export replaces the "
                          "output folder as a whole; pass --out a new folder or an earlier export's.")
    foreign = sorted(name for name in os.listdir(out_dir) if not _is_export_file(name))
    if foreign:
        raise ExportError(f"output folder '{out_dir}' holds {', '.join(foreign[:3])}"
                          f"{' ...' if len(foreign) > 3 else ''}, which no export wrote: the export replaces the "
                          "folder as a whole; pass --out a new folder or an earlier export's.")


def recover(out_dir):
    """Finish what a killed export to `out_dir` left: put back a previous export a two-rename publish had moved
    aside (when the output folder is missing), else remove it; remove its staging folders. Staging folders of
    exports to other outputs are left alone; two exports into one output at once are not supported."""
    parent, name = os.path.split(out_dir)
    previous = os.path.join(parent, PREVIOUS_PREFIX + name)
    if os.path.isdir(previous):
        if os.path.lexists(out_dir):
            log.info("removing %s, left by an interrupted export", previous)
            shutil.rmtree(previous, ignore_errors=True)
        else:
            log.info("restoring %s, moved aside by an interrupted export", out_dir)
            os.rename(previous, out_dir)
    prefix = f"{STAGING_PREFIX}{name}-"
    for entry in os.listdir(parent):
        if entry.startswith(prefix) and os.path.isdir(os.path.join(parent, entry)):
            log.info("removing %s, left by an interrupted export", os.path.join(parent, entry))
            shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)


def staging_dir(out_dir):
    """A new hidden staging folder beside `out_dir` (same filesystem: the renames are atomic), after recover()."""
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    recover(out_dir)
    return tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.path.basename(out_dir)}-", dir=parent)


def _exchange(a, b):
    """Swap the folders `a` and `b` atomically (renameat2 RENAME_EXCHANGE); OSError(ENOSYS, EINVAL...) where the
    system or filesystem cannot."""
    if not sys.platform.startswith("linux"):
        raise OSError(errno.ENOSYS, "renameat2 is Linux only")
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:  # glibc < 2.28
        raise OSError(errno.ENOSYS, "no renameat2 in the C library")
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), a, None, b)


def publish(staging, out_dir):
    """Make the complete export in `staging` (made by staging_dir(out_dir), its files already fsynced) the output
    folder `out_dir` in one step; the previous export, if any, is removed."""
    parent = os.path.dirname(out_dir)
    fsync_dir(staging)  # its entries are on disk before it becomes the output
    if not os.path.lexists(out_dir):
        os.rename(staging, out_dir)
    else:
        check_output(out_dir)
        try:
            _exchange(staging, out_dir)
            aside = staging  # now the previous export
        except OSError as error:
            if error.errno not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
                raise
            log.info("this filesystem cannot swap folders atomically (%s): publishing with two renames", error)
            aside = os.path.join(parent, PREVIOUS_PREFIX + os.path.basename(out_dir))
            os.rename(out_dir, aside)
            os.rename(staging, out_dir)
        fsync_dir(parent)
        shutil.rmtree(aside)
    fsync_dir(parent)
