"""Every command's `--help` answers without TensorFlow, Keras or JAX (importing TensorFlow alone takes 6-9 s): each
runs in a fresh interpreter where importing them raises ImportError, so a command that imports one before parsing
its arguments fails here. The console scripts are read from setup.cfg, so a new one is checked without an edit.
The time each took is printed (`pytest -s`), not asserted: speed goals live in benchmarks."""

import configparser
import os
import subprocess
import sys
import time

import pytest

from helpers import REPO

BLOCKED = ("tensorflow", "keras", "tf_keras", "jax")

# Installed first in the child: any import of a BLOCKED package (or one of its modules) raises ImportError.
BLOCKER = f"""\
import importlib.abc, runpy, sys

class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED!r}:
            raise ImportError(f"{{name}} is blocked: --help must not import it")
        return None

sys.meta_path.insert(0, Blocked())
"""


def console_scripts():
    """setup.cfg's console scripts as (name, module, function)."""
    config = configparser.ConfigParser()
    config.read(os.path.join(REPO, "setup.cfg"))
    lines = [line.strip() for line in config["options.entry_points"]["console_scripts"].splitlines() if line.strip()]
    scripts = []
    for line in lines:
        name, target = (part.strip() for part in line.split("="))
        module, function = target.split(":")
        scripts.append((name, module, function))
    return scripts


def console_script_code(name, module, function):
    return (f"sys.argv = [{name!r}, '--help']\n"
            f"from {module} import {function}\n"
            f"sys.exit({function}())\n")


def script_code(path):
    return f"sys.argv = [{path!r}, '--help']\nrunpy.run_path({path!r}, run_name='__main__')\n"


def module_code(module):
    return f"sys.argv = [{module!r}, '--help']\nrunpy.run_module({module!r}, run_name='__main__', alter_sys=True)\n"


COMMANDS = (
    [pytest.param(console_script_code(*script), id=script[0]) for script in console_scripts()]
    + [pytest.param(script_code(path), id=f"python {path}") for path in ("export.py", "train.py", "edge/runner.py")]
    + [pytest.param(module_code(module), id=f"python -m {module}")
       for module in ("mineralnet.export", "mineralnet.models.weights", "mineralnet.review", "mineralnet.data.belt")]
)


def test_every_console_script_of_setup_cfg_is_checked():
    names = {name for name, _, _ in console_scripts()}
    assert {"mineralnet-train", "mineralnet-export", "mineralnet-calibrate", "mineralnet-gradcam"} <= names


@pytest.mark.parametrize("code", COMMANDS)
def test_help_answers_without_tensorflow(code, request):
    environment = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", BLOCKER + code], cwd=REPO, capture_output=True, text=True,
                          env=environment, timeout=120)
    print(f"{request.node.callspec.id} --help: {time.perf_counter() - start:.2f} s")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "usage:" in done.stdout and "--help" in done.stdout, done.stdout
    assert "Traceback" not in done.stderr, done.stderr[-3000:]


def test_the_blocker_blocks():
    """The check above can fail: with the blocker installed, importing TensorFlow raises."""
    done = subprocess.run([sys.executable, "-c", BLOCKER + "import tensorflow"], capture_output=True, text=True)
    assert done.returncode == 1 and "tensorflow is blocked" in done.stderr
