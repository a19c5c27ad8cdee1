"""Test helpers shared across test folders (a module of its own name: every folder's conftest.py is `conftest`)."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MINET = os.path.join(os.path.dirname(REPO), "shared", "data", "minet_512")

requires_minet = pytest.mark.skipif(not os.path.isdir(MINET), reason=f"real photos absent: {MINET}")


def run_python(args, env=None, timeout=600, check=True):
    """Run `python ARGS` from the repo root in a fresh process; returns the CompletedProcess."""
    full_env = dict(os.environ, PYTHONPATH=REPO, **(env or {}))
    done = subprocess.run([sys.executable, *args], cwd=REPO, env=full_env, capture_output=True, text=True,
                          timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"python {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done
