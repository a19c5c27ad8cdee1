"""benchmarks/kmeans_features.py and ensemble_runs.py --probabilities (issue 16's measurements) on the tiny demo
run: tables that parse, a k-means model that learns the synthetic classes, and probabilities of other test
images refused."""

import os

import numpy as np

from helpers import run_python
from mineralnet.rundir import Run

KMEANS = os.path.join("benchmarks", "kmeans_features.py")
ENSEMBLE = os.path.join("benchmarks", "ensemble_runs.py")


def table(stdout):
    rows = [line.strip().strip("|").split("|") for line in stdout.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in row] for row in rows[2:]]


def percent(cell):
    return float(cell.strip("*").rstrip("%"))


def test_kmeans_features_learn_and_join_an_ensemble(tiny_run, tmp_path):
    saved = str(tmp_path / "kmeans.npz")
    out = run_python([KMEANS, "--run", tiny_run, "--size", "32", "--k", "16", "--C", "0.1,1",
                      "--save-probabilities", saved], timeout=600).stdout
    rows = table(out)
    assert [row[0] for row in rows] == ["0.1", "1"], out
    # 4 well-separated synthetic classes: far above the 25 % of chance on validation and test, single view and TTA
    assert all(percent(cell) >= 60 for row in rows for cell in row[1:5]), out

    kept = np.load(saved)
    test_files = [row["path"] for row in Run(tiny_run).rows("test")]
    assert list(kept["files"]) == test_files
    assert kept["probabilities"].shape == (len(test_files), 4)
    np.testing.assert_allclose(kept["probabilities"].sum(1), 1, rtol=1e-6)

    out = run_python([ENSEMBLE, tiny_run, "--probabilities", saved], timeout=600).stdout
    rows = table(out)
    assert [row[0] for row in rows][1:] == ["kmeans.npz", "**mean of the 2 models' probabilities**"], out

    shuffled = str(tmp_path / "shuffled.npz")
    np.savez(shuffled, probabilities=kept["probabilities"], files=kept["files"][::-1])
    refused = run_python([ENSEMBLE, tiny_run, "--probabilities", shuffled], timeout=600, check=False)
    assert refused.returncode != 0 and "other test images" in refused.stderr
