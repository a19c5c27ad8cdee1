"""Shared fixtures: the synthetic demo dataset, one tiny trained run, and the real MINET-7 photos when present."""

import os
import subprocess
import sys

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
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


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory):
    """4 synthetic classes x 16 images of 48 px."""
    from mineralnet.data import make_demo_dataset

    return make_demo_dataset(str(tmp_path_factory.mktemp("demo")), num_classes=4, images_per_class=16,
                             image_size=48)


@pytest.fixture(scope="session")
def tiny_run(demo_data, tmp_path_factory):
    """A finished eca_convnext_tiny run at 32 px (2 epochs) on the demo data: every run-directory artefact."""
    from mineralnet.training import resolve_config, train

    config = resolve_config(overrides={"data": demo_data, "out": str(tmp_path_factory.mktemp("run") / "tiny"),
                                       "image_size": 32, "epochs": 2, "batch_size": 16})
    return train(config)
