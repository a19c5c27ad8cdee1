"""Export fixtures: every format of the shared tiny run (tests/conftest.py `tiny_run`), exported once per session
through the CLI (ConvNeXt-Tiny conversion is slow) and shared by all export tests."""

import contextlib
import io
import os

import pytest

RUN_FILES = ("model.keras", "labels.json", "split.csv", "config.json")


def pytest_collection_modifyitems(items):
    """Every export test converts real models: all are `slow` (skipped by -m "not slow")."""
    folder = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(folder):
            item.add_marker(pytest.mark.slow)


def _link_run(run_dir, target, files=RUN_FILES):
    os.makedirs(target)
    for name in files:
        os.symlink(os.path.join(run_dir, name), os.path.join(target, name))
    return str(target)


def _run_cli(argv):
    from mineralnet.export.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="session")
def link_run():
    """link_run(run_dir, target, files): a run directory of symlinks to some of `run_dir`'s files, so a test can
    break or export it without touching the shared run (its default output goes to target/export)."""
    return _link_run


@pytest.fixture(scope="session")
def run_cli():
    """run_cli(argv): `export.py ARGV` in this process, returning (exit status, stdout, stderr)."""
    return _run_cli


@pytest.fixture(scope="session")
def export_run_dir(tiny_run, tmp_path_factory):
    return _link_run(tiny_run, tmp_path_factory.mktemp("export") / "run")


@pytest.fixture(scope="session")
def cnn_run_dir(tiny_export, tmp_path_factory):
    """The simple_cnn run the edge tests already trained (tests/conftest.py `tiny_export`), linked like
    export_run_dir: for the float32 gate, staging and publish paths, which do not depend on the model, its float32
    conversion takes about a second where the tiny ConvNeXt's takes ~15 s. (The int8 gate tests stay on the
    ConvNeXt: simple_cnn's int8 calibrated on black images loses only 5 of its 12 test images, p = 0.031, too close
    to the gate's 0.05 to rely on.)"""
    return _link_run(tiny_export["run"], tmp_path_factory.mktemp("cnn_export") / "run")


@pytest.fixture(scope="session")
def exported(export_run_dir):
    """(out_dir, stdout) of `export.py --run RUN --calibration-samples 8 --max-accuracy-drop 100` with the default
    formats and output. The floor is lifted: the tiny run has a handful of test images, each worth many points,
    and a 2-epoch model whose quantized formats may flip one (tests/export/test_rewrite.py tests the gate)."""
    code, stdout, stderr = _run_cli(["--run", export_run_dir, "--calibration-samples", "8",
                                     "--max-accuracy-drop", "100"])
    assert code == 0, stderr
    return os.path.join(export_run_dir, "export"), stdout
