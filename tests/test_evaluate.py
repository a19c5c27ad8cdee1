import json
import os

import numpy as np
import pytest
from PIL import Image

from mineralnet import rundir
from mineralnet.data import load_image
from mineralnet.evaluate import main as evaluate_main
from mineralnet.gradcam import feature_map_tensor, gradcam_heatmaps, gradcam_run
from mineralnet.metrics import classification_report
from mineralnet.models import build_model, list_models
from mineralnet.training import resolve_config, train

from helpers import MINET, requires_minet

RUN_FILES = ["model.keras", "labels.json", "split.csv", "config.json", "data_report.json", "history.csv",
             "curves.png", "checkpoint/state.json", "eval/report.json", "eval/report.md", "eval/confusion_matrix.png"]


def assert_report_matches_model(run_path):
    """report.json equals a recomputation from the model's own predictions on the split's test rows."""
    run = rundir.Run(run_path)
    report = json.load(open(os.path.join(run_path, "eval", "report.json")))
    rows = run.rows("test")
    model = run.load_model()
    pixels = np.stack([load_image(r["file"], run.image_size) for r in rows]).astype("float32")
    predicted = model.predict(pixels, verbose=0).argmax(axis=1)
    truth = np.array([run.labels.index(r["label"]) for r in rows])
    assert report["num_samples"] == len(rows)
    assert report["accuracy"] == pytest.approx(float((predicted == truth).mean()))
    matrix = np.zeros((len(run.labels),) * 2, int)
    np.add.at(matrix, (truth, predicted), 1)
    assert report["confusion_matrix"] == matrix.tolist()
    for key in ("precision_macro", "recall_macro", "f1_macro"):
        assert 0 <= report[key] <= 1
    assert set(report["per_class"]) == set(run.labels)
    return report


def test_metrics_against_hand_computed_values():
    report = classification_report([0, 0, 1, 1, 2], [0, 1, 1, 1, 0], ["a", "b", "c"])
    assert report["accuracy"] == pytest.approx(3 / 5)
    assert report["per_class"]["a"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    assert report["per_class"]["b"]["precision"] == pytest.approx(2 / 3)
    assert report["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert report["precision_macro"] == pytest.approx((0.5 + 2 / 3 + 0) / 3)
    assert report["recall_macro"] == pytest.approx((0.5 + 1 + 0) / 3)
    assert report["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]


def test_tiny_run_has_every_artefact_and_a_true_report(tiny_run):
    for name in RUN_FILES:
        assert os.path.getsize(os.path.join(tiny_run, name)) > 0, name
    assert Image.open(os.path.join(tiny_run, "curves.png")).format == "PNG"
    checkpoint = os.path.join(tiny_run, "checkpoint", "epoch-2.keras")  # model + Adam's two moments
    assert os.path.getsize(os.path.join(tiny_run, "model.keras")) < 0.4 * os.path.getsize(checkpoint)
    assert_report_matches_model(tiny_run)
    markdown = open(os.path.join(tiny_run, "eval", "report.md")).read()
    assert "| accuracy |" in markdown and "Confusion matrix" in markdown


def test_evaluate_cli_on_val_and_bad_run(tiny_run, tmp_path, capsys):
    assert evaluate_main(["--run", tiny_run, "--subset", "val", "--out", str(tmp_path / "val")]) == 0
    report = json.load(open(tmp_path / "val" / "report.json"))
    assert report["subset"] == "val" and report["num_samples"] == len(rundir.Run(tiny_run).rows("val"))
    assert evaluate_main(["--run", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_gradcam_cli_writes_overlays(tiny_run, tmp_path):
    images = [r["file"] for r in rundir.Run(tiny_run).rows("test")[:2]]
    written = gradcam_run(tiny_run, images, str(tmp_path / "cam"))
    assert len(written) == 2 and all(Image.open(p).format == "PNG" for p in written)


@pytest.mark.parametrize("name", list_models())
def test_gradcam_explains_every_registry_model(name):
    model = build_model(name, 3, (64, 64, 3))
    assert len(feature_map_tensor(model).shape) == 4
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3))
    heatmaps, probabilities = gradcam_heatmaps(model, pixels)
    assert heatmaps.ndim == 3 and heatmaps.min() >= 0 and heatmaps.max() <= 1
    assert probabilities.shape == (2, 3)


@pytest.mark.slow
@requires_minet
def test_real_photographs_end_to_end(tmp_path):
    config = resolve_config(overrides={"weights": "none", "data": MINET, "out": str(tmp_path / "minet"), "image_size": 32, "epochs": 2,
                                       "batch_size": 16, "limit_per_class": 8})
    run = train(config)
    for name in RUN_FILES:
        assert os.path.getsize(os.path.join(run, name)) > 0, name
    report = assert_report_matches_model(run)
    assert report["labels"] == [
        d for d in sorted(os.listdir(MINET)) if os.path.isdir(os.path.join(MINET, d))]
    data_report = json.load(open(os.path.join(run, "data_report.json")))
    assert data_report["num_images"] == 7 * 8 and data_report["limit_per_class"] == 8


def test_belt_crops_are_evaluated_beside_the_photos(tiny_run, tmp_path):
    """--belt: the test photos' specimens laid on a belt and cropped as the sorter crops a particle, classified by
    the run's model; the report gives that accuracy beside the photos' on the same rows."""
    from mineralnet.evaluate import evaluate_run

    report = evaluate_run(tiny_run, out_dir=str(tmp_path / "eval"), baseline=False, belt=True)
    crops = report["belt_crops"]
    assert crops["belt"] == "synthetic" and 0 < crops["rows"] <= crops["of"] == report["num_samples"]
    assert 0.0 <= crops["accuracy"] <= 1.0 and 0.0 <= crops["photo_accuracy"] <= 1.0
    assert "On belt crops" in (tmp_path / "eval" / "report.md").read_text()

