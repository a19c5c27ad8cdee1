"""Split conformal calibration (mineralnet.calibrate) and the runner's use of it."""

import json
import os
import shutil

import numpy as np
import pytest

from edge.config import parse_config
from edge.decision import Decider
from edge.model import Model
from edge.preprocess import open_rgb, prepare
from mineralnet.calibrate import conformal_qhat, main
from mineralnet.data import read_split

ALPHA = 0.1


@pytest.fixture(scope="module")
def fresh_run(tiny_export, tmp_path_factory):
    """A run directory over 1000 new demo images (another seed) with 400 val and 400 test rows.

    The tiny export's own 13 val and 12 test rows are too few to measure coverage within 0.05: for that the
    calibration and test images only have to be exchangeable with each other, not with the training images.
    """
    from mineralnet.data import make_demo_dataset, make_split, scan_dataset, write_split
    from mineralnet.utils import write_json

    root = tmp_path_factory.mktemp("fresh_run")
    data = make_demo_dataset(str(root / "data"), num_classes=4, images_per_class=250, image_size=48, seed=1)
    classes, samples, _ = scan_dataset(data)
    assert classes == tiny_export["labels"]
    run = root / "run"
    run.mkdir()
    write_split(make_split(samples, (0.2, 0.4, 0.4), seed=1), str(run / "split.csv"))
    write_json(str(run / "labels.json"), classes)
    write_json(str(run / "config.json"), {"data": data, "image_size": 32, "model": "simple_cnn"})
    return str(run)

def test_conformal_qhat():
    scores = np.arange(10) / 10.0  # 0.0 ... 0.9
    assert conformal_qhat(scores, 0.2) == pytest.approx(0.8)  # ceil(11 * 0.8) = 9th smallest
    assert conformal_qhat(scores, 0.05) == 1.0  # ceil(11 * 0.95) = 11 > n
    assert conformal_qhat(np.arange(9) / 10.0, 0.5) == pytest.approx(0.4)  # (9 + 1) * 0.5 = 5 exactly: 5th
    with pytest.raises(ValueError):
        conformal_qhat(scores, 0.0)


def _copy_model(tiny_export, fmt, directory):
    model = os.path.join(directory, f"model_{fmt}.tflite")
    shutil.copy(tiny_export[fmt], model)
    shutil.copy(tiny_export[fmt][: -len(".tflite")] + ".json", model[: -len(".tflite")] + ".json")
    return model


def _rows(run, subset):
    data = json.load(open(os.path.join(run, "config.json")))["data"]
    return [r for r in read_split(os.path.join(run, "split.csv"), data) if r["subset"] == subset]


def _probabilities(model, rows):
    return np.stack([
        model.classify(prepare(open_rgb(r["file"]), None, model.input_size, model.input_dtype,
                               model.input_scale, model.input_zero_point))
        for r in rows
    ])


def test_calibration_is_written_into_the_sidecar_only(tiny_export, tmp_path, capsys):
    model_path = _copy_model(tiny_export, "float32", tmp_path)
    sidecar_path = model_path[: -len(".tflite")] + ".json"
    before = json.load(open(sidecar_path))
    assert main(["--run", tiny_export["run"], "--model", model_path, "--alpha", "0.2"]) == 0
    after = json.load(open(sidecar_path))
    reject = after.pop("reject")
    assert after == before  # nothing else changed
    assert reject == {
        "method": "split_conformal", "alpha": 0.2, "qhat": reject["qhat"], "n": len(_rows(tiny_export["run"], "val")),
        "score": "1 - p_true",
    }
    assert 0.0 <= reject["qhat"] < 1.0 and "qhat=" in capsys.readouterr().out
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]


@pytest.mark.parametrize("fmt", ["float32", "int8"])
def test_prediction_sets_cover_the_test_rows(tiny_export, fresh_run, tmp_path, fmt):
    model_path = _copy_model(tiny_export, fmt, tmp_path)
    assert main(["--run", fresh_run, "--model", model_path, "--alpha", str(ALPHA)]) == 0
    model = Model(model_path)
    reject = model.reject

    # The runner's own preprocessing and interpreter give the same threshold on the val rows.
    val = _rows(fresh_run, "val")
    truth = [model.labels.index(r["label"]) for r in val]
    scores = 1.0 - _probabilities(model, val)[np.arange(len(val)), truth]
    assert reject["n"] == len(val) == 400
    assert reject["qhat"] == pytest.approx(conformal_qhat(scores, ALPHA), abs=1e-6)

    # Coverage on the held-out test rows: the true class is in the runner's prediction set.
    config = parse_config('[bins]\ndefault = "x"\nrecheck = "r"\n[belt]\nspeed_mm_s = 1\ncamera_to_ejector_mm = 1\n')
    decider = Decider(model.labels, config.bins, model.reject)
    assert decider.method == "split_conformal" and decider.cutoff == pytest.approx(1 - reject["qhat"])
    test = _rows(fresh_run, "test")
    sets = [decider.decide(p).prediction_set for p in _probabilities(model, test)]
    coverage = np.mean([r["label"] in s for r, s in zip(test, sets)])
    assert coverage >= 1 - ALPHA - 0.05

def test_too_few_val_images_warn_and_recheck_everything(tiny_export, tmp_path, capsys):
    model_path = _copy_model(tiny_export, "float32", tmp_path)
    assert main(["--run", tiny_export["run"], "--model", model_path, "--alpha", "0.05"]) == 0
    assert "too few" in capsys.readouterr().err
    assert Model(model_path).reject["qhat"] == 1.0


def test_calibrating_a_model_with_a_foreign_sidecar_is_refused(tiny_export, tmp_path, capsys):
    model_path = _copy_model(tiny_export, "float32", tmp_path)
    assert main(["--run", tiny_export["run"], "--model", model_path,
                 "--sidecar", tiny_export["int8"][: -len(".tflite")] + ".json"]) == 2
    assert "sha256 differs" in capsys.readouterr().err
