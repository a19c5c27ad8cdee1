"""python -m mineralnet.ensemble: several runs of one split averaged into one run directory whose model.keras
gives the mean of the members' probabilities, and which evaluation, Grad-CAM and the exporter take as one model."""

import json
import os
import warnings

import numpy as np
import pytest

from helpers import run_python
from mineralnet import rundir
from mineralnet.data import load_image
from mineralnet.ensemble import ensemble_runs
from mineralnet.errors import EXIT_BAD_INPUT
from mineralnet.gradcam import gradcam_heatmaps
from mineralnet.training import resolve_config, train

SIZE = 32


def _train(demo_data, out, **overrides):
    config = resolve_config(overrides={"weights": "none", "data": demo_data, "out": str(out), "model": "simple_cnn",
                                       "image_size": SIZE, "epochs": 3, "batch_size": 8, "evaluate": False,
                                       **overrides})
    return rundir.Run(train(config))


@pytest.fixture(scope="module")
def members(demo_data, tmp_path_factory):
    """Two simple_cnn runs of one split (seeds 0 and 1) and one of another split."""
    root = tmp_path_factory.mktemp("members")
    first = _train(demo_data, root / "seed0")
    second = _train(demo_data, root / "seed1", seed=1, split=first.split_file)
    other_split = _train(demo_data, root / "other_split", seed=2)
    return first, second, other_split


@pytest.fixture(scope="module")
def ensemble(members, tmp_path_factory):
    out = tmp_path_factory.mktemp("ensemble") / "run"
    report = ensemble_runs([members[0].path, members[1].path], str(out))
    return rundir.Run(out), report


def _pixels(run):
    return np.stack([load_image(row["file"], SIZE) for row in run.rows("test")]).astype(np.float32)


def test_the_ensemble_outputs_the_mean_of_its_members(members, ensemble):
    run, report = ensemble
    pixels = _pixels(run)
    mean = np.mean([member.load_model().predict(pixels, verbose=0) for member in members[:2]], axis=0)
    np.testing.assert_allclose(run.load_model().predict(pixels, verbose=0), mean, atol=1e-6)
    truth = np.array([run.labels.index(row["label"]) for row in run.rows("test")])
    assert report["accuracy"] == pytest.approx(np.mean(mean.argmax(1) == truth))
    assert report["baseline"]["features"]["accuracy"] >= 0  # the evaluation sets it beside the baselines
    with open(os.path.join(run.eval_dir(), "report.json")) as handle:
        assert json.load(handle)["accuracy"] == report["accuracy"]
    assert run.labels == members[0].labels and run.image_size == SIZE
    assert run.rows() == members[0].rows()
    assert run.config["members"] == [members[0].path, members[1].path]


def test_gradcam_of_the_ensemble_is_the_mean_of_its_members_maps(members, ensemble):
    run, _ = ensemble
    pixels = _pixels(run)[:4]
    cams, probabilities = gradcam_heatmaps(run.load_model(), pixels)
    chosen = probabilities.argmax(1)
    member_cams = [gradcam_heatmaps(member.load_model(), pixels, chosen)[0] for member in members[:2]]
    mean = np.mean(member_cams, axis=0)
    peak = mean.reshape(len(mean), -1).max(1)[:, None, None]
    np.testing.assert_allclose(cams, np.divide(mean, peak, out=np.zeros_like(mean), where=peak > 0), atol=1e-5)
    assert cams.shape == member_cams[0].shape and cams.min() >= 0 and cams.max() <= 1


@pytest.mark.slow
def test_the_ensemble_exports_to_verified_tflite_without_flex(ensemble, tmp_path):
    from mineralnet.export import export_run, list_operators

    run, report = ensemble
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exported = export_run(run.path, formats=("float32", "int8"), calibration_samples=16, out_dir=str(tmp_path))
    for name in ("float32", "int8"):
        operators = list_operators((tmp_path / f"model_{name}.tflite").read_bytes())
        assert not [op for op in operators if op.startswith("Flex")], operators
        assert operators["CONV_2D"] == 4, operators  # two members of two convolutions each
    assert exported["formats"]["float32"]["accuracy"] == pytest.approx(report["accuracy"])
    assert exported["formats"]["float32"]["agreement_with_keras"] == 1.0


@pytest.mark.parametrize("case", ["other split", "one run", "out holds a run"])
def test_runs_that_cannot_be_averaged_exit_2_with_the_fix(members, ensemble, tmp_path, case):
    runs = {"other split": [members[0].path, members[2].path], "one run": [members[0].path],
            "out holds a run": [members[0].path, members[1].path]}[case]
    out = ensemble[0].path if case == "out holds a run" else str(tmp_path / "run")
    done = run_python(["-m", "mineralnet.ensemble", *runs, "--out", out, "--no-baseline"], check=False)
    assert done.returncode == EXIT_BAD_INPUT, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    expected = {"other split": "--split", "one run": "at least two runs", "out holds a run": "new --out"}[case]
    assert last.startswith("error: ") and expected in last, done.stderr
    assert case == "out holds a run" or not os.path.exists(tmp_path / "run" / "model.keras")
