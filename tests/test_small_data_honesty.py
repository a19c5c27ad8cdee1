"""Honest small data (issue 24 point 3): the split-time warning about too few calib rows names a ratio that
suffices; advice never names the model or weights already in use; a run whose val accuracy never beat the
majority share says so at the end; an ensemble worse than its best member on val is refused without --force; the
exporter prints and writes the evaluation's warnings and refuses a model below the majority baseline without
--allow-weak."""

import json
import os
import shutil

import numpy as np
import pytest

from mineralnet import rundir
from mineralnet.baseline import weak_model_warnings
from mineralnet.conformal import DEFAULT_ALPHA, min_items
from mineralnet.data import make_split, scan_dataset
from mineralnet.ensemble import EnsembleError, ensemble_runs
from mineralnet.evaluate import in_use, predict_rows
from mineralnet.export.cli import main as export_main
from mineralnet.models.head import PREDICTIONS
from mineralnet.training.advice import calib_advice, resolve_auto, weak_model_advice
from mineralnet.training.config import resolve_config
from mineralnet.utils import write_json


def _calib_rows(samples, ratios):
    return sum(row["subset"] == "calib" for row in make_split(samples, ratios, 0))


def test_too_few_calib_rows_are_warned_with_the_smallest_ratio_that_suffices(demo_data):
    _, samples, _ = scan_dataset(demo_data)  # 64 images in 4 classes
    needed = min_items(DEFAULT_ALPHA)
    assert needed == 19  # ceil((1 - 0.05) / 0.05)
    rows = _calib_rows(samples, "6:1:1:2")
    assert rows == 8
    advice = calib_advice(samples, "6:1:1:2", 0, rows)
    assert "8 calib rows" in advice and "needs at least 19" in advice
    assert "--split-ratios 6:1:4:2 gives 20 of 64 images" in advice
    assert _calib_rows(samples, "6:1:4:2") == 20 >= needed > _calib_rows(samples, "6:1:3:2")  # the smallest
    assert "--alpha 0.12 or more" in advice and min_items(0.12) <= rows < min_items(0.11)
    assert calib_advice(samples, "6:2:2", 0, 0) is None  # no calib share, on purpose
    assert calib_advice(samples, "6:1:1:2", 0, needed) is None


def test_advice_never_names_the_model_or_weights_in_use():
    assert "--model simple_cnn" in weak_model_advice(("eca_resnet18",), "none")
    small = weak_model_advice(("simple_cnn",), "none")
    assert "--model simple_cnn" not in small and "add photos" in small
    assert "--model eca_convnext_tiny --weights imagenet" in small
    assert "--model simple_cnn" not in weak_model_advice(("simple_cnn", "simple_cnn", "simple_cnn"), "none")
    assert "--model eca_convnext_tiny" not in weak_model_advice(("eca_convnext_tiny",), "none")
    assert "pretrained" not in weak_model_advice(("eca_convnext_tiny",), "imagenet")
    report = {"per_class": {"a": {"support": 20}, "b": {"support": 20}}, "never_predicted": [], "num_samples": 40,
              "accuracy": 0.6, "baseline": {"majority": {"label": "a", "accuracy": 0.5},
                                            "features": {"accuracy": 0.6}}}
    warning = weak_model_warnings(report, "test", (("simple_cnn",), "none"))[-1]
    assert "colour + texture" in warning and "--model simple_cnn" not in warning
    ensemble = rundir.Run.__new__(rundir.Run)
    ensemble.config = {"model": "ensemble", "member_models": ["simple_cnn"] * 3, "member_weights": ["none"] * 3}
    assert in_use(ensemble) == (("simple_cnn",) * 3, "none")


def test_the_small_data_line_names_only_the_settings_the_run_lacks():
    recipe = {"weights": "none", "data": "photos", "model": "simple_cnn", "image_size": 64, "epochs": 30,
              "warmup_epochs": 2, "label_smoothing": 0.1}
    assert resolve_auto(resolve_config(overrides=recipe), 100, 4)[1] is None
    _, line = resolve_auto(resolve_config(overrides={**recipe, "image_size": 32}), 100, 4)
    assert "favour --image-size 64 (" in line and "--model simple_cnn" not in line


def test_a_run_that_never_beat_the_majority_share_says_so_at_the_end(tmp_path, capsys):
    from mineralnet.training.loop import _announce_no_lead

    run = rundir.Run(str(tmp_path / "run"), required=None)
    os.makedirs(run.checkpoint_dir)
    config = resolve_config(overrides={"weights": "none", "data": "photos", "model": "simple_cnn", "out": run.path})
    train, val = [0] * 5 + [1] * 3 + [2] * 3, [0, 0, 0, 1, 2]  # majority class 0: 3 of 5 val images
    write_json(run.state_file, {"epoch": 4, "best_val_accuracy": 0.6, "best_epoch": 1})
    _announce_no_lead(run, config, ["a", "b", "c"], train, val)
    err = capsys.readouterr().err
    assert "model.keras is from epoch 1" in err and "best 0.6000, while 0.6000 of the 5 val images are 'a'" in err
    assert "--model simple_cnn" not in err
    write_json(run.state_file, {"epoch": 4, "best_val_accuracy": 0.8, "best_epoch": 3})
    _announce_no_lead(run, config, ["a", "b", "c"], train, val)
    assert capsys.readouterr().err == ""


@pytest.fixture(scope="module")
def collapsed_run(tiny_export, tmp_path_factory):
    """A copy of tiny_export's run whose model answers its first class for every image (the softmax's bias): a
    member that drags an ensemble onto one class, and a model that does not beat the majority baseline."""
    from mineralnet.rundir import Run

    source = Run(tiny_export["run"])
    run = tmp_path_factory.mktemp("collapsed") / "run"
    run.mkdir()
    for name in (rundir.CONFIG, rundir.LABELS, rundir.SPLIT):
        shutil.copy(source.file(name), run / name)
    model = source.load_model()
    head = model.get_layer(PREDICTIONS)
    kernel, bias = head.get_weights()
    bias[0] = 1000.0
    head.set_weights([kernel, bias])
    model.save(str(run / rundir.MODEL))
    return str(run)


def test_an_ensemble_worse_than_its_best_member_is_refused_without_force(tiny_export, collapsed_run, tmp_path):
    good = tiny_export["run"]
    out = tmp_path / "ensemble"
    with pytest.raises(EnsembleError, match=r"below its best member's .*" + good + r".*--force"):
        ensemble_runs([good, collapsed_run], str(out), baseline=False)
    assert not out.exists()

    report = ensemble_runs([good, collapsed_run], str(out), baseline=False, force=True)
    compared = report["ensemble_val"]
    run = rundir.Run(str(out))
    rows = run.rows("val")
    truth = np.array([run.labels.index(r["label"]) for r in rows])
    keras_ensemble = predict_rows(run.load_model(), rows, run.labels, run.image_size).argmax(axis=1)
    assert compared["ensemble"] == pytest.approx(np.mean(keras_ensemble == truth))  # the written model's own
    assert compared["ensemble"] == pytest.approx(np.mean(truth == 0))  # dragged onto the first class
    assert compared["ensemble"] < compared["members"][0]
    assert compared["members"][1] == pytest.approx(np.mean(truth == 0))
    assert json.load(open(os.path.join(out, "eval", "report.json")))["ensemble_val"] == compared


def test_export_refuses_a_model_below_the_majority_baseline_unless_allowed(collapsed_run, tmp_path, capsys):
    out = tmp_path / "export"
    assert export_main(["--run", collapsed_run, "--formats", "float32", "--out", str(out)]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("error: ") and "does not beat always answering" in line and "--allow-weak" in line
    assert not out.exists()

    assert export_main(["--run", collapsed_run, "--formats", "float32", "--out", str(out), "--allow-weak"]) == 0
    err = capsys.readouterr().err
    markdown = (out / "report.md").read_text()
    report = json.load(open(out / "report.json"))
    assert report["allowed_weak"] and report["warnings"]
    for warning in report["warnings"]:
        assert f"warning: {warning}" in err and f"- {warning}" in markdown
    assert any("does not beat always answering" in w for w in report["warnings"])
    assert "Exported with --allow-weak" in markdown
